"""Builds the ingest service: ``create_app(settings)``."""

from fastapi import FastAPI

from services.ingest import api, stream
from services.ingest.config import IngestSettings
from services.ingest.feeds import FeedLimits, FeedPoller
from services.ingest.journey import (
    JourneyLog,
    assignment_step,
    delivery_step,
    enriched_step,
    journey_handler,
)
from services.ingest.repository import INTERACTIONS, IngestRepository
from services.ingest.service import IngestService, InputLimits
from shared.app import Runtime, service_app
from shared.events import Assignment, DeliveryAttempt, EnrichedInteraction
from shared.outbox import Outbox


def create_app(settings: IngestSettings) -> FastAPI:
    runtime = Runtime.create("ingest", settings)
    repository = IngestRepository(runtime.db)
    interactions = Outbox(runtime.db, collection=INTERACTIONS)
    service = IngestService(
        repository,
        runtime.outbox,
        interactions,
        settings.kafka.topics,
        (settings.rate_limit_per_s, settings.rate_limit_burst),
        InputLimits(settings.max_attributes_bytes, settings.kafka.max_message_bytes),
    )
    topics = settings.kafka.topics
    runtime.consume(topics.submitted, stream.submitted_handler(service))
    journeys = JourneyLog(runtime.db)
    # Nobody waits on the journey: its steps are gathered longer and stored together.
    metrics, within_s = runtime.metrics, settings.kafka.background_batch_within_s
    runtime.consume(
        topics.enriched,
        journey_handler(EnrichedInteraction, enriched_step, journeys, metrics),
        within_s,
    )
    runtime.consume(
        topics.assignments,
        journey_handler(Assignment, assignment_step, journeys, metrics),
        within_s,
    )
    runtime.consume(
        topics.deliveries,
        journey_handler(DeliveryAttempt, delivery_step, journeys, metrics),
        within_s,
    )
    service.journeys = journeys
    limits = FeedLimits(settings.feed_max_bytes, settings.feed_timeout_s, settings.feed_concurrency)
    poller = FeedPoller(repository, service, settings.allow_hosts, limits=limits)
    service.feed_deleted = poller.cancel  # a deleted feed's poll stops at once
    app = service_app(
        runtime,
        [api.router],
        startup=[repository.ensure_indexes, journeys.ensure_indexes],
        background=[poller.run],
        outboxes=[interactions],
    )
    service.spans = runtime.spans
    app.state.service = service
    return app
