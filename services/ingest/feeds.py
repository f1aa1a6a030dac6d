"""Listening: RSS and Atom feeds that ingest polls itself, each new entry an interaction.

Entries are deduped like any publisher's posts, on (source, external_id) with the feed
as the source and the entry's id as the external id, so a poll that sees old entries
again stores nothing new. Polls are conditional (ETag, Last-Modified) and back off
while a feed keeps failing. A feed's host is vetted like a webhook endpoint's
(``shared.egress``): on registration, and before every request, redirects included.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import html
import re
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

import feedparser
import httpx
from pydantic import ValidationError

from services.ingest.repository import IngestRepository
from services.ingest.service import IngestService, InteractionIn, Publisher
from shared.egress import EndpointRefused, resolve_endpoint
from shared.events import utcnow
from shared.logging import get_logger
from shared.mongo import Document, epoch_ms

log = get_logger(__name__)
MAX_BACKOFF = timedelta(hours=1)
MAX_REDIRECTS = 3
_TAG = re.compile(r"<[^>]+>")


def plain_text(markup: str) -> str:
    return html.unescape(_TAG.sub(" ", markup)).strip()


def entry_link(feed_url: str, link: object) -> str | None:
    """The entry's link made absolute against the feed's URL (forums often write
    ``/t/123``); None unless that is an http(s) URL, so a bad link costs only the link."""
    if not isinstance(link, str) or not link.strip():
        return None
    try:
        absolute = urljoin(feed_url, link.strip())
        parts = urlsplit(absolute)
        has_host = bool(parts.hostname)
    except ValueError:
        return None
    return absolute if parts.scheme in ("http", "https") and has_host else None


def entry_to_interaction(feed: Document, parsed: Any, entry: Any) -> InteractionIn | None:
    """One feed entry as an interaction; None for an entry with nothing to say."""
    entry_id = entry.get("id") or entry.get("link")
    text = "\n".join(
        p for p in (plain_text(entry.get("title", "")), plain_text(entry.get("summary", ""))) if p
    )
    if not entry_id or not text:
        return None
    author = entry.get("author") or parsed.feed.get("title") or urlsplit(feed["url"]).hostname
    published = entry.get("published_parsed") or entry.get("updated_parsed")
    try:
        return InteractionIn(
            channel=feed["channel"],
            source=f"feed:{feed['_id']}",
            external_id=str(entry_id)[:256],
            author={"handle": str(author)[:256]},
            text=text[:20_000],
            url=entry_link(feed["url"], entry.get("link")),
            created_at=datetime.fromtimestamp(calendar.timegm(published), UTC)
            if published
            else None,
        )
    except ValidationError as error:
        log.warning("feed entry skipped", feed_id=feed["_id"], reason=str(error)[:300])
        return None


class FeedPoller:
    """Polls due feeds, one claim at a time, so several ingest replicas share the work."""

    def __init__(
        self,
        repository: IngestRepository,
        service: IngestService,
        allow_hosts: Collection[str] = (),
        tick_s: float = 1.0,
    ) -> None:
        self.repository = repository
        self.service = service
        self.allow_hosts = allow_hosts
        self.tick_s = tick_s

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
            while True:
                feed = await self._claim()
                if feed is None:
                    await asyncio.sleep(self.tick_s)
                    continue
                try:
                    await self.poll(client, feed)
                except Exception as exc:  # the poller outlives any one feed; its claim expires
                    log.error("feed poll crashed", feed_id=feed["_id"], error=repr(exc)[:300])

    async def _claim(self) -> Document | None:
        with contextlib.suppress(Exception):
            return await self.repository.claim_due_feed(utcnow())
        log.warning("could not claim a feed")
        return None

    async def poll(self, client: httpx.AsyncClient, feed: Document) -> None:
        try:
            response = await self.fetch(client, feed["url"], _conditional_headers(feed))
            if response.status_code == 304:
                await self._polled(feed, {})
                return
            response.raise_for_status()
        except (httpx.HTTPError, httpx.InvalidURL, EndpointRefused, ValueError) as exc:
            # ValueError: an address that cannot be vetted (a redirect to port 99999, say)
            await self._failed(feed, repr(exc))
            return
        parsed = feedparser.parse(response.content)
        items = [i for e in parsed.entries if (i := entry_to_interaction(feed, parsed, e))]
        publisher = Publisher(id=f"feed:{feed['_id']}", name="feeds")
        outcomes = await self.service.accept(items, publisher) if items else []
        log.info(
            "feed polled",
            feed_id=feed["_id"],
            entries=len(items),
            new=sum(o.status == "accepted" for o in outcomes),
        )
        await self._polled(
            feed,
            {
                "etag": response.headers.get("etag"),
                "modified": response.headers.get("last-modified"),
            },
        )

    async def fetch(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str]
    ) -> httpx.Response:
        """GET the feed from the address vetted for it, following a few redirects, each
        vetted the same way (a redirect must not lead inside the network either)."""
        for _ in range(MAX_REDIRECTS + 1):
            target = await resolve_endpoint(url, self.allow_hosts)
            extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
            response = await client.get(
                target.url, headers=headers | {"host": target.host}, extensions=extensions
            )
            if not response.is_redirect or "location" not in response.headers:
                return response
            url = urljoin(url, response.headers["location"])
        raise httpx.TooManyRedirects(
            f"more than {MAX_REDIRECTS} redirects", request=response.request
        )

    async def _polled(self, feed: Document, validators: dict[str, Any]) -> None:
        next_poll = utcnow() + timedelta(seconds=feed["poll_interval_s"])
        changes = {"failures": 0, "last_error": None, "next_poll_ms": epoch_ms(next_poll)}
        await self.repository.update_feed(
            feed["_id"], changes | {k: v for k, v in validators.items() if v}
        )

    async def _failed(self, feed: Document, error: str) -> None:
        failures = int(feed["failures"]) + 1
        backoff = failed_poll_backoff(feed["poll_interval_s"], failures)
        log.warning("feed poll failed", feed_id=feed["_id"], failures=failures, error=error[:300])
        await self.repository.update_feed(
            feed["_id"],
            {
                "failures": failures,
                "last_error": error[:500],
                "next_poll_ms": epoch_ms(utcnow() + backoff),
            },
        )


def failed_poll_backoff(interval_s: float, failures: int) -> timedelta:
    """The interval doubled for each failure in a row, at most ``MAX_BACKOFF`` or the
    interval, whichever is longer (a failing feed is never polled more often than a
    healthy one); capped before it is a timedelta, which overflows past about 2.7
    million years."""
    longest = max(MAX_BACKOFF.total_seconds(), interval_s)
    return timedelta(seconds=min(interval_s * 2 ** min(failures, 32), longest))


def _conditional_headers(feed: Document) -> dict[str, str]:
    headers = {}
    if feed.get("etag"):
        headers["If-None-Match"] = feed["etag"]
    if feed.get("modified"):
        headers["If-Modified-Since"] = feed["modified"]
    return headers
