"""Router's collections: agents (with their free capacity), items (one per interaction)
and policies (every saved routing policy, by version).

Every change that two router replicas could race on is one conditional update, so
an agent never goes over capacity and an item is never offered twice.

Fields are matched with an explicit ``$eq`` (the same match in MongoDB): the embedded
store reads a bare value as "equal, or an array holding it", which no index answers, so
it would scan the items, which grow by one per interaction, on every timer tick.
"""

from __future__ import annotations

import collections
import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from pymongo import ASCENDING, DESCENDING, ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.events import utcnow
from shared.mongo import Document, as_utc, epoch_ms, insert_new
from shared.steplog import StepLog, once_each

# The most agents a decision step lists (and a batch of offers chooses among at once).
CANDIDATES_READ = 200
# Reservation tokens an agent keeps: enough that one stays while its writer reads it back.
RECENT_RESERVATIONS = 20
PRIORITIES = range(1, 6)  # a policy's priorities, most urgent first
WAITING = ("queued", "offered")  # an item waiting for an agent, or for an agent's answer
HOLDING = ("offered", "accepted")  # an item that takes a unit of its agent's capacity


class Tally(NamedTuple):
    """Items the store counted for one value of a field, and the least of another."""

    items: int
    least: Any = None


@dataclass
class QueueCounts:
    """One queue's waiting items, as the store counted them."""

    waiting: dict[int, int] = field(default_factory=lambda: dict.fromkeys(PRIORITIES, 0))
    offered: int = 0
    sla_breached: int = 0
    oldest_enqueued_ms: int | None = None

    def note_enqueued(self, enqueued_ms: int | None) -> None:
        if enqueued_ms is not None:
            oldest = self.oldest_enqueued_ms
            self.oldest_enqueued_ms = enqueued_ms if oldest is None else min(oldest, enqueued_ms)


class RouterRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.agents = db["agents"]
        self.items = db["items"]
        self.policies = db["policies"]
        self.decisions = StepLog(db["decision_buckets"], "item_id")
        self.single_decisions = db["decisions"]  # one document per item's steps, as kept before

    async def items_in(
        self,
        states: Sequence[str],
        match: Document | None = None,
        limit: int = 0,
        fields: Sequence[str] | None = None,
    ) -> list[Document]:
        """Items in any of ``states`` (and matching ``match``), whole or only ``fields``:
        one indexed query per state, as the embedded store scans the collection for
        ``$in`` and ``$or``."""
        found: list[Document] = []
        for state in states:
            cursor = self.items.find({"state": {"$eq": state}, **(match or {})}, fields)
            if limit:
                cursor = cursor.limit(limit - len(found))
            found += await cursor.to_list(length=None)
            if limit and len(found) >= limit:
                break
        return found

    async def ensure_indexes(self) -> None:
        await self.decisions.ensure_indexes()
        await self.single_decisions.create_index("item_id")
        await self.items.create_index(
            [("state", ASCENDING), ("priority", ASCENDING), ("enqueued_at", ASCENDING)]
        )
        # What the timers look for every tick among the offered and waiting items.
        await self.items.create_index([("state", ASCENDING), ("offer_expires_ms", ASCENDING)])
        await self.items.create_index([("state", ASCENDING), ("sla_due_ms", ASCENDING)])
        await self.items.create_index("owed_ms")
        await self.agents.create_index([("presence", ASCENDING), ("free", DESCENDING)])
        await self.note_enqueued_ms()

    async def note_enqueued_ms(self) -> None:
        """Give waiting items stored without ``enqueued_ms`` (before it was kept) theirs,
        so that the queue statistics' oldest wait counts them."""
        lacking = {"enqueued_ms": {"$exists": False}}
        items = await self.items_in(WAITING, lacking, fields=["enqueued_at"])
        if items:
            await self.items.bulk_write(
                [
                    UpdateOne({"_id": item["_id"]}, {"$set": {"enqueued_ms": enqueued_ms_of(item)}})
                    for item in items
                ],
                ordered=False,
            )

    async def insert_agent(self, agent: Document) -> None:
        await self.agents.insert_one(agent)

    async def find_agent(self, agent_id: str) -> Document | None:
        return await self.agents.find_one({"_id": agent_id})

    async def list_agents(self, limit: int) -> list[Document]:
        return await self.agents.find().sort("_id", ASCENDING).limit(limit).to_list(length=limit)

    async def update_agent(
        self, agent: Document, fields: Document, capacity: int | None
    ) -> Document | None:
        """Change an agent; a new capacity moves its free capacity by the difference.
        None if the agent's capacity changed since ``agent`` was read (read it again)."""
        update: Document = {"$set": dict(fields)}
        if capacity is not None:
            update["$set"]["capacity"] = capacity
            update["$inc"] = {"free": capacity - int(agent["capacity"])}
        return await self.agents.find_one_and_update(
            {"_id": agent["_id"], "capacity": agent["capacity"]},
            update,
            return_document=ReturnDocument.AFTER,
        )

    async def tally(self, match: Document, by: str, least: str | None = None) -> dict[Any, Tally]:
        """The items matching ``match``, counted per value of ``by`` (with the least value
        of ``least`` among them) by the store, which returns one row per value instead of
        the items: the statistics below read none of the thousands a busy desk has."""
        group: Document = {"_id": f"${by}", "items": {"$sum": 1}}
        if least is not None:
            group["least"] = {"$min": f"${least}"}
        cursor = await self.items.aggregate([{"$match": match}, {"$group": group}])
        return {row["_id"]: Tally(row["items"], row.get("least")) async for row in cursor}

    async def held_by_agent(self) -> collections.Counter[str]:
        """Items offered to or accepted by each agent: what its load should be."""
        held: collections.Counter[str] = collections.Counter()
        for state in HOLDING:
            for agent_id, tally in (
                await self.tally({"state": {"$eq": state}}, "agent_id")
            ).items():
                held[agent_id] += tally.items
        return held

    async def correct_load(self, agent: Document, load: int) -> bool:
        """Set the agent's load to ``load`` if nothing reserved or released meanwhile."""
        result = await self.agents.update_one(
            {"_id": agent["_id"], "load": agent["load"], "free": agent["free"]},
            {"$set": {"load": load, "free": int(agent["capacity"]) - load}},
        )
        return result.modified_count == 1

    async def set_away_if_online(self, agent_id: str) -> bool:
        result = await self.agents.update_one(
            {"_id": agent_id, "presence": "online"}, {"$set": {"presence": "away"}}
        )
        return result.modified_count == 1

    async def set_presence(self, agent_id: str, presence: str) -> Document | None:
        return await self.agents.find_one_and_update(
            {"_id": agent_id},
            {"$set": {"presence": presence}},
            return_document=ReturnDocument.AFTER,
        )

    async def record_step(self, step: Document) -> None:
        """Store a decision step once; recording it again changes nothing."""
        await self.record_steps([step])

    async def record_steps(self, steps: Sequence[Document]) -> None:
        """Store decision steps together, one document for the lot (``shared.steplog``)."""
        await self.decisions.record(steps)

    async def steps_for(self, item: Document) -> list[Document]:
        """Every step of a stored item once (a redelivery may have stored one again, alone
        or with others)."""
        item_id = item["_id"]
        single = self.single_decisions.find({"item_id": {"$eq": item_id}})
        return once_each(
            [
                *await self.decisions.steps_of(item_id, as_utc(item["enqueued_at"])),
                *[step async for doc in single for step in unbundled(doc)],
            ]
        )

    async def candidate_agents(self, limit: int = CANDIDATES_READ) -> list[Document]:
        return await self.agents.find().limit(limit).to_list(length=limit)

    async def latest_policy(self) -> Document | None:
        cursor = self.policies.find().sort("version", DESCENDING).limit(1)
        found = await cursor.to_list(length=1)
        return found[0] if found else None

    async def find_policy(self, version: int) -> Document | None:
        return await self.policies.find_one({"_id": version})

    async def insert_policy(self, policy: Document) -> bool:
        """False when another save took this version number first."""
        try:
            await self.policies.insert_one(policy)
        except DuplicateKeyError:
            return False
        return True

    async def reserve_agent(
        self, at: datetime, exclude: Sequence[str] = (), skills: Sequence[str] = ()
    ) -> Document | None:
        """Take one unit of capacity from the best online agent with every skill needed:
        most free capacity, then longest idle. One conditional update, so two replicas
        can never push an agent over capacity."""
        wanted: Document = {"presence": {"$eq": "online"}, "free": {"$gt": 0}}
        if exclude:
            wanted["_id"] = {"$nin": list(exclude)}
        if skills:  # never an empty $all: the embedded store would match nothing
            wanted["skills"] = {"$all": list(skills)}
        return await self.agents.find_one_and_update(
            wanted,
            {"$inc": {"free": -1, "load": 1}, "$set": {"last_offer_ms": epoch_ms(at)}},
            sort=[("free", DESCENDING), ("last_offer_ms", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )

    async def reserve_agents(self, units: dict[str, int], at: datetime) -> set[str]:
        """Take ``units[agent]`` units of capacity from each agent, one conditional update
        each, all in one write; returns the agents that were still online with that much
        free.

        Each update also leaves a token of this call among the agent's recent
        reservations, so that when some could not be made (an agent gone offline, another
        replica first) the agents read back tell which were. (One round trip per agent
        was the router's largest share of store commands.)
        """
        if not units:
            return set()
        token = uuid.uuid4().hex
        result = await self.agents.bulk_write(
            [
                UpdateOne(
                    {"_id": agent_id, "presence": "online", "free": {"$gte": count}},
                    {
                        "$inc": {"free": -count, "load": count},
                        "$set": {"last_offer_ms": epoch_ms(at)},
                        "$push": {
                            "reservations": {"$each": [token], "$slice": -RECENT_RESERVATIONS}
                        },
                    },
                )
                for agent_id, count in units.items()
            ],
            ordered=False,
        )
        if result.modified_count == len(units):
            return set(units)
        agents = self.agents.find({"_id": {"$in": list(units)}})
        return {agent["_id"] async for agent in agents if token in agent.get("reservations", [])}

    async def release_agent(self, agent_id: str) -> None:
        await self.agents.update_one({"_id": agent_id}, {"$inc": {"free": 1, "load": -1}})

    async def insert_items(self, items: Sequence[Document]) -> set[str]:
        """Store new items; returns the ids stored now (the others were stored before, by
        an earlier delivery of the same events)."""
        return await insert_new(self.items, items)

    async def find_item(self, item_id: str) -> Document | None:
        return await self.items.find_one({"_id": item_id})

    async def offer_item(
        self, item: Document, agent_id: str, at: datetime, expires_at: datetime, owed: Document
    ) -> Document | None:
        """Move a queued item to ``agent_id`` as its next offer, owing ``owed``; None if it
        is no longer queued as read (another replica offered it meanwhile)."""
        return await self.items.find_one_and_update(
            {"_id": item["_id"], "state": "queued", "offer": item["offer"]},
            owing(
                {
                    "state": "offered",
                    "agent_id": agent_id,
                    "offered_at": at,
                    "offer_expires_ms": epoch_ms(expires_at),
                    "offer": int(item["offer"]) + 1,
                },
                owed,
            ),
            return_document=ReturnDocument.AFTER,
        )

    async def transition(
        self, item_id: str, agent_id: str, state: str, changes: Document, owed: Document
    ) -> Document | None:
        """Change an item that is still in ``state`` with ``agent_id``, owing ``owed``;
        None if it moved on."""
        return await self.items.find_one_and_update(
            {"_id": item_id, "agent_id": agent_id, "state": state},
            owing(changes, owed),
            return_document=ReturnDocument.AFTER,
        )

    async def settle(self, items: Sequence[Document]) -> None:
        """Clear what ``items`` (as their owing change left them) owed, their events now
        being in the outbox; an item that owes more since keeps it all."""
        if items:
            await self.items.bulk_write(
                [
                    UpdateOne(
                        {"_id": item["_id"], "owed_token": item["owed_token"]},
                        {"$unset": {"owed": "", "owed_token": "", "owed_ms": ""}},
                    )
                    for item in items
                ],
                ordered=False,
            )

    async def owing_items(self, before: datetime, limit: int = 100) -> list[Document]:
        """Items whose owed events were not settled by ``before``: the router that made the
        change stopped before its events were in the outbox."""
        cursor = self.items.find({"owed_ms": {"$lte": epoch_ms(before)}}).limit(limit)
        return await cursor.to_list(length=limit)

    async def expired_offers(self, now: datetime, limit: int = 100) -> list[Document]:
        cursor = self.items.find(
            {"state": {"$eq": "offered"}, "offer_expires_ms": {"$lte": epoch_ms(now)}}
        ).limit(limit)
        return await cursor.to_list(length=limit)

    async def overdue_items(self, now: datetime, limit: int = 100) -> list[Document]:
        """Waiting items past their first-response target, not yet escalated."""
        overdue = {"sla_due_ms": {"$lte": epoch_ms(now)}, "sla_breached_ms": {"$eq": None}}
        return await self.items_in(("queued", "offered"), overdue, limit)

    async def mark_breached(
        self, item_id: str, now: datetime, escalation: Document, owed: Document
    ) -> Document | None:
        """Record the breach and its escalation once, owing ``owed``: None if it was
        already recorded (by this or another replica)."""
        return await self.items.find_one_and_update(
            {"_id": item_id, "sla_breached_ms": None},
            owing({"sla_breached_ms": epoch_ms(now), **escalation}, owed),
            return_document=ReturnDocument.AFTER,
        )

    async def any_free_agent(self) -> bool:
        free = {"presence": {"$eq": "online"}, "free": {"$gt": 0}}
        return await self.agents.find_one(free) is not None

    async def queue_counts(self) -> dict[str, QueueCounts]:
        """Per queue, the items waiting by priority, those offered, those past their SLA
        and the oldest: nine grouped counts, one indexed state (and priority) each, as the
        embedded store scans for ``$in``."""
        counts: defaultdict[str, QueueCounts] = defaultdict(QueueCounts)
        for state in WAITING:
            in_state = {"state": {"$eq": state}}
            for queue, tally in (await self.tally(in_state, "queue", "enqueued_ms")).items():
                counts[queue].note_enqueued(tally.least)
                if state == "offered":
                    counts[queue].offered = tally.items
            breached = {**in_state, "sla_breached_ms": {"$ne": None}}
            for queue, tally in (await self.tally(breached, "queue")).items():
                counts[queue].sla_breached += tally.items
        for priority in PRIORITIES:
            queued = {"state": {"$eq": "queued"}, "priority": {"$eq": priority}}
            for queue, tally in (await self.tally(queued, "queue")).items():
                counts[queue].waiting[priority] = tally.items
        return counts

    async def online_agents(self) -> list[Document]:
        return await self.agents.find({"presence": {"$eq": "online"}}).to_list(length=None)

    async def queued_items(self, limit: int, skip: int = 0) -> list[Document]:
        """Waiting items, most urgent first: priority, then age, then id (so that pages
        read one after another neither repeat nor miss an item)."""
        cursor = (
            self.items.find({"state": {"$eq": "queued"}})
            .sort([("priority", ASCENDING), ("enqueued_at", ASCENDING), ("_id", ASCENDING)])
            .skip(skip)
            .limit(limit)
        )
        return await cursor.to_list(length=limit)


def owing(changes: Document, owed: Document) -> Document:
    """An item's update that also records an event the change owes, in the same write: a
    router stopped before the event is in the outbox leaves it for the timers to add. The
    token tells the settling of this write from that of a later one."""
    token = {"owed_token": uuid.uuid4().hex, "owed_ms": epoch_ms(utcnow())}
    # As JSON text: the embedded store pushes a document as its text anyway.
    return {
        "$set": {**changes, **token},
        "$push": {"owed": json.dumps(owed, separators=(",", ":"))},
    }


def owed_by(item: Document) -> list[Document]:
    """What the owing changes of an item recorded, oldest first."""
    return [json.loads(owed) for owed in item.get("owed", [])]


def enqueued_ms_of(item: Document) -> int:
    return epoch_ms(as_utc(item["enqueued_at"]))


# How decision steps were kept before ``shared.steplog``: one document per item per batch,
# a lone step as itself (its candidates as JSON text), several as JSON text together.
def unbundled(doc: Document) -> list[Document]:
    if isinstance(doc.get("steps"), str):
        steps: list[Document] = json.loads(doc["steps"])
        return steps
    return [unpacked_step(doc)]


def unpacked_step(step: Document) -> Document:
    if isinstance(step.get("candidates"), str):
        return {**step, "candidates": json.loads(step["candidates"])}
    return step  # stored before candidates were packed
