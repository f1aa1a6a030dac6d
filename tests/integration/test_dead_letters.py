"""Poison is moved aside, never blocking, on the embedded broker and store: an outbox
entry the broker refuses for good, and a consumed record whose handling always fails.
What is only slow or away (a broker timing out) is waited out, never dead-lettered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaTimeoutError
from faust.contrib.asgi import faust_app_running
from prometheus_client import REGISTRY
from pymongo import AsyncMongoClient

from shared import kafka
from shared.embedded import EmbeddedStack
from shared.events import CloudEvent
from shared.metrics import service_metrics
from shared.mongo import Document
from shared.outbox import DeadEntry, Outbox, OutboxRelay
from shared.settings import KafkaSettings, ServiceSettings
from tests.integration.test_outbox import Note, pending_in_store, relay_running
from tests.support import eventually, kafka_settings, read_topic, topic_partitions

MAX_MESSAGE_BYTES = 16_384


def dead_letters_counted(service: str, source: str, reason: str) -> float:
    labels = {"source": source, "reason": reason}
    return REGISTRY.get_sample_value(f"switchboard_{service}_dead_letters_total", labels) or 0.0


def note(topic: str, event_id: str, text: str | None = None) -> tuple[str, str, CloudEvent[Note]]:
    data = Note(text=event_id if text is None else text)
    return topic, "key", CloudEvent[Note](id=event_id, source="test", type="test.note", data=data)


def too_large(topic: str, event_id: str) -> tuple[str, str, CloudEvent[Note]]:
    return note(topic, event_id, "x" * (2 * MAX_MESSAGE_BYTES))


async def test_entries_the_broker_refuses_for_good_are_moved_aside_and_the_rest_published(
    client: AsyncMongoClient[Document], stack: EmbeddedStack, namespace: str
) -> None:
    outbox = Outbox(client[namespace])
    await outbox.ensure_indexes()
    settings = kafka_settings(stack.bootstrap_servers, namespace).model_copy(
        update={"max_message_bytes": MAX_MESSAGE_BYTES}
    )
    relay = OutboxRelay(outbox, settings, service_metrics(namespace))
    topic = f"{namespace}.notes"
    bad_topic = "bad topic!"  # the embedded broker takes it; Kafka would not
    await outbox.add([note(topic, "before"), too_large(topic, "too-large")])
    await outbox.add([note(bad_topic, "bad-topic"), *(note(topic, f"after-{n}") for n in range(5))])

    async with relay_running(relay):
        started = time.monotonic()
        published = await read_topic(settings, topic, Note, expect=6, timeout_s=60)
        took_s = time.monotonic() - started
        announced = await read_topic(settings, settings.topics.outbox_dead, DeadEntry, expect=2)

        async def all_marked() -> bool:
            return await pending_in_store(outbox) == []

        async def nothing_held() -> bool:
            return relay.oldest_pending_s() == 0

        await eventually(all_marked)
        await eventually(nothing_held)
    dead = {doc["_id"]: doc async for doc in outbox.dead.find({})}
    stored = {i: await outbox.find(i) for i in ("before", "too-large")}
    published_at = {i: await outbox.published_at(e) for i, e in stored.items() if e is not None}

    assert [event.id for _, event in published] == ["before", *(f"after-{n}" for n in range(5))]
    assert took_s < 30  # not held up by the refused ones (in practice, well under a second)
    assert set(dead) == {"too-large", "bad-topic"}
    assert dead["too-large"]["reason"].startswith("MessageSizeTooLargeError")
    assert published_at["before"] is not None
    assert published_at["too-large"] is None  # moved aside, never published
    assert dead["bad-topic"]["reason"].startswith("InvalidTopicError")
    assert (
        dead["too-large"]["entry"]["value_text"] == too_large(topic, "")[2].data.model_dump_json()
    )
    by_id = {event.data.event_id: event.data for _, event in announced}
    assert set(by_id) == {"too-large", "bad-topic"}
    assert (by_id["too-large"].topic, by_id["too-large"].key) == (topic, "key")
    assert by_id["too-large"].size > MAX_MESSAGE_BYTES
    assert by_id["too-large"].reason.startswith("MessageSizeTooLargeError")
    assert by_id["bad-topic"].topic == bad_topic
    assert dead_letters_counted(namespace, "outbox", "MessageSizeTooLargeError") == 1
    assert dead_letters_counted(namespace, "outbox", "InvalidTopicError") == 1


class SendsTimeOut(OutboxRelay):
    """A relay whose producers' sends time out (a broker too slow to answer) while
    ``failing`` is set: a failure aiokafka does not mark retriable, yet one to wait out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failing = True
        self.failures = 0

    async def _connected_producer(self) -> AIOKafkaProducer:
        producer = await super()._connected_producer()
        send = producer.send

        async def timing_out(*args: Any, **kwargs: Any) -> asyncio.Future[Any]:
            if self.failing:
                self.failures += 1
                raise KafkaTimeoutError("no answer in time")
            delivery: asyncio.Future[Any] = await send(*args, **kwargs)
            return delivery

        producer.send = timing_out
        return producer


