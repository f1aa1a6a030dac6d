"""Ingest's domain: take interactions in (one, a batch, or CloudEvents), accept each once,
store it with its event, and manage the publishers allowed to send them."""

from __future__ import annotations

import collections
import json
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal

from prometheus_client import Counter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from services.ingest.journey import JourneyLog, journey, stored_at
from services.ingest.repository import IngestRepository, interaction_fields
from shared.egress import check_endpoint
from shared.events import (
    INTERACTION_RECEIVED,
    INTERACTION_REJECTED,
    AttributeValue,
    Author,
    Channel,
    CloudEvent,
    FieldProblem,
    Interaction,
    RejectedSubmission,
    derived_event_id,
    encode,
    utcnow,
)
from shared.grouping import GroupWriter
from shared.http import field_errors
from shared.identity import normalise_identity
from shared.kafka import RawEvent
from shared.logging import get_logger
from shared.mongo import Document, epoch_ms
from shared.outbox import Outbox
from shared.text import Text
from shared.topics import Topics
from shared.tracing import Spans, start_trace

SOURCE = "/switchboard/ingest"
PUBLISHER_CACHE_S = 30.0
# What a Kafka record adds to its key, value and headers (lengths, offsets, timestamps,
# its share of the batch header), with room to spare: an event judged to fit does fit.
RECORD_OVERHEAD_BYTES = 1_024
log = get_logger(__name__)

FieldError = dict[str, str]
ContentKind = Literal["json", "cloudevent", "cloudevents-batch"]


class InteractionIn(BaseModel):
    """What a publisher sends: an interaction before ingest gives it an id."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    channel: Channel
    source: str = Field(min_length=1, max_length=128)
    external_id: str = Field(min_length=1, max_length=256)
    author: Author
    text: Text = Field(min_length=1, max_length=20_000)
    url: HttpUrl | None = None
    language: str | None = Field(default=None, max_length=16)
    thread_id: str | None = Field(default=None, max_length=256)
    in_reply_to: str | None = Field(default=None, max_length=256)
    created_at: datetime | None = None
    attributes: dict[str, AttributeValue] = Field(default_factory=dict, max_length=64)

    @field_validator("created_at")
    @classmethod
    def _utc_unless_told(cls, value: datetime | None) -> datetime | None:
        """A time without an offset is taken as UTC, so every service downstream reads
        the same instant from it."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class CloudEventIn(BaseModel):
    """A CloudEvents 1.0 structured-mode envelope whose data is an interaction."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=256)
    source: str = Field(min_length=1, max_length=128)
    type: str = Field(min_length=1)
    data: dict[str, Any]


_INTERACTION = TypeAdapter(InteractionIn)
_CLOUDEVENT = TypeAdapter(CloudEventIn)


class BadRequest(ValueError):
    """The body as a whole is unusable (not an item of it)."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(errors)
        self.errors = errors


@dataclass(frozen=True)
class Unpacked:
    """A request body taken apart: each item parsed, or the reasons it could not be."""

    batch: bool
    items: list[InteractionIn | list[FieldError]]


# An interaction as parsed from a request: valid, or the errors that make it invalid.
Item = InteractionIn | list[FieldError]


def unpack(kind: ContentKind, body: Any, max_batch: int) -> Unpacked:
    """Parse a decoded body of the given content kind into interactions.

    Plain JSON is one interaction or an array of them. CloudEvents carry the interaction
    as ``data``; their ``source`` and ``id`` stand in for a missing source and external id,
    since (source, id) is what identifies a CloudEvent.
    """
    batch = kind == "cloudevents-batch" or (kind == "json" and isinstance(body, list))
    raw_items = body if batch else [body]
    if not isinstance(raw_items, list):
        raise BadRequest([{"field": "body", "reason": "must be a JSON array of CloudEvents"}])
    if not raw_items:
        raise BadRequest([{"field": "body", "reason": "the batch is empty"}])
    if len(raw_items) > max_batch:
        reason = f"a batch holds at most {max_batch} items, not {len(raw_items)}"
        raise BadRequest([{"field": "body", "reason": reason}])
    parse = _parse_interaction if kind == "json" else _parse_cloudevent
    return Unpacked(batch, [parse(item) for item in raw_items])


