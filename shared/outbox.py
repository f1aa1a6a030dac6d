"""The transactional outbox every service publishes through.

A service stores the events it owes in its own database, next to the effect that
caused them, and a relay publishes them to Kafka in the order they were stored.
A broker outage delays events but loses none; a crash before publishing is
healed by the relay on restart. An entry's id is its event's id, so storing the
same event twice (a redelivered input recomputed) keeps one entry.

A broker can also forget what it acknowledged (one that keeps its log in memory and
restarts, or a cluster restored from an old backup). The relay notices when offsets go
backwards, on a send or on a probe while idle, or is told (the service's consumers found
themselves past a partition's end), and publishes its recent window again; consumers
dedupe by event id, so the repeats change nothing downstream.

An entry the broker refuses for good (too large for it, a topic it will never take) would
hold up every entry after it for ever: it is moved aside instead, into
``<collection>_dead``, announced on the outbox dead-letter topic (where it was going and
why, not the entry itself, which would be refused again), and counts as published, so
that the relay goes on with the rest. Anything else that fails a send is retried.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import islice, takewhile
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from shared.events import CloudEvent, Model, derived_event_id, encode, utcnow
from shared.grouping import GroupWriter
from shared.kafka import (
    check_topic_name,
    end_offsets,
    ensure_topics,
    is_valid_topic_name,
    refused_for_good,
    started_producer,
)
from shared.logging import get_logger
from shared.metrics import ServiceMetrics
from shared.mongo import Document, as_utc, epoch_ms, insert_refusing_duplicates
from shared.settings import KafkaSettings

log = get_logger(__name__)

OutboxEntry = tuple[str, str, CloudEvent[Any]]  # topic, Kafka key, event

OUTBOX_DEAD = "io.switchboard.outbox.dead.v1"


class DeadEntry(Model):
    """An outbox entry the broker refused for good, moved aside: what it was and why it
    was refused, not its content (kept in the outbox's ``<collection>_dead``)."""

    outbox: str  # the collection it was stored in
    event_id: str
    event_type: str | None = None
    topic: str
    key: str
    size: int  # bytes of its key, value and headers
    reason: str
    dead_at: datetime


@dataclass
class Advance:
    """A writer's watermark moved on: its entries up to ``through`` are published."""

    writer: str
    epoch: int  # the writer's epoch when read; a replay since then voids the advance
    start: int  # the watermark as the relay last knew it
    through: int


@dataclass
class Batch:
    """Entries to publish, in stored order, and the watermarks publishing them moves."""

    entries: list[Document] = field(default_factory=list)
    advances: list[Advance] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)


