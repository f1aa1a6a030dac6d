"""Ingest's consumer: interactions that Kafka-native publishers put on the submitted topic,
validated and deduped exactly like the ones posted over HTTP. The records are taken raw:
they are the publishers' JSON, not Switchboard's events."""

from __future__ import annotations

from services.ingest.service import IngestService
from shared.kafka import BatchHandler


def submitted_handler(service: IngestService) -> BatchHandler:
    return service.accept_submissions
