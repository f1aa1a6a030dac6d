"""Builds the enrich service: ``create_app(settings)``."""

from fastapi import FastAPI

from services.enrich import api, stream
from services.enrich.config import EnrichSettings
from services.enrich.repository import EnrichRepository
from services.enrich.service import EnrichService, VaderAnalyzer
from shared.app import Runtime, service_app


def create_app(settings: EnrichSettings) -> FastAPI:
    runtime = Runtime.create("enrich", settings)
    repository = EnrichRepository(runtime.db)
    service = EnrichService(repository, runtime.outbox, settings.kafka.topics, VaderAnalyzer())
    runtime.consume(
        settings.kafka.topics.received, stream.received_handler(service, runtime.metrics)
    )
    app = service_app(runtime, [api.router], startup=[repository.ensure_indexes])
    app.state.service = service
    return app
