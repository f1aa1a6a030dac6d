"""Feed polls are bounded: a body too big or a download too slow is a failed poll that
costs ingest little memory and never stops it answering; a deleted feed's download
stops; a slow feed holds up no other.

The feeds come from a real HTTP server whose bodies are made up as they are sent
(endless, a gigabyte, a trickle), so nothing that large is ever stored.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from shared.embedded import EmbeddedStack
from shared.events import Interaction
from shared.mongo import Document
from tests.integration.test_ingest import Ingest, rss, running_ingest
from tests.support import admin_headers, eventually, read_topic

MIB = 1024 * 1024
GIB = 1024 * MIB
# How much ingest's resident memory may grow while it refuses a body over the feed size
# limit (5 MiB by default); a whole body read into memory passes it within a second.
MEMORY_BOUND = 48 * MIB
HEALTH_WITHIN_S = 1.0
FILLER = b"<!-- " + b"x" * (64 * 1024 - 10) + b" -->\n"  # 64 KiB of XML comment
RSS_HEAD = b'<?xml version="1.0"?><rss version="2.0"><channel><title>big</title>'


@dataclass(frozen=True)
class Body:
    """A response body made up as it is sent: ``size`` bytes (None: endless) of ``piece``
    repeated, with ``pause_s`` between pieces; or ``content`` as it is."""

    size: int | None = None
    declare_length: bool = False
    piece: bytes = field(default=FILLER, repr=False)
    pause_s: float = 0.0
    content: bytes | None = None


@dataclass
class BodyServer:
    """A real HTTP/1.1 server for such bodies. It notes each path requested, and each
    whose connection the client closed before the body was sent to its end."""

    bodies: dict[str, Body]
    requested: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self.handlers.add(handler)
        handler.add_done_callback(self.handlers.discard)
        path = ""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.requested.append(path)
            gone = asyncio.ensure_future(reader.read(1))  # b"": the client hung up
            try:
                if not await self._send(writer, self.bodies[path], gone):
                    self.closed.append(path)
            finally:
                gone.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed.append(path)
        except asyncio.CancelledError:
            pass  # the server is closing; ended quietly, since asyncio's streams log a cancel
        finally:
            writer.close()

    async def _send(
        self, writer: asyncio.StreamWriter, body: Body, gone: asyncio.Future[bytes]
    ) -> bool:
        """Send ``body``; False if the client hung up before its end."""
        if body.content is not None:
            head = f"Content-Length: {len(body.content)}"
            writer.write(_response_head(head) + body.content)
            await writer.drain()
            return True
        declared = body.declare_length and body.size is not None
        writer.write(
            _response_head(
                f"Content-Length: {body.size}" if declared else "Transfer-Encoding: chunked"
            )
        )
        sent, first = 0, RSS_HEAD
        while body.size is None or sent < body.size:
            piece = first or body.piece
            first = b""
            if body.size is not None:
                piece = piece[: body.size - sent]
            writer.write(piece if declared else b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            if not await _drained_unless(writer, gone):
                return False
            if body.pause_s:
                await asyncio.sleep(body.pause_s)
            if gone.done():
                return False
        writer.write(b"" if declared else b"0\r\n\r\n")
        await writer.drain()
        return True


def _response_head(length: str) -> bytes:
    return (
        "HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\n"
        f"Connection: close\r\n{length}\r\n\r\n"
    ).encode()


async def _drained_unless(writer: asyncio.StreamWriter, gone: asyncio.Future[bytes]) -> bool:
    """Wait until the client took what was written; False if it hung up first."""
    drained = asyncio.ensure_future(writer.drain())
    either: list[asyncio.Future[Any]] = [drained, gone]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not drained.done():
        drained.cancel()
        with suppress(asyncio.CancelledError, ConnectionError):
            await drained
        return False
    drained.result()
    return True


@asynccontextmanager
async def serving_bodies(server: BodyServer) -> AsyncIterator[str]:
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    host, port = listening.sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        listening.close()
        for handler in list(server.handlers):  # a trickle still being sent
            handler.cancel()
        await asyncio.gather(*server.handlers, return_exceptions=True)


def resident_bytes() -> int:
    """This process's resident memory (ingest runs in it), from /proc/self/statm."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Vitals:
    """What ingest went through while a check was waited for."""

    baseline: int = field(default_factory=resident_bytes)
    most_growth: int = 0
    slowest_health_s: float = 0.0

    async def sample(self, ingest: Ingest) -> None:
        started = time.monotonic()
        answer = await ingest.http.get("/healthz", timeout=30.0)
        took = time.monotonic() - started
        assert answer.status_code == 200
        self.slowest_health_s = max(self.slowest_health_s, took)
        self.most_growth = max(self.most_growth, resident_bytes() - self.baseline)
        assert self.most_growth < MEMORY_BOUND, f"ingest grew {self.most_growth / MIB:.0f} MiB"
        assert took < HEALTH_WITHIN_S, f"/healthz took {took:.2f} s"


async def watched(
    ingest: Ingest, vitals: Vitals, check: Callable[[], Awaitable[Any]], timeout_s: float
) -> Any:
    """Wait for ``check`` as ``eventually`` does, sampling ingest's vitals all along."""

    async def sampled_check() -> Any:
        await vitals.sample(ingest)
        return await check()

    return await eventually(sampled_check, timeout_s=timeout_s, interval_s=0.1)


