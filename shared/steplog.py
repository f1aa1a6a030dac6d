"""Step logs: what happened to each item, step by step, stored a batch to a document.

Ingest's journeys and the router's decision records are written for every item and
read rarely, one item at a time. One document per step made them a large share of what
these services stored, and the embedded store commits every document on its own. A
batch's steps are stored as one document (a bucket) instead: the steps as JSON text
(only ever read whole; one text field costs the embedded store a fraction of as many
nested documents), the ids of the items they are about, and when it was written.

Each step has an ``_id`` (derived from what it records) and names its item. A batch
recorded again whole is refused by the bucket's id, made of its steps' ids; one
recorded again in another cut stores some steps twice, and reading keeps each once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from pymongo.asynchronous.collection import AsyncCollection

from shared.events import derived_event_id, utcnow
from shared.mongo import Document, epoch_ms, insert_new

# An item's buckets are looked up among those written since it was first stored, less
# this much for the clocks of a service's replicas to disagree.
CLOCK_SKEW = timedelta(minutes=1)


class StepLog:
    def __init__(self, buckets: AsyncCollection[Document], item_field: str) -> None:
        self.buckets = buckets
        self.item_field = item_field  # the field of a step naming its item

    async def ensure_indexes(self) -> None:
        # MongoDB indexes each of a bucket's item ids (a multikey index); the embedded
        # store cannot, and narrows the search by when the bucket was written instead.
        await self.buckets.create_index("items")
        await self.buckets.create_index("written_ms")

    async def record(self, steps: Sequence[Document]) -> None:
        if steps:
            await insert_new(self.buckets, [bucket(steps, self.item_field, utcnow())])

    async def steps_of(self, item_id: str, since: datetime | None) -> list[Document]:
        """The item's steps, in the order stored, from the buckets written since the item
        was first stored (``since``, where known)."""
        query: Document = {"items": {"$in": [item_id]}}
        if since is not None:
            query["written_ms"] = {"$gte": epoch_ms(since - CLOCK_SKEW)}
        found = self.buckets.find(query, {"steps": 1}).sort("written_ms", 1)
        return [
            step
            async for bucket in found
            for step in json.loads(bucket["steps"])
            if step[self.item_field] == item_id
        ]


def bucket(steps: Sequence[Document], item_field: str, written_at: datetime) -> Document:
    """The steps as one document, its id made of theirs."""
    return {
        "_id": derived_event_id("steps", *(step["_id"] for step in steps)),
        "items": sorted({step[item_field] for step in steps}),
        "written_ms": epoch_ms(written_at),
        "steps": json.dumps(list(steps), separators=(",", ":"), default=str),
    }


def once_each(steps: Iterable[Document]) -> list[Document]:
    """Each step once (by ``_id``), where it was first found."""
    first: dict[str, Document] = {}
    for step in steps:
        first.setdefault(step["_id"], step)
    return list(first.values())
