"""Ready means "can serve its API": a replica whose consumer holds no partitions (one
beyond the partition count, or one whose group is rebalancing) stays in its Service and
takes posts. What a consumer holds shows in ``switchboard_<service>_partitions_assigned``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import CoordinationType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from aiokafka.protocol.group import HeartbeatRequest, JoinGroupRequest
from fastapi import FastAPI
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata

from services.ingest.config import IngestSettings
from services.ingest.main import create_app
from shared import kafka
from shared.embedded import EmbeddedStack
from shared.settings import KafkaSettings
from tests.support import (
    admin_headers,
    client_of,
    consuming,
    eventually,
    metric_sum,
    service_settings,
    serving,
)


@asynccontextmanager
async def replica(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` served over real HTTP, not waiting for its consumer."""
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10.0) as http:
        yield http


def holds_partitions(app: FastAPI) -> bool:
    return kafka.is_assigned(app.state.runtime.stream)


async def test_an_ingest_replica_beyond_the_partition_count_is_ready_and_takes_posts(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    """Every topic has one partition, and Faust gives partition 0 of all of them to one
    member: the second replica holds nothing, for as long as the first one lives."""
    settings = one_partition_settings(stack, namespace, run_dir)
    first, second = create_app(settings), create_app(settings)
    async with AsyncExitStack() as running:
        first_http = await running.enter_async_context(client_of(first))
        consumed = first.state.runtime.topics

        async def all_partitions_shown() -> bool:  # one of each consumed topic
            # The gauge is the process's, shown for earlier tests' topics too: this one's only.
            shown = "switchboard_ingest_partitions_assigned"
            held = [await metric_sum(first_http, "/metrics", shown, topic=t) for t in consumed]
            return held == [1] * len(consumed)

        await eventually(all_partitions_shown, timeout_s=30)
        second_http = await running.enter_async_context(replica(second))
        key = await publisher_key(second_http)
        await eventually(lambda: consuming(first), timeout_s=60)

        # A while, across any rebalance the join brought.
        await ready_and_posting(
            [first_http, second_http], posting=[second_http], idle=[second], key=key
        )


@pytest.mark.timeout(300)
async def test_ingest_replicas_that_start_while_a_rebalance_is_held_open_serve_and_take_posts(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    """A group leader that never hands out the assignment (a stuck pod) holds the
    rebalance open for as long as it keeps its session: replicas that start meanwhile
    hold no partitions, yet are ready and take posts."""
    settings = service_settings(IngestSettings, stack, namespace, run_dir)
    group = settings.kafka.group_id("ingest")
    first, second = create_app(settings), create_app(settings)
    async with AsyncExitStack() as running:
        stuck = await running.enter_async_context(stuck_leader(settings.kafka, group))
        first_http = await running.enter_async_context(started_replica(first))
        key = await publisher_key(first_http)
        await eventually(lambda: rebalance_held(settings.kafka, stuck, members=2), 60)
        second_http = await running.enter_async_context(started_replica(second))
        await eventually(lambda: rebalance_held(settings.kafka, stuck, members=3), 60)

        replicas = [first_http, second_http]
        await ready_and_posting(replicas, posting=replicas, idle=[first, second], key=key)
        assert await rebalance_held(settings.kafka, stuck, members=3)


async def ready_and_posting(
    ready: list[httpx.AsyncClient],
    posting: list[httpx.AsyncClient],
    idle: list[FastAPI],
    key: str,
    for_s: float = 10.0,
) -> None:
    """For ``for_s``, again and again: the ``idle`` replicas hold no partitions, the
    ``ready`` ones answer /readyz with 200, and the ``posting`` ones take a post (202)."""
    deadline = time.monotonic() + for_s
    posted = 0
    while time.monotonic() < deadline:
        assert not any(holds_partitions(app) for app in idle)
        for http in ready:
            answer = await http.get("/readyz")
            assert answer.status_code == 200, answer.text
        for http in posting:
            answer = await http.post(
                "/v1/interactions",
                json=mention(f"post-{posted}"),
                headers={"Authorization": f"Bearer {key}"},
            )
            assert answer.status_code == 202, answer.text
            posted += 1


@asynccontextmanager
async def started_replica(
    app: FastAPI, timeout_s: float = 60.0
) -> AsyncIterator[httpx.AsyncClient]:
    """``replica(app)``, failing if its API does not serve within ``timeout_s``."""
    async with AsyncExitStack() as started:
        entering = started.enter_async_context(replica(app))
        yield await asyncio.wait_for(entering, timeout_s)


@dataclass
class StuckMember:
    """A raw member of a consumer group: it joins and heartbeats, nothing more."""

    client: AIOKafkaClient
    node: int
    group: str
    member_id: str = ""
    generation: int = -1

    async def join(self, topics: list[str], timeout_ms: int = 60_000) -> bool:
        """Join with Faust's protocol; whether this member leads the group."""
        request = JoinGroupRequest(
            self.group,
            timeout_ms,
            timeout_ms,
            self.member_id,
            None,
            "consumer",
            [("faust", _faust_metadata(topics))],
        )
        answer = await self.client.send(self.node, request)
        self.member_id = answer.member_id
        if answer.error_code == 79:  # the broker asks a new member to join again with its id
            return await self.join(topics, timeout_ms)
        assert answer.error_code == 0, answer
        self.generation = answer.generation_id
        return bool(answer.leader_id == answer.member_id)

    async def heartbeat(self, every_s: float = 0.5) -> None:
        while True:
            await asyncio.sleep(every_s)
            request = HeartbeatRequest(self.group, self.generation, self.member_id)
            await self.client.send(self.node, request)


def _faust_metadata(topics: list[str]) -> bytes:
    nothing = ClientAssignment(actives={}, standbys={})
    user_data = ClientMetadata(assignment=nothing, url="http://stuck:1", changelog_distribution={})
    encoded: bytes = ConsumerProtocolMemberMetadata(0, topics, user_data.dumps()).encode()
    return encoded


@asynccontextmanager
async def stuck_leader(settings: KafkaSettings, group: str) -> AsyncIterator[StuckMember]:
    """The first member of ``group``, so its leader: it never sends the assignment
    (SyncGroup) and keeps its session, so every member waits in the rebalance."""
    await kafka.ensure_topics(settings, settings.topics.all())
    client = AIOKafkaClient(bootstrap_servers=settings.bootstrap_servers)
    await client.bootstrap()
    try:
        node = await client.coordinator_lookup(CoordinationType.GROUP, group)
        member = StuckMember(client, node, group)
        assert await member.join(sorted(settings.topics.all()))
        beating = asyncio.create_task(member.heartbeat())
        try:
            yield member
        finally:
            beating.cancel()
    finally:
        await client.close()


async def rebalance_held(settings: KafkaSettings, stuck: StuckMember, members: int) -> bool:
    """Whether the group is rebalancing, with ``members`` members, ``stuck`` among them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_consumer_groups([stuck.group])
    finally:
        await admin.close()
    _, _, state, _, _, listed = described.groups[0][:6]
    ids = {member[0] for member in listed}
    return state != "Stable" and stuck.member_id in ids and len(ids) == members


def one_partition_settings(stack: EmbeddedStack, namespace: str, run_dir: Path) -> IngestSettings:
    """Ingest's settings for this test, every topic made with one partition."""
    settings = service_settings(IngestSettings, stack, namespace, run_dir)
    one_partition = settings.kafka.model_copy(update={"partitions": 1})
    return settings.model_copy(update={"kafka": one_partition})


async def publisher_key(http: httpx.AsyncClient) -> str:
    created = await http.post("/v1/publishers", json={"name": "listener"}, headers=admin_headers())
    assert created.status_code == 201, created.text
    return str(created.json()["api_key"])


def mention(external_id: str) -> dict[str, object]:
    return {
        "channel": "twitter",
        "source": "readiness",
        "external_id": external_id,
        "author": {"handle": "@ada"},
        "text": "Where is my order?",
    }


async def test_a_replica_whose_stream_failed_to_start_says_so_on_healthz(
    stack: EmbeddedStack, namespace: str, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its API would go on serving and nothing would be consumed: liveness fails, so the
    platform restarts it, while readiness (the API) holds."""
    app = create_app(service_settings(IngestSettings, stack, namespace, run_dir))

    async def start_fails() -> None:
        raise RuntimeError("no consumer for you")

    monkeypatch.setattr(app.state.runtime.stream, "maybe_start", start_fails)
    async with replica(app) as http:

        async def broken() -> httpx.Response | None:
            alive = await http.get("/healthz")
            return alive if alive.status_code == 503 else None

        alive = await eventually(broken, timeout_s=60)
        ready = await http.get("/readyz")

    assert "no consumer for you" in alive.json()["reasons"][0]
    assert ready.status_code == 200, ready.text
