"""Notify's consumer: assignment events in, stored deliveries out. Sending happens in the
dispatcher, off this path, so a slow endpoint never holds up the consumer."""

from __future__ import annotations

from collections.abc import Sequence

from services.notify.service import NotifyService
from shared.events import Assignment
from shared.kafka import BatchHandler, RawEvent, decode_batch
from shared.metrics import ServiceMetrics


def assignments_handler(service: NotifyService, metrics: ServiceMetrics) -> BatchHandler:
    async def handle(batch: Sequence[RawEvent]) -> None:
        with metrics.handle_seconds.time():
            await service.fan_out(decode_batch(batch, Assignment, metrics))

    return handle