async def test_a_relay_whose_sends_time_out_retries_shows_its_age_and_moves_nothing_aside(
    client: AsyncMongoClient[Document], stack: EmbeddedStack, namespace: str
) -> None:
    outbox = Outbox(client[namespace])
    await outbox.ensure_indexes()
    settings = kafka_settings(stack.bootstrap_servers, namespace)
    relay = SendsTimeOut(outbox, settings, service_metrics(namespace))
    topic = f"{namespace}.notes"
    await outbox.add([note(topic, f"n{n}") for n in range(3)])

    async def stuck_a_while() -> bool:
        return relay.failures >= 3 and relay.oldest_pending_s() >= 1.0

    async def caught_up() -> bool:
        return relay.oldest_pending_s() == 0

    async with relay_running(relay):
        await eventually(stuck_a_while, timeout_s=60)
        assert await outbox.dead.count_documents({}) == 0
        relay.failing = False
        published = await read_topic(settings, topic, Note, expect=3, timeout_s=60)
        await eventually(caught_up)

    assert [event.id for _, event in published] == ["n0", "n1", "n2"]
    assert await outbox.dead.count_documents({}) == 0
    assert dead_letters_counted(namespace, "outbox", "KafkaTimeoutError") == 0


async def test_a_record_whose_handling_always_fails_is_dead_lettered_and_its_partition_moves_on(
    stack: EmbeddedStack, namespace: str, tmp_path: Path
) -> None:
    kafka_config = kafka_settings(stack.bootstrap_servers, namespace).model_copy(
        update={"attempts_before_dead_letter": 3}
    )
    settings = ServiceSettings(kafka=kafka_config, data_dir=tmp_path)
    topic = f"{namespace}.poisoned"
    await kafka.ensure_topics(kafka_config, [topic])
    values = [b"poison" if n == 3 else f"ok-{n}".encode() for n in range(10)]
    await produce_to_partition_0(kafka_config, topic, values)
    handled: list[bytes] = []

    async def handle(batch: Sequence[kafka.RawEvent]) -> None:
        if any(raw.value == b"poison" for raw in batch):
            raise ValueError("this record breaks the model")
        handled.extend(raw.value for raw in batch)

    app = kafka.create_stream_app("poisoned", settings)
    metrics = service_metrics(namespace)
    kafka.consume_batches(app, topic, handle, kafka_config, metrics, "poisoned")
    async with faust_app_running(app, stop_timeout=5.0):
        await eventually(lambda: committed_through(kafka_config, topic, 10), timeout_s=60)
    dead = await read_records(kafka_config, kafka_config.topics.consumed_dead, expect=1)

    assert sorted(set(handled)) == sorted(v for v in values if v != b"poison")
    [record] = dead
    headers = {name: value.decode() for name, value in record.headers}
    assert (record.key, record.value) == (b"k3", b"poison")
    assert headers["switchboard-dead-reason"] == "ValueError: this record breaks the model"
    assert headers["switchboard-dead-topic"] == topic
    assert (headers["switchboard-dead-partition"], headers["switchboard-dead-offset"]) == ("0", "3")
    assert headers["switchboard-dead-consumer"] == "poisoned"
    assert headers["original"] == "kept"
    assert dead_letters_counted(namespace, topic, "ValueError") == 1


async def committed_through(settings: KafkaSettings, topic: str, end: int) -> bool:
    """Whether the poisoned consumer's group has committed partition 0 up to ``end``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id("poisoned"),
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        return bool(await consumer.committed(TopicPartition(topic, 0)) == end)
    finally:
        await consumer.stop()


async def produce_to_partition_0(settings: KafkaSettings, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for n, value in enumerate(values):
            key = f"k{n}".encode()
            headers = [("original", b"kept")]
            await producer.send_and_wait(topic, value, key=key, partition=0, headers=headers)
    finally:
        await producer.stop()


async def read_records(settings: KafkaSettings, topic: str, expect: int) -> list[Any]:
    """Every record on ``topic`` once ``expect`` are there (or after 30 s)."""
    deadline = time.monotonic() + 30
    partitions: list[TopicPartition] = await topic_partitions(settings, topic, deadline)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen: list[Any] = []
        while len(seen) < expect and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                seen += batch
        return seen
    finally:
        await consumer.stop()
