"""Router's consumer: enriched interactions in, assignment events out."""

from __future__ import annotations

from services.router.service import RouterService
from shared.events import EnrichedInteraction
from shared.kafka import BatchHandler, decoded
from shared.metrics import ServiceMetrics


def enriched_handler(service: RouterService, metrics: ServiceMetrics) -> BatchHandler:
    return decoded(EnrichedInteraction, service.route_batch, metrics)
