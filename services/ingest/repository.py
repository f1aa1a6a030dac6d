"""Ingest's collections: interactions (deduped on source + external id) and publishers."""

from __future__ import annotations

from datetime import datetime

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from shared.events import Interaction
from shared.mongo import Document


class IngestRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.interactions = db["interactions"]
        self.publishers = db["publishers"]

    async def ensure_indexes(self) -> None:
        await self.interactions.create_index(
            [("source", ASCENDING), ("external_id", ASCENDING)], unique=True
        )
        await self.publishers.create_index([("key_hash", ASCENDING)], unique=True)

    async def insert_interaction(self, interaction: Interaction, publisher_id: str) -> None:
        """Raises DuplicateKeyError when (source, external_id) is already stored."""
        await self.interactions.insert_one(
            {
                "_id": interaction.id,
                "source": interaction.source,
                "external_id": interaction.external_id,
                "publisher_id": publisher_id,
                "interaction": interaction.model_dump(mode="json"),
            }
        )

    async def find_interaction(self, interaction_id: str) -> Interaction | None:
        doc = await self.interactions.find_one({"_id": interaction_id})
        return Interaction.model_validate(doc["interaction"]) if doc else None

    async def find_by_external_id(self, source: str, external_id: str) -> Interaction | None:
        doc = await self.interactions.find_one({"source": source, "external_id": external_id})
        return Interaction.model_validate(doc["interaction"]) if doc else None

    async def insert_publisher(self, publisher: Document) -> None:
        await self.publishers.insert_one(publisher)

    async def find_publisher_by_key_hash(self, key_hash: str) -> Document | None:
        return await self.publishers.find_one({"key_hash": key_hash, "revoked_at": None})

    async def list_publishers(self) -> list[Document]:
        return await self.publishers.find({}, {"key_hash": 0}).sort("created_at").to_list(None)

    async def revoke_publisher(self, publisher_id: str, at: datetime) -> bool:
        result = await self.publishers.update_one(
            {"_id": publisher_id, "revoked_at": None}, {"$set": {"revoked_at": at}}
        )
        return result.modified_count == 1
