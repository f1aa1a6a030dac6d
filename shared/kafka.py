"""Kafka wiring: topics, the producer, and Faust stream apps that consume in batches.

Consumers take what a poll returns (``take_events``), hand the whole batch to the
service, and only when the service has stored its effect do the events count as
processed; Faust then commits their offsets. A batch whose handling fails is
retried, never skipped, so nothing is committed before it is stored or dead-lettered:
a record that fails for a reason other than an outage, again and again, is isolated
(its batch is handled a record at a time) and published to the dead-letter topic,
and only once the broker acknowledged it does the partition move on past it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import CloseReason
from aiokafka.errors import (
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
from aiokafka.protocol.metadata import MetadataRequest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from pymongo.errors import PyMongoError

from shared.events import CloudEvent, DataT, UndecodableEvent, decode, utcnow
from shared.logging import get_logger
from shared.metrics import ServiceMetrics
from shared.settings import KafkaSettings, ServiceSettings

log = get_logger(__name__)


def _ask_for_metadata_without_creating_topics() -> None:
    """aiokafka asks for a missing topic's metadata with auto-creation on, whatever its
    caller (a producer's first send, a consumer's subscription, a probe), and the
    embedded broker then creates the topic with its own default of 4 partitions. After
    the broker lost its topics that would race the services' own creation with the
    configured count: keys spread over partitions that the consumers, sized for the
    configured count, were never assigned. Topics are made on purpose only
    (``ensure_topics``, or the platform's manifests)."""
    ask = MetadataRequest.__init__

    def without_creating(
        self: MetadataRequest,
        topics: list[str] | None = None,
        allow_auto_topic_creation: bool | None = False,
    ) -> None:
        ask(self, topics, allow_auto_topic_creation)

    MetadataRequest.__init__ = without_creating


_ask_for_metadata_without_creating_topics()


@dataclass(frozen=True)
class RawEvent:
    """One consumed record, before the service decodes it."""

    headers: list[tuple[str, bytes]]
    value: bytes
    key: bytes
    topic: str
    partition: int
    offset: int


BatchHandler = Callable[[Sequence[RawEvent]], Awaitable[None]]


def connection_args(settings: KafkaSettings) -> dict[str, Any]:
    """aiokafka's arguments for reaching the brokers with the configured security."""
    args: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        args["ssl_context"] = _ssl_context(settings)
    if settings.security_protocol.startswith("SASL"):
        args["sasl_mechanism"] = settings.sasl_mechanism
        args["sasl_plain_username"] = settings.sasl_username
        args["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return args


def stream_credentials(settings: KafkaSettings) -> faust.auth.Credentials | None:
    """The same security for the Faust consumers."""
    protocol = settings.security_protocol
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            mechanism=settings.sasl_mechanism,
            ssl_context=_ssl_context(settings) if protocol == "SASL_SSL" else None,
        )
    if protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(settings))
    return None


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    cafile = str(settings.ssl_cafile) if settings.ssl_cafile is not None else None
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)


def create_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        **connection_args(settings),
        enable_idempotence=settings.idempotence,
        acks="all",
        linger_ms=2,
        request_timeout_ms=10_000,
        max_request_size=settings.max_message_bytes,
    )
    _retire_on_lost_connection(producer)
    return producer


async def started_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    """A producer connected to the brokers (stopped again if it could not start)."""
    producer = create_producer(settings)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


class LazyProducer:
    """A producer made at its first use, and again after a failure that may have retired
    it (see ``_retire_on_lost_connection``: call ``drop``). It is handed out only once the
    topics it writes to exist: a broker that restarted empty would take records for a
    topic it does not have, and start the topic's offsets again over them once made."""

    def __init__(self, settings: KafkaSettings, stop_wait_s: float = 5.0) -> None:
        self.settings = settings
        self.stop_wait_s = stop_wait_s  # a stop that hangs (aio-libs/aiokafka#1101)
        self._producer: AIOKafkaProducer | None = None
        self._topics_there: set[str] = set()  # known to exist since it started
        self._starting = asyncio.Lock()

    async def ready(self, topics: Iterable[str]) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                self._topics_there.clear()
                self._producer = await started_producer(self.settings)
            if missing := set(topics) - self._topics_there:
                await ensure_topics(self.settings, sorted(missing))
                self._topics_there |= missing
            return self._producer

    async def drop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), self.stop_wait_s)
        except TimeoutError:
            log.warning("producer did not stop in time; left behind")
        except Exception as exc:
            log.info("producer stopped with an error", error=repr(exc))


