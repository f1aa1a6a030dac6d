"""Notify's consumers: assignment and SLA-breach events in, stored deliveries out. Sending happens in the
dispatcher, off this path, so a slow endpoint never holds up the consumer."""

from __future__ import annotations

from services.notify.service import NotifyService
from shared.events import Assignment, SlaBreach
from shared.kafka import BatchHandler, decoded
from shared.metrics import ServiceMetrics


def assignments_handler(service: NotifyService, metrics: ServiceMetrics) -> BatchHandler:
    return decoded(Assignment, service.fan_out, metrics)


def escalations_handler(service: NotifyService, metrics: ServiceMetrics) -> BatchHandler:
    return decoded(SlaBreach, service.fan_out, metrics)
