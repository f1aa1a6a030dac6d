"""Ingest throughput on the embedded stack: single posts, batches of 100, and the same
batches again (every item a duplicate), against one ingest process, with the store's
own bulk-insert speed run beside it as the baseline (the most any design that stores
before answering could reach here). Accepting is answering 202; the relay publishes the
events after, so the batches are also timed until the last of their events is on Kafka.

Run with `make bench`. Prints figures; asserts nothing about them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from pymongo import AsyncMongoClient

from shared.embedded import EmbeddedStack, free_port

ADMIN = "bench-admin-token"


def mention(n: int, run: str) -> dict[str, Any]:
    return {
        "channel": "twitter",
        "source": f"bench-{run}",
        "external_id": str(n),
        "author": {"handle": f"@user{n % 500}", "followers": n % 10_000},
        "text": f"Order {n} is late again, please help! #acme",
    }


async def post_all(
    http: aiohttp.ClientSession, bodies: list[Any], headers: dict[str, str], concurrency: int
) -> float:
    """Post every body, ``concurrency`` at a time; the seconds it took. Through aiohttp, as
    the end-to-end bench's load: httpx spends milliseconds of CPU per request here, taken
    from the two cores the ingest process under test needs."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def worker() -> None:
        while not queue.empty():
            async with http.post(
                "/v1/interactions", json=queue.get_nowait(), headers=headers
            ) as answer:
                assert answer.status in (200, 202), await answer.text()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def published(http: httpx.AsyncClient) -> float:
    """How many received events ingest's relay has published so far, from its metrics."""
    text = (await http.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("switchboard_ingest_events_out_total{") and "received" in line
    )


async def all_published(http: httpx.AsyncClient, count: float, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while await published(http) < count:
        assert time.monotonic() < deadline, "the relay did not publish every event in time"
        await asyncio.sleep(0.1)


async def baseline(mongo_url: str, docs: int) -> float:
    """The store alone: insert_many of the same documents, 100 at a time."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    collection = client[f"bench_{uuid.uuid4().hex[:6]}"]["raw"]
    run = uuid.uuid4().hex[:6]
    started = time.perf_counter()
    for start in range(0, docs, 100):
        await collection.insert_many(
            [{"interaction": mention(n, run)} for n in range(start, start + 100)]
        )
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


async def bench(url: str, mongo_url: str, singles: int, batches: int) -> None:
    # The baseline first, while nothing else uses the store.
    raw_s = await baseline(mongo_url, batches * 100)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        created = await http.post(
            "/v1/publishers", json={"name": "bench"}, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        headers = {"Authorization": f"Bearer {created.json()['api_key']}"}
        async with aiohttp.ClientSession(base_url=url) as load:
            run = uuid.uuid4().hex[:6]
            single_s = await post_all(load, [mention(n, run) for n in range(singles)], headers, 16)
            await all_published(http, singles)  # so that the batches start with none pending
            run = uuid.uuid4().hex[:6]
            bodies = [[mention(b * 100 + n, run) for n in range(100)] for b in range(batches)]
            started = time.perf_counter()
            batch_s = await post_all(load, bodies, headers, 4)
            await all_published(http, singles + batches * 100)
            published_s = time.perf_counter() - started
            repeat_s = await post_all(load, bodies, headers, 4)  # all duplicates now
    total = batches * 100
    print(
        f"ingest, single posts   : {singles / single_s:8.0f} interactions/s ({singles} posts, 16 in flight)"
    )
    print(
        f"ingest, batches of 100 : {total / batch_s:8.0f} interactions/s ({batches} batches, 4 in flight)"
    )
    print(
        f"  and published        : {total / published_s:8.0f} interactions/s (from the first post to the last event on Kafka)"
    )
    print(
        f"repeats, batches of 100: {total / repeat_s:8.0f} interactions/s (the same batches again, all duplicates)"
    )
    print(
        f"baseline, store alone  : {total / raw_s:8.0f} documents/s (insert_many of 100, one writer)"
    )
    print(f"ingest batches reach {raw_s / batch_s:.0%} of the store-alone baseline")


def main() -> None:
    singles = int(os.environ.get("BENCH_SINGLES", "2000"))
    batches = int(os.environ.get("BENCH_BATCHES", "100"))
    with tempfile.TemporaryDirectory() as home:
        stack = EmbeddedStack(Path(home), free_port(), free_port())
        stack.start()
        port = free_port()
        env = dict(
            os.environ,
            SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap_servers,
            SWITCHBOARD_MONGO_URL=stack.mongo_url,
            SWITCHBOARD_AUTH_ADMIN_TOKEN=ADMIN,
            SWITCHBOARD_INGEST_PORT=str(port),
            SWITCHBOARD_INGEST_DATA_DIR=str(Path(home) / "run"),
            SWITCHBOARD_INGEST_RATE_LIMIT_PER_S="1000000",
            SWITCHBOARD_INGEST_RATE_LIMIT_BURST="1000000",
            SWITCHBOARD_LOG_LEVEL="WARNING",
        )
        ingest = subprocess.Popen([sys.executable, "-m", "shared.cli", "serve", "ingest"], env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "ingest did not become ready"
                time.sleep(0.2)
            asyncio.run(bench(url, stack.mongo_url, singles, batches))
        finally:
            ingest.terminate()
            ingest.wait(30)
            stack.stop()


if __name__ == "__main__":
    main()
