"""Nothing lost, nothing doubled: each service killed with SIGKILL mid-stream and started
again, the desk gone for a while, every interaction posted twice, poisoned posts among
good ones. Counted at the desk by interaction id; a failure names the ids concerned.
``make chaos`` runs the same with ten times the interactions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.embedded import EmbeddedStack, free_port
from shared.events import INTERACTION_ENRICHED, INTERACTION_RECEIVED
from tests.faults.harness import QUEUED, SCALE, Publisher, all_delivered, running
from tests.support import eventually

COUNT = 2_000 * SCALE
INPUTS = (INTERACTION_RECEIVED, INTERACTION_ENRICHED, QUEUED)  # enrich's, router's, notify's

pytestmark = pytest.mark.timeout(300 * SCALE)


@pytest.mark.parametrize("victim", ["ingest", "enrich", "router", "notify"])
async def test_a_service_killed_mid_stream_loses_and_doubles_nothing(
    stack: EmbeddedStack, namespace: str, tmp_path: Path, victim: str
) -> None:
    async with running(stack, namespace, tmp_path) as system:
        publisher = Publisher(system, namespace)
        posting = asyncio.create_task(publisher.post(range(COUNT)))

        async def mid_stream() -> bool:
            if victim == "ingest":
                return len(publisher.ids) >= COUNT // 4
            return await system.handled(victim) >= COUNT // 10

        await eventually(mid_stream, timeout_s=60, interval_s=0.2)
        handled = len(publisher.ids) if victim == "ingest" else await system.handled(victim)
        system.kill(victim)
        assert handled < COUNT, f"{victim} had handled everything ({handled}) before the kill"
        await asyncio.sleep(1.0)
        system.start(victim)
        await system.ready(victim)
        await posting

        assert len(set(publisher.ids.values())) == COUNT, "two mentions were given one id"
        await all_delivered(system, set(publisher.ids.values()))


async def test_a_second_replica_of_each_stage_killed_mid_stream_loses_and_doubles_nothing(
    stack: EmbeddedStack, namespace: str, tmp_path: Path
) -> None:
    """Enrich, the router and notify with two replicas each, sharing their partitions
    (and notify its deliveries); one replica of each killed at once while posts come in:
    the survivors take over their partitions and leases."""
    stages = ("enrich", "router", "notify")
    async with running(stack, namespace, tmp_path) as system:
        for stage in stages:
            system.start(stage, replica=f"{stage}-2")
        await system.ready(*(f"{stage}-2" for stage in stages))
        topics = system.kafka.topics
        inputs = (topics.received, topics.enriched, topics.assignments)

        async def sharing_their_input() -> bool:  # ready is the API; the group joins after
            held = [
                await system.metric(name, f"switchboard_{stage}_partitions_assigned", topic=topic)
                for stage, topic in zip(stages, inputs, strict=True)
                for name in (stage, f"{stage}-2")
            ]
            return all(n > 0 for n in held)

        await eventually(sharing_their_input, timeout_s=90, interval_s=0.2)
        publisher = Publisher(system, namespace)
        posting = asyncio.create_task(publisher.post(range(COUNT)))

        async def each_replica_at_work() -> bool:  # each took in some of its stage's input
            took = [
                await system.metric(f"{stage}-2", f"switchboard_{stage}_events_in_total", type=t)
                for stage, t in zip(stages, INPUTS, strict=True)
            ]
            return all(n > 0 for n in took)

        await eventually(each_replica_at_work, timeout_s=90, interval_s=0.2)
        for stage in stages:
            system.kill(f"{stage}-2")
        at_desk = len(system.desk.interactions())
        await posting

        assert at_desk < COUNT, f"everything was at the desk ({at_desk}) before the kills"
        assert len(set(publisher.ids.values())) == COUNT, "two mentions were given one id"
        await all_delivered(system, set(publisher.ids.values()))


async def test_a_desk_that_goes_away_gets_everything_once_it_is_back(
    stack: EmbeddedStack, namespace: str, tmp_path: Path
) -> None:
    async with running(stack, namespace, tmp_path) as system:
        publisher = Publisher(system, namespace)
        await system.desk.down()
        await publisher.post(range(COUNT // 4))

        async def retries_piled_up() -> bool:
            took_in = await system.handled("notify") >= COUNT // 4
            return (
                took_in
                and await system.metric(
                    "notify", "switchboard_notify_attempts_total", outcome="retry"
                )
                >= 2
            )

        await eventually(retries_piled_up, timeout_s=60, interval_s=0.2)
        await system.desk.up()
        await publisher.post(range(COUNT // 4, COUNT // 2))

        await all_delivered(system, set(publisher.ids.values()))


async def test_every_interaction_posted_twice_reaches_the_desk_once(
    stack: EmbeddedStack, namespace: str, tmp_path: Path
) -> None:
    async with running(stack, namespace, tmp_path) as system:
        first, second = Publisher(system, namespace), Publisher(system, namespace)
        await asyncio.gather(first.post(range(COUNT // 2)), second.post(range(COUNT // 2)))

        assert first.ids == second.ids  # the repeat is answered with the original's id
        await all_delivered(system, set(first.ids.values()))


@pytest.mark.broker_loss
async def test_a_broker_that_restarts_empty_mid_stream_loses_nothing(
    namespace: str, tmp_path: Path
) -> None:
    """The embedded broker keeps its log in memory: a restart forgets every topic, offset
    and committed position. Each service notices, from its outbox's sends and probes or
    from its consumers finding themselves past a partition's end, publishes its recent
    window again and reads its topics again from the start."""
    broker = EmbeddedStack(tmp_path / "stack", free_port(), free_port())
    broker.start()
    try:
        async with running(broker, namespace, tmp_path) as system:
            publisher = Publisher(system, namespace)
            await publisher.post(range(COUNT // 3))
            broker.stop_broker()
            await publisher.post(range(COUNT // 3, 2 * COUNT // 3))  # stored, not yet sent
            broker.start_broker()
            await publisher.post(range(2 * COUNT // 3, COUNT))

            await all_delivered(system, set(publisher.ids.values()), timeout_s=180)
    finally:
        broker.stop()


async def test_poisoned_posts_are_refused_and_every_good_one_reaches_the_desk_once(
    stack: EmbeddedStack, namespace: str, tmp_path: Path
) -> None:
    """Posts whose event would be over the broker's largest record, among good ones, in
    batches and alone. Attributes may be large here, so that only the event's size stands
    between a poisoned post and the broker, whose refusal would stall the outbox."""
    good_ones = COUNT // 4
    allow_large_attributes = {"SWITCHBOARD_INGEST_MAX_ATTRIBUTES_BYTES": str(4 * 1024 * 1024)}
    async with running(stack, namespace, tmp_path, allow_large_attributes) as system:
        publisher = Publisher(system, namespace, poison_every=10)
        alone = range(good_ones, good_ones + 5 * SCALE)
        await asyncio.gather(
            publisher.post(range(good_ones)), publisher.post_poisoned_one_by_one(alone)
        )

        assert publisher.refused == {n for n in range(good_ones) if n % 10 == 9} | set(alone)
        await all_delivered(system, set(publisher.ids.values()))
