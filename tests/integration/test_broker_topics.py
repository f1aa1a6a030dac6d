"""Topics on the embedded broker: none is made by asking for its metadata, and a producer
that lost its broker writes nothing to a new, empty one before its topics are created
again. Either would leave a topic other than the services expect. So a service creates
what it needs itself, Faust's leader topic included."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, UnknownTopicOrPartitionError

from services.router.config import RouterSettings
from services.router.main import create_app
from shared import kafka
from shared.embedded import EmbeddedStack, free_port
from tests.support import client_of, kafka_settings, service_settings, topic_partitions


async def test_asking_for_a_missing_topic_creates_nothing(
    stack: EmbeddedStack, namespace: str
) -> None:
    """The embedded broker creates a missing topic someone asks metadata for, with 4
    partitions of its own choosing, unless the request says not to."""
    topic = f"{namespace}.asked-for"
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap_servers, request_timeout_ms=1000)
    await producer.start()
    try:
        with pytest.raises(UnknownTopicOrPartitionError):
            await producer.partitions_for(topic)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap_servers)
    await consumer.start()
    try:
        assert topic not in await consumer.topics()
    finally:
        await consumer.stop()


async def test_a_producer_that_lost_its_broker_sends_nothing_to_the_new_one(
    namespace: str, tmp_path: Path
) -> None:
    """aiokafka would send a record held across the restart to the new broker at once, to
    a topic that broker does not have; creating the topic afterwards would start its
    offsets again over that record. The producer must fail the record instead, and the
    topic created again must start empty."""
    broker = EmbeddedStack(tmp_path, free_port(), free_port())
    broker.logs.mkdir(parents=True)
    broker.start_broker()
    settings = kafka_settings(broker.bootstrap_servers, namespace)
    topic = settings.topics.all()[0]
    try:
        await kafka.ensure_topics(settings, [topic])
        producer = kafka.create_producer(settings)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"before", partition=0)
            broker.stop_broker()
            await asyncio.sleep(0.5)  # the connection is seen closed
            broker.start_broker()
            with pytest.raises(KafkaConnectionError):
                await asyncio.wait_for(producer.send_and_wait(topic, b"held", partition=0), 15)
        finally:
            await producer.stop()

        await asyncio.sleep(1.0)  # time for anything still held to reach the new broker
        await kafka.ensure_topics(settings, [topic])
        replacement = kafka.create_producer(settings)
        await replacement.start()
        try:
            first = await replacement.send_and_wait(topic, b"after", partition=0)
        finally:
            await replacement.stop()
        assert first.offset == 0
    finally:
        broker.stop()


async def test_a_service_creates_its_groups_leader_topic(
    stack: EmbeddedStack, namespace: str, tmp_path: Path
) -> None:
    """Faust reads its consumer group's leader topic and creates none (nor may it in
    prod); the service makes it with one partition, as the prod manifests declare it."""
    settings = service_settings(RouterSettings, stack, namespace, tmp_path)
    leader = kafka.leader_topic(settings.kafka, "router")
    async with client_of(create_app(settings)):
        partitions = await topic_partitions(settings.kafka, leader, deadline=0)
    assert [tp.partition for tp in partitions] == [0]