def parse_submission(raw: RawEvent) -> InteractionIn | list[FieldError]:
    """A record from the submitted topic: an interaction as JSON. CloudEvents attributes in
    ``ce_*`` headers (binary mode) stand in for a missing source and external id."""
    try:
        body = json.loads(raw.value)
    except (ValueError, RecursionError):
        return [{"field": "value", "reason": "not valid JSON"}]
    if not isinstance(body, dict):
        return [{"field": "value", "reason": "must be a JSON object"}]
    headers = {name: value.decode(errors="replace") for name, value in raw.headers}
    defaults = {
        name: headers[header]
        for name, header in (("source", "ce_source"), ("external_id", "ce_id"))
        if header in headers
    }
    return _parse_interaction(defaults | body)


def _parse_interaction(item: Any) -> InteractionIn | list[FieldError]:
    try:
        return _INTERACTION.validate_python(item)
    except ValidationError as error:
        return field_errors(error.errors())


def _parse_cloudevent(item: Any) -> InteractionIn | list[FieldError]:
    try:
        envelope = _CLOUDEVENT.validate_python(item)
    except ValidationError as error:
        return field_errors(error.errors())
    data = {"source": envelope.source, "external_id": envelope.id, **envelope.data}
    parsed = _parse_interaction(data)
    if isinstance(parsed, list):
        return [{"field": f"data.{e['field']}", "reason": e["reason"]} for e in parsed]
    return parsed


class FeedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl
    channel: Channel = Channel.RSS
    poll_interval_s: int = Field(default=300, ge=1, le=86_400)


def new_feed(payload: FeedIn) -> Document:
    now = utcnow()
    return {
        "_id": str(uuid.uuid4()),
        **payload.model_dump(mode="json"),
        "etag": None,
        "modified": None,
        "failures": 0,
        "last_error": None,
        "next_poll_ms": epoch_ms(now),
        "created_at": now,
    }


@dataclass(frozen=True)
class Publisher:
    id: str
    name: str
    channels: frozenset[str] | None = None
    sources: frozenset[str] | None = None

    def scope_errors(self, item: InteractionIn) -> list[FieldError]:
        """Why this publisher may not send this item, if it may not."""
        errors = []
        if self.channels is not None and item.channel.value not in self.channels:
            errors.append({"field": "channel", "reason": "outside this API key's channels"})
        if self.sources is not None and item.source not in self.sources:
            errors.append({"field": "source", "reason": "outside this API key's sources"})
        return errors


@dataclass(frozen=True)
class Outcome:
    status: Literal["accepted", "duplicate", "rejected", "forbidden"]
    id: str | None = None
    errors: list[FieldError] = field(default_factory=list)
    too_large: bool = False  # rejected for its size: a single post answers 413


_ATTRIBUTES = TypeAdapter(dict[str, AttributeValue])


@dataclass(frozen=True)
class InputLimits:
    """How big an interaction may be: its attributes as JSON, and its event as the
    outbox relay sends it (key, value and headers), which must fit the broker's records."""

    max_attributes_bytes: int = 16 * 1024
    max_message_bytes: int = 1_048_576

    @property
    def max_event_bytes(self) -> int:
        return self.max_message_bytes - RECORD_OVERHEAD_BYTES

    def attribute_errors(self, item: InteractionIn) -> list[FieldError]:
        size = len(_ATTRIBUTES.dump_json(item.attributes))
        if size <= self.max_attributes_bytes:
            return []
        reason = f"{size} bytes as JSON, more than the {self.max_attributes_bytes} allowed"
        return [{"field": "attributes", "reason": reason}]

    def event_errors(self, event: CloudEvent[Interaction], key: str) -> list[FieldError]:
        size = record_size(event, key)
        if size <= self.max_event_bytes:
            return []
        part, part_size = largest_field(event.data)
        reason = (
            f"its event would be {size} bytes, more than the {self.max_event_bytes} the "
            f"broker takes; its largest field, {part}, is {part_size} bytes"
        )
        return [{"field": part, "reason": reason}]


