"""Enrich's consumer: received interactions in, enriched interactions out."""

from __future__ import annotations

from services.enrich.service import EnrichService
from shared.events import Interaction
from shared.kafka import BatchHandler, decoded
from shared.metrics import ServiceMetrics


def received_handler(service: EnrichService, metrics: ServiceMetrics) -> BatchHandler:
    return decoded(Interaction, service.enrich_batch, metrics)
