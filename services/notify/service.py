"""Notify's domain: subscriptions, one delivery per (event, subscription), and a dispatcher
that signs, sends and retries them off the consumer's path."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Literal

import aiohttp
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator
from pymongo.errors import PyMongoError

from services.notify.cache import FreshDeliveries, Subscriptions
from services.notify.config import NotifySettings
from services.notify.delivery import Attempt, new_signing_secret, signed_headers, webhook_session
from services.notify.delivery import attempt as send_attempt
from services.notify.isolation import Endpoints, endpoint_key
from services.notify.repository import AttemptRecord, NotifyRepository
from shared.egress import EndpointRefused, check_endpoint, resolve_endpoint
from shared.events import (
    DELIVERY_ATTEMPTED,
    DELIVERY_DEAD,
    SLA_BREACHED,
    Assignment,
    AssignmentStatus,
    CloudEvent,
    DeadDelivery,
    DeliveryAttempt,
    SlaBreach,
    assignment_type,
    derived_event_id,
    utcnow,
)
from shared.grouping import GroupWriter
from shared.logging import get_logger
from shared.mongo import Document, epoch_ms
from shared.outbox import Outbox, OutboxEntry
from shared.text import Name
from shared.topics import Topics
from shared.tracing import Spans, child_of, trace_id

SOURCE = "/switchboard/notify"
log = get_logger(__name__)
HAND_OVER_ROOM_PER_WORKER = 32  # fresh deliveries that may wait in memory, per worker
AttemptOutcome = Literal["delivered", "retry", "dead", "gone"]
# What notify sends out: work for the desks, and alerts when an item waits past its SLA.
Notice = CloudEvent[Assignment] | CloudEvent[SlaBreach]
DELIVERED_TYPES = (*(assignment_type(status) for status in AssignmentStatus), SLA_BREACHED)
# How long a delivery waits for a slot at its busy endpoint before it is postponed.
ENDPOINT_WAIT_S = 1.0
JITTER = 0.2  # each retry step is drawn within ±20% of its length


@dataclass(frozen=True)
class DeliveryMetrics:
    attempts: Counter
    latency_seconds: Histogram
    open_breakers: Gauge


@cache
def delivery_metrics() -> DeliveryMetrics:
    return DeliveryMetrics(
        attempts=Counter(
            "switchboard_notify_attempts",
            "Webhook attempts by what followed: delivered, retry, dead or gone (410)",
            ["outcome"],
        ),
        latency_seconds=Histogram(
            "switchboard_notify_attempt_seconds", "Time for an endpoint to answer one attempt"
        ),
        open_breakers=Gauge("switchboard_notify_open_breakers", "Endpoints whose breaker is open"),
    )


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: str | None = None
    queue: str | None = None
    tier: str | None = None
    priority: int | None = Field(default=None, ge=1, le=5)


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl
    event_types: list[str] = Field(
        default_factory=lambda: ["io.switchboard.assignment.*"], min_length=1, max_length=32
    )
    filters: Filters = Field(default_factory=Filters)
    format: Literal["cloudevents", "slack"] = "cloudevents"
    description: Name | None = Field(default=None, max_length=256)

    @field_validator("event_types")
    @classmethod
    def _each_matches_something_sent(cls, patterns: list[str]) -> list[str]:
        """A pattern no event notify sends can match would make a subscription that never
        fires: say so now rather than stay silent."""
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(known, pattern) for known in DELIVERED_TYPES):
                raise ValueError(
                    f"{pattern!r} matches no event type notify delivers: "
                    + ", ".join(DELIVERED_TYPES)
                )
        return patterns


def filtered_fields(event: Notice) -> dict[str, object]:
    """What a subscription's filters look at. A breach has no agent: a subscription
    filtered by agent takes none; its priority is the one it was escalated to."""
    data = event.data
    if isinstance(data, SlaBreach):
        return {
            "agent_id": None,
            "queue": data.queue,
            "tier": data.customer.tier,
            "priority": data.priority_after,
        }
    return {
        "agent_id": data.agent_id,
        "queue": data.queue,
        "tier": data.customer.tier,
        "priority": data.priority,
    }


def wants(subscription: Document, event: Notice) -> bool:
    """Whether a subscription's event types and filters take this event."""
    if not any(fnmatch.fnmatchcase(event.type, pattern) for pattern in subscription["event_types"]):
        return False
    filters = subscription.get("filters") or {}
    return all(filters.get(name) in (None, value) for name, value in filtered_fields(event).items())