class Outbox:
    """Stored events waiting for the relay; the only code that writes the outbox fields.

    An outbox is a collection, ``outbox`` unless named otherwise. A service whose records
    each owe one event may keep them as the entries themselves (ingest's interactions):
    the record and its event are then one document, stored atomically without a
    multi-document transaction, and one insert instead of two.

    What is published is kept as a watermark per writer, not as a mark on each entry
    (that mark was a second write of every entry, the dearest part of an outbox on the
    store). Each process writes as its own writer, numbering its entries 1, 2, 3... and
    storing one group of adds at a time, so that every number below one it has stored
    belongs to an add that has finished. After the broker acknowledged a batch, the
    relay moves the watermark with one small insert into ``<collection>_marks``: writer,
    epoch, from and through, and the time (batches sent close together share one). A
    writer's watermark is the highest mark of its current epoch (``tidy`` folds it into
    the writer's document in ``<collection>_writers`` now and then). The marks also say
    when an entry was published, and how far a replay must rewind: to the lowest
    ``from`` of the marks since its start. A replay sets the document's watermark and
    bumps the epoch, so that a mark in flight from before it counts for nothing.

    Entries stored before watermarks (with a ``pending`` field) are still published and
    marked one by one.
    """

    def __init__(
        self,
        db: AsyncDatabase[Document],
        store_read_every_s: float = 5.0,
        collection: str = "outbox",
        settle_s: float = 10.0,
        marks_kept_s: float = 86_400.0,
        retire_after_s: float = 3_600.0,
    ) -> None:
        self.collection = db[collection]
        self.writers = db[f"{collection}_writers"]
        self.marks = db[f"{collection}_marks"]
        self.dead = db[f"{collection}_dead"]  # entries the broker refused for good
        self.writer = str(ObjectId())  # this process, as a writer of this outbox
        # Another writer's entries are left to it while younger than this: it is likely
        # alive and publishing them. Older ones are its leftovers, published by any relay.
        self.settle_s = settle_s
        self.marks_kept_s = marks_kept_s
        # A writer not heard of for this long, with nothing pending, is no longer read.
        # Longer than any replay window: a replay rewinds only writers still read.
        self.retire_after_s = retire_after_s
        self.wakeup = asyncio.Event()
        # Entries this process stored, in the order it stored them, handed to the relay
        # in memory so that it need not read them back (reading pending entries is the
        # dearest query of a busy relay). The store stays the record: the relay reads it
        # instead whenever ``read_store`` says it may hold pending entries the hand-over
        # lacks (at start, after a failure or a replay), and at least every
        # ``store_read_every_s`` (leftovers of a replica that died, say).
        self.fresh: list[Document] = []
        self.read_store = True
        self.store_read_every_s = store_read_every_s
        self._last_store_read = 0.0
        # Bumped whenever the store may hold entries the hand-over lacks, so that a store
        # read that began before cannot clear ``read_store``.
        self._generation = 0
        self._next_n = 1
        self._finished = 0  # every add numbered up to this has finished, stored or failed
        self._registered = False
        self._epoch = 0  # this writer's epoch and watermark, as this process last knew
        self._through = 0
        # One insert at a time, so that numbers are stored in order; adds made while
        # one is stored go in the next one together.
        self._adds = GroupWriter[None, list[Document], set[int]](self._store_together)

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("writer", ASCENDING), ("n", ASCENDING)])
        await self.collection.create_index([("pending", ASCENDING), ("seq", ASCENDING)])
        await self.marks.create_index(
            [("writer", ASCENDING), ("epoch", ASCENDING), ("through", ASCENDING)]
        )
        await self.marks.create_index([("writer", ASCENDING), ("through", ASCENDING)])
        await self.marks.create_index([("at_ms", ASCENDING)])

    async def add(
        self, entries: Sequence[OutboxEntry], records: Sequence[Document] = ()
    ) -> set[str]:
        """Store ``(topic, key, event)`` entries, each with the fields of its record when
        ``records`` are given; returns the ids stored now. Ones already stored (by id, or
        by a unique index on the records' fields) are left as they are."""
        if not entries:
            return set()
        docs = [_entry(topic, key, event) for topic, key, event in entries]
        if records:
            for doc, record in zip(docs, records, strict=True):
                doc.update(record)
        refused = await self._adds.submit(None, docs)
        return {str(doc["_id"]) for n, doc in enumerate(docs) if n not in refused}

    async def _store_together(self, _: None, adds: list[list[Document]]) -> list[set[int]]:
        """Number and store the adds waiting, in one insert; for each, the positions of
        its entries refused as stored before."""
        docs = [doc for add in adds for doc in add]
        for doc in docs:
            doc["writer"], doc["n"] = self.writer, self._next_n
            self._next_n += 1
        try:
            if not self._registered:
                await self._register()
            refused = await insert_refusing_duplicates(self.collection, docs)
        except BaseException:
            self.need_store_read()  # some may be stored all the same
            raise
        finally:
            self._finished = self._next_n - 1
        if refused:  # stored before, perhaps still pending: look there
            self.read_store = True
        self.fresh += [doc for n, doc in enumerate(docs) if n not in refused]
        self.wakeup.set()
        outcomes, start = [], 0
        for add in adds:
            outcomes.append({n - start for n in refused if start <= n < start + len(add)})
            start += len(add)
        return outcomes

    async def _register(self) -> None:
        writer = {"_id": self.writer, "through": 0, "epoch": 0, "alive_ms": epoch_ms(utcnow())}
        with contextlib.suppress(DuplicateKeyError):  # stored by an attempt that timed out
            await self.writers.insert_one(writer)
        self._registered = True

    def need_store_read(self) -> None:
        """Have the next batch read the store: it may hold entries the hand-over lacks."""
        self.read_store = True
        self._generation += 1

    def store_read_due(self) -> bool:
        """Whether ``next_batch`` will read the store rather than take the hand-over."""
        if time.monotonic() - self._last_store_read > self.store_read_every_s:
            self.read_store = True
        return self.read_store

    async def next_batch(self, limit: int, read_store: bool | None = None) -> Batch:
        """The next entries to publish, in stored order: from the store when it may hold
        some the hand-over lacks, else those handed over. ``read_store``: what
        ``store_read_due`` answered the caller, if it asked."""
        if self.store_read_due() if read_store is None else read_store:
            return await self._read_store(limit)
        entries = self.fresh[:limit]
        del self.fresh[:limit]
        if not entries:
            return Batch()
        # Every own entry numbered below these was published: by an earlier hand-over, by
        # the last store read, or (an add that failed) is not passed before a store read.
        advance = Advance(self.writer, self._epoch, self._through, entries[-1]["n"])
        return Batch(entries, [advance])

    async def _read_store(self, limit: int) -> Batch:
        # All stored: this read, or the next, returns them. Adds still being stored are
        # numbered past ``finished``: this read leaves them to the hand-over.
        self.fresh.clear()
        generation, finished = self._generation, self._finished
        self._last_store_read = time.monotonic()
        settled_before = utcnow() - timedelta(seconds=self.settle_s)
        writers = await asyncio.gather(*map(self._as_moved, await self._writers_read()))
        lists = await asyncio.gather(
            *(self._pending_of(writer, limit, finished, settled_before) for writer in writers),
            self.pending(limit),  # entries stored before watermarks
        )
        entries = list(islice(heapq.merge(*lists, key=_stored_time), limit))
        taken = {entry["_id"] for entry in entries}
        # A full batch: there may be more. A failure while reading: look again.
        self.read_store = len(entries) == limit or self._generation != generation
        advances = []
        for writer, listed in zip(writers, lists, strict=False):
            if writer["_id"] == self.writer:
                self._epoch, self._through = writer["epoch"], writer["through"]
            mine = [entry for entry in listed if entry["_id"] in taken]
            if mine:
                start, through = writer["through"], mine[-1]["n"]
                advances.append(Advance(writer["_id"], writer["epoch"], start, through))
        return Batch(entries, advances)

    async def _writers_read(self) -> list[Document]:
        """The writers whose entries store reads, replays and ``tidy`` look at: all but
        the retired, and this process always."""
        writers = await self.writers.find({}).to_list(None)
        return [w for w in writers if w["_id"] == self.writer or not w.get("retired")]

    async def _as_moved(self, writer: Document) -> Document:
        """A writer's document with its watermark where its marks of this epoch moved it
        (the document itself is brought up to date only now and then, by ``tidy``)."""
        query = {
            "writer": {"$eq": writer["_id"]},
            "epoch": {"$eq": writer["epoch"]},
            "through": {"$gt": writer["through"]},
        }
        top = await self.marks.find_one(query, sort=[("through", DESCENDING)])
        return writer if top is None else {**writer, "through": top["through"], **_moved(top)}

    async def _pending_of(
        self, writer: Document, limit: int, finished: int, settled_before: datetime
    ) -> list[Document]:
        """A writer's entries past its watermark, in order. Own ones only up to
        ``finished``: later ones belong to an add still being stored (the hand-over
        brings them), and some numbered below them may not be visible yet. Another
        writer's only up to the first one still settling (it is most likely publishing
        them itself)."""
        query = _past_watermark(writer)
        if writer["_id"] == self.writer:
            query["n"]["$lte"] = finished
        cursor = self.collection.find(query).sort("n", ASCENDING).limit(limit)
        entries = await cursor.to_list(length=limit)
        if writer["_id"] == self.writer:
            return entries
        return list(takewhile(lambda entry: _stored_time(entry) < settled_before, entries))

    async def pending(self, limit: int) -> list[Document]:
        """Entries stored before watermarks that are still pending, in stored order."""
        # An explicit $eq, the same match in MongoDB: the embedded store reads a bare
        # ``{"pending": True}`` as "true or an array holding true", which cannot use the
        # (pending, seq) index and scans the whole outbox on every poll.
        query = {"pending": {"$eq": True}}
        cursor = self.collection.find(query).sort("seq", ASCENDING).limit(limit)
        return await cursor.to_list(length=limit)

    async def mark_published(self, batch: Batch, acked: Sequence[Acked] = ()) -> None:
        """Record a published batch: move its writers' watermarks on, and mark its
        entries stored before watermarks one by one. ``acked``: the offsets the broker
        has given the relay's sends so far, kept with the marks for a relay started
        later to tell whether the broker still has them."""
        now = utcnow()
        unnumbered = [entry["_id"] for entry in batch.entries if "writer" not in entry]
        if unnumbered:
            await self.collection.update_many(
                {"_id": {"$in": unnumbered}},
                # published_ms: numbers compare reliably in every store, dates not always.
                {"$set": {"pending": False, "published_at": now, "published_ms": epoch_ms(now)}},
            )
        for advance in batch.advances:
            await self._advance(advance, epoch_ms(now), acked)

    async def _advance(self, advance: Advance, at_ms: int, acked: Sequence[Acked]) -> None:
        """Move a watermark: one insert. A mark counts only while its epoch is the writer's:
        one made before a replay changes nothing after it."""
        await self.marks.insert_one(
            {
                "writer": advance.writer,
                "epoch": advance.epoch,
                "from": advance.start,
                "through": advance.through,
                "at_ms": at_ms,
                "acked": [list(offset) for offset in acked],
            }
        )
        if advance.writer == self.writer and advance.epoch == self._epoch:
            self._through = max(self._through, advance.through)

    async def acked_before(self) -> dict[TopicPartition, int]:
        """The highest offsets the broker gave this outbox's sends, as the latest marks
        kept them (any replica's: they are offsets of the same partitions)."""
        latest = self.marks.find({}, sort=[("at_ms", DESCENDING)], limit=RECALLED_MARKS)
        acked: dict[TopicPartition, int] = {}
        async for mark in latest:
            for topic, partition, offset in mark.get("acked", []):
                key = TopicPartition(topic, partition)
                acked[key] = max(offset, acked.get(key, -1))
        return acked

    async def republish_since(self, since: datetime) -> int:
        """Make entries published at or after ``since`` pending again; returns at most how
        many (a watermark is lowered by a span of numbers, some of them never stored)."""
        since_ms = epoch_ms(since)
        unnumbered = await self.collection.update_many(
            {"pending": False, "published_ms": {"$gte": since_ms}}, {"$set": {"pending": True}}
        )
        # A writer's watermark as it stood at ``since``, or below: the lowest any move
        # since then started from. Without moves since, it stands where it stood.
        started_from: dict[str, int] = {}
        async for mark in self.marks.find({"at_ms": {"$gte": since_ms}}):
            writer = mark["writer"]
            started_from[writer] = min(mark["from"], started_from.get(writer, mark["from"]))
        rewound = 0
        for writer in await self._writers_read():
            rewound += await self._rewind(writer, started_from)
        self.need_store_read()
        self.wakeup.set()
        return unnumbered.modified_count + rewound

    async def _rewind(self, writer: Document, started_from: dict[str, int]) -> int:
        """Lower a writer's watermark to where it stood at the replay's start, and bump
        its epoch; returns by how much. Retried on the epoch another replay just bumped."""
        while True:
            moved = await self._as_moved(writer)
            back_to = min(moved["through"], started_from.get(writer["_id"], moved["through"]))
            rewound = await self.writers.update_one(
                {"_id": writer["_id"], "epoch": writer["epoch"]},
                {"$set": {"through": back_to}, "$inc": {"epoch": 1}},
            )
            if rewound.modified_count:
                return int(moved["through"] - back_to)
            writer = await self.writers.find_one({"_id": writer["_id"]}) or writer

    async def published_at(self, entry: Document) -> datetime | None:
        """When an entry was first published; None while it is pending, once the marks
        that say when have been dropped (``marks_kept_s`` after it), or if it was moved
        aside, refused for good (never published, though its watermark moved past it)."""
        if await self.dead.find_one({"_id": entry["_id"]}, {"_id": 1}) is not None:
            return None
        if "writer" not in entry:
            published: datetime | None = entry.get("published_at")
            return published if entry.get("pending") is False else None
        writer = await self.writers.find_one({"_id": entry["writer"]})
        if writer is None or (await self._as_moved(writer))["through"] < entry["n"]:
            return None
        query = {"writer": {"$eq": entry["writer"]}, "through": {"$gte": entry["n"]}}
        mark = await self.marks.find_one(query, sort=[("through", ASCENDING)])
        return None if mark is None else datetime.fromtimestamp(mark["at_ms"] / 1000, UTC)

    async def tidy(self) -> None:
        """Housekeeping a relay runs now and then: keep this writer known as alive, retire
        writers long gone with nothing pending, drop marks past keeping."""
        now = utcnow()
        if self._registered:
            await self.writers.update_one(
                {"_id": self.writer}, {"$set": {"alive_ms": epoch_ms(now), "retired": False}}
            )
        gone_before = epoch_ms(now) - int(self.retire_after_s * 1000)
        for stored in await self._writers_read():
            writer = await self._as_moved(stored)
            if writer["through"] > stored["through"]:  # the marks kept are enough to read it
                await self.writers.update_one(
                    {
                        "_id": stored["_id"],
                        "epoch": stored["epoch"],
                        "through": {"$lt": writer["through"]},
                    },
                    {"$set": {"through": writer["through"], **_moved(writer)}},
                )
            if max(writer.get("alive_ms", 0), writer.get("moved_ms", 0)) < gone_before:
                await self._retire_if_drained(writer)
        kept_from = epoch_ms(now) - int(self.marks_kept_s * 1000)
        await self.marks.delete_many({"at_ms": {"$lt": kept_from}})

    async def _retire_if_drained(self, writer: Document) -> None:
        if await self.collection.find_one(_past_watermark(writer)) is None:
            await self.writers.update_one({"_id": writer["_id"]}, {"$set": {"retired": True}})

    async def forget(self, key: str) -> int:
        """Delete every entry stored under a Kafka key (erasure of one customer's events);
        returns how many. Pending ones go too: an erased person's events stay unsent."""
        self.fresh = [entry for entry in self.fresh if entry["key_text"] != key]
        deleted = await self.collection.delete_many({"key_text": key})
        await self.dead.delete_many({"entry.key_text": key})
        return deleted.deleted_count

    async def move_aside(self, entry: Document, reason: str) -> bool:
        """Keep an entry the broker refused for good in ``<collection>_dead``, with the
        reason and the time, before its watermark moves past it. Returns whether it is
        still to be announced: False when it was moved aside and announced before (sent
        again since, in a replay say)."""
        now = utcnow()
        dead = {"_id": entry["_id"], "entry": entry, "reason": reason, "dead_at": now}
        try:
            await self.dead.insert_one({**dead, "dead_ms": epoch_ms(now), "announced": False})
        except DuplicateKeyError:
            known = await self.dead.find_one({"_id": entry["_id"]})
            return known is None or not known.get("announced")
        return True

    async def announced(self, event_id: str) -> None:
        """Record that an entry moved aside is on the dead-letter topic."""
        await self.dead.update_one({"_id": event_id}, {"$set": {"announced": True}})

    async def stored_among(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these events the outbox holds (whatever became of them since)."""
        if not event_ids:  # an empty $in makes the embedded store scan the collection
            return set()
        cursor = self.collection.find({"_id": {"$in": list(event_ids)}}, {"_id": 1})
        return {str(doc["_id"]) async for doc in cursor}

    async def find(self, event_id: str) -> Document | None:
        # No projection: the embedded store returns dates as strings under one.
        return await self.collection.find_one({"_id": event_id})


def awaiting_in(coro: Any) -> list[str]:
    """Where a suspended coroutine waits: each coroutine down its chain of awaits."""
    where = []
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        frame = coro.cr_frame
        where.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        coro = coro.cr_await
    return where


def refusal_reason(refusal: KafkaError) -> str:
    """The class of a refusal and what it says (aiokafka's ``str`` repeats the class)."""
    detail = "; ".join(map(str, refusal.args)) or getattr(refusal, "description", "")
    return f"{type(refusal).__name__}: {detail}" if detail else type(refusal).__name__


async def await_delivery(delivery: asyncio.Future[RecordMetadata]) -> RecordMetadata:
    metadata: RecordMetadata = await delivery
    return metadata


def dead_entry(entry: Document, outbox: str, reason: str, service: str) -> CloudEvent[DeadEntry]:
    """The dead-letter event of an entry moved aside: what it was, never its value."""
    headers = entry_headers(entry)
    key, value = entry_key(entry), entry_value(entry)
    ce_type = dict(headers).get("ce_type")
    data = DeadEntry(
        outbox=outbox,
        event_id=str(entry["_id"]),
        event_type=ce_type.decode(errors="replace") if ce_type is not None else None,
        topic=str(entry["topic"]),
        key=key.decode(errors="replace"),
        size=len(key) + len(value) + sum(len(name) + len(raw) for name, raw in headers),
        reason=reason[:1000],
        dead_at=utcnow(),
    )
    return CloudEvent[DeadEntry](
        id=derived_event_id(str(entry["_id"]), OUTBOX_DEAD),
        source=f"/switchboard/{service}",
        type=OUTBOX_DEAD,
        subject=str(entry["_id"]),
        data=data,
    )


def joined(batches: Sequence[Batch]) -> Batch:
    """Batches published one after another, as one: each writer's advances made one, from
    the lowest start through the highest (each says all up to its ``through`` is out)."""
    advances: dict[tuple[str, int], Advance] = {}
    for advance in (advance for batch in batches for advance in batch.advances):
        key = (advance.writer, advance.epoch)
        if (known := advances.get(key)) is None:
            advances[key] = replace(advance)
        else:
            known.start, known.through = (
                min(known.start, advance.start),
                max(known.through, advance.through),
            )
    return Batch([entry for batch in batches for entry in batch.entries], list(advances.values()))


def _past_watermark(writer: Document) -> Document:
    """The query for a writer's entries past its watermark. ``$eq``, as in MongoDB: the
    embedded store reads every entry of the outbox for a bare value."""
    return {"writer": {"$eq": writer["_id"]}, "n": {"$gt": writer["through"]}}


def _moved(mark: Document) -> Document:
    """When a writer's watermark last moved, as far as ``mark`` shows."""
    return {"moved_ms": mark.get("moved_ms", mark.get("at_ms", 0))}


def _stored_time(entry: Document) -> datetime:
    return as_utc(entry["stored_at"])


def _entry(topic: str, key: str, event: CloudEvent[Any]) -> Document:
    record = encode(event, key)
    # Key and value as text, not binary: both are UTF-8 (a key is a str, a value its
    # event's JSON), and the embedded store takes a string for less than the base64 it
    # makes of binary (bench/HISTORY.md).
    return {
        "_id": event.id,
        "topic": topic,
        "key_text": key,
        "value_text": record.value.decode(),
        "headers": _pack_headers(record.headers),
        "stored_at": utcnow(),
    }


def entry_key(entry: Document) -> bytes:
    """An entry's Kafka key: its text, or the binary key entries stored before kept."""
    return bytes(entry["key"]) if "key" in entry else str(entry["key_text"]).encode()


def entry_value(entry: Document) -> bytes:
    """An entry's Kafka value: its text, or the binary value entries stored before kept."""
    return bytes(entry["value"]) if "value" in entry else str(entry["value_text"]).encode()


def _pack_headers(headers: Sequence[tuple[str, bytes]]) -> str:
    """Kafka headers as one JSON string. The embedded store handles one string far more
    cheaply than a list of binary values (bench/HISTORY.md). latin-1 maps each byte to
    one character and back, so any value survives."""
    return json.dumps([[name, value.decode("latin-1")] for name, value in headers])


def entry_headers(entry: Document) -> list[tuple[str, bytes]]:
    """An entry's Kafka headers: one JSON string, or pairs of name and bytes as entries
    stored before that were."""
    stored = entry.get("headers", [])
    if isinstance(stored, str):
        return [(name, value.encode("latin-1")) for name, value in json.loads(stored)]
    return [(name, bytes(value)) for name, value in stored]


Acked = tuple[str, int, int]  # topic, partition, the highest offset the broker gave a send
RECALLED_MARKS = 20  # the latest marks read for what the broker acknowledged before
PRODUCER_STOP_WAIT_S = 5.0  # a stop that hangs (aio-libs/aiokafka#1101) is given up on


class BrokerMemory:
    """What the broker told the relay about the partitions it writes to, to notice the
    broker forgetting: the offsets its sends were given, and where the partitions ended
    at the last probe. In a healthy broker both only grow."""

    def __init__(self) -> None:
        self.acked: dict[TopicPartition, int] = {}
        self.ends: dict[TopicPartition, int] = {}

    def acknowledged(self, sent: Sequence[RecordMetadata]) -> bool:
        """Record what a send was given; True if an offset came round again (data lost)."""
        forgot = any(self._at_or_before_acked(md) for md in sent)
        if forgot:
            self.forget()
        for md in sent:
            key = TopicPartition(md.topic, md.partition)
            self.acked[key] = max(md.offset, self.acked.get(key, -1))
        return forgot

    def probed(self, ends: dict[TopicPartition, int]) -> bool:
        """Record where the partitions end now; True if one ends before it did at the last
        probe (compared end to end: a broker may report a partition's end a little behind
        the offsets it has just acknowledged)."""
        forgot = any(key in self.ends and end < self.ends[key] for key, end in ends.items())
        if forgot:
            self.forget()
        self.ends.update(ends)
        return forgot

    def partitions(self) -> list[TopicPartition]:
        return sorted(self.acked.keys() | self.ends.keys())

    def as_acked(self) -> list[Acked]:
        return [(key.topic, key.partition, offset) for key, offset in sorted(self.acked.items())]

    def forget(self) -> None:
        self.acked.clear()
        self.ends.clear()

    def _at_or_before_acked(self, md: RecordMetadata) -> bool:
        offset: int = md.offset
        return offset <= self.acked.get(TopicPartition(md.topic, md.partition), -1)


class OutboxRelay:
    """Publishes pending outbox entries in stored order, then moves the watermarks on;
    when the broker has lost data, publishes the last ``replay_window_s`` again. An entry
    the broker refuses for good is moved aside (see ``_move_aside``)."""

    def __init__(
        self,
        outbox: Outbox,
        settings: KafkaSettings,
        metrics: ServiceMetrics,
        poll_interval_s: float = 0.5,
        batch: int = 500,
        replay_window_s: float = 600.0,
        probe_interval_s: float = 2.0,
        on_broker_lost: Callable[[], Awaitable[None]] | None = None,
        tidy_every_s: float = 60.0,
        mark_every_s: float = 0.2,
        acks_wait_s: float = 30.0,
        service: str = "switchboard",
    ) -> None:
        self.outbox = outbox
        self.service = service
        self.settings = settings
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self.replay_window_s = replay_window_s
        self.probe_interval_s = probe_interval_s
        self.tidy_every_s = tidy_every_s
        self._last_tidy = 0.0
        self.memory = BrokerMemory()
        self.on_broker_lost = on_broker_lost
        self.backlog = metrics.outbox_backlog.labels(outbox=outbox.collection.name)
        # When the oldest entry the relay holds unpublished was stored (None: it found
        # none pending): its age, read at each scrape, grows while the relay is stuck.
        self._oldest_unsent: datetime | None = None
        metrics.outbox_oldest_pending_seconds.labels(outbox=outbox.collection.name).set_function(
            self.oldest_pending_s
        )
        self._producer: AIOKafkaProducer | None = None
        self._last_probe = 0.0
        # A replay owed: why, and whether this relay saw the loss (then the service's
        # consumers must hear of it too). Kept until the replay is done, so that a store
        # failure midway retries it rather than forgetting the loss.
        self._replay_owed: tuple[str, bool] | None = None
        self._recalled = False  # whether what the marks kept of the broker was checked
        # Marking batches published runs while the next ones are sent: the two wait on
        # different servers. The batches sent meanwhile, and within ``mark_every_s`` of
        # the last mark, are marked together: one insert per writer instead of one per
        # batch (a crash before it sends them again; consumers dedupe). The marking is
        # awaited before a store read (else its entries would read as pending and go
        # out again) and a replay (which then reads every mark made, though one made
        # after it would count for nothing anyway: its epoch is past).
        self.mark_every_s = mark_every_s
        # aiokafka's producer can wait for ever on sends caught by a broker going away,
        # and so can its stop (aio-libs/aiokafka#1101): a relay stuck there published
        # nothing more, and noticed no loss. Past this wait (three of the producer's
        # request timeouts) the batch counts as not sent: the producer is dropped and the
        # batch goes out again from a new one (consumers dedupe).
        self.acks_wait_s = acks_wait_s
        self.turn_wait_s = 2 * acks_wait_s
        self._unmarked: list[Batch] = []
        self._marking: asyncio.Task[None] | None = None
        self._last_mark = 0.0

    async def run(self) -> None:
        delay = 0.2
        try:
            while True:
                try:
                    published = await self._turn_within_wait()
                    if published < self.batch and self._replay_owed is None:
                        await self._wait_for_work()
                        await self._probe_when_due()
                    delay = 0.2
                except (KafkaError, PyMongoError, OSError) as exc:
                    self.outbox.need_store_read()  # what it held may be unsent: read again
                    log.warning("outbox relay failed, retrying", error=repr(exc), retry_in=delay)
                    await self._drop_producer()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            with contextlib.suppress(TimeoutError):  # unmarked entries are sent again
                await asyncio.wait_for(self._marked(), timeout=2.0)
            await self._drop_producer()

    async def _turn(self) -> int:
        await self._recall_broker()
        await self._replay_if_owed()
        published = await self.publish_pending()
        await self._tidy_when_due()
        return published

    async def _turn_within_wait(self) -> int:
        """One turn, given up after ``turn_wait_s``: nothing the relay waits on (the
        broker, the store, aiokafka's producer) may hold it for ever, as a relay that
        waits for ever publishes nothing more and notices no loss. Where it waited is
        logged."""
        turn = asyncio.ensure_future(self._turn())
        done, _ = await asyncio.wait({turn}, timeout=self.turn_wait_s)
        if turn in done:
            return turn.result()
        where = awaiting_in(turn.get_coro())
        turn.cancel()
        turn.add_done_callback(lambda t: t.cancelled() or t.exception())  # seen, not raised
        await asyncio.wait({turn}, timeout=5.0)  # one that will not stop is left behind
        log.warning("outbox relay waited too long, starting over", waiting_in=where)
        raise TimeoutError(f"relay turn still waiting after {self.turn_wait_s}s")

    async def publish_pending(self) -> int:
        """Publish one batch of pending entries; returns how many were published (their
        mark may still be under way when it returns)."""
        read_store = self.outbox.store_read_due()
        if read_store:
            await self._marked()
        batch = await self.outbox.next_batch(self.batch, read_store)
        entries = batch.entries
        # The backlog as the relay sees it: exact below a full batch, a lower bound at one.
        # (Counting every pending entry is a scan on the embedded store: too dear per batch.)
        self.backlog.set(len(entries) + len(self.outbox.fresh))
        self._hold_unsent(entries)
        if not entries:
            return 0
        if self._producer is None:
            # First connection, or again after a failure or a lost connection: the broker
            # may have lost its topics (a restart of an in-memory broker). Create them all
            # before anything is sent (see ``kafka.create_producer``), those this service
            # consumes too: their commits are refused until they exist. (A name Kafka
            # does not allow is not created: its entries are moved aside.)
            topics = {entry["topic"] for entry in entries} | set(self.settings.topics.all())
            await ensure_topics(self.settings, sorted(filter(is_valid_topic_name, topics)))
        producer = await self._connected_producer()
        sent = await asyncio.wait_for(self._send(producer, entries), self.acks_wait_s)
        await self._mark_soon(batch)
        if self.memory.acknowledged([md for _, md in sent]):
            self._owe_replay("offsets went backwards on a send", seen_here=True)
        now = utcnow()
        published = [entry for entry, _ in sent]
        for topic, count in collections.Counter(entry["topic"] for entry in published).items():
            self.metrics.events_out.labels(topic=topic).inc(count)
        for entry in published:
            if isinstance(entry.get("stored_at"), datetime):
                self.metrics.publish_lag_seconds.observe((now - entry["stored_at"]).total_seconds())
        return len(entries)

    def oldest_pending_s(self) -> float:
        """Seconds since the oldest entry the relay holds unpublished was stored; 0 when
        it found none pending at its last look."""
        if self._oldest_unsent is None:
            return 0.0
        return max(0.0, (utcnow() - self._oldest_unsent).total_seconds())

    def _hold_unsent(self, entries: Sequence[Document]) -> None:
        """Note when the oldest of the entries about to be sent was stored (the same batch
        taken again after a failure keeps it)."""
        stored = (e["stored_at"] for e in entries if isinstance(e.get("stored_at"), datetime))
        self._oldest_unsent = min(map(as_utc, stored), default=None)

    async def _send(
        self, producer: AIOKafkaProducer, entries: Sequence[Document]
    ) -> list[tuple[Document, RecordMetadata]]:
        """Send the entries, in order, and wait for the broker; the entries published and
        what the broker gave each. One refused for good is sent again alone (a broker
        refuses a whole batch of records for one of them), and moved aside if it is
        refused again; any other failure fails the whole send, to be retried."""
        outcomes = await asyncio.gather(
            *[await self._delivery(producer, entry) for entry in entries], return_exceptions=True
        )
        failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if retried := next((exc for exc in failed if not refused_for_good(exc)), None):
            raise retried
        sent = [
            (entry, md)
            for entry, md in zip(entries, outcomes, strict=True)
            if not isinstance(md, BaseException)
        ]
        for entry, outcome in zip(entries, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                sent += await self._send_alone(producer, entry)
        return sent

    async def _send_alone(
        self, producer: AIOKafkaProducer, entry: Document
    ) -> list[tuple[Document, RecordMetadata]]:
        try:
            return [(entry, await await_delivery(await self._delivery(producer, entry)))]
        except KafkaError as exc:
            if not refused_for_good(exc):
                raise
            await self._move_aside(producer, entry, exc)
            return []

    @staticmethod
    async def _delivery(
        producer: AIOKafkaProducer, entry: Document
    ) -> asyncio.Future[RecordMetadata]:
        """The send of one entry under way; a refusal before sending (too large, a topic
        name Kafka does not allow) as a failed delivery, as the broker's would be."""
        try:
            check_topic_name(entry["topic"])
            delivery: asyncio.Future[RecordMetadata] = await producer.send(
                entry["topic"],
                value=entry_value(entry),
                key=entry_key(entry),
                headers=entry_headers(entry),
            )
        except KafkaError as exc:
            if not refused_for_good(exc):
                raise
            delivery = asyncio.get_running_loop().create_future()
            delivery.set_exception(exc)
        return delivery

    async def _move_aside(
        self, producer: AIOKafkaProducer, entry: Document, refusal: KafkaError
    ) -> None:
        """Take an entry the broker refused for good out of the way: kept in the outbox's
        ``_dead`` collection, announced on the dead-letter topic (acknowledged), counted
        and logged, all before its watermark moves past it (its batch is marked after)."""
        reason = refusal_reason(refusal)
        if not await self.outbox.move_aside(entry, reason):
            return  # moved aside and announced before
        dead = dead_entry(entry, self.outbox.collection.name, reason, self.service)
        record = encode(dead, entry_key(entry).decode(errors="replace"))
        topic = self.settings.topics.outbox_dead
        try:
            delivery = await producer.send(
                topic, record.value, key=record.key, headers=record.headers
            )
            await delivery
        except KafkaError as exc:
            if not refused_for_good(exc):
                raise  # announced at the retry: the entry is kept, not yet announced
            log.error("outbox dead letter refused too", topic=topic, error=repr(exc))
        await self.outbox.announced(entry["_id"])
        self.metrics.dead_letters.labels(
            source=self.outbox.collection.name, reason=type(refusal).__name__
        ).inc()
        log.error(
            "outbox entry refused for good: moved aside",
            outbox=self.outbox.collection.name,
            event_id=entry["_id"],
            topic=entry["topic"],
            size=dead.data.size,
            reason=reason[:500],
            dead_topic=topic,
        )

    async def _tidy_when_due(self) -> None:
        if time.monotonic() - self._last_tidy >= self.tidy_every_s:
            await self.outbox.tidy()
            self._last_tidy = time.monotonic()

    async def _probe_when_due(self) -> None:
        """While idle, ask the broker where the partitions we wrote to end: a broker that
        forgot them must be healed even if this service has nothing new to send."""
        partitions = self.memory.partitions()
        if not partitions or time.monotonic() - self._last_probe < self.probe_interval_s:
            return
        self._last_probe = time.monotonic()
        try:
            ends = await asyncio.wait_for(end_offsets(self.settings, partitions), 5.0)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.info("outbox probe failed", error=repr(exc))
            return
        if self.memory.probed(ends):
            self._owe_replay("a partition ends before it did", seen_here=True)

    def republish_window(self, why: str) -> None:
        """Publish the recent window again at the relay's next turn: the broker lost data,
        seen by something other than this relay (the service's consumers)."""
        self._owe_replay(why, seen_here=False)

    def _owe_replay(self, why: str, seen_here: bool) -> None:
        if self._replay_owed is not None:
            seen_here = seen_here or self._replay_owed[1]
        self._replay_owed = (why, seen_here)
        self.outbox.wakeup.set()

    async def _recall_broker(self) -> None:
        """Once, at start: does the broker still have what the outbox's sends were given
        before (as the marks kept it)? A broker restarted meanwhile along with this
        service has not, and nothing else would tell: this relay remembers nothing yet,
        and consumers with no committed offsets are never past an end."""
        if self._recalled:
            return
        acked = await self.outbox.acked_before()
        ends = (
            await asyncio.wait_for(end_offsets(self.settings, list(acked)), 10.0) if acked else {}
        )
        self._recalled = True
        self.memory.ends.update(ends)
        if any(ends[key] <= offset for key, offset in acked.items()):
            # Consumers start again from what the broker has: only the window is owed.
            self._owe_replay("the broker lost what was sent before this relay started", False)

    async def _replay_if_owed(self) -> None:
        owed, self._replay_owed = self._replay_owed, None
        if owed is None:
            return
        why, seen_here = owed
        try:
            await self._republish(why)
            if seen_here and self.on_broker_lost is not None:  # what it consumed was lost too
                await self.on_broker_lost()
        except BaseException:
            self._owe_replay(why, seen_here)  # not done: the next turn tries again
            raise

    async def _mark_soon(self, batch: Batch) -> None:
        if self._marking is not None and self._marking.done():
            await self._marked()  # to hear of a failure
        self._unmarked.append(batch)
        if self._marking is None:
            self._marking = asyncio.create_task(self._mark_unmarked())

    async def _mark_unmarked(self) -> None:
        await asyncio.sleep(self._last_mark + self.mark_every_s - time.monotonic())
        while self._unmarked:
            batches, self._unmarked = self._unmarked, []
            self._last_mark = time.monotonic()
            await self.outbox.mark_published(joined(batches), self.memory.as_acked())

    async def _marked(self) -> None:
        """Wait for the marking under way, if any. One that failed left its entries
        pending: the store is read next, and they go out again (consumers dedupe)."""
        marking, self._marking = self._marking, None
        if marking is None:
            return
        try:
            await marking
        except PyMongoError as exc:
            log.warning("marking events published failed; they go out again", error=repr(exc))
            self._unmarked.clear()
            self.outbox.need_store_read()

    async def _republish(self, why: str) -> None:
        await self._marked()
        since = utcnow() - timedelta(seconds=self.replay_window_s)
        count = await self.outbox.republish_since(since)
        log.warning("broker lost data: publishing the recent window again", why=why, events=count)
        self.memory.forget()  # offsets from here on are the new log's
        await self._drop_producer()  # reconnect, and recreate the topics first

    async def _wait_for_work(self) -> None:
        if self.outbox.fresh:  # handed over while the last batch was being published
            return
        self.outbox.wakeup.clear()
        # Quiet or not, the store is read every ``store_read_every_s`` (another replica's
        # leftovers, say): they are published only once settled, seconds after they were
        # stored, so reading it more often while idle would find nothing sooner.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.outbox.wakeup.wait(), timeout=self.poll_interval_s)

    async def _connected_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            self._producer = await started_producer(self.settings)
        return self._producer

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), PRODUCER_STOP_WAIT_S)
            except TimeoutError:
                log.warning("outbox producer did not stop in time; left behind")
            except Exception as exc:
                log.info("outbox producer stopped with an error", error=repr(exc))
