"""Prometheus metrics every service exposes, named ``switchboard_<service>_...``."""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pymongo import monitoring
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True)
class ServiceMetrics:
    events_in: Counter
    events_out: Counter
    events_failed: Counter
    handle_seconds: Histogram
    outbox_backlog: Gauge
    outbox_oldest_pending_seconds: Gauge
    dead_letters: Counter
    consumer_lag: Gauge
    partitions_assigned: Gauge
    publish_lag_seconds: Histogram
    http_requests: Counter
    http_seconds: Histogram
    store_commands: Counter
    store_seconds: Counter
    store_documents: Counter


@cache
def service_metrics(service: str) -> ServiceMetrics:
    """The metrics of one service, registered once per process however many apps it builds."""
    prefix = f"switchboard_{service}"
    return ServiceMetrics(
        events_in=Counter(f"{prefix}_events_in", "Events consumed", ["type"]),
        events_out=Counter(f"{prefix}_events_out", "Events published", ["topic"]),
        events_failed=Counter(
            f"{prefix}_events_failed", "Events that could not be handled", ["reason"]
        ),
        handle_seconds=Histogram(f"{prefix}_handle_seconds", "Time to handle one consumed batch"),
        publish_lag_seconds=Histogram(
            f"{prefix}_publish_lag_seconds",
            "From an event being stored in the outbox to the broker acknowledging it",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        ),
        outbox_backlog=Gauge(
            f"{prefix}_outbox_backlog",
            "Events stored but not yet published (at most one relay batch), by outbox",
            ["outbox"],
        ),
        outbox_oldest_pending_seconds=Gauge(
            f"{prefix}_outbox_oldest_pending_seconds",
            "Age of the oldest event the relay holds unpublished (0: none pending), by outbox",
            ["outbox"],
        ),
        dead_letters=Counter(
            f"{prefix}_dead_letters",
            "Outbox entries the broker refused for good, and consumed records that could not "
            "be handled, moved aside; source: the outbox collection or the consumed topic",
            ["source", "reason"],
        ),
        consumer_lag=Gauge(
            f"{prefix}_consumer_lag",
            "Records on a partition this process consumes past what it committed as handled",
            ["topic", "partition"],
        ),
        partitions_assigned=Gauge(
            f"{prefix}_partitions_assigned",
            "Partitions of each consumed topic this process holds now: 0 until it joined "
            "its consumer group, and for good on a replica beyond the partition count",
            ["topic"],
        ),
        http_requests=Counter(
            f"{prefix}_http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
        ),
        http_seconds=Histogram(
            f"{prefix}_http_request_seconds",
            "Time to answer an HTTP request, by route template",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        ),
        store_commands=Counter(
            f"{prefix}_store_commands",
            "Commands sent to the service's database, by collection and command",
            ["collection", "command"],
        ),
        store_seconds=Counter(
            f"{prefix}_store_command_seconds",
            "Time the database took to answer, summed, by collection and command",
            ["collection", "command"],
        ),
        store_documents=Counter(
            f"{prefix}_store_documents",
            "Documents written: inserted, matched by an update, or deleted",
            ["collection", "command"],
        ),
    )


class CollectionPauses:
    """Times each garbage collection of the process, by generation. While one runs, the
    service's event loop and every item in flight in it wait; a full collection that
    walked the whole heap took 100 to 150 ms."""

    def __init__(self, pauses: Histogram) -> None:
        self.pauses = pauses
        self._started = 0.0

    def __call__(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            seconds = time.perf_counter() - self._started
            self.pauses.labels(str(info["generation"])).observe(seconds)


def time_collections(service: str) -> CollectionPauses:
    """Time the process's garbage collections into ``switchboard_<service>_gc_pause_seconds``.
    Once per process: collections belong to the process, not to an app."""
    timer = CollectionPauses(
        Histogram(
            f"switchboard_{service}_gc_pause_seconds",
            "Time the process stood still in a garbage collection, by generation",
            ["generation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
        )
    )
    gc.callbacks.append(timer)
    return timer


class StoreCommandMetrics(monitoring.CommandListener):
    """Counts and times every command a service's client sends to its database, and the
    documents it wrote (inserted, matched by an update, deleted), to show where store
    time goes without a profiler. PyMongo calls it on the client's own thread, once as a
    command starts and once as it ends."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        self._started: dict[tuple[object, int], tuple[str, str]] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        target = event.command.get("collection" if name == "getMore" else name)
        collection = target if isinstance(target, str) else ""
        self._started[(event.connection_id, event.request_id)] = (collection, name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        written = documents_written(event.command_name, event.reply)
        self._ended(event.connection_id, event.request_id, event.duration_micros, written)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._ended(event.connection_id, event.request_id, event.duration_micros, 0)

    def _ended(self, connection: object, request_id: int, micros: int, written: int) -> None:
        started = self._started.pop((connection, request_id), None)
        if started is None:
            return
        collection, name = started
        self.metrics.store_commands.labels(collection, name).inc()
        self.metrics.store_seconds.labels(collection, name).inc(micros / 1_000_000)
        if written:
            self.metrics.store_documents.labels(collection, name).inc(written)


def documents_written(command: str, reply: Mapping[str, Any]) -> int:
    """How many documents a write command's reply says it wrote (an update: matched)."""
    if command in ("insert", "update", "delete"):
        return int(reply.get("n", 0))
    if command == "findAndModify":
        return int(reply.get("lastErrorObject", {}).get("n", 0))
    return 0


class RequestMetrics:
    """ASGI middleware: counts and times every request by its route template (never the
    path itself: ids and handles would make a series per customer)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = str(getattr(scope.get("route"), "path", "unmatched"))
            method = str(scope["method"])
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            self.metrics.http_seconds.labels(method, route).observe(time.perf_counter() - started)


async def metrics_endpoint(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
