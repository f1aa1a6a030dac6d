"""The frame every service is built in: one FastAPI app that owns its database
client, its outbox relay and (where it consumes) its Faust stream app.

``create_app(settings)`` in each service builds a ``Runtime`` and hands its routes,
its start-up steps and its consumer to ``service_app``; the lifespan here starts
and stops them in the right order, so a service is one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka import TopicPartition
from fastapi import APIRouter, FastAPI
from faust.contrib.asgi import bind_to_running_loop
from faust.types import TP
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from shared import kafka, mongo
from shared.access import AccessKeys, keys_api, require_access_rules
from shared.audit import AuditLog, AuditTrail, audit_api
from shared.emit import Emitter
from shared.events import AccessKey
from shared.http import BodyLimit, ReadinessCheck, add_health_routes, install_error_handlers
from shared.logging import configure_logging, get_logger
from shared.metrics import (
    RequestMetrics,
    ServiceMetrics,
    StoreCommandMetrics,
    metrics_endpoint,
    service_metrics,
)
from shared.outbox import Outbox, OutboxRelay
from shared.settings import ServiceSettings
from shared.tracing import Spans

log = get_logger(__name__)

StartupStep = Callable[[], Awaitable[None]]


@dataclass
class Runtime:
    """What one running service owns: its database, outbox, metrics and stream app."""

    name: str
    settings: ServiceSettings
    client: AsyncMongoClient[mongo.Document]
    db: AsyncDatabase[mongo.Document]
    outbox: Outbox  # events whose trigger is a request
    emitter: Emitter  # events derived from consumed records (see shared.emit)
    metrics: ServiceMetrics
    access: AccessKeys
    audit: AuditLog
    spans: Spans = field(default_factory=Spans)
    stream: faust.App | None = None
    streaming: bool = False  # the stream app's start has returned: it is running
    stream_failure: str | None = None  # why the stream app failed to start, if it did
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    rewind_owed: bool = False  # the broker lost its log and the consumers must read again
    topics: set[str] = field(default_factory=set)  # those consumed
    lag_shown: set[tuple[str, str]] = field(default_factory=set)  # consumer_lag's labels

    @classmethod
    def create(cls, name: str, settings: ServiceSettings) -> Runtime:
        metrics = service_metrics(name)
        client = mongo.connect(settings.mongo, [StoreCommandMetrics(metrics)])
        db = client[settings.mongo.database(name)]
        spans = Spans.create(name, settings.tracing.otlp_endpoint)
        outbox = Outbox(db)
        access = AccessKeys(
            db, outbox, settings.kafka.topics, settings.auth.admin_token, service=name
        )
        emitter = Emitter(settings.kafka, metrics)
        runtime = cls(
            name, settings, client, db, outbox, emitter, metrics, access, AuditLog(db), spans
        )
        runtime.consume(
            settings.kafka.topics.access_keys,
            kafka.decoded(AccessKey, access.apply, metrics),
            settings.kafka.background_batch_within_s,
        )
        return runtime

    def consume(
        self, topic: str, handler: kafka.BatchHandler, within_s: float | None = None
    ) -> None:
        """Feed ``topic`` to ``handler`` in batches, through this service's Faust app,
        waiting up to ``within_s`` (the Kafka settings' ``batch_within_s`` unless given)
        for a batch to fill."""
        if self.stream is None:
            self.stream = kafka.create_stream_app(self.name, self.settings)
        self.topics.add(topic)
        kafka.consume_batches(
            self.stream,
            topic,
            handler,
            self.settings.kafka,
            self.metrics,
            f"{self.name}-{topic}",
            within_s,
            store_answers=self.store_answers,
        )

    async def store_answers(self) -> bool:
        """Whether the database answers now: a consumed record that fails while it does
        not is not taken for poison (see ``kafka.Handling``)."""
        return await mongo.ping(self.db)

    async def rewind_consumers(self) -> None:
        """The broker forgot its log and the positions in it: the consumers read it again
        from the start (every consumer dedupes by event id, so what was handled stays
        handled). The watch below does it at its next turn, and again until it is done:
        a rebalance, which a broker restart brings, can hold it up or undo it."""
        self.rewind_owed = True

    async def _rewind_if_owed(self, timeout_s: float = 30.0) -> None:
        if not self.rewind_owed or self.stream is None:
            return
        try:
            await asyncio.wait_for(kafka.rewind(self.stream), timeout_s)
        except Exception as exc:  # a rebalance or a reconnection under way: next turn
            log.warning("reading the topics again failed, trying again", error=repr(exc))
            return
        self.rewind_owed = False
        log.warning("broker lost data: consumers read their topics again from the start")

    async def watch_consumers(self, relays: Sequence[OutboxRelay], interval_s: float = 0.5) -> None:
        """Notice a broker that lost its log from this service's own consumers, whether or
        not its relay noticed: a consumer positioned past a partition's end would wait for
        offsets the new log has not reached, and pass over everything published again
        below them. Then read everything again, and publish the recent window again.
        Each turn also shows the partitions held and each one's lag."""
        while self.stream is not None:
            await asyncio.sleep(interval_s)
            self._show_assignment()
            if not kafka.is_assigned(self.stream):
                self._show_lags({})
                continue
            standing = await self._standing()
            if standing is not None:
                self._show_lags(standing.lags())
                if self._past_their_end(standing):
                    for relay in relays:
                        relay.republish_window("a consumer is past a partition's end")
                    self.rewind_owed = True
            await self._rewind_if_owed()
            await self._read_holes_again()

    async def _read_holes_again(self) -> None:
        assert self.stream is not None
        try:
            again = await kafka.read_holes_again(self.stream)
        except Exception as exc:  # a rebalance under way: look again
            log.debug("consumer holes unreadable", error=repr(exc))
            return
        if again:
            log.warning(
                "offsets handed out were dropped unhandled: reading them again",
                partitions=[f"{tp.topic}[{tp.partition}]" for tp in again],
            )

    async def _standing(self) -> kafka.Standing | None:
        assert self.stream is not None
        try:
            return await kafka.standing(self.stream)
        except Exception as exc:  # a rebalance or a reconnection under way: look again
            log.debug("consumer positions unreadable", error=repr(exc))
            return None

    def _past_their_end(self, standing: kafka.Standing) -> bool:
        lost = standing.past_their_end()
        if lost:
            log.warning(
                "broker lost data: consumers are past a partition's end, reading again",
                partitions=[f"{tp.topic}[{tp.partition}]" for tp in lost],
            )
        return bool(lost)

    def _show_lags(self, lags: dict[TopicPartition, int]) -> None:
        """Set the lag of each partition this process consumes (not Faust's own topics);
        a partition another replica took over is no longer shown here."""
        shown = {
            (tp.topic, str(tp.partition)): lag
            for tp, lag in lags.items()
            if tp.topic in self.topics
        }
        for labels in self.lag_shown - shown.keys():
            self.metrics.consumer_lag.remove(*labels)
        for labels, lag in shown.items():
            self.metrics.consumer_lag.labels(*labels).set(lag)
        self.lag_shown = set(shown)

    def _show_assignment(self) -> None:
        """Set how many partitions of each consumed topic this process holds: readiness
        leaves the consumer out, so this is where a replica left without work shows."""
        held = Counter(tp.topic for tp in self._assignment())
        for topic in self.topics:
            self.metrics.partitions_assigned.labels(topic).set(held[topic])

    def _assignment(self) -> set[TP]:
        if self.stream is None:
            return set()
        try:
            return set(self.stream.consumer.assignment())
        except Exception:  # the consumer is not started yet
            return set()

    async def stream_alive(self) -> str | None:
        """A stream app that failed to start consumes nothing until the process restarts
        (the API would go on serving): liveness fails, so that the platform restarts it."""
        if self.stream_failure is None:
            return None
        return f"the stream app failed to start: {self.stream_failure}"

    async def database_ready(self) -> str | None:
        """Ready means able to serve the API, which needs the database. A consumer
        without partitions is no reason to leave the load balancer: it holds none until it
        has joined its group (which a rebalance held open delays) and none for good on a
        replica beyond the partition count, and the API works all the same."""
        return None if await mongo.ping(self.db) else "database unreachable"


def service_app(
    runtime: Runtime,
    routers: Sequence[APIRouter],
    startup: Sequence[StartupStep] = (),
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
    extra_checks: Sequence[ReadinessCheck] = (),
    streamed: Sequence[tuple[str, str]] = (),
    outboxes: Sequence[Outbox] = (),
) -> FastAPI:
    """A service's FastAPI app with health, metrics, errors and a lifespan that runs it all:
    a relay for the runtime's outbox and for each of ``outboxes``, the service's others."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        configure_logging(runtime.settings.log)
        await kafka.ensure_topics(runtime.settings.kafka, runtime.settings.kafka.topics.all())
        if runtime.stream is not None:
            leader = kafka.leader_topic(runtime.settings.kafka, runtime.name)
            await kafka.ensure_topics(runtime.settings.kafka, [leader], partitions=1)
        every_outbox = (runtime.outbox, *outboxes)
        for outbox in every_outbox:
            await outbox.ensure_indexes()
        await runtime.audit.ensure_indexes()
        for step in startup:
            await step()
        relays = [
            OutboxRelay(outbox, runtime.settings.kafka, runtime.metrics, service=runtime.name)
            for outbox in every_outbox
        ]
        for relay in relays:
            relay.on_broker_lost = functools.partial(
                broker_lost, relay, relays, runtime.rewind_consumers
            )
        runtime.tasks = [
            *(asyncio.create_task(relay.run()) for relay in relays),
            asyncio.create_task(runtime.watch_consumers(relays)),
            *(asyncio.create_task(work()) for work in background),
        ]
        try:
            async with _stream_running(runtime):
                log.info("service started", service=runtime.name, port=runtime.settings.port)
                yield
        finally:
            await _cancel(runtime.tasks)
            await runtime.emitter.close()
            await runtime.client.close()
            runtime.spans.shutdown()
            log.info("service stopped", service=runtime.name)

    docs = runtime.settings.expose_docs  # the schema and docs pages need no key: opt in
    app = FastAPI(
        title=f"Switchboard {runtime.name}",
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,
    )
    app.add_middleware(AuditTrail, audit=runtime.audit)
    app.add_middleware(RequestMetrics, metrics=runtime.metrics)
    app.add_middleware(BodyLimit, max_bytes=runtime.settings.max_body_bytes, streamed=streamed)
    app.state.runtime = runtime
    app.state.access = runtime.access
    app.state.audit = runtime.audit
    install_error_handlers(app)
    add_health_routes(app, [runtime.database_ready, *extra_checks], [runtime.stream_alive])
    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    for router in (*routers, keys_api, audit_api):
        app.include_router(router)
    require_access_rules(app)
    return app


def freeze_heap_after_startup(app: FastAPI) -> FastAPI:
    """Leave what start-up built (modules, models, clients) out of every later collection.

    A full collection walked all of it: 100 to 150 ms, during which the service's event
    loop and every item in flight waited. Objects made after start-up are still collected.
    For a service's own process: a freeze holds for the whole process.
    """
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with started(app) as state:
            gc.collect()
            gc.freeze()
            yield state

    app.router.lifespan_context = lifespan
    return app


async def broker_lost(
    noticed_by: OutboxRelay,
    relays: Sequence[OutboxRelay],
    rewind_consumers: Callable[[], Awaitable[None]],
) -> None:
    """One relay saw the broker lose data and published its own window again: the
    service's other relays publish theirs too (one that has sent nothing since it started
    has nothing to notice it by), and its consumers read their topics again."""
    for relay in relays:
        if relay is not noticed_by:
            relay.republish_window("another relay of this service saw the broker lose data")
    await rewind_consumers()


@asynccontextmanager
async def _stream_running(runtime: Runtime, stop_timeout_s: float = 15.0) -> AsyncIterator[None]:
    """Run the runtime's stream app while the block runs, without waiting for its start:
    Faust's start returns only once the consumer has its first assignment, which a
    rebalance held open delays for as long as it lasts, and the API serves meanwhile."""
    stream = runtime.stream
    if stream is None:
        yield
        return
    bind_to_running_loop(stream)
    stream.finalize()
    starting = asyncio.create_task(_start_stream(runtime, stream))
    try:
        yield
    finally:
        try:
            # Stopping also ends a start still waiting for its first assignment.
            await asyncio.wait_for(stream.stop(), stop_timeout_s)
        finally:
            await _cancel([starting])


async def _start_stream(runtime: Runtime, stream: faust.App) -> None:
    try:
        await stream.maybe_start()
    except Exception as exc:  # /healthz says so, for the platform to restart the process
        log.error("the stream app failed to start", service=runtime.name, error=repr(exc))
        runtime.stream_failure = repr(exc)
        return
    runtime.streaming = not stream.should_stop
    log.info("consumer joined its group", service=runtime.name)


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
