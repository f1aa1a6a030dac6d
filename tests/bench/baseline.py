"""The baseline for the end-to-end benchmark: a bare aiokafka pipeline with as many hops
as Switchboard's path and no work in them.

    HTTP in -> topic 0 -> relay -> topic 1 -> ... -> topic N-1 -> egress -> HTTP out

``ingress`` answers ``POST /v1/interactions`` (an object or an array, like ingest) by
producing each one, with an id, to topic 0 and answering once the broker acknowledged
them; each ``relay`` consumes a batch and produces it to the next topic, committing after;
``egress`` POSTs each record to the desk (up to ``--in-flight`` at a time, with aiohttp)
and commits.
Each stage is its own process, as each Switchboard service is, on the same event loop
(uvloop) and HTTP parser (httptools). Producers are set up as the services' are
(acks=all, linger 2 ms); consumers take up to 500 records a poll.

    python -m tests.bench.baseline ingress --bootstrap B --topic T --port P
    python -m tests.bench.baseline relay   --bootstrap B --topic T --to U --group G
    python -m tests.bench.baseline egress  --bootstrap B --topic T --group G --url URL
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import uvicorn
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.settings import KafkaSettings

MAX_RECORDS = 500


# The services' own fetch wait, so that neither side waits on the broker longer.
FETCH_MAX_WAIT_MS = str(KafkaSettings.model_fields["fetch_max_wait_ms"].default)


def producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)


def consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        fetch_max_wait_ms=int(
            os.environ.get("BENCH_BASELINE_FETCH_MAX_WAIT_MS", FETCH_MAX_WAIT_MS)
        ),
    )


def ingress_app(bootstrap: str, topic: str) -> Starlette:
    kafka: list[AIOKafkaProducer] = []  # made on the server's loop, at start-up

    async def interactions(request: Request) -> Response:
        body = json.loads(await request.body())
        items: list[dict[str, Any]] = body if isinstance(body, list) else [body]
        ids = [str(uuid.uuid4()) for _ in items]
        sent = [
            await kafka[0].send(topic, json.dumps({**item, "id": id_}).encode(), key=id_.encode())
            for item, id_ in zip(items, ids, strict=True)
        ]
        await asyncio.gather(*sent)
        if isinstance(body, list):
            return JSONResponse({"results": [{"id": id_} for id_ in ids]})
        return JSONResponse({"id": ids[0]}, status_code=202)

    async def ready(_: Request) -> Response:
        return JSONResponse({"status": "ready"})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        kafka.append(producer(bootstrap))
        await kafka[0].start()
        try:
            yield
        finally:
            await kafka[0].stop()

    return Starlette(
        routes=[
            Route("/v1/interactions", interactions, methods=["POST"]),
            Route("/readyz", ready),
        ],
        lifespan=lifespan,
    )


async def relay(bootstrap: str, topic: str, to: str, group: str) -> None:
    source = consumer(bootstrap, topic, group)
    sink = producer(bootstrap)
    await source.start()
    await sink.start()
    try:
        while True:
            batches = await source.getmany(timeout_ms=1_000, max_records=MAX_RECORDS)
            records = [record for batch in batches.values() for record in batch]
            if not records:
                continue
            sent = [await sink.send(to, r.value, key=r.key) for r in records]
            await asyncio.gather(*sent)
            await source.commit()
    finally:
        await source.stop()
        await sink.stop()


async def egress(bootstrap: str, topic: str, group: str, url: str, in_flight: int) -> None:
    """POSTs with aiohttp: httpx's client, which notify uses, slows down as requests queue
    in its pool (about 250 requests/s with 32 in flight on the bench machine)."""
    source = consumer(bootstrap, topic, group)
    await source.start()
    connector = aiohttp.TCPConnector(limit=in_flight)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def post(value: bytes) -> None:
            headers = {"content-type": "application/json"}
            async with http.post(url, data=value, headers=headers) as answer:
                answer.raise_for_status()

        try:
            while True:
                batches = await source.getmany(timeout_ms=1_000, max_records=MAX_RECORDS)
                records = [record for batch in batches.values() for record in batch]
                if records:
                    await asyncio.gather(*(post(r.value) for r in records))
                    await source.commit()
        finally:
            await source.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="baseline", description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=("ingress", "relay", "egress"))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--to", default="")
    parser.add_argument("--group", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url", default="")
    parser.add_argument("--in-flight", type=int, default=32)
    args = parser.parse_args()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # the services' loop
    if args.role == "ingress":
        app = ingress_app(args.bootstrap, args.topic)
        uvicorn.run(
            app,
            host="127.0.0.1",
            port=args.port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
        )
        return
    with contextlib.suppress(KeyboardInterrupt):
        if args.role == "relay":
            asyncio.run(relay(args.bootstrap, args.topic, args.to, args.group))
        else:
            asyncio.run(egress(args.bootstrap, args.topic, args.group, args.url, args.in_flight))


if __name__ == "__main__":
    main()
