"""The way out: Standard Webhooks signing and one HTTP attempt (to an endpoint vetted by
``shared.egress``)."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import httpx
from standardwebhooks.webhooks import Webhook

from shared.egress import Target

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
RETRY_STATUSES = frozenset({429, 502, 503, 504})


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
    retry_after_s: float | None = None
    gone: bool = False


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None or response.status_code not in RETRY_STATUSES:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


async def attempt(
    client: httpx.AsyncClient, target: Target, headers: dict[str, str], body: str
) -> Attempt:
    """One POST to the pinned address; redirects are not followed (a 3xx is a failure,
    as the spec says)."""
    extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
    started = time.perf_counter()
    try:
        response = await client.post(
            target.url,
            content=body.encode(),
            headers=headers | {"host": target.host},
            extensions=extensions,
        )
    except httpx.HTTPError as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return Attempt(False, None, elapsed, error=type(exc).__name__)
    elapsed = (time.perf_counter() - started) * 1000
    return Attempt(
        ok=200 <= response.status_code < 300,
        status_code=response.status_code,
        latency_ms=elapsed,
        excerpt=response.text[:200],
        retry_after_s=_retry_after(response),
        gone=response.status_code == 410,
    )
