"""Ingest's collections: interactions (deduped on source + external id) and publishers.

Each interaction document is also the outbox entry of its received event (see
``Outbox``): the outbox writes it, and this module reads it and keeps its unique index.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import datetime

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from shared.events import Interaction
from shared.mongo import Document, epoch_ms
from shared.outbox import entry_value

INTERACTIONS = "interactions"  # the collection, an outbox of received events too


class IngestRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.interactions = db[INTERACTIONS]
        self.publishers = db["publishers"]
        self.feeds = db["feeds"]

    async def ensure_indexes(self) -> None:
        await self.interactions.create_index(
            [("source", ASCENDING), ("external_id", ASCENDING)], unique=True
        )
        await self.feeds.create_index([("next_poll_ms", ASCENDING)])

    async def find_by_external_ids(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Interaction]:
        """The stored interactions with these (source, external_id), each read through the
        unique index. (An ``$in`` or ``$or`` over the keys scans the whole collection on the
        embedded store; so does a bare equality, hence the explicit ``$eq``.)"""
        wanted = sorted(set(keys))
        docs = await asyncio.gather(
            *(
                self.interactions.find_one(
                    {"source": {"$eq": source}, "external_id": {"$eq": external_id}}
                )
                for source, external_id in wanted
            )
        )
        return {
            key: Interaction.model_validate(_loaded(doc)["interaction"])
            for key, doc in zip(wanted, docs, strict=True)
            if doc is not None
        }

    async def find_interaction(self, interaction_id: str) -> Document | None:
        doc = await self.interactions.find_one({"_id": interaction_id})
        return _loaded(doc) if doc is not None else None

    async def insert_publisher(self, publisher: Document) -> None:
        await self.publishers.insert_one(publisher)

    async def find_publisher(self, publisher_id: str) -> Document | None:
        return await self.publishers.find_one({"_id": publisher_id, "revoked_at": None})

    async def list_publishers(self) -> list[Document]:
        return await self.publishers.find({}).sort("created_at").to_list(None)

    async def revoke_publisher(self, publisher_id: str, at: datetime) -> bool:
        result = await self.publishers.update_one(
            {"_id": publisher_id, "revoked_at": None}, {"$set": {"revoked_at": at}}
        )
        return result.modified_count == 1

    async def insert_feed(self, feed: Document) -> None:
        await self.feeds.insert_one(feed)

    async def list_feeds(self) -> list[Document]:
        return await self.feeds.find({}).sort("created_at").to_list(None)

    async def delete_feed(self, feed_id: str) -> bool:
        return (await self.feeds.delete_one({"_id": feed_id})).deleted_count == 1

    async def claim_due_feed(self, now: datetime, lease_s: float = 60.0) -> Document | None:
        """Take a due feed, pushing its next poll out by ``lease_s`` (longer than a poll
        may take) so nobody else polls it meanwhile."""
        return await self.feeds.find_one_and_update(
            {"next_poll_ms": {"$lte": epoch_ms(now)}},
            {"$set": {"next_poll_ms": epoch_ms(now) + int(lease_s * 1000)}},
            sort=[("next_poll_ms", ASCENDING)],
        )

    async def existing_feed_ids(self, feed_ids: Sequence[str]) -> set[str]:
        """Those of ``feed_ids`` whose feeds still exist."""
        found = self.feeds.find({"_id": {"$in": list(feed_ids)}}, {"_id": 1})
        return {str(doc["_id"]) async for doc in found}

    async def update_feed(self, feed_id: str, changes: Document) -> None:
        await self.feeds.update_one({"_id": feed_id}, {"$set": changes})


def interaction_fields(interaction: Interaction, publisher_id: str) -> Document:
    """What an interaction's document holds besides its outbox entry, whose event value
    is the interaction itself (kept once, not again as a field)."""
    return {
        "source": interaction.source,
        "external_id": interaction.external_id,
        "publisher_id": publisher_id,
    }


def _loaded(doc: Document) -> Document:
    """A stored interaction document with its interaction as fields: from its event's
    value, or as documents stored before kept it (as text, or as fields already)."""
    if "interaction" not in doc:  # the document is its event's outbox entry
        return {**doc, "interaction": json.loads(entry_value(doc))}
    interaction = doc["interaction"]
    return {**doc, "interaction": json.loads(interaction)} if isinstance(interaction, str) else doc
