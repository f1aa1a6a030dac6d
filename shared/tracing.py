"""W3C trace context (``traceparent``) from ingest to the webhook, one trace per interaction.

The trace travels as the CloudEvents distributed-tracing extension: a ``traceparent``
attribute, ``ce_traceparent`` in Kafka headers, and a ``traceparent`` request header on
every webhook. Each hop is a child span of the one before; span ids derive from the
event ids, so an event built again (a redelivery) carries the very same context.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_TRACEPARENT = re.compile(r"^00-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})$")


def valid_traceparent(value: str | None) -> str | None:
    """The value if it is a W3C version-00 traceparent, else None (never an error: a bad
    header from a caller must not cost them their interaction)."""
    if value is None:
        return None
    value = value.strip().lower()
    return value if _TRACEPARENT.match(value) else None


def trace_id(traceparent: str | None) -> str | None:
    return traceparent.split("-")[1] if traceparent else None


def _span_id(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


def start_trace(interaction_id: str, caller: str | None = None) -> str:
    """The context an interaction starts with: a child of the caller's, or a new trace
    whose id is the interaction's own (an interaction id is a UUID: 32 hex digits)."""
    parent = valid_traceparent(caller)
    if parent is not None:
        return _child(parent, interaction_id)
    return f"00-{uuid.UUID(interaction_id).hex}-{_span_id(interaction_id)}-01"


def child_of(traceparent: str | None, event_id: str) -> str | None:
    """The context of an event caused by one with ``traceparent``: same trace, new span."""
    parent = valid_traceparent(traceparent)
    return _child(parent, event_id) if parent is not None else None


def _child(parent: str, event_id: str) -> str:
    _, trace, span, flags = parent.split("-")
    return f"00-{trace}-{_span_id(trace, span, event_id)}-{flags}"


class Spans:
    """OpenTelemetry spans for the work each service does, exported over OTLP/HTTP when
    ``SWITCHBOARD_TRACING_OTLP_ENDPOINT`` is set, and nothing at all when it is not.

    Each span's parent is the context the event carried, so exported spans join the
    interaction's trace (their parents are the events' own spans, which are contexts,
    not exported spans)."""

    def __init__(self, tracer: Tracer | None = None, provider: TracerProvider | None = None):
        self.tracer = tracer
        self.provider = provider

    @classmethod
    def create(cls, service: str, otlp_endpoint: str | None) -> Spans:
        if not otlp_endpoint:
            return cls()
        provider = TracerProvider(
            resource=Resource.create({"service.name": f"switchboard-{service}"})
        )
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
        return cls(provider.get_tracer("switchboard"), provider)

    @contextlib.contextmanager
    def span(self, name: str, traceparent: str | None, **attributes: Any) -> Iterator[None]:
        if self.tracer is None:
            yield
            return
        parent = valid_traceparent(traceparent)
        context = (
            TraceContextTextMapPropagator().extract({"traceparent": parent}) if parent else None
        )
        with self.tracer.start_as_current_span(
            name, context=context, kind=SpanKind.CONSUMER, attributes=attributes
        ):
            yield

    def shutdown(self) -> None:
        """Export what is still buffered."""
        if self.provider is not None:
            self.provider.shutdown()
