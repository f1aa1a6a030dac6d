"""Router's consumer: enriched interactions in, assignment events (via the outbox) out."""

from __future__ import annotations

from collections.abc import Sequence

from services.router.service import RouterService
from shared.events import EnrichedInteraction
from shared.kafka import BatchHandler, RawEvent, decode_batch
from shared.metrics import ServiceMetrics


def enriched_handler(service: RouterService, metrics: ServiceMetrics) -> BatchHandler:
    async def handle(batch: Sequence[RawEvent]) -> None:
        with metrics.handle_seconds.time():
            await service.route_batch(decode_batch(batch, EnrichedInteraction, metrics))

    return handle
