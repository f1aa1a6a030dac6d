"""Publishing a consumed batch's output straight to Kafka: consume, transform, produce.

A stage whose trigger is a Kafka record needs no outbox. Its handler stores its effect
(idempotent), sends the events it derives (ids derived from the input's, so the same
input always gives the same ids) and returns only once the broker acknowledged every one
of them; the consumer commits the input's offsets after the handler returns. A crash
before the commit replays the input, which stores nothing twice and sends the same
events again, which consumers downstream drop by event id. Nothing is lost, and in
effect nothing is doubled, for one store write fewer per event than an outbox costs.

Its producer is a ``kafka.LazyProducer``: replaced after a failure that may have retired
it, and handed out only once the topics it writes to exist.

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
from shared.kafka import LazyProducer, OutputRefused, check_topic_name, refused_for_good
from shared.metrics import ServiceMetrics
from shared.settings import KafkaSettings

Output = tuple[str, str, CloudEvent[Any]]  # topic, key, event


class Emitter:
    """One producer per service for the events its consumers derive (see above)."""

    def __init__(self, settings: KafkaSettings, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        self._producer = LazyProducer(settings)

    async def emit(self, outputs: Sequence[Output]) -> None:
        """Send ``outputs`` in order and wait until the broker acknowledged all of them."""
        if not outputs:
            return
        producer = await self._producer.ready({topic for topic, _, _ in outputs})
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

    async def close(self) -> None:
        await self._producer.drop()
