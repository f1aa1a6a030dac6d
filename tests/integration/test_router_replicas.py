"""Two router processes at once, on one database: no item offered twice, no agent over
capacity. Each process consumes in its own consumer group, so both see every item:
the worst case a rebalance or a redelivery could bring."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest

from shared.embedded import EmbeddedStack, free_port
from shared.events import Assignment, CloudEvent, EnrichedInteraction
from shared.settings import KafkaSettings
from tests.integration.test_router import enriched
from tests.support import (
    ADMIN_TOKEN,
    admin_headers,
    eventually,
    kafka_settings,
    publish,
    read_topic,
)

ITEMS = 2_000
AGENTS = 20
CAPACITY = 100  # 20 x 100 = 2,000: every item gets exactly one offer


@contextmanager
def router_process(stack: EmbeddedStack, namespace: str, replica: str, logs: Path) -> Iterator[str]:
    """``switchboard serve router`` in a child process; yields its base URL."""
    port = free_port()
    env = dict(
        os.environ,
        SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap_servers,
        SWITCHBOARD_KAFKA_TOPIC_PREFIX=f"{namespace}.",
        SWITCHBOARD_KAFKA_GROUP_PREFIX=f"{namespace}.{replica}.",
        SWITCHBOARD_KAFKA_SESSION_TIMEOUT_S="2",
        SWITCHBOARD_KAFKA_HEARTBEAT_INTERVAL_S="0.5",
        SWITCHBOARD_MONGO_URL=stack.mongo_url,
        SWITCHBOARD_MONGO_DATABASE_PREFIX=f"{namespace}_",
        SWITCHBOARD_AUTH_ADMIN_TOKEN=ADMIN_TOKEN,
        SWITCHBOARD_ROUTER_PORT=str(port),
        SWITCHBOARD_ROUTER_DATA_DIR=str(logs / replica),
        SWITCHBOARD_LOG_LEVEL="WARNING",
    )
    with (logs / f"{replica}.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "serve", "router"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=30)


async def ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{url}/readyz")).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.timeout(300)
async def test_two_routers_fed_the_same_items_make_one_offer_each(
    stack: EmbeddedStack, namespace: str, tmp_path: Path
) -> None:
    with ExitStack() as processes:
        urls = [
            processes.enter_context(router_process(stack, namespace, replica, tmp_path))
            for replica in ("a", "b")
        ]
        for url in urls:
            await eventually(partial(ready, url), timeout_s=60)
        async with httpx.AsyncClient(base_url=urls[0], headers=admin_headers()) as http:
            agent_ids = []
            for n in range(AGENTS):
                body = {"name": f"agent {n}", "capacity": CAPACITY, "presence": "online"}
                agent_ids.append((await http.post("/v1/agents", json=body)).json()["id"])

            kafka = kafka_settings(stack.bootstrap_servers, namespace)
            items = [enriched() for _ in range(ITEMS)]
            await publish(kafka, kafka.topics.enriched, [as_event(item) for item in items])
            offers = await eventually(
                partial(all_offers, kafka, kafka.topics.assignments), 240, 1.0
            )
            agents = [(await http.get(f"/v1/agents/{a}")).json() for a in agent_ids]

    per_item = Counter(offer.interaction_id for offer in offers.values())
    doubled = sorted(item for item, count in per_item.items() if count > 1)
    missing = {item.interaction.id for item in items} - set(per_item)
    assert not doubled, f"offered twice: {doubled[:10]}"
    assert not missing, f"never offered: {sorted(missing)[:10]}"
    assert len(offers) == ITEMS
    assert all(agent["load"] <= agent["capacity"] for agent in agents), agents
    assert sum(agent["load"] for agent in agents) == ITEMS
    assert Counter(offer.agent_id for offer in offers.values()) == {
        agent["id"]: agent["load"] for agent in agents
    }


async def all_offers(kafka: KafkaSettings, topic: str) -> dict[str, Assignment] | None:
    """Offers by event id once every item has one (relays may publish an event twice:
    consumers dedupe by id), after a few seconds more for any extra one to show."""
    events = await read_topic(kafka, topic, Assignment, ITEMS, timeout_s=5.0)
    offers = {event.id: event.data for _, event in events if event.data.status == "offered"}
    if len({offer.interaction_id for offer in offers.values()}) < ITEMS:
        return None
    events = await read_topic(kafka, topic, Assignment, ITEMS, settle_s=5.0)
    return {event.id: event.data for _, event in events if event.data.status == "offered"}


def as_event(item: EnrichedInteraction) -> tuple[str, CloudEvent[EnrichedInteraction]]:
    return item.customer.id, CloudEvent[EnrichedInteraction](
        id=str(uuid.uuid4()),
        source="/test",
        type="io.switchboard.interaction.enriched.v1",
        data=item,
    )
