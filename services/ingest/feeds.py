"""Listening: RSS and Atom feeds that ingest polls itself, each new entry an interaction.

Entries are deduped like any publisher's posts, on (source, external_id) with the feed
as the source and the entry's id as the external id, so a poll that sees old entries
again stores nothing new. Polls are conditional (ETag, Last-Modified) and back off
while a feed keeps failing. Each poll is bounded: its body's size, the time its whole
download takes, and how many feeds are polled at once. A feed's host is vetted like a
webhook endpoint's (``shared.egress``): on registration, and before every request,
redirects included.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import html
import re
from collections.abc import Collection
from dataclasses import dataclass
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
from shared.text import as_name

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
            author={"handle": as_name(str(author))[:256]},
            text=text.replace("\x00", "")[:20_000],
            url=entry_link(feed["url"], entry.get("link")),
            created_at=datetime.fromtimestamp(calendar.timegm(published), UTC)
            if published
            else None,
        )
    except ValidationError as error:
        log.warning("feed entry skipped", feed_id=feed["_id"], reason=str(error)[:300])
        return None


@dataclass(frozen=True)
class FeedLimits:
    """What one poll may take: bytes of body, seconds for the whole download (redirects
    included), and how many feeds are polled at once."""

    max_bytes: int = 5 * 1024 * 1024
    timeout_s: float = 30.0
    concurrency: int = 4


class FeedTooLarge(Exception):
    """The feed's body is over the size limit (declared, or as it was read)."""


class FeedTooSlow(Exception):
    """The feed's download took longer than the time limit."""


@dataclass(frozen=True)
class Download:
    status_code: int
    headers: httpx.Headers
    body: bytes


class FeedPoller:
    """Polls due feeds, a few at a time, each claimed so several ingest replicas share the
    work. A poll whose feed is deleted is cancelled: at once when deleted through this
    process (``cancel``), within ``watch_s`` when deleted through another."""

    def __init__(
        self,
        repository: IngestRepository,
        service: IngestService,
        allow_hosts: Collection[str] = (),
        tick_s: float = 1.0,
        limits: FeedLimits = FeedLimits(),
        watch_s: float = 1.0,
    ) -> None:
        self.repository = repository
        self.service = service
        self.allow_hosts = allow_hosts
        self.tick_s = tick_s
        self.limits = limits
        self.watch_s = watch_s
        self.polls: dict[str, asyncio.Task[None]] = {}  # by feed id, those under way here

    async def run(self) -> None:
        slots = asyncio.Semaphore(self.limits.concurrency)
        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
            watcher = asyncio.create_task(self._cancel_polls_of_deleted_feeds())
            try:
                while True:
                    await slots.acquire()
                    feed = await self._claim()
                    if feed is None:
                        slots.release()
                        await asyncio.sleep(self.tick_s)
                        continue
                    self._start_poll(client, feed, slots)
            finally:
                watcher.cancel()
                await self._cancel_all()

    def cancel(self, feed_id: str) -> None:
        """Stop the poll of this feed under way here, if there is one."""
        poll = self.polls.get(feed_id)
        if poll is not None:
            poll.cancel()

    def _start_poll(
        self, client: httpx.AsyncClient, feed: Document, slots: asyncio.Semaphore
    ) -> None:
        feed_id = str(feed["_id"])
        poll = asyncio.create_task(self._poll_outliving_errors(client, feed))
        self.polls[feed_id] = poll

        def finished(_: asyncio.Task[None]) -> None:
            slots.release()
            if self.polls.get(feed_id) is poll:
                del self.polls[feed_id]

        poll.add_done_callback(finished)

    async def _poll_outliving_errors(self, client: httpx.AsyncClient, feed: Document) -> None:
        try:
            await self.poll(client, feed)
        except Exception as exc:  # the poller outlives any one feed; its claim expires
            log.error("feed poll crashed", feed_id=feed["_id"], error=repr(exc)[:300])

    async def _cancel_polls_of_deleted_feeds(self) -> None:
        """Another replica's delete reaches this one's polls through the store."""
        while True:
            await asyncio.sleep(self.watch_s)
            if not self.polls:
                continue
            try:
                existing = await self.repository.existing_feed_ids(list(self.polls))
            except Exception as exc:
                log.warning("could not check the feeds being polled", error=repr(exc)[:300])
                continue
            for feed_id in set(self.polls) - existing:
                self.cancel(feed_id)

    async def _cancel_all(self) -> None:
        polls = list(self.polls.values())
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)

    async def _claim(self) -> Document | None:
        # The claim outlasts the longest poll, so no other poll of the feed starts meanwhile.
        lease_s = max(60.0, self.limits.timeout_s + 30.0)
        with contextlib.suppress(Exception):
            return await self.repository.claim_due_feed(utcnow(), lease_s)
        log.warning("could not claim a feed")
        return None

    async def poll(self, client: httpx.AsyncClient, feed: Document) -> None:
        try:
            download = await self.download(client, feed["url"], _conditional_headers(feed))
            if download.status_code == 304:
                await self._polled(feed, {})
                return
        except (
            httpx.HTTPError,
            httpx.InvalidURL,
            EndpointRefused,
            ValueError,
            FeedTooLarge,
            FeedTooSlow,
        ) as exc:
            # ValueError: an address that cannot be vetted (a redirect to port 99999, say)
            await self._failed(feed, repr(exc))
            return
        # feedparser is pure Python and slow on big feeds: parsed in a thread, the event
        # loop keeps answering meanwhile.
        items = await asyncio.to_thread(feed_items, feed, download.body)
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
                "etag": download.headers.get("etag"),
                "modified": download.headers.get("last-modified"),
            },
        )

    async def download(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str]
    ) -> Download:
        """The feed's answer, its body read only up to the size limit, the whole of it
        (redirects included) within the time limit."""
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                return await self._download(client, url, headers)
        except TimeoutError:
            raise FeedTooSlow(
                f"the download took longer than {self.limits.timeout_s:g} s"
            ) from None

    async def _download(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str]
    ) -> Download:
        """GET the feed from the address vetted for it, following a few redirects, each
        vetted the same way (a redirect must not lead inside the network either)."""
        for _ in range(MAX_REDIRECTS + 1):
            target = await resolve_endpoint(url, self.allow_hosts)
            extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
            async with client.stream(
                "GET", target.url, headers=headers | {"host": target.host}, extensions=extensions
            ) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code == 304:
                    return Download(304, response.headers, b"")
                response.raise_for_status()
                body = await read_at_most(response, self.limits.max_bytes)
                return Download(response.status_code, response.headers, body)
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


async def read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The body, refused before it is read when it declares more than ``limit`` bytes,
    and as soon as more than that arrived (decompressed) when it does not."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FeedTooLarge(f"the body is {declared} bytes, over the {limit} a feed may have")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise FeedTooLarge(f"the body passed the {limit} bytes a feed may have")
    return bytes(body)


def feed_items(feed: Document, body: bytes) -> list[InteractionIn]:
    """The feed's entries as interactions (bytes: feedparser takes a str for a URL)."""
    parsed = feedparser.parse(body)
    return [i for e in parsed.entries if (i := entry_to_interaction(feed, parsed, e))]


def _conditional_headers(feed: Document) -> dict[str, str]:
    headers = {}
    if feed.get("etag"):
        headers["If-None-Match"] = feed["etag"]
    if feed.get("modified"):
        headers["If-Modified-Since"] = feed["modified"]
    return headers
