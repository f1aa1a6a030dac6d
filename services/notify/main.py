"""Builds the notify service: ``create_app(settings)``."""

from fastapi import FastAPI

from services.notify import api, stream
from services.notify.config import NotifySettings
from services.notify.repository import NotifyRepository
from services.notify.service import NotifyService
from shared.app import Runtime, service_app


def create_app(settings: NotifySettings) -> FastAPI:
    runtime = Runtime.create("notify", settings)
    repository = NotifyRepository(runtime.db)
    service = NotifyService(repository, runtime.outbox, settings.kafka.topics, settings)
    runtime.consume(
        settings.kafka.topics.assignments, stream.assignments_handler(service, runtime.metrics)
    )
    runtime.consume(
        settings.kafka.topics.escalations, stream.escalations_handler(service, runtime.metrics)
    )
    app = service_app(
        runtime,
        [api.router],
        startup=[repository.ensure_indexes],
        background=[service.dispatch_forever],
    )
    service.spans = runtime.spans
    app.state.service = service
    return app
