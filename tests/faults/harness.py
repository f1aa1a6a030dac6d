"""A whole Switchboard whose parts a test can kill: each service its own process
(``switchboard serve NAME``) on the embedded broker and store, a real desk receiving the
webhooks, and a publisher that keeps posting until everything it sent was taken in.

Every interaction is a numbered mention with no agent online, so each becomes exactly
one ``assignment.queued`` webhook: the desk counts them by interaction id.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI, Request, Response

from shared.cli import SERVICES, LocalSettings, service_env
from shared.embedded import EmbeddedStack, free_port, free_ports
from shared.http import Server
from shared.settings import KafkaSettings
from tests.support import ADMIN_TOKEN, admin_headers, eventually, kafka_settings, metric_sum

QUEUED = "io.switchboard.assignment.queued.v1"
# Retries close together, so a desk that comes back is reached within seconds.
RETRIES_S = [0.2, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
SCALE = int(os.environ.get("SWITCHBOARD_FAULT_SCALE", "1"))  # `make chaos` raises it
# A poison post's attributes: their event is over the broker's largest record (1 MiB).
POISON = {"blob": "x" * 1024 * 1024}


@dataclass
class Desk:
    """The agents' desk: a real HTTP server on a fixed port that can go away and return.
    It records each webhook's interaction id and webhook-id."""

    port: int = field(default_factory=free_port)
    received: list[tuple[str, str]] = field(default_factory=list)  # (interaction, webhook-id)
    server: Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = json.loads(await request.body())
            self.received.append((body["data"]["interaction_id"], request.headers["webhook-id"]))
            return Response(status_code=204)

        return app

    async def up(self) -> None:
        self.server = Server(self.app(), "127.0.0.1", self.port)
        await self.server.start()

    async def down(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    def interactions(self) -> set[str]:
        return {interaction for interaction, _ in self.received}

    def doubled(self) -> dict[str, int]:
        """Interactions that reached the desk under more than one webhook-id: a second
        webhook, not a retry of the first (a desk dedupes retries by webhook-id)."""
        ids = Counter(interaction for interaction, _ in set(self.received))
        return {interaction: n for interaction, n in ids.items() if n > 1}


@dataclass
class System:
    stack: EmbeddedStack
    kafka: KafkaSettings
    home: Path
    local: LocalSettings
    env: dict[str, str]
    desk: Desk
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    publisher_key: str = ""
    replica_ports: dict[str, int] = field(default_factory=dict)  # further replicas' APIs

    def url(self, name: str) -> str:
        """The API of a service, or of a further replica of one (by its name)."""
        if name in self.replica_ports:
            return f"http://127.0.0.1:{self.replica_ports[name]}"
        return self.local.url(name)

    def start(self, service: str, replica: str | None = None) -> None:
        """Start ``service``, or a further replica of it named ``replica``: the same
        consumer group and database, an API port and scratch folder of its own."""
        name = replica or service
        env = self.env | {"SWITCHBOARD_MONGO_URL": self.local.store_url_of(service)}
        if replica is not None:
            prefix = f"SWITCHBOARD_{service.upper()}_"
            env[f"{prefix}PORT"] = str(self.replica_ports.setdefault(replica, free_port()))
            env[f"{prefix}DATA_DIR"] = str(self.home / f"run-{replica}")
        log = (self.home / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "shared.cli", "serve", service],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def kill(self, service: str) -> None:
        """kill -9: no shutdown, no flush, no goodbye to the consumer group."""
        process = self.processes.pop(service)
        process.send_signal(signal.SIGKILL)
        process.wait()

    async def ready(self, *services: str) -> None:
        async with httpx.AsyncClient(timeout=2.0) as http:
            for service in services:

                async def answers(service: str = service) -> bool:
                    assert self.processes[service].poll() is None, f"{service} exited"
                    try:
                        return (await http.get(f"{self.url(service)}/readyz")).status_code == 200
                    except httpx.HTTPError:
                        return False

                await eventually(answers, timeout_s=60, interval_s=0.2)

    async def metric(self, service: str, name: str, **labels: str) -> float:
        """A service's metric now, summed over the samples carrying ``labels``."""
        async with httpx.AsyncClient(timeout=5.0) as http:
            return await metric_sum(http, f"{self.url(service)}/metrics", name, **labels)

    async def handled(self, service: str) -> float:
        """Events the service's consumers took in since it (last) started."""
        return await self.metric(service, f"switchboard_{service}_events_in_total")

    async def busy_with(self) -> str:
        """What is still under way, in words; empty once nothing is: no outbox holds an
        unsent event, notify has no delivery pending, and each service has committed to
        the end of every topic it reads (a late duplicate would have been sent by then,
        and a consumer that skipped or stalled after a fault shows here)."""
        async with httpx.AsyncClient(timeout=5.0, headers=admin_headers()) as http:
            pending = await http.get(
                f"{self.url('notify')}/v1/deliveries", params={"status": "pending", "limit": 1}
            )
            if pending.raise_for_status().json():
                return "notify has deliveries pending"
        for service in SERVICES:
            backlog = await self.metric(service, f"switchboard_{service}_outbox_backlog")
            if backlog > 0:
                return f"{service}'s outbox holds {backlog:.0f} unsent"
        for service, topic in self.inputs():
            behind = await self._behind(self.kafka.group_id(service), topic)
            if behind:
                return f"{service} has not committed to the end: {behind}"
        return ""

    def inputs(self) -> list[tuple[str, str]]:
        """The topics each service reads: enrich, router and notify's on the way to the
        desk, and those ingest reads into its journey read model."""
        topics = self.kafka.topics
        journey = (topics.enriched, topics.assignments, topics.deliveries)
        return [
            ("enrich", topics.received),
            ("router", topics.enriched),
            ("notify", topics.assignments),
            *(("ingest", topic) for topic in journey),
        ]

    async def _behind(self, group: str, topic: str) -> str:
        """Where ``group`` has committed short of the end of ``topic``'s partitions;
        empty when nowhere."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            group_id=group,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            await consumer.topics()  # the cluster's metadata, partitions included
            partitions = [
                TopicPartition(topic, partition)
                for partition in consumer.partitions_for_topic(topic) or ()
            ]
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            committed = {tp: await consumer.committed(tp) for tp in partitions}
        finally:
            await consumer.stop()
        at = {tp: offset for tp, offset in committed.items() if offset is not None}
        if not at:
            return "nothing committed"
        short = [
            f"{tp.topic}[{tp.partition}] {at[tp]} of {ends[tp]}" for tp in at if at[tp] < ends[tp]
        ]
        return ", ".join(short)

    def stop(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGKILL)
            process.wait()
        self.processes.clear()


@asynccontextmanager
async def running(
    stack: EmbeddedStack, namespace: str, home: Path, env: dict[str, str] | None = None
) -> AsyncIterator[System]:
    """The four services and the desk, on fresh topics, groups and databases; a publisher
    key and a subscription for every queued item. ``home`` (an existing directory) takes
    the services' logs; ``env`` adds settings."""
    desk = Desk()
    # The desk's port is the one webhooks are allowed to reach on this machine.
    ports = {f"{name}_port": free_port() for name in SERVICES} | {"desk_port": desk.port}
    local = LocalSettings.model_validate(
        {"home": home, "broker_port": stack.broker_port, "store_port": free_ports(len(SERVICES))}
        | ports
    )
    env = (
        service_env(local, ADMIN_TOKEN)
        | {
            "SWITCHBOARD_KAFKA_TOPIC_PREFIX": f"{namespace}.",
            "SWITCHBOARD_KAFKA_GROUP_PREFIX": f"{namespace}.",
            "SWITCHBOARD_MONGO_DATABASE_PREFIX": f"{namespace}_",
            "SWITCHBOARD_KAFKA_SESSION_TIMEOUT_S": "3",
            "SWITCHBOARD_KAFKA_HEARTBEAT_INTERVAL_S": "0.5",
            "SWITCHBOARD_NOTIFY_RETRY_SCHEDULE_S": json.dumps(RETRIES_S),
            "SWITCHBOARD_NOTIFY_BREAKER_COOLDOWN_S": "1",
            "SWITCHBOARD_LOG_LEVEL": "WARNING",
        }
        | (env or {})
    )
    kafka = kafka_settings(stack.bootstrap_servers, namespace)
    system = System(stack, kafka, home, local, env, desk)
    stores = EmbeddedStack(home / "stores", store_port=local.store_port)
    await system.desk.up()
    try:
        start_stores(stores, local)
        for service in SERVICES:
            system.start(service)
        await system.ready(*SERVICES)
        async with httpx.AsyncClient(timeout=10.0, headers=admin_headers()) as http:
            publisher = await http.post(f"{system.url('ingest')}/v1/publishers", json={"name": "p"})
            system.publisher_key = publisher.raise_for_status().json()["api_key"]
            subscription = await http.post(
                f"{system.url('notify')}/v1/subscriptions",
                json={"url": system.desk.url, "event_types": [QUEUED]},
            )
            subscription.raise_for_status()
        yield system
    finally:
        system.stop()
        await system.desk.down()
        stores.stop()


def start_stores(stores: EmbeddedStack, local: LocalSettings) -> None:
    """A store per service, as `switchboard up` runs them."""
    stores.logs.mkdir(parents=True, exist_ok=True)
    for service in SERVICES:
        store = stores.store_child(f"store-{service}", local.store_port_of(service))
        store.wait_listening(stores.children.launch(store), 30.0)


def mention(n: int, run: str, poisoned: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "twitter",
        "source": f"faults-{run}",
        "external_id": str(n),
        "author": {"handle": f"@customer{n % 97}"},
        "text": f"Order {n} has not arrived, please help",
    }
    return body | {"attributes": POISON} if poisoned else body


def refused_for_size(errors: list[dict[str, str]]) -> bool:
    return [e["field"] for e in errors] == ["attributes"] and "bytes" in errors[0]["reason"]


@dataclass
class Publisher:
    """Posts numbered mentions in batches and retries a batch until it is answered, as a
    careful publisher does: ingest answers a repeat with the original id."""

    system: System
    run: str
    ids: dict[int, str] = field(default_factory=dict)  # mention number -> interaction id
    refused: set[int] = field(default_factory=set)  # poisoned mentions, refused
    sent_batches: int = 0
    poison_every: int = 0  # every n-th mention is poisoned (0: none)

    def poisoned(self, number: int) -> bool:
        return self.poison_every > 0 and number % self.poison_every == self.poison_every - 1

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.system.publisher_key}"}

    async def post(self, numbers: range, batch: int = 50) -> None:
        url = f"{self.system.url('ingest')}/v1/interactions"
        async with httpx.AsyncClient(timeout=30.0, headers=self.headers) as http:
            for start in range(numbers.start, numbers.stop, batch):
                chunk = list(range(start, min(start + batch, numbers.stop)))
                answer = await self._until_answered(http, url, chunk)
                for number, result in zip(chunk, answer["results"], strict=True):
                    self._note(number, result)
                self.sent_batches += 1

    def _note(self, number: int, result: dict[str, Any]) -> None:
        if self.poisoned(number):
            assert result["status"] == "rejected", result
            assert refused_for_size(result["errors"]), result
            self.refused.add(number)
        else:
            assert result["status"] in ("accepted", "duplicate"), result
            self.ids[number] = result["id"]

    async def post_poisoned_one_by_one(self, numbers: range) -> None:
        """Poisoned mentions posted alone: each answered 413, naming the field."""
        url = f"{self.system.url('ingest')}/v1/interactions"
        async with httpx.AsyncClient(timeout=30.0, headers=self.headers) as http:
            for number in numbers:
                answer = await http.post(url, json=mention(number, self.run, poisoned=True))
                assert answer.status_code == 413, answer.text
                assert refused_for_size(answer.json()["detail"]), answer.text
                self.refused.add(number)

    async def _until_answered(
        self, http: httpx.AsyncClient, url: str, chunk: list[int]
    ) -> dict[str, Any]:
        deadline = time.monotonic() + 90
        while True:
            try:
                body = [mention(n, self.run, self.poisoned(n)) for n in chunk]
                answer = await http.post(url, json=body)
                if answer.status_code == 200:
                    result: dict[str, Any] = answer.json()
                    return result
            except httpx.HTTPError:
                pass  # ingest is down: try again, as a publisher would
            assert time.monotonic() < deadline, "ingest did not come back"
            await asyncio.sleep(0.2)


async def all_delivered(system: System, expected: set[str], timeout_s: float = 120.0) -> None:
    """Wait until the desk has every expected interaction and the system has gone quiet
    (a late duplicate would have been sent by then); fail naming what is missing, doubled
    or unexpected."""

    async def complete() -> bool:
        return expected <= system.desk.interactions()

    try:
        await eventually(complete, timeout_s=timeout_s, interval_s=0.25)
    except AssertionError:
        missing = sorted(expected - system.desk.interactions())
        raise AssertionError(f"{len(missing)} never reached the desk: {missing[:20]}") from None
    busy = ""

    async def quiet() -> bool:
        nonlocal busy
        busy = await system.busy_with()
        return not busy

    try:
        await eventually(quiet, timeout_s=90, interval_s=0.5)
    except AssertionError:
        raise AssertionError(
            f"every one arrived, but the system never went quiet: {busy}"
        ) from None
    assert system.desk.doubled() == {}, f"doubled: {system.desk.doubled()}"
    assert system.desk.interactions() == expected, "the desk got interactions nobody posted"