_LOST = (CloseReason.CONNECTION_BROKEN, CloseReason.CONNECTION_TIMEOUT)

# Refusals of a record or of its topic as such (by the broker, or by the producer before
# it sends): sending the same record again gets the same answer. None is retriable;
# anything else (a lost connection, a timeout, a leader moving) is worth waiting out.
REFUSED_FOR_GOOD: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    UnsupportedForMessageFormatError,
    PolicyViolationError,
)

# Kafka's rule for topic names. Some brokers (the embedded one) take any name, so a
# name Kafka would refuse is refused here, before it is sent anywhere.
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def refused_for_good(exc: BaseException) -> bool:
    """Whether sending the record again can only fail the same way."""
    return isinstance(exc, REFUSED_FOR_GOOD) and not exc.retriable


def check_topic_name(topic: str) -> None:
    """Raise ``InvalidTopicError`` for a name Kafka does not allow."""
    if topic in (".", "..") or not _TOPIC_NAME.fullmatch(topic):
        raise InvalidTopicError(f"not a valid topic name: {topic!r}")


def is_valid_topic_name(topic: str) -> bool:
    try:
        check_topic_name(topic)
    except InvalidTopicError:
        return False
    return True


def _retire_on_lost_connection(producer: AIOKafkaProducer) -> None:
    """From its first lost connection on, the producer connects to nothing more and fails
    every send it holds or is given, so that its owner replaces it.

    The broker it would reach next may be a new one that lost every topic (the embedded
    broker after a restart), and aiokafka would send what it holds there at once, on the
    topics it knew before. That broker takes records for topics it does not have, and
    creating such a topic afterwards starts its offsets from 0 again over them: later
    records collide with the earlier ones or overlap them, and consumers pass over some.
    A new producer is made only after its topics are created again, and waits for them to
    exist before it sends. What was failed goes out again from the outbox (consumers
    dedupe)."""
    client = producer.client
    on_closed = client._on_connection_closed
    get_conn = client._get_conn
    lost = False

    def on_connection_closed(conn: Any, reason: CloseReason) -> None:
        nonlocal lost
        on_closed(conn, reason)
        if reason in _LOST and not lost:
            lost = True
            log.info("producer lost its connection to the broker: retired", reason=reason.name)
            producer._message_accumulator.fail_all(
                KafkaConnectionError("the connection to the broker was lost")
            )

    async def connection(node_id: int, **kwargs: Any) -> Any:
        return None if lost else await get_conn(node_id, **kwargs)

    # aiokafka reads both on the client for each connection it opens.
    client._on_connection_closed = on_connection_closed
    client._get_conn = connection


async def ensure_topics(
    settings: KafkaSettings, names: Iterable[str], partitions: int | None = None
) -> None:
    """Create the topics a service uses, if they are not there yet (and it may), with
    ``partitions`` each (the configured count unless given)."""
    if not settings.create_topics:
        return
    admin = AIOKafkaAdminClient(**connection_args(settings))
    await admin.start()
    try:
        for name in names:
            compacted = settings.topics.is_compacted(name)
            configs = {"cleanup.policy": "compact"} if compacted else {}
            topic = NewTopic(
                name,
                partitions or settings.partitions,
                settings.replication_factor,
                topic_configs=configs,
            )
            try:
                await admin.create_topics([topic])
            except TopicAlreadyExistsError:
                continue
    finally:
        await admin.close()


