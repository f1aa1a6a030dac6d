"""Reading a topic again, on the embedded broker: from its start, as every service does
when the broker lost its log, and where records were passed over unhandled. Each read
must hold whatever Faust does next."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.contrib.asgi import faust_app_running
from faust.types import TP

from shared import kafka
from shared.embedded import EmbeddedStack
from shared.metrics import service_metrics
from shared.settings import KafkaSettings, ServiceSettings
from tests.support import eventually, kafka_settings

RECORDS = 30


@asynccontextmanager
async def consuming(
    settings: ServiceSettings, topic: str, handled: Counter[str]
) -> AsyncIterator[faust.App]:
    """A service's stream app on ``topic``, counting how often it handled each record
    (by partition and offset)."""

    async def handle(batch: Sequence[kafka.RawEvent]) -> None:
        handled.update(f"{raw.partition}:{raw.offset}" for raw in batch)

    app = kafka.create_stream_app("rewind", settings)
    kafka.consume_batches(app, topic, handle, settings.kafka, service_metrics("rewind"), "rewind")
    async with faust_app_running(app, stop_timeout=5.0):
        yield app


async def committed(settings: KafkaSettings, topic: str) -> dict[int, int | None]:
    """The group's committed offset per partition, as the broker holds it."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id("rewind"),
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        return {tp.partition: await consumer.committed(tp) for tp in partitions}
    finally:
        await consumer.stop()


async def test_a_topic_read_again_stays_read_again_when_faust_seeks_to_committed_offsets(
    stack: EmbeddedStack, namespace: str, tmp_path: Path
) -> None:
    """Faust seeks back to the committed offsets whenever its flow stops or the group
    rebalances, and a broker restart brings both. Until something read again is
    committed, those are the offsets committed before: seeking there would skip
    everything below them."""
    settings = ServiceSettings(
        kafka=kafka_settings(stack.bootstrap_servers, namespace), data_dir=tmp_path
    )
    topic = f"{namespace}.rewound"
    await kafka.ensure_topics(settings.kafka, [topic])
    await produce(settings.kafka, topic, RECORDS)
    handled: Counter[str] = Counter()

    async def all_committed() -> bool:
        offsets = await committed(settings.kafka, topic)
        return sum(offset or 0 for offset in offsets.values()) == RECORDS

    async def all_handled_twice() -> bool:
        return len(handled) == RECORDS and set(handled.values()) == {2}

    async with consuming(settings, topic, handled) as app:
        await eventually(all_committed, timeout_s=30)
        assert len(handled) == RECORDS
        assert set(handled.values()) == {1}

        await kafka.rewind(app)
        # What Faust does on a rebalance: its flow stops, it seeks back to the committed
        # offsets, the flow resumes. Stopping the flow before anything is fetched again
        # keeps a commit of records read again from landing before the seek (a commit
        # that would move the seek, and handle some records a third time).
        app.consumer.stop_flow()
        await app.consumer.perform_seek()
        app.consumer.resume_flow()

        await eventually(all_handled_twice, timeout_s=30)


async def test_records_passed_over_unhandled_are_read_again(
    stack: EmbeddedStack, namespace: str, tmp_path: Path
) -> None:
    """Faust drops what it fetched for a group generation a rebalance has ended, and
    where no seek brings those records back its commits wait below them for good. Here
    the consumer is moved past three records before they arrive, as such a drop leaves
    it: the watch must bring them back."""
    settings = ServiceSettings(
        kafka=kafka_settings(stack.bootstrap_servers, namespace), data_dir=tmp_path
    )
    topic = f"{namespace}.holed"
    await kafka.ensure_topics(settings.kafka, [topic])
    await produce(settings.kafka, topic, RECORDS, partition=0)
    handled: Counter[str] = Counter()

    async with consuming(settings, topic, handled) as app:
        await eventually(committed_to(settings.kafka, topic, RECORDS), timeout_s=30)
        await app.consumer.seek(TP(topic, 0), RECORDS + 3)
        await produce(settings.kafka, topic, 10, partition=0)
        later = {f"0:{offset}" for offset in range(RECORDS, RECORDS + 10)}

        async def the_later_ones_handled() -> bool:
            await kafka.read_holes_again(app, after_s=0.5)
            return later <= handled.keys()

        await eventually(the_later_ones_handled, timeout_s=30, interval_s=0.25)
        await eventually(committed_to(settings.kafka, topic, RECORDS + 10), timeout_s=30)


def committed_to(settings: KafkaSettings, topic: str, end: int) -> Callable[[], Awaitable[bool]]:
    """Whether the group has committed partition 0 up to ``end``."""

    async def check() -> bool:
        return (await committed(settings, topic))[0] == end

    return check


async def produce(
    settings: KafkaSettings, topic: str, count: int, partition: int | None = None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, b"{}", key=f"k{i}".encode(), partition=partition)
    finally:
        await producer.stop()
