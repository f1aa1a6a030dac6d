"""Builds the ingest service: ``create_app(settings)``."""

from fastapi import FastAPI

from services.ingest import api, stream
from services.ingest.config import IngestSettings
from services.ingest.feeds import FeedPoller
from services.ingest.repository import IngestRepository
from services.ingest.service import IngestService
from shared.app import Runtime, service_app


def create_app(settings: IngestSettings) -> FastAPI:
    runtime = Runtime.create("ingest", settings)
    repository = IngestRepository(runtime.db)
    service = IngestService(
        repository,
        runtime.outbox,
        settings.kafka.topics,
        (settings.rate_limit_per_s, settings.rate_limit_burst),
    )
    runtime.consume(settings.kafka.topics.submitted, stream.submitted_handler(service))
    poller = FeedPoller(repository, service)
    app = service_app(
        runtime, [api.router], startup=[repository.ensure_indexes], background=[poller.run]
    )
    app.state.service = service
    return app
