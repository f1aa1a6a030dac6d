"""Enrich's collections: customers, and identities (``channel:handle`` -> customer id).

Identities live in their own collection keyed by the normalised identity, so that
one identity belongs to one customer by construction (the primary key).
"""

from __future__ import annotations

import contextlib

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from shared.mongo import Document, only_duplicates


class IdentityTaken(Exception):
    """An identity already belongs to another customer."""


class EnrichRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.customers = db["customers"]
        self.identities = db["identities"]

    async def ensure_indexes(self) -> None:
        await self.identities.create_index("customer_id")

    async def insert_customer(self, customer: Document, identities: list[str]) -> None:
        """Store a customer with its identities; none is stored if one is taken."""
        await self.customers.insert_one(customer)
        if not identities:
            return
        try:
            await self.identities.insert_many(
                [{"_id": identity, "customer_id": customer["_id"]} for identity in identities],
                ordered=False,
            )
        except BulkWriteError as error:
            await self.identities.delete_many({"customer_id": customer["_id"]})
            await self.customers.delete_one({"_id": customer["_id"]})
            if only_duplicates(error):
                raise IdentityTaken from error
            raise

    async def find_customer(self, customer_id: str) -> Document | None:
        return await self.customers.find_one({"_id": customer_id})

    async def customer_id_for(self, identity: str) -> str | None:
        doc = await self.identities.find_one({"_id": identity})
        return str(doc["customer_id"]) if doc else None

    async def claim_identity(self, identity: str, customer_id: str) -> str:
        """The identity's customer, claiming it for ``customer_id`` if nobody has it."""
        try:
            await self.identities.insert_one({"_id": identity, "customer_id": customer_id})
        except DuplicateKeyError:
            owner = await self.customer_id_for(identity)
            if owner is None:  # released since the insert failed: claim it again
                return await self.claim_identity(identity, customer_id)
            return owner
        return customer_id

    async def upsert_prospect(self, prospect: Document, followers: int) -> Document | None:
        """Store a prospect once, keeping its follower count current; returns it.

        Insert-then-update rather than one upsert with $setOnInsert: the embedded store
        drops $setOnInsert when an upsert also has $set.
        """
        with contextlib.suppress(DuplicateKeyError):
            await self.customers.insert_one(prospect)
        return await self.customers.find_one_and_update(
            {"_id": prospect["_id"]},
            {"$set": {"followers": followers}},
            return_document=ReturnDocument.AFTER,
        )