def record_size(event: CloudEvent[Any], key: str) -> int:
    """The bytes of the event's Kafka record: key, value and headers, names included."""
    record = encode(event, key)
    headers = sum(len(name) + len(value) for name, value in record.headers)
    return len(record.key) + len(record.value) + headers


def largest_field(interaction: Interaction) -> tuple[str, int]:
    """The interaction's field that takes the most bytes as JSON, and how many."""
    fields = interaction.model_dump(mode="json")
    sizes = {
        name: len(json.dumps(value, ensure_ascii=False).encode()) for name, value in fields.items()
    }
    name = max(sizes, key=sizes.__getitem__)
    return name, sizes[name]


def _set(values: list[str] | None) -> frozenset[str] | None:
    return frozenset(values) if values is not None else None


class TokenBucket:
    """Allows ``rate`` units a second on average and bursts up to ``burst``."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.updated = float(burst), clock()

    def take(self, units: int) -> float:
        """Take ``units`` now and return 0, or return the seconds until they would be there."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        needed = min(units, self.burst)  # a batch bigger than the burst waits for a full bucket
        if self.tokens >= needed:
            self.tokens -= needed
            return 0.0
        return (needed - self.tokens) / self.rate


@cache
def outcomes_counter() -> Counter:
    return Counter(
        "switchboard_ingest_interactions",
        "Interactions taken in, by publisher, channel and outcome",
        ["publisher", "channel", "outcome"],
    )


KAFKA_PUBLISHER = Publisher(id="kafka", name="kafka")


def rejected_event(record: RawEvent, errors: list[FieldError]) -> CloudEvent[RejectedSubmission]:
    where = f"{record.topic}/{record.partition}/{record.offset}"
    return CloudEvent[RejectedSubmission](
        id=derived_event_id(where, INTERACTION_REJECTED),
        source=SOURCE,
        type=INTERACTION_REJECTED,
        subject=where,
        data=RejectedSubmission(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode(errors="replace") or None,
            errors=tuple(FieldProblem(**error) for error in errors),
            value_excerpt=record.value[:2_000].decode(errors="replace"),
        ),
    )


def author_key(interaction: Interaction) -> str:
    """Kafka key: one author's posts stay in order on one partition, whatever form
    (``@Ada``, a profile URL) the handle took."""
    return normalise_identity(interaction.channel, interaction.author.handle)


def received_event(interaction: Interaction, caller: str | None) -> CloudEvent[Interaction]:
    """The interaction's first event; its trace continues the caller's ``traceparent``."""
    return CloudEvent[Interaction](
        id=interaction.id,
        source=SOURCE,
        type=INTERACTION_RECEIVED,
        subject=interaction.id,
        time=interaction.received_at,
        traceparent=start_trace(interaction.id, caller),
        data=interaction,
    )


def submitted_traceparent(record: RawEvent) -> str | None:
    """A Kafka-native publisher's trace context, as a CloudEvents or a plain header."""
    headers = dict(record.headers)
    raw = headers.get("ce_traceparent") or headers.get("traceparent")
    return raw.decode(errors="replace") if raw else None


