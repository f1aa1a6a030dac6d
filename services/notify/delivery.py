"""The way out: Standard Webhooks signing, the SSRF guard, and one HTTP attempt."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import secrets
import socket
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks.webhooks import Webhook

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


class EndpointRefused(ValueError):
    """The endpoint resolves to an address Switchboard will not call."""


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: mapped, 6to4, NAT64 or (old) compatible."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _forbidden(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None and _forbidden(str(embedded)):
            return True
    return not ip.is_global or ip.is_multicast


@dataclass(frozen=True)
class Target:
    """Where one attempt connects: the vetted address itself, so that a second DNS answer
    (rebinding) cannot send the request anywhere else. ``Host`` and TLS SNI keep the name."""

    url: str
    host: str
    sni_hostname: str | None


async def resolve_endpoint(url: str, allow_hosts: Collection[str]) -> Target:
    """Resolve and vet an endpoint. Refuses hosts that resolve to private, loopback,
    link-local, shared, multicast or reserved addresses, unless allow-listed. Done on
    create and before every attempt, since DNS answers change."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointRefused("must be an http or https URL with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, port, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise EndpointRefused(f"host does not resolve: {parts.hostname}") from exc
    addresses = [str(info[4][0]) for info in infos]
    if parts.hostname not in allow_hosts and any(_forbidden(a) for a in addresses):
        raise EndpointRefused(f"host resolves to a non-public address: {parts.hostname}")
    address = min(addresses, key=lambda a: ":" in a)  # IPv4 first, as most clients do
    literal = f"[{address}]" if ":" in address else address
    pinned = parts._replace(netloc=f"{literal}:{port}", fragment="")
    return Target(
        url=urlunsplit(pinned),
        host=parts.netloc.rsplit("@", 1)[-1],
        sni_hostname=parts.hostname if parts.scheme == "https" else None,
    )


async def check_endpoint(url: str, allow_hosts: Collection[str]) -> None:
    await resolve_endpoint(url, allow_hosts)


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
