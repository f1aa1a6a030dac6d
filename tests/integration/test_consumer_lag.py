"""Each service shows its consumers' lag per partition on /metrics, from the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from shared import kafka
from shared.app import Runtime, service_app
from shared.embedded import EmbeddedStack
from shared.settings import ServiceSettings
from tests.integration.test_stream_rewind import produce
from tests.support import client_of, eventually, service_settings

RECORDS = 7


def lags_shown(exposition: str, topic: str) -> dict[str, float]:
    """The lag shown per partition of ``topic``."""
    return {
        sample.labels["partition"]: sample.value
        for family in text_string_to_metric_families(exposition)
        if family.name == "switchboard_lagging_consumer_lag"
        for sample in family.samples
        if sample.labels["topic"] == topic
    }


async def test_records_waiting_to_be_handled_show_as_lag_until_committed(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    settings = service_settings(ServiceSettings, stack, namespace, run_dir)
    topic = f"{namespace}.lagging"
    await kafka.ensure_topics(settings.kafka, [topic])
    release = asyncio.Event()

    async def handle_when_released(_: Sequence[kafka.RawEvent]) -> None:
        await release.wait()

    runtime = Runtime.create("lagging", settings)
    runtime.consume(topic, handle_when_released)
    async with client_of(service_app(runtime, [])) as http:

        async def shown() -> dict[str, float]:
            return lags_shown((await http.get("/metrics")).text, topic)

        async def all_partitions_shown() -> bool:
            return len(await shown()) == settings.kafka.partitions

        async def lagging_by_all() -> bool:
            return sum((await shown()).values()) == RECORDS

        async def caught_up() -> bool:
            return set((await shown()).values()) == {0.0}

        await eventually(all_partitions_shown, timeout_s=30)
        assert set((await shown()).values()) == {0.0}  # nothing on the topic yet
        await produce(settings.kafka, topic, RECORDS)
        await eventually(lagging_by_all, timeout_s=30)
        release.set()
        await eventually(caught_up, timeout_s=30)
