"""The event contract: CloudEvents 1.0 envelopes with typed, versioned data.

Events travel in Kafka's binary content mode: the envelope's attributes are
``ce_*`` headers and the value is the JSON of ``data``. Decoding happens once, at
the topic boundary (``decode``); inside a service only these models travel.
Evolution is additive: a new optional field keeps the type, a breaking change is
a new ``.v2`` type on a new topic.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from shared.text import Name, Text
from shared.tracing import valid_traceparent

INTERACTION_RECEIVED = "io.switchboard.interaction.received.v1"
INTERACTION_REJECTED = "io.switchboard.interaction.rejected.v1"
INTERACTION_ENRICHED = "io.switchboard.interaction.enriched.v1"
ASSIGNMENT_PREFIX = "io.switchboard.assignment."
DELIVERY_DEAD = "io.switchboard.delivery.dead.v1"
DELIVERY_ATTEMPTED = "io.switchboard.delivery.attempted.v1"
SLA_BREACHED = "io.switchboard.sla.breached.v1"
ACCESS_KEY_CHANGED = "io.switchboard.access.key.v1"

_EVENT_ID_NAMESPACE = uuid.UUID("6f1c6a4e-2f43-4d7c-9a57-3c1b0f2d9e11")


def derived_event_id(*parts: str) -> str:
    """An event id that is the same every time the same effect is computed.

    Consumers derive their output ids from their input ids, so a redelivered input
    yields the very same output event, which downstream dedupes by id.
    """
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, "/".join(parts)))


def utcnow() -> datetime:
    return datetime.now(UTC)


class Model(BaseModel):
    """Base for contract models: unknown fields are kept out, values are immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Channel(StrEnum):
    TWITTER = "twitter"
    X = "x"
    FACEBOOK = "facebook"
    INSTAGRAM = "instagram"
    LINKEDIN = "linkedin"
    YOUTUBE = "youtube"
    FORUM = "forum"
    REVIEW = "review"
    RSS = "rss"
    EMAIL = "email"
    CHAT = "chat"
    OTHER = "other"


AttributeValue = str | int | float | bool | None


class Author(Model):
    handle: Name = Field(min_length=1, max_length=256)
    display_name: Name | None = Field(default=None, max_length=256)
    followers: int = Field(default=0, ge=0, le=10_000_000_000)
    verified: bool = False
    profile_url: HttpUrl | None = None
    email: str | None = Field(default=None, max_length=320)


class Interaction(Model):
    """One post or mention as ingest accepted it."""

    id: str
    channel: Channel
    source: str = Field(min_length=1, max_length=128)
    external_id: str = Field(min_length=1, max_length=256)
    author: Author
    text: Text = Field(max_length=20_000)
    url: HttpUrl | None = None
    language: str | None = Field(default=None, max_length=16)
    thread_id: str | None = Field(default=None, max_length=256)
    in_reply_to: str | None = Field(default=None, max_length=256)
    created_at: datetime | None = None
    received_at: datetime
    attributes: dict[str, AttributeValue] = Field(default_factory=dict, max_length=64)


class FieldProblem(Model):
    field: str
    reason: str


class RejectedSubmission(Model):
    """A record on the submitted topic that ingest could not take in, and why."""

    topic: str
    partition: int
    offset: int
    key: str | None = None
    errors: tuple[FieldProblem, ...]
    value_excerpt: str = Field(default="", max_length=2_000)


SentimentLabel = Literal["negative", "neutral", "positive"]
Urgency = Literal["low", "normal", "high"]


class CustomerRef(Model):
    id: str
    tier: str
    value: float = 0.0
    prospect: bool = False


class Sentiment(Model):
    """How a post feels. ``scored`` is False when the analyzer does not know the post's
    language, or finds nothing in it to judge (only emoji it lacks, say): the neutral
    label is then a placeholder, not a judgement."""

    label: SentimentLabel
    score: float = Field(ge=-1.0, le=1.0)  # negative .. positive
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)  # the analyzer's belief in label
    analyzer: str
    scored: bool = True


class EnrichedInteraction(Model):
    interaction: Interaction
    customer: CustomerRef
    sentiment: Sentiment
    language: str | None = None
    intents: tuple[str, ...] = ()
    urgency: Urgency = "normal"
    influence: float = Field(default=0.0, ge=0.0, le=100.0)


class AssignmentStatus(StrEnum):
    QUEUED = "queued"  # waiting: no agent could take it when it arrived
    OFFERED = "offered"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    TIMED_OUT = "timed_out"
    RESOLVED = "resolved"
    REQUEUED = "requeued"


