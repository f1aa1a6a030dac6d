"""Helpers for tests on the real embedded broker and store."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import FastAPI, Request, Response
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, SecretStr

from shared import kafka
from shared.embedded import EmbeddedStack
from shared.events import CloudEvent, decode, encode
from shared.http import Server
from shared.settings import AuthSettings, KafkaSettings, MongoSettings, ServiceSettings

ADMIN_TOKEN = "test-admin-token"
T = TypeVar("T")
SettingsT = TypeVar("SettingsT", bound=ServiceSettings)
DataT = TypeVar("DataT", bound=BaseModel)


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def kafka_settings(bootstrap_servers: str, namespace: str) -> KafkaSettings:
    """Fresh topics and consumer groups for one test, with short group sessions."""
    return KafkaSettings(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=f"{namespace}.",
        group_prefix=f"{namespace}.",
        partitions=3,
        session_timeout_s=2.0,
        heartbeat_interval_s=0.5,
    )


def mongo_settings(url: str, namespace: str) -> MongoSettings:
    """A fresh database per service for one test."""
    return MongoSettings(url=SecretStr(url), database_prefix=f"{namespace}_")


def auth_settings() -> AuthSettings:
    return AuthSettings(admin_token=SecretStr(ADMIN_TOKEN))


def service_settings(
    cls: type[SettingsT], stack: EmbeddedStack, namespace: str, run_dir: Path, **overrides: Any
) -> SettingsT:
    """A service's settings for one test: free port, fresh topics, groups and databases."""
    return cls(
        port=0,
        data_dir=run_dir,
        auth=auth_settings(),
        kafka=kafka_settings(stack.bootstrap_servers, namespace),
        mongo=mongo_settings(stack.mongo_url, namespace),
        **overrides,
    )


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@asynccontextmanager
async def client_of(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Serve ``app`` over real HTTP and wait until its /readyz says ready and its
    consumers hold partitions (which readiness leaves out)."""
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        await eventually(lambda: _is_ready(http))
        await eventually(lambda: consuming(app))
        yield http


async def _is_ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/readyz")).status_code == 200


async def consuming(app: FastAPI) -> bool:
    """Whether a service app's stream app has started and its consumer holds partitions
    (true where it consumes nothing): the API serves before either."""
    runtime = getattr(app.state, "runtime", None)
    if runtime is None or runtime.stream is None:
        return True
    return bool(runtime.streaming) and kafka.is_assigned(runtime.stream)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` over real HTTP on a free port; yields its base URL."""
    server = Server(app, "127.0.0.1", 0)
    url = await server.start()
    try:
        yield url
    finally:
        await server.stop()


async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout_s: float = 30.0, interval_s: float = 0.1
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)


async def metric_sum(http: httpx.AsyncClient, url: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` that carry ``labels``, scraped from ``url``."""
    text = (await http.get(url)).raise_for_status().text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def at_least(items: Sequence[object], n: int) -> bool:
    return len(items) >= n


async def read_topic(
    settings: KafkaSettings,
    topic: str,
    data_model: type[DataT],
    expect: int,
    timeout_s: float = 30.0,
    settle_s: float = 0.0,
    keep: Callable[[CloudEvent[DataT]], bool] | None = None,
) -> list[tuple[bytes, CloudEvent[DataT]]]:
    """Every event on ``topic`` from its start (those ``keep`` accepts, if given): waits
    for ``expect``, then ``settle_s`` more so that an unexpected extra would be seen too."""
    deadline = time.monotonic() + timeout_s
    partitions = await topic_partitions(settings, topic, deadline)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen: list[tuple[bytes, CloudEvent[DataT]]] = []
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    event = decode(list(record.headers), record.value or b"", data_model)
                    if keep is None or keep(event):
                        seen.append((record.key or b"", event))
            if len(seen) >= expect and settle_until is None:
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
        return seen
    finally:
        await consumer.stop()


async def topic_partitions(
    settings: KafkaSettings, topic: str, deadline: float
) -> list[TopicPartition]:
    """All the topic's partitions, however many it was created with (a broker that lost
    its topics may re-create one with its own default), once it exists."""
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        await admin.start()
        try:
            [described] = await admin.describe_topics([topic])
        finally:
            await admin.close()
        found = sorted(p["partition"] for p in described.get("partitions", []))
        if found or time.monotonic() > deadline:
            return [TopicPartition(topic, p) for p in found]
        await asyncio.sleep(0.2)


async def publish(
    settings: KafkaSettings, topic: str, items: list[tuple[str, CloudEvent[Any]]]
) -> None:
    """Produce ``(key, event)`` pairs to ``topic`` as a service's relay would."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for key, event in items:
            record = encode(event, key)
            await producer.send_and_wait(
                topic, record.value, key=record.key, headers=record.headers
            )
    finally:
        await producer.stop()


@dataclass
class Receiver:
    """A real HTTP endpoint that records what it is sent and answers from a script."""

    answers: list[int] = field(default_factory=list)  # status codes to give, then 200s
    failure_headers: dict[str, str] = field(default_factory=dict)  # sent with non-2xx answers
    delay_s: float = 0.0  # how long it takes to answer
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each request
    answered: int = 0
    url: str = ""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            self.arrivals.append(time.monotonic())
            self.received.append((dict(request.headers), await request.body()))
            code = self.answers.pop(0) if self.answers else 200
            await asyncio.sleep(self.delay_s)
            self.answered += 1
            headers = self.failure_headers if code >= 300 else {}
            return Response(status_code=code, headers=headers)

        return app


@asynccontextmanager
async def receiving(
    answers: list[int] | None = None,
    failure_headers: dict[str, str] | None = None,
    delay_s: float = 0.0,
) -> AsyncIterator[Receiver]:
    receiver = Receiver(list(answers or []), dict(failure_headers or {}), delay_s)
    async with serving(receiver.app()) as url:
        receiver.url = f"{url}/hook"
        yield receiver


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
