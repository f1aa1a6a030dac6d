"""Publishing a consumed batch's output straight to Kafka: consume, transform, produce.

A stage whose trigger is a Kafka record needs no outbox. Its handler stores its effect
(idempotent), sends the events it derives (ids derived from the input's, so the same
input always gives the same ids) and returns only once the broker acknowledged every one
of them; the consumer commits the input's offsets after the handler returns. A crash
before the commit replays the input, which stores nothing twice and sends the same
events again, which consumers downstream drop by event id. Nothing is lost, and in
effect nothing is doubled, for one store write fewer per event than an outbox costs.

A producer that lost its connection is replaced (see ``kafka._retire_on_lost_connection``),
and a new one sends only once the topics it writes to exist: a broker that restarted
empty would take records for a topic it does not have, and its offsets would start again
over them once the topic is made.

An event the broker refuses for good (too large for it, a topic it will never take)
raises ``OutputRefused``, which is no outage: the consumer's retries then single out the
input record that derives it and dead-letter that record, and the partition goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.events import CloudEvent, encode
from shared.kafka import (
    OutputRefused,
    check_topic_name,
    ensure_topics,
    refused_for_good,
    started_producer,
)
from shared.logging import get_logger
from shared.metrics import ServiceMetrics
from shared.settings import KafkaSettings

log = get_logger(__name__)

Output = tuple[str, str, CloudEvent[Any]]  # topic, key, event
STOP_WAIT_S = 5.0  # a producer stop that hangs (aio-libs/aiokafka#1101) is given up on


class Emitter:
    """One producer per service for the events its consumers derive (see above)."""

    def __init__(self, settings: KafkaSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self._topics_there: set[str] = set()  # known to exist since the producer started
        self._starting = asyncio.Lock()

    async def emit(self, outputs: Sequence[Output]) -> None:
        """Send ``outputs`` in order and wait until the broker acknowledged all of them."""
        if not outputs:
            return
        producer = await self._started({topic for topic, _, _ in outputs})
        try:
            deliveries = [await self._send(producer, *output) for output in outputs]
            await asyncio.gather(*deliveries)
        except KafkaError as exc:
            if refused_for_good(exc):
                raise OutputRefused(f"the broker refuses an event for good: {exc!r}") from exc
            await self.close()  # it may have retired itself: the next try makes a new one
            raise
        for topic, _, _ in outputs:
            self.metrics.events_out.labels(topic).inc()

    @staticmethod
    async def _send(
        producer: AIOKafkaProducer, topic: str, key: str, event: CloudEvent[Any]
    ) -> asyncio.Future[Any]:
        check_topic_name(topic)
        record = encode(event, key)
        delivery: asyncio.Future[Any] = await producer.send(
            topic, value=record.value, key=record.key, headers=record.headers
        )
        return delivery

    async def _started(self, topics: set[str]) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                self._topics_there.clear()
                self._producer = await started_producer(self.settings)
            if missing := topics - self._topics_there:
                await ensure_topics(self.settings, sorted(missing))
                self._topics_there |= missing
            return self._producer

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), STOP_WAIT_S)
        except TimeoutError:
            log.warning("emitter's producer did not stop in time; left behind")
