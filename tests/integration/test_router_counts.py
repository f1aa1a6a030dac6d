"""The router's queue statistics and agents' loads, counted by the store in grouped
queries: checked against the same figures counted item by item."""

from __future__ import annotations

import collections
import random
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient

from services.router.repository import HOLDING, PRIORITIES, WAITING, QueueCounts, RouterRepository
from shared.mongo import Document, epoch_ms

STATES = ("queued", "offered", "accepted", "resolved")
QUEUES = ("general", "priority", "spanish")
AGENTS = ("ana", "ben", "cho")
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
async def repository(client: AsyncMongoClient[Document], namespace: str) -> RouterRepository:
    repository = RouterRepository(client[f"{namespace}_router"])
    await repository.ensure_indexes()
    return repository


def random_items(count: int, seed: int = 7) -> list[Document]:
    rng = random.Random(seed)
    items = []
    for n in range(count):
        state = rng.choice(STATES)
        enqueued = START + timedelta(seconds=rng.randint(0, 3_600))
        items.append(
            {
                "_id": f"item-{n}",
                "state": state,
                "queue": rng.choice(QUEUES),
                "priority": rng.choice(PRIORITIES),
                "agent_id": rng.choice(AGENTS) if state in HOLDING else None,
                "enqueued_at": enqueued,
                "enqueued_ms": epoch_ms(enqueued),
                "sla_breached_ms": rng.choice([None, epoch_ms(enqueued) + 60_000]),
                "text": "where is my parcel",
            }
        )
    return items


def counted_one_by_one(items: list[Document]) -> dict[str, QueueCounts]:
    counts: dict[str, QueueCounts] = collections.defaultdict(QueueCounts)
    for item in items:
        if item["state"] not in WAITING:
            continue
        queue = counts[item["queue"]]
        if item["state"] == "offered":
            queue.offered += 1
        else:
            queue.waiting[item["priority"]] += 1
        queue.sla_breached += item["sla_breached_ms"] is not None
        queue.note_enqueued(item["enqueued_ms"])
    return counts


async def test_queue_counts_are_the_waiting_items_counted_one_by_one(
    repository: RouterRepository,
) -> None:
    items = random_items(400)
    await repository.items.insert_many(items)

    counts = await repository.queue_counts()

    expected = counted_one_by_one(items)
    assert {name: asdict(queue) for name, queue in counts.items()} == {
        name: asdict(queue) for name, queue in expected.items()
    }
    assert sum(queue.offered for queue in counts.values()) > 0
    assert sum(queue.sla_breached for queue in counts.values()) > 0


async def test_an_item_stored_without_enqueued_ms_is_given_it_and_counted(
    repository: RouterRepository,
) -> None:
    items = random_items(40)
    earliest = START - timedelta(hours=2)
    older = {**items[0], "_id": "stored-before", "state": "queued", "enqueued_at": earliest}
    del older["enqueued_ms"]
    await repository.items.insert_many([*items, older])

    await repository.note_enqueued_ms()
    counts = await repository.queue_counts()

    stored = await repository.items.find_one({"_id": "stored-before"})
    assert stored is not None
    assert stored["enqueued_ms"] == epoch_ms(earliest)
    assert counts[older["queue"]].oldest_enqueued_ms == epoch_ms(earliest)


async def test_held_by_agent_counts_offered_and_accepted_items(
    repository: RouterRepository,
) -> None:
    items = random_items(300)
    await repository.items.insert_many(items)

    held = await repository.held_by_agent()

    expected = collections.Counter(i["agent_id"] for i in items if i["state"] in HOLDING)
    assert held == expected
    assert set(held) == set(AGENTS)