def slack_message(event: Notice) -> str:
    """The event as a Slack incoming-webhook message."""
    data = event.data
    if isinstance(data, SlaBreach):
        moved = f", moved to `{data.queue_after}`" if data.queue_after else ""
        text = (
            f"*SLA breached* · queue `{data.queue}` · waited {data.waited_s:.0f} s · "
            f"P{data.priority_before} → P{data.priority_after}{moved} · "
            f"{data.customer.tier} customer · interaction `{data.interaction_id}`"
        )
        return json.dumps({"text": text}, ensure_ascii=False)
    status = data.status.value.replace("_", " ")
    text = (
        f"*{status}* · queue `{data.queue}` · P{data.priority} · {data.customer.tier} customer, "
        f"{data.sentiment}\n>{data.author_handle} on {data.channel.value}: {data.text[:300]}"
    )
    if data.url:
        text += f"\n<{data.url}|open the post>"
    return json.dumps({"text": text}, ensure_ascii=False)


def body_for(subscription: Document, event: Notice) -> str:
    if subscription.get("format") == "slack":
        return slack_message(event)
    return event.model_dump_json()


def delivery_for(subscription: Document, event: Notice) -> Document:
    """A delivery's id doubles as its ``webhook-id``: stable across every retry."""
    now = utcnow()
    return {
        "_id": derived_event_id(event.id, "delivery", subscription["_id"]),
        "subscription_id": subscription["_id"],
        "event_id": event.id,
        "event_type": event.type,
        "interaction_id": event.data.interaction_id,
        "traceparent": child_of(event.traceparent, subscription["_id"]),
        "body": body_for(subscription, event),
        "status": "pending",
        "attempt_count": 0,
        "round_start": 0,
        "last_attempt": None,
        "next_attempt_ms": epoch_ms(now),
        "created_at": now,
        # Compared and sorted by this: the embedded store may keep an updated document's
        # datetimes as text, which no longer compares as a time.
        "created_ms": epoch_ms(now),
    }


def unique_by_id(docs: Iterable[Document]) -> list[Document]:
    return list({doc["_id"]: doc for doc in docs}.values())


def signing_secrets(subscription: Document, now: datetime) -> list[str]:
    """The current secret, and the previous one while its rotation overlap lasts."""
    secrets = [subscription["secret"]]
    previous, until = subscription.get("previous_secret"), subscription.get("previous_until_ms")
    if previous and until and epoch_ms(now) < until:
        secrets.append(previous)
    return secrets


def next_delay(
    schedule: Sequence[float], attempts_made: int, retry_after_s: float | None
) -> float | None:
    """Seconds until the next attempt, with ±20% jitter; None when the schedule is spent."""
    if attempts_made > len(schedule):
        return None
    base = schedule[max(attempts_made, 1) - 1]
    delay = base * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - jitter, not security
    return max(delay, retry_after_s or 0.0)


def schedule_span_s(schedule: Sequence[float]) -> float:
    """How long a round of attempts lasts at most, from its first: every step at its
    longest jitter. Past it, no endpoint's Retry-After keeps a delivery waiting."""
    return sum(schedule) * (1 + JITTER)


@dataclass(frozen=True)
class NextTry:
    delay_s: float
    last: bool  # the wait was cut at the schedule's end: that try is the round's last


def next_try(
    schedule: Sequence[float], attempts_made: int, retry_after_s: float | None, left_s: float
) -> NextTry | None:
    """When to try again: the schedule's step, or longer where the endpoint asked for it
    (Retry-After, already capped), but no later than the schedule's end, ``left_s`` from
    now; a wait cut there makes the next try the last. None when the schedule is spent."""
    delay = next_delay(schedule, attempts_made, None)
    if delay is None:
        return None
    asked = retry_after_s or 0.0
    if asked <= delay:
        return NextTry(delay, last=False)
    if asked <= left_s:
        return NextTry(asked, last=False)
    return NextTry(max(delay, left_s), last=True)


