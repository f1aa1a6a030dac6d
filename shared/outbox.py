"""The transactional outbox every service publishes through.

A service stores the events it owes in its own database, next to the effect that
caused them, and a relay publishes them to Kafka in the order they were stored.
A broker outage delays events but loses none; a crash before publishing is
healed by the relay on restart. An entry's id is its event's id, so storing the
same event twice (a redelivered input recomputed) keeps one entry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from bson import Binary, ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from shared.events import CloudEvent, encode, utcnow
from shared.kafka import create_producer, ensure_topics
from shared.logging import get_logger
from shared.metrics import ServiceMetrics
from shared.mongo import Document, only_duplicates
from shared.settings import KafkaSettings

log = get_logger(__name__)


class Outbox:
    """Stored events waiting for the relay; the only code that touches ``outbox``."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.collection = db["outbox"]
        self.wakeup = asyncio.Event()

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("pending", ASCENDING), ("seq", ASCENDING)])

    async def add(self, entries: Sequence[tuple[str, str, CloudEvent[Any]]]) -> None:
        """Store ``(topic, key, event)`` entries; ones already stored are left as they are."""
        if not entries:
            return
        docs = [_entry(topic, key, event) for topic, key, event in entries]
        try:
            await self.collection.insert_many(docs, ordered=False)
        except BulkWriteError as error:
            if not only_duplicates(error):
                raise
        self.wakeup.set()

    async def pending(self, limit: int) -> list[Document]:
        cursor = self.collection.find({"pending": True}).sort("seq", ASCENDING).limit(limit)
        return await cursor.to_list(length=limit)

    async def mark_published(self, ids: Sequence[str]) -> None:
        await self.collection.update_many(
            {"_id": {"$in": list(ids)}},
            {"$set": {"pending": False, "published_at": utcnow()}},
        )

    async def forget(self, key: str) -> int:
        """Delete every entry stored under a Kafka key (erasure of one customer's events);
        returns how many. Pending ones go too: an erased person's events stay unsent."""
        deleted = await self.collection.delete_many({"key_text": key})
        return deleted.deleted_count

    async def find(self, event_id: str) -> Document | None:
        # No projection: the embedded store returns dates as strings under one.
        return await self.collection.find_one({"_id": event_id})


def _entry(topic: str, key: str, event: CloudEvent[Any]) -> Document:
    record = encode(event, key)
    return {
        "_id": event.id,
        "seq": ObjectId(),
        "pending": True,
        "topic": topic,
        "key": Binary(record.key),
        "key_text": key,  # binary fields do not match equality queries on the embedded store
        "value": Binary(record.value),
        "headers": [[name, Binary(value)] for name, value in record.headers],
        "stored_at": utcnow(),
    }


class OutboxRelay:
    """Publishes pending outbox entries in stored order, then marks them published."""

    def __init__(
        self,
        outbox: Outbox,
        settings: KafkaSettings,
        metrics: ServiceMetrics,
        poll_interval_s: float = 0.5,
        batch: int = 500,
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self._producer: AIOKafkaProducer | None = None

    async def run(self) -> None:
        delay = 0.2
        try:
            while True:
                try:
                    published = await self.publish_pending()
                    delay = 0.2
                except (KafkaError, PyMongoError, OSError) as exc:
                    log.warning("outbox relay failed, retrying", error=repr(exc), retry_in=delay)
                    await self._drop_producer()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if published < self.batch:
                    await self._wait_for_work()
        finally:
            await self._drop_producer()

    async def publish_pending(self) -> int:
        """Publish one batch of pending entries; returns how many were published."""
        entries = await self.outbox.pending(self.batch)
        # The backlog as the relay sees it: exact below a full batch, a lower bound at one.
        # (Counting every pending entry is a scan on the embedded store: too dear per batch.)
        self.metrics.outbox_backlog.set(len(entries))
        if not entries:
            return 0
        if self._producer is None:
            # First connection, or again after a failure: the broker may have lost its
            # topics (a restart of an in-memory broker). Create them with the configured
            # partitions before the producer's first send would auto-create them with
            # others, which would leave keys pointing at partitions that do not exist.
            await ensure_topics(self.settings, {entry["topic"] for entry in entries})
        producer = await self._connected_producer()
        deliveries = [
            await producer.send(
                entry["topic"],
                value=bytes(entry["value"]),
                key=bytes(entry["key"]),
                headers=[(name, bytes(value)) for name, value in entry["headers"]],
            )
            for entry in entries
        ]
        await asyncio.gather(*deliveries)
        await self.outbox.mark_published([entry["_id"] for entry in entries])
        now = utcnow()
        for entry in entries:
            self.metrics.events_out.labels(topic=entry["topic"]).inc()
            if isinstance(entry.get("stored_at"), datetime):
                self.metrics.publish_lag_seconds.observe((now - entry["stored_at"]).total_seconds())
        return len(entries)

    async def _wait_for_work(self) -> None:
        self.outbox.wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.outbox.wakeup.wait(), timeout=self.poll_interval_s)

    async def _connected_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = create_producer(self.settings)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