class NotAssignedError(Exception):
    """The consumer holds no partitions (yet, or in a rebalance)."""


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Faust passes a fixed fetch wait of 1.5 s; aiokafka reads this attribute when the
        # consumer starts, so setting it here is the one way to configure it.
        consumer._fetch_max_wait_ms = cast(StreamTransport, transport).fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Partitions read again from the start that have committed nothing read since.
        self._from_start: set[TP] = set()
        # Where commits wait below what was acknowledged since: since when (monotonic).
        self._holes: dict[tuple[TP, int], float] = {}

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def read_again_from_start(self, drain_timeout_s: float) -> None:
        """Read every assigned partition again from offset 0, moving the consumer the way
        a rebalance does: fetching stopped, what was handed out handled and acknowledged,
        the offsets kept for the old log dropped (they mean nothing in the new one, and
        would hold back or corrupt its commits), then the seek. The partitions stay read
        from the start until an offset read since is committed (see ``perform_seek``)."""
        partitions = self.assignment()
        if not partitions:
            raise NotAssignedError("no partitions assigned yet: nothing to read again")
        self.stop_flow()
        try:
            await self.wait_for_stopped_flow()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait_empty(), drain_timeout_s)
            self._from_start |= partitions
            await self._seek_to_start(partitions)
        finally:
            self.resume_flow()

    async def perform_seek(self) -> None:
        """Faust's seek back to the committed offsets, which it makes whenever its flow
        stops or the group rebalances (a broker restart brings both). For a partition read
        again from the start nothing read since is committed yet: what the broker holds
        was committed from the consumer's old positions, reached in the new log before the
        loss was noticed, and seeking there would skip what lies below them for good."""
        await super().perform_seek()
        again = self._from_start & self.assignment()
        if again:
            await self._seek_to_start(again)

    async def _seek_to_start(self, partitions: set[TP]) -> None:
        for tp in partitions:
            self._forget_offsets(tp)
        await self.seek_wait(dict.fromkeys(partitions, 0))

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        committed: bool = await super()._commit_offsets(offsets, start_new_transaction)
        if committed:  # the broker holds an offset of the new log for these now
            self._from_start.difference_update(offsets)
        return committed

    async def read_holes_again(self, after_s: float) -> list[TP]:
        """Seek back to the committed offset each partition whose commits have waited
        ``after_s`` on offsets below everything acknowledged since: offsets that were
        handed out and dropped unhandled (Faust skips what it fetched for a group
        generation that a rebalance has ended) and that no seek brought back. Without
        this they would be handled only after the service restarts, and the partition's
        commits would wait as long (Faust commits past a gap only where it saw one in
        what it fetched)."""
        now = time.monotonic()
        holes = {
            (tp, committed)
            for tp, acked in self._acked.items()
            if acked
            and (committed := self._committed_offset.get(tp)) is not None
            and min(acked) > committed + 1  # where Faust's commit gives up
        }
        self._holes = {hole: self._holes.get(hole, now) for hole in holes}
        due = [hole for hole, since in self._holes.items() if now - since >= after_s]
        for tp, committed in due:
            del self._holes[(tp, committed)]
            await self.seek(tp, committed)
        return [tp for tp, _ in due]

    def _forget_offsets(self, tp: TP) -> None:
        # What Faust drops for a revoked partition.
        self._gap.pop(tp, None)
        self._acked.pop(tp, None)
        self._acked_index.pop(tp, None)
        self._read_offset.pop(tp, None)
        self._committed_offset.pop(tp, None)


class StreamTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport, with the fetch wait taken from the settings."""

    Consumer = _Consumer
    fetch_max_wait_ms = 500


def leader_topic(settings: KafkaSettings, service: str) -> str:
    """Faust's leader-election topic of the service's consumer group (one partition, as
    the prod manifests declare it). Faust only reads it, and ignores it where missing."""
    return f"{settings.group_id(service)}-__assignor-__leader"


def create_stream_app(service: str, settings: ServiceSettings) -> faust.App:
    """A Faust app for one service: consumer group per service, no web server of its own."""
    kafka = settings.kafka
    datadir = settings.data_dir / f"faust-{service}"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        kafka.group_id(service),
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
        broker_credentials=stream_credentials(kafka),
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=kafka.session_timeout_s,
        broker_heartbeat_interval=kafka.heartbeat_interval_s,
        broker_rebalance_timeout=kafka.session_timeout_s * 2,
        broker_commit_every=kafka.batch_size,
        broker_commit_interval=1.0,
        producer_acks=-1,
    )
    transport = StreamTransport(app.conf.broker_consumer, app)
    transport.fetch_max_wait_ms = kafka.fetch_max_wait_ms
    app.transport = transport
    return app


async def end_offsets(
    settings: KafkaSettings, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """Where each partition ends now (the offset the next record will get); a partition
    whose topic the broker does not have ends at 0."""
    consumer = AIOKafkaConsumer(**connection_args(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        existing = await consumer.topics()
        present = [tp for tp in partitions if tp.topic in existing]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(present) if present else {}
        return {tp: ends.get(tp, 0) for tp in partitions}
    finally:
        await consumer.stop()


def _consumer_of(app: faust.App) -> _Consumer:
    consumer = app.consumer
    assert isinstance(consumer, _Consumer), "the app was not made by create_stream_app"
    return consumer


async def rewind(app: faust.App, drain_timeout_s: float = 10.0) -> None:
    """Read every assigned partition again from its start (after the broker lost data)."""
    await _consumer_of(app).read_again_from_start(drain_timeout_s)


def past_their_end(
    positions: Mapping[TopicPartition, int | None], ends: Mapping[TopicPartition, int | None]
) -> list[TopicPartition]:
    """The partitions whose read position is beyond their end. A broker that keeps its log
    never ends a partition before a position its records led a consumer to, so these mean
    the broker lost the log (an in-memory broker restarted) and the consumer would wait
    for offsets it has in fact never seen. Unknown positions or ends prove nothing."""
    return sorted(
        tp
        for tp, position in positions.items()
        if position is not None and (end := ends.get(tp)) is not None and position > end
    )


async def read_holes_again(app: faust.App, after_s: float = 5.0) -> list[TP]:
    """``_Consumer.read_holes_again`` for the app's consumer."""
    return await _consumer_of(app).read_holes_again(after_s)


