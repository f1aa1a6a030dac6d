"""Which failures move a record aside and which are waited out: a consumer's batch that
keeps failing is handled a record at a time and only its poison is dead-lettered; an
outage, which fails every record, dead-letters nothing however long it lasts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    InvalidTopicError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import RecordMetadata
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

from shared.kafka import (
    REFUSED_FOR_GOOD,
    DeadLetters,
    Handling,
    RawEvent,
    is_outage,
    is_valid_topic_name,
    refused_for_good,
)
from shared.metrics import service_metrics
from shared.mongo import Document
from shared.outbox import Outbox, OutboxRelay
from shared.settings import KafkaSettings


class KeptDeadLetters(DeadLetters):
    """Dead letters kept in a list instead of sent."""

    def __init__(self) -> None:
        super().__init__(KafkaSettings(), service_metrics("deadletters"), "test")
        self.sent: list[tuple[bytes, str]] = []

    async def send(self, raw: RawEvent, reason: str) -> None:
        self.sent.append((raw.value, reason))


def records(*values: str) -> list[RawEvent]:
    return [RawEvent([], value.encode(), b"k", "topic", 0, n) for n, value in enumerate(values)]


def test_only_refusals_of_the_record_itself_are_for_good() -> None:
    assert all(not error.retriable for error in REFUSED_FOR_GOOD)
    for refusal in (
        MessageSizeTooLargeError(),
        InvalidTopicError(),
        TopicAuthorizationFailedError(),
    ):
        assert refused_for_good(refusal)
    # Not retriable by aiokafka's flag, yet waited out: a timeout says nothing of the record.
    for passing in (KafkaTimeoutError(), KafkaConnectionError(), RequestTimedOutError()):
        assert not refused_for_good(passing)
    assert not refused_for_good(NotLeaderForPartitionError())


def test_topic_names_kafka_refuses() -> None:
    assert is_valid_topic_name("switchboard.outbox.dead.v1")
    assert not is_valid_topic_name("bad topic!")
    assert not is_valid_topic_name("..")
    assert not is_valid_topic_name("x" * 250)


def outage_wrapped() -> RuntimeError:
    """An error some library raised while handling a store's outage."""
    try:
        raise AutoReconnect("store gone")
    except AutoReconnect as exc:
        try:
            raise RuntimeError("could not store the batch") from exc
        except RuntimeError as wrapped:
            return wrapped


def test_an_error_raised_from_an_outage_is_an_outage() -> None:
    assert is_outage(outage_wrapped())
    assert is_outage(TimeoutError())
    assert not is_outage(ValueError("bad record"))


async def test_a_poison_record_is_dead_lettered_and_the_others_are_handled_in_order() -> None:
    handled: list[bytes] = []

    async def handle(batch: Sequence[RawEvent]) -> None:
        if any(raw.value == b"poison" for raw in batch):
            raise ValueError("cannot handle this one")
        handled.extend(raw.value for raw in batch)

    dead = KeptDeadLetters()
    await Handling(handle, "test", dead, attempts=2).until_stored(records("a", "poison", "b"))

    assert handled == [b"a", b"b"]
    assert dead.sent == [(b"poison", "ValueError: cannot handle this one")]


async def test_an_outage_is_waited_out_and_dead_letters_nothing() -> None:
    failures = iter([AutoReconnect("store gone")] * 4)  # more than the attempts allowed
    handled: list[bytes] = []

    async def handle(batch: Sequence[RawEvent]) -> None:
        if (failure := next(failures, None)) is not None:
            raise failure
        handled.extend(raw.value for raw in batch)

    dead = KeptDeadLetters()
    await Handling(handle, "test", dead, attempts=2).until_stored(records("a", "b"))

    assert handled == [b"a", b"b"]
    assert dead.sent == []


async def test_a_record_failing_while_the_store_does_not_answer_is_not_dead_lettered() -> None:
    """A failure that does not look like an outage, while the store is away, is still
    taken for one: the record is tried again once the store is back."""
    pings = 0

    async def store_answers() -> bool:
        nonlocal pings
        pings += 1
        return False  # away when asked; back just after

    async def handle(batch: Sequence[RawEvent]) -> None:
        if pings == 0:
            raise RuntimeError("a driver error of some other kind")

    dead = KeptDeadLetters()
    await Handling(handle, "test", dead, attempts=2, store_answers=store_answers).until_stored(
        records("a")
    )

    assert pings == 1
    assert dead.sent == []


async def test_when_no_record_can_be_handled_none_is_dead_lettered() -> None:
    """A handler that fails on every record (a bug just deployed, say) breaks the
    service, not the records: its batches are retried, not emptied into dead letters."""
    calls = 0

    async def handle(batch: Sequence[RawEvent]) -> None:
        nonlocal calls
        calls += 1
        if calls <= 12:  # the bug, until it is fixed
            raise AttributeError("'NoneType' object has no attribute 'tier'")

    dead = KeptDeadLetters()
    await Handling(handle, "test", dead, attempts=2).until_stored(records("a", "b", "c"))

    assert calls == 13
    assert dead.sent == []


class Broker:
    """A producer's stand-in: refuses a partition batch as a whole for one record too
    large in it (as Kafka does), and takes anything sent alone but that record."""

    def __init__(self, too_large: bytes) -> None:
        self.too_large = too_large
        self.pending: list[tuple[str, bytes, asyncio.Future[RecordMetadata]]] = []
        self.published: list[tuple[str, bytes]] = []

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[RecordMetadata]:
        delivery: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self.pending.append((topic, value, delivery))
        asyncio.get_running_loop().call_soon(self.flush)
        return delivery

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        refused = any(self.too_large in value for _, value, _ in batch)
        for topic, value, delivery in batch:
            if refused:
                delivery.set_exception(MessageSizeTooLargeError("a record is too large"))
                continue
            self.published.append((topic, value))
            offset = len(self.published)
            delivery.set_result(RecordMetadata(topic, 0, TopicPartition(topic, 0), offset, 0, 0, 0))


class KeptAside(Outbox):
    """An outbox that keeps what it moves aside in a dict."""

    def __init__(self, client: AsyncMongoClient[Document]) -> None:
        super().__init__(client["deadletters"])
        self.aside: dict[str, str] = {}

    async def move_aside(self, entry: Document, reason: str) -> bool:
        self.aside[entry["_id"]] = reason
        return True

    async def announced(self, event_id: str) -> None:
        pass


def entry(event_id: str, value: str) -> Document:
    return {"_id": event_id, "topic": "notes", "key_text": "k", "value_text": value}


async def test_of_a_batch_the_broker_refused_only_the_record_refused_alone_is_moved_aside() -> None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(connect=False)  # never used here
    outbox = KeptAside(client)
    relay = OutboxRelay(outbox, KafkaSettings(), service_metrics("deadletters"))
    broker = Broker(too_large=b"HUGE")
    entries = [entry("a", "first"), entry("big", "HUGE"), entry("c", "last")]

    sent = await relay._send(cast(AIOKafkaProducer, broker), entries)

    assert [e["_id"] for e, _ in sent] == ["a", "c"]  # sent again alone, "c" went through
    assert list(outbox.aside) == ["big"]
    assert outbox.aside["big"].startswith("MessageSizeTooLargeError")
    assert [value for topic, value in broker.published if topic == "notes"] == [b"first", b"last"]
    dead = [value for topic, value in broker.published if topic.endswith("outbox.dead.v1")]
    assert len(dead) == 1
    assert b"HUGE" not in dead[0]  # what it was and why, never its value
    await client.close()
