"""Each interaction's journey, ingest to webhook: a read model fed by the topics.

Ingest consumes the events the other services already publish (enriched, assignments,
deliveries) and keeps one step per event, keyed by the event id. A consumed batch's
steps are stored as one document (a bucket), not one each: the journey is read rarely,
and at full load its steps were three of the four documents ingest stored per
interaction. A batch redelivered whole is refused by its bucket's id; one redelivered
in another cut stores some steps twice, and reading keeps each event's step once.
No service reads another's database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel
from pymongo.asynchronous.database import AsyncDatabase

from shared.events import Assignment, CloudEvent, DeliveryAttempt, EnrichedInteraction, utcnow
from shared.kafka import BatchHandler, decoded
from shared.metrics import ServiceMetrics
from shared.mongo import Document, as_utc, epoch_ms, insert_new
from shared.outbox import entry_headers
from shared.tracing import trace_id

DataT = TypeVar("DataT", bound=BaseModel)

# Buckets are looked up among those written since the interaction was stored, less this
# much for the clocks of ingest's replicas to disagree.
CLOCK_SKEW = timedelta(minutes=1)


class JourneyLog:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.buckets = db["journey_buckets"]
        self.single_steps = db["journey"]  # one document per step, as kept before

    async def ensure_indexes(self) -> None:
        # MongoDB indexes each of a bucket's interaction ids (a multikey index); the
        # embedded store cannot, and narrows by the time the bucket was written instead.
        await self.buckets.create_index("interaction_ids")
        await self.buckets.create_index("written_ms")
        await self.single_steps.create_index("interaction_id")

    async def record(self, steps: Sequence[Document]) -> None:
        if steps:
            await insert_new(self.buckets, [bucket(steps, utcnow())])

    async def steps_of(self, interaction_id: str, since: datetime | None) -> list[Document]:
        """The interaction's steps, each event's once, looked up among the buckets
        written since it was stored (``since``), where known."""
        query: Document = {"interaction_ids": {"$in": [interaction_id]}}
        if since is not None:
            query["written_ms"] = {"$gte": epoch_ms(since - CLOCK_SKEW)}
        found = [
            s
            async for b in self.buckets.find(query, {"steps": 1})
            for s in b["steps"]
            if s["interaction_id"] == interaction_id
        ]
        # $eq, as in MongoDB: the embedded store scans the collection for a bare value.
        single = {"interaction_id": {"$eq": interaction_id}}
        found += await self.single_steps.find(single).to_list(length=None)
        return list({s["_id"]: s for s in found}.values())


def bucket(steps: Sequence[Document], written_at: datetime) -> Document:
    """One batch's steps as one document, its id made of their event ids."""
    ids = hashlib.sha256("\n".join(s["_id"] for s in steps).encode()).hexdigest()
    return {
        "_id": ids[:32],
        "interaction_ids": sorted({s["interaction_id"] for s in steps}),
        "written_ms": epoch_ms(written_at),
        "steps": list(steps),
    }


def step(
    event: CloudEvent[Any], interaction_id: str, at: datetime, name: str, **details: Any
) -> Document:
    return {
        "_id": event.id,
        "interaction_id": interaction_id,
        "at_ms": epoch_ms(at),
        "at": at.isoformat(),
        "step": name,
        "trace_id": trace_id(event.traceparent),
        **details,
    }


def enriched_step(event: CloudEvent[EnrichedInteraction]) -> Document:
    item = event.data
    return step(
        event,
        item.interaction.id,
        event.time,
        "enriched",
        customer_id=item.customer.id,
        tier=item.customer.tier,
        sentiment=item.sentiment.label,
        language=item.language,
    )


def assignment_step(event: CloudEvent[Assignment]) -> Document:
    item = event.data
    return step(
        event,
        item.interaction_id,
        event.time,
        item.status.value,
        queue=item.queue,
        priority=item.priority,
        agent_id=item.agent_id,
        offer=item.offer,
    )


def delivery_step(event: CloudEvent[DeliveryAttempt]) -> Document | None:
    attempt = event.data
    if attempt.interaction_id is None:
        return None
    return step(
        event,
        attempt.interaction_id,
        attempt.at,
        f"webhook {attempt.outcome}",
        delivery_id=attempt.delivery_id,
        subscription_id=attempt.subscription_id,
        attempt=attempt.attempt,
        status_code=attempt.status_code,
    )


def journey_handler(
    model: type[DataT],
    to_step: Callable[[CloudEvent[DataT]], Document | None],
    log: JourneyLog,
    metrics: ServiceMetrics,
) -> BatchHandler:
    async def record(events: Sequence[CloudEvent[DataT]]) -> None:
        await log.record([s for s in map(to_step, events) if s is not None])

    return decoded(model, record, metrics)


def first_steps(
    stored: Document, entry: Document | None, published_at: datetime | None
) -> list[Document]:
    """What ingest itself did: accepted the interaction, published its event."""
    trace = trace_id(traceparent_of(entry))
    steps = [
        _own_step("accepted", stored_at(stored), trace),
        _own_step("published", published_at, trace),
    ]
    return [s for s in steps if s is not None]


def traceparent_of(entry: Document | None) -> str | None:
    """The trace context the interaction's first event went out with."""
    for name, value in entry_headers(entry) if entry else []:
        if name == "ce_traceparent":
            return value.decode()
    return None


def stored_at(stored: Document) -> datetime | None:
    """When ingest stored the interaction (a string in some earlier documents)."""
    at = stored.get("stored_at")
    if at is None:
        return None
    return as_utc(datetime.fromisoformat(at) if isinstance(at, str) else at)


def _own_step(name: str, at: datetime | None, trace: str | None) -> Document | None:
    if at is None:
        return None
    return {"at_ms": epoch_ms(at), "at": at.isoformat(), "step": name, "trace_id": trace}


def journey(
    stored: Document, entry: Document | None, published_at: datetime | None, steps: list[Document]
) -> Document:
    ordered = [*first_steps(stored, entry, published_at), *sorted(steps, key=lambda s: s["at_ms"])]
    return {
        "interaction_id": stored["_id"],
        "trace_ids": sorted({s["trace_id"] for s in ordered if s.get("trace_id")}),
        "steps": [
            {k: v for k, v in s.items() if k not in ("_id", "interaction_id", "at_ms")}
            for s in ordered
        ],
    }