def assignment_type(status: AssignmentStatus) -> str:
    return f"{ASSIGNMENT_PREFIX}{status.value}.v1"


class Assignment(Model):
    """A change of one interaction's assignment, as the router decided it."""

    interaction_id: str
    status: AssignmentStatus
    queue: str
    priority: int = Field(ge=1, le=5)
    rule: str
    agent_id: str | None = None
    offer: int = 0
    customer: CustomerRef
    sentiment: SentimentLabel
    channel: Channel
    author_handle: str
    text: str
    url: HttpUrl | None = None
    enqueued_at: datetime
    policy_version: int | None = None  # the routing policy version that decided the queue
    required_skills: tuple[str, ...] = ()


class SlaBreach(Model):
    """An item that waited past its first-response target, and how it was escalated."""

    interaction_id: str
    queue: str
    priority_before: int = Field(ge=1, le=5)
    priority_after: int = Field(ge=1, le=5)
    queue_after: str | None = None  # the overflow queue it moved to, if its queue has one
    waited_s: float
    customer: CustomerRef
    enqueued_at: datetime


class DeadDelivery(Model):
    """A webhook delivery whose retry schedule is spent."""

    delivery_id: str
    subscription_id: str
    event_id: str
    event_type: str
    attempts: int
    last_status: int | None = None
    last_error: str | None = None


class DeliveryAttempt(Model):
    """One attempt at one webhook delivery, and what it led to."""

    delivery_id: str
    subscription_id: str
    interaction_id: str | None = None
    event_id: str
    event_type: str
    attempt: int = Field(ge=1)
    outcome: Literal["delivered", "retry", "dead", "gone"]
    status_code: int | None = None
    error: str | None = None
    at: datetime


class Role(StrEnum):
    """What an API key may do (see ``shared.access`` for the routes each role reaches)."""

    ADMIN = "admin"
    OPERATOR = "operator"
    AGENT = "agent"
    PUBLISHER = "publisher"


class AccessKey(Model):
    """An API key as every service keeps it: its SHA-256 hash, never the key itself.

    Issued and revoked by any service; each keeps a replica from the access-keys topic.
    A key is created once and can only become revoked, so replicas merge without
    conflict: the earliest revocation wins.
    """

    id: str = Field(pattern=r"^[0-9a-f]{16}$")
    role: Role
    subject: str | None = None  # the agent or publisher id the key speaks for
    name: str = Field(min_length=1, max_length=128)
    key_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_by: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


DataT = TypeVar("DataT", bound=BaseModel)


class CloudEvent(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 envelope around one contract model."""

    model_config = ConfigDict(frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str
    type: str
    time: datetime = Field(default_factory=utcnow)
    subject: str | None = None
    datacontenttype: str = "application/json"
    traceparent: str | None = None  # CloudEvents distributed-tracing extension (W3C)
    data: DataT

    @field_validator("traceparent", mode="before")
    @classmethod
    def _drop_malformed_traceparent(cls, value: object) -> str | None:
        return valid_traceparent(value if isinstance(value, str) else None)


@dataclass(frozen=True)
class Record:
    """What goes on the wire for one event: key, value and headers."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def encode(event: CloudEvent[Any], key: str) -> Record:
    """The event in Kafka's binary content mode."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", event.id.encode()),
        ("ce_source", event.source.encode()),
        ("ce_type", event.type.encode()),
        ("ce_time", event.time.isoformat().encode()),
        ("content-type", event.datacontenttype.encode()),
    ]
    if event.subject is not None:
        headers.append(("ce_subject", event.subject.encode()))
    if event.traceparent is not None:
        headers.append(("ce_traceparent", event.traceparent.encode()))
    return Record(key=key.encode(), value=event.data.model_dump_json().encode(), headers=headers)


class UndecodableEvent(ValueError):
    """A record that is not a valid event of the expected kind."""


def decode(
    headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes],
    value: bytes,
    data_model: type[DataT],
) -> CloudEvent[DataT]:
    """The event a binary-mode record carries, its data validated against the contract."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    try:
        attrs = {name[3:]: raw.decode() for name, raw in items if name.startswith("ce_")}
    except UnicodeDecodeError as exc:
        raise UndecodableEvent(f"a ce_ header is not UTF-8: {exc}") from exc
    missing = [name for name in ("id", "source", "type", "specversion") if name not in attrs]
    if missing:
        raise UndecodableEvent(f"missing CloudEvents attributes: {', '.join(missing)}")
    try:
        return CloudEvent[data_model].model_validate(  # type: ignore[valid-type]
            {**attrs, "data": data_model.model_validate_json(value)}
        )
    except ValueError as exc:
        raise UndecodableEvent(str(exc)) from exc
