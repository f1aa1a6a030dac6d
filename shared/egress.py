"""Calls to addresses that users give Switchboard (webhook endpoints, feeds), vetted
against server-side request forgery.

A host must resolve only to public addresses, unless allow-listed; the check runs when
the address is registered and again before every call, since DNS answers change; and the
call connects to the very address that was vetted (``Host`` and TLS SNI keep the name),
so a second DNS answer (rebinding) cannot send it anywhere else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit


class EndpointRefused(ValueError):
    """The endpoint resolves to an address Switchboard will not call."""


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# Not public, though ``is_global`` says so before Python 3.11.10 / 3.12.4 (CVE-2024-4032):
# local-use NAT64 (which reaches 169.254.169.254 as 64:ff9b:1::a9fe:a9fe), IPv4-translated
# addresses, deprecated site-local IPv6 and the IETF's own IPv4 block (192.0.0.8, say).
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(network)
    for network in ("64:ff9b:1::/48", "::ffff:0:0:0/96", "fec0::/10", "192.0.0.0/24")
)


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
    if any(ip in network for network in _NOT_PUBLIC):
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
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # out of range, or not a number
        raise EndpointRefused(f"bad port: {exc}") from exc
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
