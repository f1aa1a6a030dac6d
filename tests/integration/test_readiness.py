"""Ready means "can serve its API": a replica whose consumer holds no partitions (one
beyond the partition count) stays in its Service and takes posts, through the rebalance
its joining brings. What a consumer holds shows in
``switchboard_<service>_partitions_assigned``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI

from services.ingest.config import IngestSettings
from services.ingest.main import create_app
from shared import kafka
from shared.embedded import EmbeddedStack
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

        deadline = time.monotonic() + 10.0
        posted = 0
        while time.monotonic() < deadline:  # a while, across any rebalance the join brought
            assert not holds_partitions(second)
            for http in (first_http, second_http):
                ready = await http.get("/readyz")
                assert ready.status_code == 200, ready.text
            answer = await second_http.post(
                "/v1/interactions",
                json=mention(f"beyond-{posted}"),
                headers={"Authorization": f"Bearer {key}"},
            )
            assert answer.status_code == 202, answer.text
            posted += 1


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
