"""The Faust app each service consumes with: its consumer takes the configured fetch wait."""

from __future__ import annotations

from pathlib import Path

from faust.transport.drivers.aiokafka import Consumer

from shared.kafka import StreamTransport, create_stream_app
from shared.settings import KafkaSettings, ServiceSettings


def worker_consumer_fetch_wait(settings: ServiceSettings) -> int:
    app = create_stream_app("ingest", settings)
    assert isinstance(app.transport, StreamTransport)
    assert isinstance(app.consumer, Consumer)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    wait: int = consumer._fetch_max_wait_ms
    return wait


async def test_the_consumer_waits_as_long_as_the_settings_say_not_faust_s_fixed_wait(
    tmp_path: Path,
) -> None:
    short = ServiceSettings(data_dir=tmp_path, kafka=KafkaSettings(fetch_max_wait_ms=20))
    long = ServiceSettings(data_dir=tmp_path, kafka=KafkaSettings(fetch_max_wait_ms=500))

    assert worker_consumer_fetch_wait(short) == 20
    assert worker_consumer_fetch_wait(long) == 500  # as on Kafka, which answers early
