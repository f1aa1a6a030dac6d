"""Ingest's domain: accept an interaction once, store it with its event, manage publishers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, HttpUrl
from pymongo.errors import DuplicateKeyError

from services.ingest.repository import IngestRepository
from shared.events import (
    INTERACTION_RECEIVED,
    AttributeValue,
    Author,
    Channel,
    CloudEvent,
    Interaction,
    utcnow,
)
from shared.logging import get_logger
from shared.outbox import Outbox
from shared.security import hash_api_key, new_api_key
from shared.topics import Topics

SOURCE = "/switchboard/ingest"
log = get_logger(__name__)


class InteractionIn(BaseModel):
    """What a publisher sends: an interaction before ingest gives it an id."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    channel: Channel
    source: str = Field(min_length=1, max_length=128)
    external_id: str = Field(min_length=1, max_length=256)
    author: Author
    text: str = Field(min_length=1, max_length=20_000)
    url: HttpUrl | None = None
    language: str | None = Field(default=None, max_length=16)
    thread_id: str | None = Field(default=None, max_length=256)
    in_reply_to: str | None = Field(default=None, max_length=256)
    created_at: datetime | None = None
    attributes: dict[str, AttributeValue] = Field(default_factory=dict, max_length=64)


@dataclass(frozen=True)
class Accepted:
    interaction_id: str
    duplicate: bool


@dataclass(frozen=True)
class NewPublisher:
    id: str
    name: str
    api_key: str


def author_key(interaction: Interaction) -> str:
    """Kafka key: one author's posts stay in order on one partition."""
    return f"{interaction.channel.value}:{interaction.author.handle.lower()}"


def received_event(interaction: Interaction) -> CloudEvent[Interaction]:
    return CloudEvent[Interaction](
        id=interaction.id,
        source=SOURCE,
        type=INTERACTION_RECEIVED,
        subject=interaction.id,
        time=interaction.received_at,
        data=interaction,
    )


class IngestService:
    def __init__(self, repository: IngestRepository, outbox: Outbox, topics: Topics) -> None:
        self.repository = repository
        self.outbox = outbox
        self.topics = topics

    async def accept(self, payload: InteractionIn, publisher_id: str) -> Accepted:
        """Store the interaction and its event; a repeat of (source, external_id) changes nothing.

        On a repeat the original's event is stored again (a no-op when it is there), which
        heals a crash between the two writes of the first attempt.
        """
        interaction = Interaction(
            id=str(uuid.uuid4()), received_at=utcnow(), **payload.model_dump(exclude_unset=False)
        )
        try:
            await self.repository.insert_interaction(interaction, publisher_id)
            duplicate = False
        except DuplicateKeyError:
            original = await self.repository.find_by_external_id(
                payload.source, payload.external_id
            )
            if original is None:  # erased since the insert failed: try again
                return await self.accept(payload, publisher_id)
            interaction, duplicate = original, True
        await self.outbox.add(
            [(self.topics.received, author_key(interaction), received_event(interaction))]
        )
        log.info(
            "duplicate" if duplicate else "accepted",
            interaction_id=interaction.id,
            publisher_id=publisher_id,
            channel=interaction.channel.value,
        )
        return Accepted(interaction.id, duplicate)

    async def get(self, interaction_id: str) -> Interaction | None:
        return await self.repository.find_interaction(interaction_id)

    async def create_publisher(self, name: str) -> NewPublisher:
        publisher_id, key = str(uuid.uuid4()), new_api_key("sbp")
        await self.repository.insert_publisher(
            {
                "_id": publisher_id,
                "name": name,
                "key_hash": hash_api_key(key),
                "created_at": utcnow(),
                "revoked_at": None,
            }
        )
        return NewPublisher(publisher_id, name, key)

    async def publisher_for_key(self, key: str) -> str | None:
        publisher = await self.repository.find_publisher_by_key_hash(hash_api_key(key))
        return str(publisher["_id"]) if publisher else None

    async def revoke_publisher(self, publisher_id: str) -> bool:
        return await self.repository.revoke_publisher(publisher_id, utcnow())
