"""Enrich's consumer: received interactions in, enriched interactions (via the outbox) out."""

from __future__ import annotations

from collections.abc import Sequence

from services.enrich.service import EnrichService
from shared.events import Interaction
from shared.kafka import BatchHandler, RawEvent, decode_batch
from shared.metrics import ServiceMetrics


def received_handler(service: EnrichService, metrics: ServiceMetrics) -> BatchHandler:
    async def handle(batch: Sequence[RawEvent]) -> None:
        with metrics.handle_seconds.time():
            await service.enrich_batch(decode_batch(batch, Interaction, metrics))

    return handle
