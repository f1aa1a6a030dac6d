"""Builds the enrich service: ``create_app(settings)``."""

from fastapi import FastAPI

from services.enrich import api, stream
from services.enrich.config import EnrichSettings
from services.enrich.repository import EnrichRepository
from services.enrich.sentiment import LanguageDetector, create_analyzer
from services.enrich.service import EnrichService
from services.enrich.signals import IntentRules
from shared.app import Runtime, service_app


def create_app(settings: EnrichSettings) -> FastAPI:
    runtime = Runtime.create("enrich", settings)
    repository = EnrichRepository(runtime.db)
    service = EnrichService(
        repository,
        runtime.emitter,
        settings.kafka.topics,
        create_analyzer(settings.sentiment_analyzer),
        detector=LanguageDetector(settings.language_min_probability),
        intents=IntentRules.from_file(settings.intents_file),
        tiers=settings.tiers,
        import_batch=settings.import_batch,
        merge_abandoned_after_s=settings.merge_abandoned_after_s,
    )
    runtime.consume(
        settings.kafka.topics.received, stream.received_handler(service, runtime.metrics)
    )
    app = service_app(
        runtime,
        [api.router],
        startup=[repository.ensure_indexes, service.rekey_identities],
        streamed=[("POST", "/v1/customers:import")],
    )
    service.spans = runtime.spans
    app.state.service = service
    app.state.max_import_bytes = settings.max_import_bytes
    return app