async def add_feed(ingest: Ingest, url: str) -> str:
    created = await ingest.http.post(
        "/v1/feeds", json={"url": url, "poll_interval_s": 60}, headers=admin_headers()
    )
    assert created.status_code == 201, created.text
    feed_id: str = created.json()["id"]
    return feed_id


async def failed_poll(ingest: Ingest, feed_id: str) -> dict[str, Any] | None:
    feeds = (await ingest.http.get("/v1/feeds", headers=admin_headers())).json()
    return next((f for f in feeds if f["id"] == feed_id and f["failures"] >= 1), None)


async def seen(items: list[str], item: str) -> bool:
    return item in items


@pytest.mark.parametrize(
    "body",
    [
        Body(size=None),
        Body(size=GIB, declare_length=True),
        Body(size=GIB, declare_length=False),
    ],
    ids=["endless", "gigabyte-with-length", "gigabyte-chunked"],
)
async def test_a_feed_body_over_the_size_limit_is_a_failed_poll_that_costs_little(
    stack: EmbeddedStack, namespace: str, run_dir: Path, body: Body
) -> None:
    server = BodyServer({"/big.xml": body})
    async with serving_bodies(server) as url, running_ingest(stack, namespace, run_dir) as ingest:
        vitals = Vitals()
        feed_id = await add_feed(ingest, f"{url}/big.xml")
        feed = await watched(ingest, vitals, lambda: failed_poll(ingest, feed_id), timeout_s=60)
        await watched(ingest, vitals, lambda: seen(server.closed, "/big.xml"), timeout_s=10)

    assert "FeedTooLarge" in feed["last_error"]
    assert "5242880" in feed["last_error"]
    print(  # the figures behind the bounds, for the record (pytest -s)
        f"\n{body}: grew {vitals.most_growth / MIB:.1f} MiB, "
        f"slowest /healthz {vitals.slowest_health_s:.3f} s"
    )


TRICKLE = Body(size=None, piece=b" " * 1024, pause_s=0.2)


async def test_a_feed_slower_than_the_time_limit_is_a_failed_poll(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    server = BodyServer({"/slow.xml": TRICKLE})
    async with (
        serving_bodies(server) as url,
        running_ingest(stack, namespace, run_dir, feed_timeout_s=2.0) as ingest,
    ):
        vitals = Vitals()
        feed_id = await add_feed(ingest, f"{url}/slow.xml")
        feed = await watched(ingest, vitals, lambda: failed_poll(ingest, feed_id), timeout_s=30)
        await eventually(lambda: seen(server.closed, "/slow.xml"), timeout_s=10)

    assert "FeedTooSlow" in feed["last_error"]
    assert "longer than 2 s" in feed["last_error"]


async def test_deleting_a_feed_stops_its_download_at_once(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    server = BodyServer({"/slow.xml": TRICKLE})
    async with (
        serving_bodies(server) as url,
        running_ingest(stack, namespace, run_dir, feed_timeout_s=300.0) as ingest,
    ):
        feed_id = await add_feed(ingest, f"{url}/slow.xml")
        await eventually(lambda: seen(server.requested, "/slow.xml"), timeout_s=30)
        deleted = await ingest.http.delete(f"/v1/feeds/{feed_id}", headers=admin_headers())
        started = time.monotonic()
        # About a second is what it takes; the margin is for a machine under load.
        await eventually(lambda: seen(server.closed, "/slow.xml"), timeout_s=15)
        took = time.monotonic() - started

    assert deleted.status_code == 204
    print(f"\nthe download stopped {took:.2f} s after the delete")


async def test_a_feed_deleted_through_another_replica_stops_its_download_too(
    stack: EmbeddedStack,
    namespace: str,
    run_dir: Path,
    client: AsyncMongoClient[Document],
) -> None:
    server = BodyServer({"/slow.xml": TRICKLE})
    async with (
        serving_bodies(server) as url,
        running_ingest(stack, namespace, run_dir, feed_timeout_s=300.0) as ingest,
    ):
        feed_id = await add_feed(ingest, f"{url}/slow.xml")
        await eventually(lambda: seen(server.requested, "/slow.xml"), timeout_s=30)
        # Deleted in the store, as another replica's API does: this one learns it there.
        feeds = client[ingest.settings.mongo.database("ingest")]["feeds"]
        deleted = await feeds.delete_one({"_id": feed_id})
        await eventually(lambda: seen(server.closed, "/slow.xml"), timeout_s=10)

    assert deleted.deleted_count == 1


async def test_a_slow_feed_does_not_hold_up_another(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    quick = rss([("q-1", "Checkout keeps failing"), ("q-2", "Thanks for the fix")]).encode()
    server = BodyServer({"/slow.xml": TRICKLE, "/quick.xml": Body(content=quick)})
    async with (
        serving_bodies(server) as url,
        running_ingest(stack, namespace, run_dir, feed_timeout_s=300.0) as ingest,
    ):
        await add_feed(ingest, f"{url}/slow.xml")
        await eventually(lambda: seen(server.requested, "/slow.xml"), timeout_s=30)
        await add_feed(ingest, f"{url}/quick.xml")
        topic = ingest.settings.kafka.topics.received
        events = await read_topic(ingest.settings.kafka, topic, Interaction, 2, timeout_s=30)
        still_downloading = "/slow.xml" not in server.closed

    assert sorted(event.data.external_id for _, event in events) == ["q-1", "q-2"]
    assert still_downloading, "the slow feed's download ended: it could not hold anything up"
