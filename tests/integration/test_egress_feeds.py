"""Ingest's feeds go through the same SSRF guard as notify's webhooks: no user name or
password in the address, and an allow-list entry may admit one port only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from pymongo import AsyncMongoClient

from services.ingest.config import IngestSettings
from services.ingest.main import create_app
from services.ingest.service import FeedIn, new_feed
from shared.embedded import EmbeddedStack, free_port
from shared.events import utcnow
from shared.mongo import Document, epoch_ms
from tests.support import admin_headers, client_of, mongo_settings, service_settings


@asynccontextmanager
async def ingest_allowing(
    stack: EmbeddedStack, namespace: str, run_dir: Path, allow_hosts: frozenset[str]
) -> AsyncIterator[httpx.AsyncClient]:
    settings = service_settings(IngestSettings, stack, namespace, run_dir, allow_hosts=allow_hosts)
    async with client_of(create_app(settings)) as http:
        yield http


async def add_feed(http: httpx.AsyncClient, url: str) -> httpx.Response:
    return await http.post("/v1/feeds", json={"url": url}, headers=admin_headers())


async def test_a_feed_with_a_user_name_or_password_is_refused(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with ingest_allowing(stack, namespace, run_dir, frozenset({"127.0.0.1"})) as http:
        answer = await add_feed(http, "http://reader:s3cret@127.0.0.1:8080/feed.xml")
        feeds = await http.get("/v1/feeds", headers=admin_headers())

    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["field"] == "url"
    assert "user name or password" in problem["reason"]
    assert "s3cret" not in answer.text
    assert feeds.json() == []


async def test_a_feed_allow_list_entry_with_a_port_admits_that_port_and_no_other(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    port, other = free_port(), free_port()
    allowed = frozenset({f"127.0.0.1:{port}"})
    async with ingest_allowing(stack, namespace, run_dir, allowed) as http:
        admitted = await add_feed(http, f"http://127.0.0.1:{port}/feed.xml")
        refused = await add_feed(http, f"http://127.0.0.1:{other}/feed.xml")

    assert admitted.status_code == 201, admitted.text
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["field"] == "url"


async def test_a_stored_feeds_password_is_not_shown(
    stack: EmbeddedStack, namespace: str, run_dir: Path, client: AsyncMongoClient[Document]
) -> None:
    async with ingest_allowing(stack, namespace, run_dir, frozenset()) as http:
        feed = new_feed(FeedIn(url="http://reader:s3cret@127.0.0.1:9/feed.xml"))
        feed["next_poll_ms"] = epoch_ms(utcnow()) + 3_600_000  # not polled in this test
        await client[mongo_settings(stack.mongo_url, namespace).database("ingest")][
            "feeds"
        ].insert_one(feed)
        feeds = await http.get("/v1/feeds", headers=admin_headers())

    assert [shown["url"] for shown in feeds.json()] == ["http://127.0.0.1:9/feed.xml"]
    assert "s3cret" not in feeds.text