class IngestService:
    spans = Spans()  # main sets the service's own, exporting when tracing is on

    def __init__(
        self,
        repository: IngestRepository,
        outbox: Outbox,
        interactions: Outbox,
        topics: Topics,
        rate_limit: tuple[float, int],
        limits: InputLimits = InputLimits(),
    ) -> None:
        self.repository = repository
        self.limits = limits
        self.outbox = outbox  # rejected submissions
        self.interactions = interactions  # each interaction with its received event
        self.topics = topics
        self.rate_limit = rate_limit
        self.buckets: dict[str, TokenBucket] = {}
        self.publishers: dict[str, tuple[Publisher, float]] = {}
        self.journeys: JourneyLog | None = None  # the read model, when the app consumes it
        # Told of each feed deleted here, so that a poll of it under way stops.
        self.feed_deleted: Callable[[str], None] = lambda _: None
        # Single posts stored together, per publisher (see accept_one).
        self.singles: GroupWriter[str, tuple[Item, Publisher, str | None], Outcome] = GroupWriter(
            self._accept_singles
        )

    def throttle(self, publisher: Publisher, units: int) -> float:
        """Seconds the publisher must wait before sending ``units`` interactions; 0 if none."""
        bucket = self.buckets.get(publisher.id)
        if bucket is None:
            bucket = self.buckets[publisher.id] = TokenBucket(*self.rate_limit)
        return bucket.take(units)

    async def accept(
        self,
        items: Sequence[InteractionIn | list[FieldError]],
        publisher: Publisher,
        traceparents: Sequence[str | None] = (),
    ) -> list[Outcome]:
        """Store each new interaction, as one document with its event; a repeat of
        (source, external_id) answers with the original's id and stores nothing new."""
        outcomes: list[Outcome] = []
        fresh: list[tuple[int, Interaction, str, CloudEvent[Interaction]]] = []
        now = utcnow()
        for position, item in enumerate(items):
            if isinstance(item, list):
                outcomes.append(Outcome("rejected", errors=item))
            elif errors := publisher.scope_errors(item):
                outcomes.append(Outcome("forbidden", errors=errors))
            elif errors := self.limits.attribute_errors(item):
                outcomes.append(Outcome("rejected", errors=errors, too_large=True))
            else:
                interaction = _new_interaction(item, now)
                key = author_key(interaction)
                event = received_event(interaction, _at(traceparents, position))
                # Refused now, not stored: the relay could never send it, and the events
                # stored after it would wait behind it.
                if errors := self.limits.event_errors(event, key):
                    outcomes.append(Outcome("rejected", errors=errors, too_large=True))
                    continue
                outcomes.append(Outcome("accepted"))
                fresh.append((position, interaction, key, event))
        stored = await self.interactions.add(
            [(self.topics.received, key, event) for _, _, key, event in fresh],
            [interaction_fields(i, publisher.id) for _, i, _, _ in fresh],
        )
        repeats = [i for _, i, _, _ in fresh if i.id not in stored]
        originals = await self.repository.find_by_external_ids(
            [(i.source, i.external_id) for i in repeats]
        )
        for position, interaction, _, _ in fresh:
            if interaction.id in stored:
                outcomes[position] = Outcome("accepted", interaction.id)
            elif original := originals.get((interaction.source, interaction.external_id)):
                outcomes[position] = Outcome("duplicate", original.id)
            else:  # erased between the insert and the look-up
                retry = [{"field": "external_id", "reason": "changed concurrently; send again"}]
                outcomes[position] = Outcome("rejected", errors=retry)
        self._count(publisher, items, outcomes)
        return outcomes

    async def accept_one(
        self, item: Item, publisher: Publisher, traceparent: str | None
    ) -> Outcome:
        """``accept`` for one interaction, stored together with the other single posts of
        the same publisher that arrive meanwhile: while one write is under way the next
        ones gather, and go in the next write. Each is answered once its write is done."""
        return await self.singles.submit(publisher.id, (item, publisher, traceparent))

    async def _accept_singles(
        self, _: str, singles: list[tuple[Item, Publisher, str | None]]
    ) -> list[Outcome]:
        publisher = singles[-1][1]  # the latest word on its scopes
        return await self.accept([i for i, _, _ in singles], publisher, [t for _, _, t in singles])

    def _count(
        self,
        publisher: Publisher,
        items: Sequence[InteractionIn | list[FieldError]],
        outcomes: Sequence[Outcome],
    ) -> None:
        counts = collections.Counter(
            (item.channel.value if isinstance(item, InteractionIn) else "unknown", outcome.status)
            for item, outcome in zip(items, outcomes, strict=True)
        )
        counter = outcomes_counter()
        for (channel, status), count in counts.items():  # one increment per label set
            counter.labels(publisher=publisher.name, channel=channel, outcome=status).inc(count)
        log.info(
            "interactions taken in",
            publisher_id=publisher.id,
            **{
                s: sum(o.status == s for o in outcomes)
                for s in ("accepted", "duplicate", "rejected", "forbidden")
            },
        )

    async def accept_submissions(self, records: Sequence[RawEvent]) -> None:
        """Take in what Kafka-native publishers sent; what cannot be taken goes to the
        rejected topic with the reasons, so nothing sent vanishes silently."""
        items = [parse_submission(record) for record in records]
        traceparents = [submitted_traceparent(record) for record in records]
        outcomes = await self.accept(items, KAFKA_PUBLISHER, traceparents)
        rejected = [
            (
                self.topics.rejected,
                record.key.decode(errors="replace"),
                rejected_event(record, o.errors),
            )
            for record, o in zip(records, outcomes, strict=True)
            if o.status in ("rejected", "forbidden")
        ]
        await self.outbox.add(rejected)

    async def journey(self, interaction_id: str) -> Document | None:
        """Every step of the interaction's way, from acceptance to each webhook attempt."""
        stored = await self.repository.find_interaction(interaction_id)
        if stored is None or self.journeys is None:
            return None
        entry = await self._entry_of(stored)
        published_at = await self._published_at(entry)
        steps = await self.journeys.steps_of(interaction_id, stored_at(stored))
        return journey(stored, entry, published_at, steps)

    async def get(self, interaction_id: str) -> Document | None:
        """What ingest knows of an interaction: it, when it was stored and when published."""
        doc = await self.repository.find_interaction(interaction_id)
        if doc is None:
            return None
        entry = await self._entry_of(doc)
        return {
            "interaction": doc["interaction"],
            "publisher_id": doc["publisher_id"],
            "stored_at": doc.get("stored_at"),
            "published_at": await self._published_at(entry),
        }

    async def _entry_of(self, stored: Document) -> Document | None:
        """The outbox entry of a stored interaction's event: the document itself, or for
        one stored before the two were one document, the entry in the general outbox."""
        if "writer" in stored or "pending" in stored:
            return stored
        return await self.outbox.find(stored["_id"])

    async def _published_at(self, entry: Document | None) -> datetime | None:
        return None if entry is None else await self.interactions.published_at(entry)

    async def create_publisher(
        self, name: str, channels: list[str] | None, sources: list[str] | None
    ) -> Publisher:
        """The publisher; its keys are access keys of role ``publisher`` naming it."""
        publisher_id = str(uuid.uuid4())
        await self.repository.insert_publisher(
            {
                "_id": publisher_id,
                "name": name,
                "channels": channels,
                "sources": sources,
                "created_at": utcnow(),
                "revoked_at": None,
            }
        )
        return Publisher(publisher_id, name, _set(channels), _set(sources))

    async def publisher(self, publisher_id: str) -> Publisher | None:
        """The publisher, unless it is revoked. Its name and scope never change, so a live
        one is remembered for a while; revocation also revokes its keys, checked every time."""
        known, at = self.publishers.get(publisher_id, (None, 0.0))
        if known is not None and time.monotonic() - at < PUBLISHER_CACHE_S:
            return known
        doc = await self.repository.find_publisher(publisher_id)
        if doc is None:
            return None
        found = Publisher(
            str(doc["_id"]), str(doc["name"]), _set(doc.get("channels")), _set(doc.get("sources"))
        )
        self.publishers[publisher_id] = (found, time.monotonic())
        return found

    async def list_publishers(self) -> list[Document]:
        return await self.repository.list_publishers()

    async def revoke_publisher(self, publisher_id: str) -> bool:
        self.publishers.pop(publisher_id, None)
        return await self.repository.revoke_publisher(publisher_id, utcnow())

    async def create_feed(self, payload: FeedIn, allow_hosts: Collection[str]) -> Document:
        """Raises EndpointRefused for a feed on a non-public address."""
        await check_endpoint(str(payload.url), allow_hosts)
        feed = new_feed(payload)
        await self.repository.insert_feed(feed)
        return feed

    async def list_feeds(self) -> list[Document]:
        return await self.repository.list_feeds()

    async def delete_feed(self, feed_id: str) -> bool:
        deleted = await self.repository.delete_feed(feed_id)
        if deleted:
            self.feed_deleted(feed_id)
        return deleted


def _at(traceparents: Sequence[str | None], position: int) -> str | None:
    return traceparents[position] if position < len(traceparents) else None


def _new_interaction(item: InteractionIn, at: datetime) -> Interaction:
    return Interaction(id=str(uuid.uuid4()), received_at=at, **item.model_dump())