class NotifyService:
    spans = Spans()  # main sets the service's own, exporting when tracing is on

    def __init__(
        self,
        repository: NotifyRepository,
        outbox: Outbox,
        topics: Topics,
        settings: NotifySettings,
    ) -> None:
        self.repository = repository
        self.outbox = outbox
        self.topics = topics
        self.settings = settings
        self.wakeup = asyncio.Event()
        self.subscriptions = Subscriptions(repository, settings.subscriptions_max_age_s)
        # Room for many claims' worth: a burst that overflows it is stored due and claimed
        # back from the store, a lease update and a find more per delivery (its size is
        # measured in bench/HISTORY.md). What waits here past ``hand_over_wait_s`` goes
        # back to the store: a large room holds none long.
        self.fresh = FreshDeliveries(
            HAND_OVER_ROOM_PER_WORKER * settings.max_concurrent_deliveries, uuid.uuid4().hex
        )
        self._next_claim = 0.0  # when the dispatcher looks in the store for due deliveries
        self._claim_now = False
        # Attempts that end at about the same time are recorded together (see record).
        self.attempts: GroupWriter[None, tuple[AttemptRecord, tuple[OutboxEntry, ...]], None] = (
            GroupWriter(self._write_attempts)
        )
        self.endpoints = Endpoints(
            settings.breaker_threshold,
            settings.breaker_cooldown_s,
            settings.max_in_flight_per_endpoint,
        )

    async def create_subscription(self, payload: SubscriptionIn) -> tuple[Document, str]:
        """Raises EndpointRefused for an endpoint on a non-public address."""
        await check_endpoint(str(payload.url), self.settings.allow_hosts)
        secret = new_signing_secret()
        subscription = {
            "_id": str(uuid.uuid4()),
            **payload.model_dump(mode="json"),
            "secret": secret,
            "enabled": True,
            "created_at": utcnow(),
        }
        await self.repository.insert_subscription(subscription)
        self.subscriptions.changed()
        return subscription, secret

    async def rotate_secret(self, subscription_id: str) -> str | None:
        """A new signing secret, shown once; the old one signs too until the overlap ends."""
        subscription = await self.repository.find_subscription(subscription_id)
        if subscription is None:
            return None
        secret = new_signing_secret()
        overlap_until = utcnow() + timedelta(seconds=self.settings.secret_rotation_overlap_s)
        await self.repository.update_subscription(
            subscription_id,
            {
                "secret": secret,
                "previous_secret": subscription["secret"],
                "previous_until_ms": epoch_ms(overlap_until),
            },
        )
        self.subscriptions.changed()
        return secret

    async def set_enabled(self, subscription_id: str, enabled: bool) -> Document | None:
        await self.repository.update_subscription(
            subscription_id,
            {"enabled": enabled, "disabled_reason": None if enabled else "by request"},
        )
        self.subscriptions.changed()
        return await self.repository.find_subscription(subscription_id)

    async def get_subscription(self, subscription_id: str) -> Document | None:
        return await self.repository.find_subscription(subscription_id)

    async def list_deliveries(self, filters: dict[str, Any], limit: int) -> list[Document]:
        return await self.repository.list_deliveries(filters, limit)

    async def list_attempts(self, delivery_id: str) -> list[Document] | None:
        return await self.repository.list_attempts(delivery_id)

    async def replay(self, delivery_id: str) -> Document | None:
        """Send a finished delivery again, with a fresh retry schedule and the same
        ``webhook-id``, so a receiver that saw it before can tell."""
        replayed = await self.repository.replay(delivery_id, utcnow())
        if replayed is not None:
            self._claim_soon()
        return replayed

    async def replay_dead(self, since: datetime, until: datetime, limit: int) -> int:
        """Replay every dead delivery created in [since, until], at most ``limit``."""
        dead = await self.repository.list_deliveries(
            {"status": "dead", "created_ms": {"$gte": epoch_ms(since), "$lte": epoch_ms(until)}},
            limit,
        )
        replayed = [d for d in dead if await self.repository.replay(d["_id"], utcnow())]
        if replayed:
            self._claim_soon()
        return len(replayed)

    @property
    def lease_s(self) -> float:
        """How long a worker holds a delivery it is about to attempt: the attempt's
        timeout, and time to record it."""
        return self.settings.webhook_timeout_s + 30

    async def fan_out(self, events: Sequence[Notice]) -> None:
        """Store a delivery for each subscription that wants each event. As many as the
        dispatcher has room for are stored leased to this process and handed to it."""
        if not events:
            return
        subscriptions = await self.subscriptions.enabled()
        # By id: an event redelivered within the batch makes the same delivery twice.
        deliveries = unique_by_id(
            delivery_for(subscription, event)
            for event in events
            for subscription in subscriptions
            if wants(subscription, event)
        )
        until_ms = epoch_ms(utcnow() + timedelta(seconds=self.lease_s))
        handed = deliveries[: self.fresh.room()]
        for delivery in handed:
            delivery.update(next_attempt_ms=until_ms, lease=self.fresh.lease)
        stored = await self.repository.insert_deliveries(deliveries)
        # Only those stored now: one stored before (a redelivered event) may have been sent.
        self.fresh.add([delivery for delivery in handed if delivery["_id"] in stored])
        for delivery in deliveries:
            log.info(
                "delivery stored",
                event_id=delivery["event_id"],
                delivery_id=delivery["_id"],
                subscription_id=delivery["subscription_id"],
                trace_id=trace_id(delivery["traceparent"]),
            )
        if deliveries:
            self.wakeup.set()

    async def dispatch_forever(self) -> None:
        """Send deliveries, at most ``max_concurrent_deliveries`` at a time: the fresh ones
        handed over, and those due in the store (retries, replays, another worker's), looked
        for every ``poll_interval_s``, at once after a replay, and again while a claim
        fills all the room there is."""
        room = self.settings.max_concurrent_deliveries
        running: set[asyncio.Task[None]] = set()
        async with webhook_session(self.settings.webhook_timeout_s) as client:
            try:
                while True:
                    if len(running) >= room:
                        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                        continue
                    self.wakeup.clear()  # before looking: a hand-over meanwhile sets it again
                    deliveries = await self._next_deliveries(room - len(running))
                    if not deliveries:
                        await self._wait_for_work()
                        continue
                    subscriptions = await self._subscriptions_of(deliveries)
                    if subscriptions is None:  # left to their leases, tried again after
                        await asyncio.sleep(1.0)
                        continue
                    for delivery in deliveries:
                        subscription = subscriptions.get(delivery["subscription_id"])
                        task = asyncio.create_task(self._deliver(client, delivery, subscription))
                        running.add(task)
                        task.add_done_callback(running.discard)
            finally:
                for task in running:
                    task.cancel()
                await self._release_fresh()

    async def _next_deliveries(self, limit: int) -> list[Document]:
        """Due deliveries from the store when it is time to look, then fresh ones. Fresh
        ones that waited too long behind a backlog go back to the store, claimed next."""
        claimed = await self._claim_due(limit) if self._time_to_claim() else []
        needed_ms = int((self.lease_s - self.settings.hand_over_wait_s) * 1000)
        fresh, stale = self.fresh.take(limit - len(claimed), epoch_ms(utcnow()), needed_ms)
        if stale:
            await self._release(stale)
            self._claim_soon()
        return claimed + fresh

    def _time_to_claim(self) -> bool:
        return self._claim_now or time.monotonic() >= self._next_claim

    def _claim_soon(self) -> None:
        self._claim_now = True
        self.wakeup.set()

    async def _claim_due(self, limit: int) -> list[Document]:
        now = utcnow()
        self._next_claim = time.monotonic() + self.settings.poll_interval_s
        try:
            claimed = await self.repository.claim_due(
                now, now + timedelta(seconds=self.lease_s), limit
            )
        except PyMongoError as exc:
            log.warning("could not claim deliveries", error=repr(exc))
            await asyncio.sleep(1.0)
            return []
        self._claim_now = len(claimed) == limit  # it may have left more that are due
        return claimed

    async def _release_fresh(self) -> None:
        """On the way out, make the deliveries still waiting here due for the next worker,
        rather than leaving them to their leases."""
        await self._release(self.fresh.drain())

    async def _release(self, ids: list[str]) -> None:
        """Make fresh deliveries due in the store; should the store not answer, their
        leases still run out."""
        with contextlib.suppress(PyMongoError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self.repository.release(ids, self.fresh.lease, utcnow())

    async def _subscriptions_of(self, deliveries: list[Document]) -> dict[str, Document] | None:
        """The deliveries' subscriptions, as last read or read again just before they go."""
        ids = {delivery["subscription_id"] for delivery in deliveries}
        try:
            return await self.subscriptions.of(ids)
        except PyMongoError as exc:
            log.warning("could not read subscriptions", error=repr(exc))
            return None

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), timeout=self.settings.poll_interval_s)

    async def _deliver(
        self, client: aiohttp.ClientSession, delivery: Document, subscription: Document | None
    ) -> None:
        try:
            await self.deliver(client, delivery, subscription)
        except Exception:  # the lease runs out and the delivery is tried again
            log.exception("delivery attempt failed to record", delivery_id=delivery["_id"])

    async def deliver(
        self, client: aiohttp.ClientSession, delivery: Document, subscription: Document | None
    ) -> None:
        """One attempt at one delivery, and what follows from its outcome."""
        if subscription is None or not subscription["enabled"]:
            await self.record(
                AttemptRecord(
                    delivery["_id"],
                    int(delivery["attempt_count"]) + 1,
                    {"at": utcnow(), "error": "subscription disabled"},
                    {"status": "cancelled"},
                )
            )
            return
        url = subscription["url"]
        key = endpoint_key(url)
        breaker = self.endpoints.breaker(key)
        if (wait := breaker.wait()) > 0:  # open: try again when it may close, costing no attempt
            await self.repository.postpone(delivery["_id"], utcnow() + timedelta(seconds=wait))
            return
        if not await self.endpoints.enter(key, ENDPOINT_WAIT_S):  # it has enough in flight
            await self.repository.postpone(delivery["_id"], utcnow() + timedelta(seconds=0.5))
            return
        try:
            outcome, error = await self._attempt(client, delivery, subscription)
        finally:
            self.endpoints.leave(key)
        breaker.record(outcome is not None and (outcome.ok or outcome.gone))
        delivery_metrics().open_breakers.set(self.endpoints.open_count())
        record = {
            "at": utcnow(),
            "status_code": outcome.status_code if outcome else None,
            "latency_ms": round(outcome.latency_ms, 1) if outcome else None,
            "error": error,
            "excerpt": outcome.excerpt if outcome else "",
        }
        await self._settle(delivery, subscription, record, outcome)

    async def _attempt(
        self, client: aiohttp.ClientSession, delivery: Document, subscription: Document
    ) -> tuple[Attempt | None, str | None]:
        try:
            target = await resolve_endpoint(subscription["url"], self.settings.allow_hosts)
        except EndpointRefused as exc:
            return None, str(exc)
        now = utcnow()
        headers = signed_headers(
            signing_secrets(subscription, now), delivery["_id"], now, delivery["body"]
        )
        if delivery.get("traceparent"):
            headers["traceparent"] = delivery["traceparent"]
        with self.spans.span("webhook attempt", delivery.get("traceparent"), url=target.host):
            outcome = await send_attempt(
                client, target, headers, delivery["body"], self.settings.retry_after_max_s
            )
        delivery_metrics().latency_seconds.observe(outcome.latency_ms / 1000)
        return outcome, outcome.error

    async def record(self, record: AttemptRecord, *events: OutboxEntry) -> None:
        """Store an attempt's events, then the attempt itself, together with the other
        attempts that end meanwhile (``_write_attempts``)."""
        await self.attempts.submit(None, (record, events))

    async def _write_attempts(
        self, _: None, finished: list[tuple[AttemptRecord, tuple[OutboxEntry, ...]]]
    ) -> list[None]:
        # Events first: a crash in between repeats the attempt, never loses its event.
        await self.outbox.add([event for _, events in finished for event in events])
        await self.repository.record_attempts([record for record, _ in finished])
        return [None] * len(finished)

    def announcement(
        self, delivery: Document, record: dict[str, Any], attempt: int, outcome: AttemptOutcome
    ) -> OutboxEntry:
        """The attempt on the deliveries topic (for journeys and audits)."""
        key = delivery.get("interaction_id") or delivery["_id"]
        return self.topics.deliveries, key, attempted_event(delivery, record, attempt, outcome)

    async def _settle(
        self,
        delivery: Document,
        subscription: Document,
        record: dict[str, Any],
        outcome: Attempt | None,
    ) -> None:
        attempts_made = int(delivery["attempt_count"]) + 1
        this_round = attempts_made - int(delivery.get("round_start", 0))
        log.info(
            "delivery attempt",
            event_id=delivery["event_id"],
            delivery_id=delivery["_id"],
            attempt=attempts_made,
            status_code=record["status_code"],
            error=record["error"],
        )
        counter = delivery_metrics().attempts

        def attempt(
            changes: dict[str, Any], outcome: AttemptOutcome
        ) -> tuple[AttemptRecord, OutboxEntry]:
            counter.labels(outcome=outcome).inc()
            announced = self.announcement(delivery, record, attempts_made, outcome)
            return AttemptRecord(delivery["_id"], attempts_made, record, changes), announced

        if outcome is not None and outcome.ok:
            await self.record(
                *attempt({"status": "delivered", "delivered_at": record["at"]}, "delivered")
            )
            return
        if outcome is not None and outcome.gone:
            await self.record(*attempt({"status": "cancelled"}, "gone"))
            await self.repository.disable_subscription(
                subscription["_id"], "endpoint answered 410 Gone"
            )
            self.subscriptions.changed()
            return
        retry = self._retry_changes(delivery, this_round, record["at"], outcome)
        if retry is None:
            dead = (
                self.topics.deliveries_dead,
                subscription["_id"],
                dead_event(delivery, record, attempts_made),
            )
            await self.record(*attempt({"status": "dead"}, "dead"), dead)
            return
        await self.record(*attempt(retry, "retry"))

    def _retry_changes(
        self, delivery: Document, this_round: int, at: datetime, outcome: Attempt | None
    ) -> dict[str, Any] | None:
        """What a failed attempt changes on a delivery to be tried again; None when it is
        dead: its schedule spent, or this try the last its schedule's end allowed."""
        if this_round > 1 and delivery.get("last_try"):
            return None
        schedule = self.settings.retry_schedule_s
        now_ms = epoch_ms(at)
        started_ms = round_started_ms(delivery, this_round, now_ms)
        left_s = (started_ms - now_ms) / 1000 + schedule_span_s(schedule)
        retry_after_s = outcome.retry_after_s if outcome is not None else None
        then = next_try(schedule, this_round, retry_after_s, left_s)
        if then is None:
            return None
        return {
            "next_attempt_ms": epoch_ms(at + timedelta(seconds=then.delay_s)),
            "round_started_ms": started_ms,
            "last_try": then.last,
        }


