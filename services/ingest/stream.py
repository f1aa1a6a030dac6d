"""Ingest's consumer: interactions that Kafka-native publishers put on the submitted topic,
validated and deduped exactly like the ones posted over HTTP."""

from __future__ import annotations

from collections.abc import Sequence

from services.ingest.service import IngestService
from shared.kafka import BatchHandler, RawEvent
from shared.metrics import ServiceMetrics


def submitted_handler(service: IngestService, metrics: ServiceMetrics) -> BatchHandler:
    async def handle(batch: Sequence[RawEvent]) -> None:
        with metrics.handle_seconds.time():
            await service.accept_submissions(batch)

    return handle
