"""The outbox against the real embedded store: what the relay is handed to publish.

Entries a process stores are handed to its relay in memory; the store is read when it
may hold pending entries the hand-over lacks. Whatever the path, every pending entry is
handed out, once per publication, in the order it was stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel
from pymongo import AsyncMongoClient

from shared.embedded import EmbeddedStack
from shared.events import CloudEvent
from shared.mongo import Document
from shared.outbox import Outbox

TOPIC = "switchboard.test.v1"


class Note(BaseModel):
    text: str


def note(event_id: str) -> tuple[str, str, CloudEvent[Note]]:
    event = CloudEvent[Note](id=event_id, source="test", type="test.note", data=Note(text=event_id))
    return TOPIC, "key", event


@pytest.fixture
async def client(stack: EmbeddedStack) -> AsyncIterator[AsyncMongoClient[Document]]:
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(stack.mongo_url)
    yield mongo
    await mongo.close()


async def publish_all(outbox: Outbox) -> list[str]:
    """Take batches as a relay would, marking each published, until none is left."""
    ids: list[str] = []
    while batch := await outbox.next_batch(limit=7):
        ids += [entry["_id"] for entry in batch]
        await outbox.mark_published([entry["_id"] for entry in batch])
    return ids


async def test_entries_come_out_once_in_stored_order(
    client: AsyncMongoClient[Document], namespace: str
) -> None:
    outbox = Outbox(client[namespace])
    await outbox.ensure_indexes()

    await outbox.add([note("a"), note("b")])
    first = await publish_all(outbox)  # the first read goes to the store
    await outbox.add([note("c")])
    await outbox.add([note("a"), note("d")])  # "a" again: stored once, already sent
    await outbox.add([note(f"e{n}") for n in range(10)])
    later = await publish_all(outbox)

    assert first == ["a", "b"]
    assert later == ["c", "d"] + [f"e{n}" for n in range(10)]
    assert await client[namespace]["outbox"].count_documents({"pending": {"$eq": True}}) == 0


async def test_entries_stored_while_the_store_is_read_are_handed_out_once(
    client: AsyncMongoClient[Document], namespace: str
) -> None:
    outbox = Outbox(client[namespace])
    await outbox.ensure_indexes()
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
    outbox = Outbox(client[namespace], store_read_every_s=0.3)
    await outbox.ensure_indexes()
    assert await publish_all(outbox) == []  # start: the store read finds nothing

    await Outbox(client[namespace]).add([note("left-by-a-replica-that-died")])
    handed_out: list[str] = []
    for n in range(8):  # busy: something of its own to publish every 0.1 s
        await outbox.add([note(f"own{n}")])
        handed_out += await publish_all(outbox)
        await asyncio.sleep(0.1)

    assert handed_out.count("left-by-a-replica-that-died") == 1
    assert [i for i in handed_out if i.startswith("own")] == [f"own{n}" for n in range(8)]


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
    assert [(doc["_id"], doc["external_id"], doc["pending"]) for doc in stored] == [
        ("a", "1", False),
        ("b", "2", False),
        ("d", "3", False),
    ]