def round_started_ms(delivery: Document, this_round: int, now_ms: int) -> int:
    """When the delivery's round of attempts began: now, at its first attempt or when no
    start is on record."""
    started = delivery.get("round_started_ms") if this_round > 1 else None
    return int(started) if started is not None else now_ms


def attempted_event(
    delivery: Document, record: dict[str, Any], attempt: int, outcome: AttemptOutcome
) -> CloudEvent[DeliveryAttempt]:
    event_id = derived_event_id(delivery["_id"], DELIVERY_ATTEMPTED, str(attempt))
    return CloudEvent[DeliveryAttempt](
        id=event_id,
        source=SOURCE,
        type=DELIVERY_ATTEMPTED,
        subject=delivery.get("interaction_id"),
        traceparent=child_of(delivery.get("traceparent"), event_id),
        data=DeliveryAttempt(
            delivery_id=delivery["_id"],
            subscription_id=delivery["subscription_id"],
            interaction_id=delivery.get("interaction_id"),
            event_id=delivery["event_id"],
            event_type=delivery["event_type"],
            attempt=attempt,
            outcome=outcome,
            status_code=record["status_code"],
            error=record["error"],
            at=record["at"],
        ),
    )


def dead_event(delivery: Document, last: dict[str, Any], attempts: int) -> CloudEvent[DeadDelivery]:
    return CloudEvent[DeadDelivery](
        id=derived_event_id(delivery["_id"], DELIVERY_DEAD, str(attempts)),
        source=SOURCE,
        type=DELIVERY_DEAD,
        subject=delivery["_id"],
        data=DeadDelivery(
            delivery_id=delivery["_id"],
            subscription_id=delivery["subscription_id"],
            event_id=delivery["event_id"],
            event_type=delivery["event_type"],
            attempts=attempts,
            last_status=last["status_code"],
            last_error=last["error"],
        ),
    )