def lags(
    committed: Mapping[TopicPartition, int | None], ends: Mapping[TopicPartition, int | None]
) -> dict[TopicPartition, int]:
    """Records each partition holds past the offset committed as handled (none where
    the committed offset is past the end: a broker that lost its log). Unknown offsets
    or ends are left out."""
    return {
        tp: max(0, end - offset)
        for tp, offset in committed.items()
        if offset is not None and (end := ends.get(tp)) is not None
    }


@dataclass(frozen=True)
class Standing:
    """Where a consumer stands on each partition assigned to it: its fetch position, the
    end the broker reported with its last fetch response (no request of its own), and
    the offset its group committed as handled."""

    positions: dict[TopicPartition, int | None]
    ends: dict[TopicPartition, int | None]
    committed: dict[TopicPartition, int | None]

    def past_their_end(self) -> list[TopicPartition]:
        return past_their_end(self.positions, self.ends)

    def lags(self) -> dict[TopicPartition, int]:
        return lags(self.committed, self.ends)


async def standing(app: faust.App, timeout_s: float = 2.0) -> Standing:
    """The ``Standing`` of the app's consumer."""
    consumer = _consumer_of(app)
    positions: dict[TopicPartition, int | None] = {}
    ends: dict[TopicPartition, int | None] = {}
    committed: dict[TopicPartition, int | None] = {}
    for tp in consumer.assignment():
        # Position first, end after: an end only grows between two fetches and a position
        # never passes the end its own fetch reported, so this order cannot see a false loss.
        positions[tp] = await asyncio.wait_for(consumer.position(tp), timeout_s)
        ends[tp] = consumer.highwater(tp)
        offset = consumer._committed_offset.get(tp)  # the next to handle, as Kafka counts
        # Nothing committed: the group reads from the start (auto_offset_reset=earliest).
        committed[tp] = 0 if offset is None else offset
    return Standing(positions, ends, committed)


def is_assigned(app: faust.App) -> bool:
    """Whether the app's consumer holds partitions (it is part of its group)."""
    try:
        return bool(app.consumer.assignment())
    except Exception:  # the consumer is not started yet
        return False


