"""Each interaction's journey, ingest to webhook: a read model fed by the topics.

Ingest consumes the events the other services already publish (enriched, assignments,
deliveries) and keeps one step per event, keyed by the event id, a consumed batch's
steps to a document (``shared.steplog``): at full load one document per step made the
journey three of the four documents ingest stored per interaction. No service reads
another's database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel
from pymongo.asynchronous.database import AsyncDatabase

from shared.events import Assignment, CloudEvent, DeliveryAttempt, EnrichedInteraction
from shared.kafka import BatchHandler, decoded
from shared.metrics import ServiceMetrics
from shared.mongo import Document, as_utc, epoch_ms
from shared.outbox import entry_headers
from shared.steplog import StepLog, once_each
from shared.tracing import trace_id

DataT = TypeVar("DataT", bound=BaseModel)


class JourneyLog:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.buckets = StepLog(db["journey_buckets"], "interaction_id")
        self.single_steps = db["journey"]  # one document per step, as kept before

    async def ensure_indexes(self) -> None:
        await self.buckets.ensure_indexes()
        await self.single_steps.create_index("interaction_id")

    async def record(self, steps: Sequence[Document]) -> None:
        await self.buckets.record(steps)

    async def steps_of(self, interaction_id: str, since: datetime | None) -> list[Document]:
        """The interaction's steps, each event's once (``since``: when it was stored)."""
        # $eq, as in MongoDB: the embedded store scans the collection for a bare value.
        single = {"interaction_id": {"$eq": interaction_id}}
        return once_each(
            [
                *await self.buckets.steps_of(interaction_id, since),
                *await self.single_steps.find(single).to_list(length=None),
            ]
        )


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
