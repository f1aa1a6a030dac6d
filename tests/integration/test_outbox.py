"""The outbox against the real embedded store: what the relay is handed to publish.

Entries a process stores are handed to its relay in memory; the store is read when it
may hold pending entries the hand-over lacks. Whatever the path, every pending entry is
handed out, once per publication, in the order it was stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

from shared.embedded import EmbeddedStack
from shared.events import CloudEvent, utcnow
from shared.metrics import service_metrics
from shared.mongo import Document
from shared.outbox import Outbox, OutboxRelay, joined
from tests.support import eventually, kafka_settings, read_topic

TOPIC = "switchboard.test.v1"


class Note(BaseModel):
    text: str


def note(event_id: str) -> tuple[str, str, CloudEvent[Note]]:
    event = CloudEvent[Note](id=event_id, source="test", type="test.note", data=Note(text=event_id))
    return TOPIC, "key", event


@pytest.fixture
async def outbox(client: AsyncMongoClient[Document], namespace: str) -> Outbox:
    """The outbox of one process, as a service starts it."""
    outbox = Outbox(client[namespace])
    await outbox.ensure_indexes()
    return outbox


async def publish_all(outbox: Outbox) -> list[str]:
    """Take batches as a relay would, marking each published, until none is left."""
    ids: list[str] = []
    while batch := await outbox.next_batch(limit=7):
        ids += [entry["_id"] for entry in batch.entries]
        await outbox.mark_published(batch)
    return ids


async def pending_in_store(outbox: Outbox) -> list[str]:
    """What a store read would hand out now."""
    batch = await outbox.next_batch(limit=1_000, read_store=True)
    return [entry["_id"] for entry in batch.entries]


async def test_entries_come_out_once_in_stored_order(outbox: Outbox) -> None:
    await outbox.add([note("a"), note("b")])
    first = await publish_all(outbox)  # the first read goes to the store
    await outbox.add([note("c")])
    await outbox.add([note("a"), note("d")])  # "a" again: stored once, already sent
    await outbox.add([note(f"e{n}") for n in range(10)])
    later = await publish_all(outbox)

    assert first == ["a", "b"]
    assert later == ["c", "d"] + [f"e{n}" for n in range(10)]
    assert await pending_in_store(outbox) == []


async def test_entries_stored_while_the_store_is_read_are_handed_out_once(outbox: Outbox) -> None:
    stored = [f"n{n:03}" for n in range(120)]

    async def store_in_small_batches() -> None:
        for start in range(0, len(stored), 3):
            await outbox.add([note(i) for i in stored[start : start + 3]])

    async def relay_meanwhile() -> list[str]:
        ids: list[str] = []
        while len(ids) < len(stored):
            outbox.read_store = len(ids) % 2 == 0  # alternate store reads and hand-overs
            ids += await publish_all(outbox)
            await asyncio.sleep(0)
        return ids

    _, handed_out = await asyncio.gather(store_in_small_batches(), relay_meanwhile())

    assert handed_out == stored


async def test_entries_another_replica_left_pending_are_published_while_busy(
    client: AsyncMongoClient[Document], namespace: str
) -> None:
    outbox = Outbox(client[namespace], store_read_every_s=0.3, settle_s=0.3)
    await outbox.ensure_indexes()
    assert await publish_all(outbox) == []  # start: the store read finds nothing

    await Outbox(client[namespace]).add([note("left-by-a-replica-that-died")])
    assert await pending_in_store(outbox) == []  # settling: its writer may publish it
    handed_out: list[str] = []
    for n in range(10):  # busy: something of its own to publish every 0.1 s
        await outbox.add([note(f"own{n}")])
        handed_out += await publish_all(outbox)
        await asyncio.sleep(0.1)

    assert handed_out.count("left-by-a-replica-that-died") == 1
    assert [i for i in handed_out if i.startswith("own")] == [f"own{n}" for n in range(10)]


async def test_entries_that_are_records_are_deduped_by_the_records_unique_fields(
    client: AsyncMongoClient[Document], namespace: str
) -> None:
    """An outbox in a collection of records (ingest's interactions): a record repeating
    a unique field of a stored one stores nothing, and its event is not published."""
    records = client[namespace]["records"]
    await records.create_index("external_id", unique=True)
    outbox = Outbox(client[namespace], collection="records")
    await outbox.ensure_indexes()

    first = await outbox.add([note("a"), note("b")], [{"external_id": "1"}, {"external_id": "2"}])
    again = await outbox.add([note("c"), note("d")], [{"external_id": "1"}, {"external_id": "3"}])
    published = await publish_all(outbox)
    stored = await records.find({}).sort("external_id").to_list(None)

    assert (first, again) == ({"a", "b"}, {"d"})
    assert published == ["a", "b", "d"]
    assert [(doc["_id"], doc["external_id"]) for doc in stored] == [
        ("a", "1"),
        ("b", "2"),
        ("d", "3"),
    ]
    assert await pending_in_store(outbox) == []


async def test_concurrent_adds_are_stored_together_and_handed_out_in_their_order(
    client: AsyncMongoClient[Document], namespace: str, outbox: Outbox
) -> None:
    ids = [f"c{n:02}" for n in range(40)]

    stored = await asyncio.gather(*(outbox.add([note(i)]) for i in ids))
    entries = await client[namespace]["outbox"].find({}).sort("n").to_list(None)

    assert stored == [{i} for i in ids]
    assert [entry["_id"] for entry in entries] == ids  # numbered in the order added
    assert await publish_all(outbox) == ids
    assert await pending_in_store(outbox) == []


async def test_a_replay_publishes_again_exactly_what_was_published_since(outbox: Outbox) -> None:
    """Entries published before the replay's start stay published; entries published
    after it go out again, including a backlog stored before it and published after."""
    await outbox.add([note("early"), note("also-early")])
    await publish_all(outbox)
    await outbox.add([note("backlog")])  # stored now, published after the start
    await asyncio.sleep(0.05)
    since = utcnow()
    await asyncio.sleep(0.05)
    await publish_all(outbox)
    await outbox.add([note("late")])
    await publish_all(outbox)

    rewound = await outbox.republish_since(since)

    assert rewound == 2
    assert await publish_all(outbox) == ["backlog", "late"]
    assert await pending_in_store(outbox) == []


async def test_a_replay_voids_a_move_of_the_watermark_in_flight(outbox: Outbox) -> None:
    await outbox.add([note("a")])
    await publish_all(outbox)
    await outbox.add([note("b"), note("c")])
    batch = await outbox.next_batch(limit=7)  # handed over; the broker acknowledges it...

    await outbox.republish_since(utcnow() - timedelta(minutes=10))  # ...then loses it all
    await outbox.mark_published(batch)  # the move, from before the replay, changes nothing

    assert [entry["_id"] for entry in batch.entries] == ["b", "c"]
    assert await publish_all(outbox) == ["a", "b", "c"]


async def test_batches_marked_together_move_the_watermark_as_each_would(outbox: Outbox) -> None:
    """A relay marks the batches it sent while its last mark was made in one insert."""
    await publish_all(outbox)  # the first read goes to the store: from here, the hand-over
    await outbox.add([note(f"n{n:02}") for n in range(20)])
    batches = []
    while batch := await outbox.next_batch(limit=7):
        batches.append(batch)
    since = utcnow() - timedelta(minutes=1)

    await outbox.mark_published(joined(batches))

    assert [len(batch) for batch in batches] == [7, 7, 6]
    assert await outbox.marks.count_documents({}) == 1
    assert await pending_in_store(outbox) == []
    entry = await outbox.find("n19")
    assert entry is not None
    assert await outbox.published_at(entry) is not None
    # A replay rewinds to where the first of them began.
    assert await outbox.republish_since(since) == 20
    assert await publish_all(outbox) == [f"n{n:02}" for n in range(20)]


async def test_a_failure_during_a_store_read_keeps_the_next_batch_on_the_store(
    outbox: Outbox,
) -> None:
    """Something that makes the store the record (a failed add, a failed send) while a
    store read runs: the read must not clear the flag, or the hand-over would follow."""
    await outbox.add([note("a")])

    reading = asyncio.create_task(outbox.next_batch(limit=7, read_store=True))
    await asyncio.sleep(0)  # the read has begun
    outbox.need_store_read()
    batch = await reading

    assert [entry["_id"] for entry in batch.entries] == ["a"]
    assert outbox.store_read_due()


async def test_an_entry_says_when_it_was_published(outbox: Outbox) -> None:
    await outbox.add([note("a"), note("b")])
    before = utcnow()
    pending = await outbox.find("a")
    assert pending is not None
    assert await outbox.published_at(pending) is None

    await publish_all(outbox)
    after = utcnow()
    entries = [await outbox.find(i) for i in ("a", "b")]
    times = [await outbox.published_at(entry) for entry in entries if entry is not None]

    assert len(times) == 2
    assert all(t is not None and before - timedelta(milliseconds=1) <= t <= after for t in times)


async def test_tidy_folds_watermarks_in_and_retires_writers_long_gone(
    client: AsyncMongoClient[Document], namespace: str
) -> None:
    db = client[namespace]
    drained, left_something = Outbox(db), Outbox(db)
    await drained.ensure_indexes()
    await drained.add([note("a"), note("b")])
    await publish_all(drained)
    await left_something.add([note("c")])
    await asyncio.sleep(0.05)  # both processes gone since

    survivor = Outbox(db, settle_s=0.0, retire_after_s=0.01, marks_kept_s=0.01)
    await survivor.tidy()
    writers = {w["_id"]: w for w in await db["outbox_writers"].find({}).to_list(None)}

    assert (writers[drained.writer]["through"], writers[drained.writer]["retired"]) == (2, True)
    assert "retired" not in writers[left_something.writer]  # "c" is still to publish
    assert await db["outbox_marks"].count_documents({}) == 0  # past keeping
    assert await publish_all(survivor) == ["c"]
    assert await pending_in_store(survivor) == []


async def test_replicas_each_publish_their_own_entries_once_and_in_order(
    client: AsyncMongoClient[Document], namespace: str
) -> None:
    """Two processes writing one outbox, each with its relay: each hands out its own
    entries, all of them, once, in order; neither takes the other's while they settle."""
    replicas = [Outbox(client[namespace], store_read_every_s=0.05) for _ in range(2)]
    await replicas[0].ensure_indexes()
    ids = {r.writer: [f"{n}-{i:02}" for i in range(60)] for n, r in enumerate(replicas)}

    async def write_and_relay(outbox: Outbox) -> list[str]:
        mine, handed_out = ids[outbox.writer], []
        for start in range(0, len(mine), 4):
            await outbox.add([note(i) for i in mine[start : start + 4]])
            handed_out += await publish_all(outbox)
        return handed_out + await publish_all(outbox)

    handed_out = await asyncio.gather(*(write_and_relay(r) for r in replicas))

    assert handed_out == [ids[r.writer] for r in replicas]
    assert [await pending_in_store(r) for r in replicas] == [[], []]


async def test_a_replay_rewinds_every_writer(
    client: AsyncMongoClient[Document], namespace: str
) -> None:
    first, second = Outbox(client[namespace]), Outbox(client[namespace])
    await first.ensure_indexes()
    since = utcnow()
    await first.add([note("a1"), note("a2")])
    await second.add([note("b1")])
    await publish_all(first)
    await publish_all(second)

    await first.republish_since(since)  # the broker lost what both published
    second.need_store_read()  # as its relay would, told by its own consumers or probe

    assert await publish_all(first) == ["a1", "a2"]
    assert await publish_all(second) == ["b1"]


async def test_a_busy_relay_marks_the_batches_it_sent_meanwhile_together(
    outbox: Outbox, stack: EmbeddedStack, namespace: str
) -> None:
    settings = kafka_settings(stack.bootstrap_servers, namespace)
    relay = OutboxRelay(outbox, settings, service_metrics("marks"), batch=5, mark_every_s=0.5)

    async def started() -> bool:
        return not outbox.store_read_due()  # its first store read is done: it is handed over

    async def all_marked() -> bool:
        top = await outbox.marks.find_one(sort=[("through", -1)])
        return top is not None and top["through"] == 50  # the writer numbers from 1

    running = asyncio.create_task(relay.run())
    try:
        await eventually(started)
        for n in range(10):
            await outbox.add([note(f"n{n}-{m}") for m in range(5)])
        events = await read_topic(settings, TOPIC, Note, expect=50)
        await eventually(all_marked)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running

    assert [event.id for _, event in events] == [f"n{n}-{m}" for n in range(10) for m in range(5)]
    assert await pending_in_store(outbox) == []
    # Ten adds of five, published as they came: one mark at once, the rest together.
    assert await outbox.marks.count_documents({}) < 10


async def test_a_loss_the_relay_saw_is_replayed_even_if_the_first_replay_fails(
    own_stack: EmbeddedStack, namespace: str
) -> None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(own_stack.mongo_url, tz_aware=True)
    outbox = Outbox(client[namespace])
    await outbox.ensure_indexes()
    settings = kafka_settings(own_stack.bootstrap_servers, namespace)
    relay = OutboxRelay(outbox, settings, service_metrics("replay"), probe_interval_s=0.2)
    replay = outbox.republish_since
    failures: list[str] = []

    async def fails_once(since: datetime) -> int:  # the store fails just then, once
        if not failures:
            failures.append("failed")
            raise AutoReconnect("store gone for a moment")
        return await replay(since)

    async with relay_running(relay):
        await outbox.add([note(f"before-{n}") for n in range(5)])
        assert len(await read_topic(settings, TOPIC, Note, expect=5)) == 5  # before the loss
        own_stack.stop_broker()
        own_stack.start_broker()  # empty: what was published is gone
        outbox.republish_since = fails_once  # type: ignore[method-assign]
        await outbox.add([note("after")])
        events = await read_topic(settings, TOPIC, Note, expect=6, timeout_s=60)
    await client.close()

    assert failures == ["failed"]
    assert {event.id for _, event in events} == {*(f"before-{n}" for n in range(5)), "after"}


async def test_a_relay_started_after_the_broker_lost_its_data_publishes_the_window_again(
    own_stack: EmbeddedStack, namespace: str
) -> None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(own_stack.mongo_url, tz_aware=True)
    outbox = Outbox(client[namespace])
    await outbox.ensure_indexes()
    settings = kafka_settings(own_stack.bootstrap_servers, namespace)

    async def marked() -> bool:
        return await outbox.marks.count_documents({}) > 0

    async with relay_running(OutboxRelay(outbox, settings, service_metrics("before"))):
        await outbox.add([note(f"before-{n}") for n in range(5)])
        assert len(await read_topic(settings, TOPIC, Note, expect=5)) == 5  # before the loss
        await eventually(marked)
    # The service and the broker both restart: the new relay has nothing new to send and
    # remembers nothing of the broker; consumers start over on an empty broker.
    own_stack.stop_broker()
    own_stack.start_broker()
    restarted = Outbox(client[namespace])
    async with relay_running(OutboxRelay(restarted, settings, service_metrics("after"))):
        events = await read_topic(settings, TOPIC, Note, expect=5, timeout_s=60)
    await client.close()

    assert {event.id for _, event in events} == {f"before-{n}" for n in range(5)}


@contextlib.asynccontextmanager
async def relay_running(relay: OutboxRelay) -> AsyncIterator[None]:
    running = asyncio.create_task(relay.run())
    try:
        yield
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


class FirstProducerHangs(OutboxRelay):
    """A relay whose first producer is caught as aiokafka's can be by a broker going away
    (aio-libs/aiokafka#1101): its sends are never acknowledged nor failed, and its stop
    never returns. The producers after it are real."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hung: list[AIOKafkaProducer] = []

    async def _connected_producer(self) -> AIOKafkaProducer:
        producer = await super()._connected_producer()
        if not self.hung:
            self.hung.append(producer)
            producer.send = never_acknowledged
            producer.stop = never_returns
        return producer


async def never_acknowledged(*_: object, **__: object) -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


async def never_returns() -> None:
    await asyncio.Event().wait()


RelayT = TypeVar("RelayT", bound=OutboxRelay)


async def five_published_by(
    relay_class: type[RelayT], stack: EmbeddedStack, namespace: str, acks_wait_s: float
) -> tuple[RelayT, list[str]]:
    """Five entries added to an outbox of its own, as the topic shows them published by a
    relay of ``relay_class``."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(stack.mongo_url, tz_aware=True)
    outbox = Outbox(client[namespace])
    await outbox.ensure_indexes()
    settings = kafka_settings(stack.bootstrap_servers, namespace)
    relay = relay_class(outbox, settings, service_metrics(namespace), acks_wait_s=acks_wait_s)
    async with relay_running(relay):
        await outbox.add([note(f"n{n}") for n in range(5)])
        events = await read_topic(settings, TOPIC, Note, expect=5, timeout_s=60, settle_s=1.0)
    await client.close()
    return relay, [event.id for _, event in events]


async def test_a_send_the_broker_never_answers_is_given_up_and_sent_again(
    own_stack: EmbeddedStack, namespace: str
) -> None:
    relay, published = await five_published_by(FirstProducerHangs, own_stack, namespace, 1.0)

    assert len(relay.hung) == 1
    assert published == [f"n{n}" for n in range(5)]


class FirstTurnHangs(OutboxRelay):
    """A relay whose first publishing waits for ever, wherever that may happen."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hung = 0

    async def publish_pending(self) -> int:
        if not self.hung:
            self.hung += 1
            await asyncio.Event().wait()
        return await super().publish_pending()


async def test_a_relay_that_waits_too_long_anywhere_starts_over(
    own_stack: EmbeddedStack, namespace: str
) -> None:
    relay, published = await five_published_by(FirstTurnHangs, own_stack, namespace, 0.5)

    assert relay.hung == 1
    assert published == [f"n{n}" for n in range(5)]
