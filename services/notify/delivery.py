"""The way out: Standard Webhooks signing and one HTTP attempt (to an endpoint vetted by
``shared.egress``)."""

from __future__ import annotations

import base64
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
from standardwebhooks.webhooks import Webhook

from shared.egress import Target

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
RETRY_STATUSES = frozenset({429, 502, 503, 504})
EXCERPT_BYTES = 800  # what an attempt keeps of the answer: enough for 200 characters


def new_signing_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def signed_headers(
    secrets: Sequence[str], message_id: str, at: datetime, body: str
) -> dict[str, str]:
    """Headers per the Standard Webhooks spec; the signature covers id, timestamp and body.
    While a secret is being rotated, one signature per secret, space-separated."""
    signatures = " ".join(Webhook(secret).sign(message_id, at, body) for secret in secrets)
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
    }


@dataclass(frozen=True)
class Attempt:
    ok: bool
    status_code: int | None
    latency_ms: float
    error: str | None = None
    excerpt: str = ""
    retry_after_s: float | None = None  # the wait Retry-After asked for, within the ceiling
    gone: bool = False


def parse_retry_after(value: str, now: datetime, ceiling_s: float) -> float:
    """The wait a ``Retry-After`` value asks for (delta-seconds or an HTTP-date, RFC 9110),
    within [0, ceiling_s]: a value in the past, negative, not a number or unreadable asks
    for no extra wait; an infinite or huge one for the ceiling, so that no answer can park
    a delivery for years or overflow the arithmetic of its next attempt."""
    seconds = _delta_seconds(value)
    if seconds is None:
        seconds = _seconds_until_date(value, now)
    if seconds is None or math.isnan(seconds):
        return 0.0
    return min(max(seconds, 0.0), ceiling_s)


def _delta_seconds(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _seconds_until_date(value: str, now: datetime) -> float | None:
    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if at.tzinfo is None:  # "-0000": the time is UTC, its source unknown
        at = at.replace(tzinfo=UTC)
    return (at - now).total_seconds()


def _retry_after(status: int, headers: Mapping[str, str], ceiling_s: float) -> float | None:
    value = headers.get("retry-after")
    if value is None or status not in RETRY_STATUSES:
        return None
    return parse_retry_after(value, datetime.now(UTC), ceiling_s)


def webhook_session(timeout_s: float) -> aiohttp.ClientSession:
    """The client deliveries go out through. aiohttp rather than httpx: it costs far less
    CPU per request with many in flight (measured in bench/HISTORY.md).
    Connections are pooled per address, port and TLS server name; no cookies are kept."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )


async def attempt(
    session: aiohttp.ClientSession,
    target: Target,
    headers: dict[str, str],
    body: str,
    retry_after_max_s: float,
) -> Attempt:
    """One POST to the pinned address; redirects are not followed (a 3xx is a failure,
    as the spec says). Of the answer, only the start is read. A ``Retry-After`` is taken
    up to ``retry_after_max_s``."""
    started = time.perf_counter()
    try:
        async with session.post(
            target.url,
            data=body.encode(),
            headers=headers | {"host": target.host},
            allow_redirects=False,
            server_hostname=target.sni_hostname,
        ) as response:
            start = await response.content.read(EXCERPT_BYTES)
            status, answer_headers = response.status, response.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return Attempt(False, None, elapsed, error=type(exc).__name__)
    elapsed = (time.perf_counter() - started) * 1000
    return Attempt(
        ok=200 <= status < 300,
        status_code=status,
        latency_ms=elapsed,
        excerpt=start.decode("utf-8", errors="replace")[:200],
        retry_after_s=_retry_after(status, answer_headers, retry_after_max_s),
        gone=status == 410,
    )