def consume_batches(
    app: faust.App,
    topic: str,
    handler: BatchHandler,
    settings: KafkaSettings,
    metrics: ServiceMetrics,
    name: str,
    within_s: float | None = None,
    store_answers: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Run ``handler`` over batches from ``topic``, retrying a batch until it is stored or
    its poison records are dead-lettered (see ``Handling``). ``store_answers``: whether the
    service's database answers now (a failure while it does not is an outage)."""
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    within = settings.batch_within_s if within_s is None else within_s
    dead_letters = DeadLetters(settings, metrics, name)
    handling = Handling(
        handler,
        name,
        dead_letters,
        settings.attempts_before_dead_letter,
        store_answers or _answers,
    )

    async def agent(stream: Any) -> None:
        try:
            async for events in stream.take_events(settings.batch_size, within=within):
                batch = [_raw_event(event) for event in events]
                with metrics.handle_seconds.time():
                    await handling.until_stored(batch)
        finally:
            await dead_letters.close()

    app.agent(source, name=name, concurrency=1)(agent)


def _raw_event(event: Any) -> RawEvent:
    message = event.message
    headers = message.headers or []
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
    return RawEvent(
        headers=[(str(k), bytes(v) if v is not None else b"") for k, v in pairs],
        value=bytes(message.value or b""),
        key=bytes(message.key or b""),
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
    )


async def _answers() -> bool:
    return True


# Failures that say something the handler needs is unreachable or slow (the store, the
# broker, the network), not that the record is bad: retried for as long as they last.
OUTAGES: tuple[type[BaseException], ...] = (PyMongoError, KafkaError, OSError, TimeoutError)


class OutputRefused(ValueError):
    """The broker refuses for good an event a handler derived from its record: the record
    is poison, not the broker away, whatever Kafka error this was raised from."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from or while handling, is an outage."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OutputRefused):
            return False
        if isinstance(current, OUTAGES):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


# Records the handler running in this context refused as undecodable, with the reason:
# dead-lettered once the rest of their batch is stored.
_refused: ContextVar[list[tuple[RawEvent, str]] | None] = ContextVar("refused", default=None)


def refuse(raw: RawEvent, reason: str) -> None:
    """Have a record the handler cannot use (not a valid event) dead-lettered, if it runs
    under ``Handling``; its batch is then acknowledged without it."""
    refused = _refused.get()
    if refused is not None:
        refused.append((raw, reason))


@dataclass
class Handling:
    """How a consumer has a batch stored. The batch is retried with capped backoff;
    a failure that is an outage (``is_outage``) is retried for as long as it lasts.

    Once the batch failed ``attempts`` times for another reason, its records are tried
    one at a time, in order, each the same way. Those that fail alone ``attempts`` times
    are poison if the others are not: some record of the batch was handled, or it is the
    batch's only record, and the store answers. Poison goes to the dead-letter topic
    (acknowledged by the broker) and the partition moves on. When no record of the batch
    can be handled alone (``attempts`` in a row fail and none succeeded), the fault is
    the service's, not the records' (a store away, a handler that fails on everything):
    the batch is retried as a whole, and nothing is dead-lettered.

    One edge remains: Faust acks a ``take_events`` batch in a ``finally``, so if the app's
    stop times out while a batch is still failing here, that batch may be acked unstored.
    """

    handler: BatchHandler
    name: str
    dead_letters: DeadLetters
    attempts: int = 5
    store_answers: Callable[[], Awaitable[bool]] = field(default=_answers)

    async def until_stored(self, batch: Sequence[RawEvent]) -> None:
        while await self._tried(batch) is not None:
            log.warning("batch keeps failing: trying its records one by one", consumer=self.name)
            if await self._poison_isolated(batch):
                return
            log.warning("no record of the batch can be handled: retrying it", consumer=self.name)
            await asyncio.sleep(1.0)

    async def _poison_isolated(self, batch: Sequence[RawEvent]) -> bool:
        """Try each record alone; dead-letter those that fail while others do not. False
        (nothing dead-lettered) when the failures look like the service's own."""
        poison: list[tuple[RawEvent, Exception]] = []
        handled = False
        for raw in batch:
            failure = await self._tried([raw])
            if failure is None:
                handled = True
            else:
                poison.append((raw, failure))
                if not handled and len(poison) >= self.attempts:
                    return False
        if poison and not handled and len(batch) > 1:
            return False
        if poison and not await self.store_answers():
            return False  # the store is away: not the records' fault
        for raw, failure in poison:
            await self._dead_letter(raw, failure)
        return True

    async def _tried(self, records: Sequence[RawEvent]) -> Exception | None:
        """Handle ``records`` until they are stored (None), or until they failed
        ``attempts`` times for a reason other than an outage (the last such failure)."""
        delay, failures = 0.1, 0
        while True:
            refused: list[tuple[RawEvent, str]] = []
            token = _refused.set(refused)
            try:
                await self.handler(records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_outage(exc):
                    failures += 1
                    if failures >= self.attempts:
                        return exc
                log.exception(
                    "batch failed, retrying", consumer=self.name, size=len(records), retry_in=delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            finally:
                _refused.reset(token)
            for raw, reason in refused:
                await self.dead_letters.until_sent(raw, reason, "UndecodableEvent")
            return None

    async def _dead_letter(self, raw: RawEvent, failure: Exception) -> None:
        reason = f"{type(failure).__name__}: {failure}"
        await self.dead_letters.until_sent(raw, reason, type(failure).__name__)


# Headers a dead-lettered record carries besides its own.
DEAD_REASON = "switchboard-dead-reason"
DEAD_TOPIC = "switchboard-dead-topic"
DEAD_PARTITION = "switchboard-dead-partition"
DEAD_OFFSET = "switchboard-dead-offset"
DEAD_CONSUMER = "switchboard-dead-consumer"
DEAD_AT = "switchboard-dead-at"
DEAD_VALUE_LEFT_OUT = "switchboard-dead-value-left-out"  # its size, where it did not fit
TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
_DEAD_ACK_WAIT_S = 30.0  # aiokafka's sends can wait for ever (aio-libs/aiokafka#1101)


class DeadLetters:
    """Where a consumer moves the records it cannot handle: the dead-letter topic, each as
    it was consumed (key, value, headers), with ``switchboard-dead-*`` headers saying
    which topic, partition and offset it came from, which consumer gave up, when, why.
    Its producer is made at the first dead letter: most consumers never need one."""

    def __init__(self, settings: KafkaSettings, metrics: ServiceMetrics, consumer: str) -> None:
        self.settings = settings
        self.metrics = metrics
        self.consumer = consumer
        self.topic = settings.topics.consumed_dead
        self._producer = LazyProducer(settings)

    async def until_sent(self, raw: RawEvent, reason: str, kind: str) -> None:
        """Send ``raw`` to the dead-letter topic, retrying until the broker acknowledged it:
        its offset may not be committed before."""
        delay = 0.1
        whole = True
        while True:
            try:
                await self.send(raw if whole else _value_left_out(raw), reason)
                break
            except (KafkaError, OSError, TimeoutError) as exc:
                if whole and isinstance(exc, TOO_LARGE):
                    # The record and the headers added are more than the broker takes: it
                    # goes without its value, which stays on its topic at the offset named.
                    log.warning("dead letter too large: sent without its value", error=repr(exc))
                    whole = False
                    continue
                # Refused for good too (a topic or ACL missing): the partition waits, and
                # its lag shows, until an operator fixes it; the record is never skipped.
                level = log.error if refused_for_good(exc) else log.warning
                level("dead letter not sent, retrying", error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.metrics.dead_letters.labels(source=raw.topic, reason=kind).inc()
        log.error(
            "record dead-lettered",
            consumer=self.consumer,
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
            dead_topic=self.topic,
            reason=reason[:500],
        )

    async def send(self, raw: RawEvent, reason: str) -> None:
        headers = [
            *raw.headers,
            (DEAD_REASON, reason[:1000].encode()),
            (DEAD_TOPIC, raw.topic.encode()),
            (DEAD_PARTITION, str(raw.partition).encode()),
            (DEAD_OFFSET, str(raw.offset).encode()),
            (DEAD_CONSUMER, self.consumer.encode()),
            (DEAD_AT, utcnow().isoformat().encode()),
        ]
        producer = await self._producer.ready([self.topic])
        try:
            delivery = await producer.send(
                self.topic, raw.value, key=raw.key or None, headers=headers
            )
            await asyncio.wait_for(delivery, _DEAD_ACK_WAIT_S)
        except BaseException:
            await self.close()  # it may be retired (a lost connection): make a new one
            raise

    async def close(self) -> None:
        await self._producer.drop()


def _value_left_out(raw: RawEvent) -> RawEvent:
    left_out = (DEAD_VALUE_LEFT_OUT, str(len(raw.value)).encode())
    return replace(raw, value=b"", headers=[*raw.headers, left_out])


def decoded(
    data_model: type[DataT],
    handle_events: Callable[[list[CloudEvent[DataT]]], Awaitable[None]],
    metrics: ServiceMetrics,
) -> BatchHandler:
    """A batch handler that decodes the records into events of ``data_model`` first."""

    async def handle(batch: Sequence[RawEvent]) -> None:
        await handle_events(decode_batch(batch, data_model, metrics))

    return handle


def decode_batch(
    batch: Sequence[RawEvent], data_model: type[DataT], metrics: ServiceMetrics
) -> list[CloudEvent[DataT]]:
    """The batch's events; a record that is not a valid event is logged, counted, skipped
    and dead-lettered (retrying cannot make it valid, and it must not hold up the
    partition)."""
    events = []
    for raw in batch:
        try:
            event = decode(raw.headers, raw.value, data_model)
        except UndecodableEvent as exc:
            metrics.events_failed.labels(reason="undecodable").inc()
            log.error(
                "undecodable event skipped",
                topic=raw.topic,
                partition=raw.partition,
                offset=raw.offset,
                error=str(exc)[:500],
            )
            refuse(raw, f"UndecodableEvent: {exc}")
            continue
        events.append(event)
    for event_type, count in collections.Counter(event.type for event in events).items():
        metrics.events_in.labels(type=event_type).inc(count)  # once per type, not per event
    return events
