"""Prometheus metrics every service exposes, named ``switchboard_<service>_...``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response


@dataclass(frozen=True)
class ServiceMetrics:
    events_in: Counter
    events_out: Counter
    events_failed: Counter
    handle_seconds: Histogram
    outbox_backlog: Gauge
    publish_lag_seconds: Histogram


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
            "Events stored but not yet published (at most one relay batch)",
        ),
    )


async def metrics_endpoint(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
