"""Calls to addresses that users give Switchboard (webhook endpoints, feeds), vetted
against server-side request forgery.

A host must resolve only to public addresses, unless allow-listed; the check runs when
the address is registered and again before every call, since DNS answers change; and the
call connects to the very address that was vetted (``Host`` and TLS SNI keep the name),
so a second DNS answer (rebinding) cannot send it anywhere else.

An allow-list entry is ``host`` (any port) or ``host:port`` (``[::1]:8089`` for IPv6), so
that a local receiver can be admitted without the store, the broker or an admin API on
the same host. An address is registered without user name or password: a URL is shown
and audited, and credentials do not belong in it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import SplitResult, urlsplit, urlunsplit

from pydantic import AfterValidator


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


def allow_entry(entry: str) -> tuple[str, int | None]:
    """An allow-list entry as (host, port), the port None when the entry names none.
    Raises ValueError for one that is neither ``host`` nor ``host:port``."""
    text = entry.strip().lower()
    if text.startswith("["):  # [IPv6] or [IPv6]:port
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"not host or host:port: {entry!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:  # a name, an IPv4 address, or a bare IPv6 address
        host, port_text = text, None
    if not host:
        raise ValueError(f"no host in {entry!r}")
    if port_text is None:
        return host, None
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 65535:
        raise ValueError(f"bad port in {entry!r}")
    return host, int(port_text)


def _valid_allow_list(entries: frozenset[str]) -> frozenset[str]:
    for entry in entries:
        allow_entry(entry)
    return entries


# A setting's allow-list, its entries checked when the setting is read.
AllowList = Annotated[frozenset[str], AfterValidator(_valid_allow_list)]


def _allowed(host: str, port: int, allow_hosts: Collection[str]) -> bool:
    """Whether an entry names this host, with this port or none. A malformed entry (in a
    list not checked as a setting) names nothing."""
    for entry in allow_hosts:
        try:
            allowed_host, allowed_port = allow_entry(entry)
        except ValueError:
            continue
        if allowed_host == host and allowed_port in (None, port):
            return True
    return False


def without_userinfo(url: str) -> str:
    """The URL with any user name and password left out, for showing and logging."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def _has_userinfo(parts: SplitResult) -> bool:
    return "@" in parts.netloc


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
    allowed = _allowed(parts.hostname, port, allow_hosts)
    if not allowed and any(_forbidden(a) for a in addresses):
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
    """Vet an endpoint being registered: as before every call, and refuse userinfo. (A
    call goes to the pinned address, which carries none: a URL stored with it is called
    without it.)"""
    if _has_userinfo(urlsplit(url)):
        raise EndpointRefused("must not carry a user name or password (user:password@)")
    await resolve_endpoint(url, allow_hosts)
