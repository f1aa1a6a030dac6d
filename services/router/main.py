"""Builds the router service: ``create_app(settings)``."""

from fastapi import FastAPI

from services.router import api, stream
from services.router.config import RouterSettings
from services.router.repository import RouterRepository
from services.router.service import RouterService
from shared.app import Runtime, service_app


def create_app(settings: RouterSettings) -> FastAPI:
    runtime = Runtime.create("router", settings)
    repository = RouterRepository(runtime.db)
    service = RouterService(
        repository, runtime.outbox, runtime.emitter, settings.kafka.topics, settings
    )
    runtime.consume(
        settings.kafka.topics.enriched, stream.enriched_handler(service, runtime.metrics)
    )
    app = service_app(
        runtime,
        [api.router],
        startup=[repository.ensure_indexes, service.load_policy],
        background=[service.run_timers, service.report_queues],
    )
    service.spans = runtime.spans
    app.state.service = service
    return app
