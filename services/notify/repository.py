"""Notify's collections: subscriptions, and deliveries (one per event and subscription,
each with the log of its attempts)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from shared.mongo import Document, epoch_ms, insert_new


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt at a delivery, and what it changes on the delivery."""

    delivery_id: str
    number: int
    attempt: dict[str, Any]
    changes: dict[str, Any]


class NotifyRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.subscriptions = db["subscriptions"]
        self.deliveries = db["deliveries"]
        # Attempts logged one document each before they were kept on their delivery.
        self.legacy_attempts = db["attempts"]

    async def ensure_indexes(self) -> None:
        await self.deliveries.create_index([("status", ASCENDING), ("next_attempt_ms", ASCENDING)])
        await self.deliveries.create_index(
            [("subscription_id", ASCENDING), ("created_ms", ASCENDING)]
        )
        await self.legacy_attempts.create_index("delivery_id")

    async def insert_subscription(self, subscription: Document) -> None:
        await self.subscriptions.insert_one(subscription)

    async def find_subscription(self, subscription_id: str) -> Document | None:
        return await self.subscriptions.find_one({"_id": subscription_id})

    async def all_subscriptions(self) -> dict[str, Document]:
        return {
            subscription["_id"]: subscription async for subscription in self.subscriptions.find()
        }

    async def update_subscription(self, subscription_id: str, changes: Document) -> None:
        await self.subscriptions.update_one({"_id": subscription_id}, {"$set": changes})

    async def disable_subscription(self, subscription_id: str, reason: str) -> None:
        await self.subscriptions.update_one(
            {"_id": subscription_id}, {"$set": {"enabled": False, "disabled_reason": reason}}
        )

    async def insert_deliveries(self, deliveries: list[Document]) -> set[str]:
        """Store new deliveries; ones already stored (a redelivered event) stay as they are.
        Returns the ids of those stored now."""
        return await insert_new(self.deliveries, deliveries)

    async def claim_due(self, now: datetime, lease_until: datetime, limit: int) -> list[Document]:
        """Take up to ``limit`` of the most overdue pending deliveries, leasing them so no
        other worker takes them too (those another worker leased first are left out).

        If this worker dies mid-attempt, the lease runs out and the delivery is tried again.
        """
        return await self.lease(await self.due(now, limit), now, lease_until)

    async def due(self, now: datetime, limit: int) -> list[Document]:
        # $eq, not a bare value: the embedded store answers it from the index rather than
        # scanning every delivery ever made (the same match in MongoDB).
        due = {"status": {"$eq": "pending"}, "next_attempt_ms": {"$lte": epoch_ms(now)}}
        cursor = self.deliveries.find(due).sort("next_attempt_ms", ASCENDING).limit(limit)
        return await cursor.to_list(length=limit)

    async def lease(
        self, deliveries: list[Document], now: datetime, until: datetime
    ) -> list[Document]:
        """Lease those of ``deliveries`` still pending and due at ``now``; returns those
        leased, as they are now.

        One update for them all, marked with a token of this claim: a delivery another
        worker leased meanwhile is no longer due (its lease moved it past ``now``), so the
        update leaves it out. Only when it left some out are they read back, to tell ours
        by the token. (One conditional update per delivery cost the store a command each,
        the dearest part of a busy notify.)
        """
        if not deliveries:
            return []
        until_ms, token = epoch_ms(until), uuid.uuid4().hex
        ids = [delivery["_id"] for delivery in deliveries]
        result = await self.deliveries.update_many(
            {
                "_id": {"$in": ids},
                "status": {"$eq": "pending"},
                "next_attempt_ms": {"$lte": epoch_ms(now)},
            },
            {"$set": {"next_attempt_ms": until_ms, "lease": token}},
        )
        if result.modified_count < len(ids):
            stored = await self.deliveries.find({"_id": {"$in": ids}}).to_list(None)
            ours = {delivery["_id"] for delivery in stored if delivery.get("lease") == token}
            deliveries = [delivery for delivery in deliveries if delivery["_id"] in ours]
        return [
            {**delivery, "next_attempt_ms": until_ms, "lease": token} for delivery in deliveries
        ]

    async def postpone(self, delivery_id: str, until: datetime) -> None:
        """Move a delivery's next attempt without counting one (an open breaker, a busy endpoint)."""
        await self.deliveries.update_one(
            {"_id": delivery_id, "status": "pending"},
            {"$set": {"next_attempt_ms": epoch_ms(until)}},
        )

    async def release(self, delivery_ids: Collection[str], lease: str, now: datetime) -> None:
        """Make deliveries leased under ``lease`` and not yet attempted due at ``now``, for
        whichever worker claims first (this one, restarted, or another)."""
        if delivery_ids:
            await self.deliveries.update_many(
                {
                    "_id": {"$in": list(delivery_ids)},
                    "lease": {"$eq": lease},
                    "attempt_count": {"$eq": 0},
                },
                {"$set": {"next_attempt_ms": epoch_ms(now)}},
            )

    async def record_attempts(self, records: Sequence[AttemptRecord]) -> None:
        """Log attempts on their deliveries and bring those up to date, one round trip for
        them all. The log maps each attempt's number to it (``$set`` of one key, where the
        embedded store would keep a ``$push``ed document as text). A delivery takes an
        attempt only if it has fewer: one recorded before a crash is not counted twice.

        Each attempt once had a document of its own: a second write of every attempt,
        though a delivery makes few, no more than its retry schedule has steps unless
        replayed by hand."""
        if not records:
            return
        await self.deliveries.bulk_write(
            [
                UpdateOne(
                    {"_id": r.delivery_id, "attempt_count": {"$lt": r.number}},
                    {
                        "$set": {
                            "attempt_count": r.number,
                            "last_attempt": r.attempt,
                            f"attempts.{r.number}": {"number": r.number, **r.attempt},
                            **r.changes,
                        }
                    },
                )
                for r in records
            ],
            ordered=False,
        )

    async def replay(self, delivery_id: str, now: datetime) -> Document | None:
        """Make a finished delivery pending again, its schedule starting over; None if it
        does not exist or is still pending."""
        delivery = await self.deliveries.find_one({"_id": delivery_id})
        if delivery is None or delivery["status"] == "pending":
            return None
        return await self.deliveries.find_one_and_update(
            {"_id": delivery_id, "status": delivery["status"]},
            {
                "$set": {
                    "status": "pending",
                    "round_start": delivery["attempt_count"],
                    "round_started_ms": None,  # set by the new round's first attempt
                    "last_try": False,
                    "next_attempt_ms": epoch_ms(now),
                }
            },
            return_document=ReturnDocument.AFTER,
        )

    async def list_attempts(self, delivery_id: str) -> list[Document] | None:
        """A delivery's attempts, oldest first; None if there is no such delivery."""
        delivery = await self.deliveries.find_one({"_id": delivery_id}, {"attempts": 1})
        if delivery is None:
            return None
        # $eq: the embedded store scans the whole collection for a bare value.
        legacy = self.legacy_attempts.find(
            {"delivery_id": {"$eq": delivery_id}}, {"_id": 0, "delivery_id": 0}
        )
        attempts = {a["number"]: a async for a in legacy}
        attempts.update((a["number"], a) for a in (delivery.get("attempts") or {}).values())
        return [attempts[number] for number in sorted(attempts)]

    async def list_deliveries(self, filters: dict[str, Any], limit: int) -> list[Document]:
        """Deliveries without their attempts (``list_attempts`` has those)."""
        cursor = (
            self.deliveries.find(filters, {"attempts": 0})
            .sort("created_ms", ASCENDING)
            .limit(limit)
        )
        return await cursor.to_list(length=limit)
