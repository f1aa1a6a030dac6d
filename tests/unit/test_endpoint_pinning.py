"""Notify pins each attempt to the address it vetted, keeping the endpoint's name."""

from __future__ import annotations

import pytest

from shared.egress import EndpointRefused, check_endpoint, resolve_endpoint


async def test_attempts_connect_to_the_vetted_address_keeping_the_name() -> None:
    plain = await resolve_endpoint("http://127.0.0.1:8089/x?y=1#frag", allow_hosts={"127.0.0.1"})
    named = await resolve_endpoint("https://localhost:9443/hook", allow_hosts={"localhost"})

    assert (plain.url, plain.host, plain.sni_hostname) == (
        "http://127.0.0.1:8089/x?y=1",
        "127.0.0.1:8089",
        None,
    )
    assert named.url == "https://127.0.0.1:9443/hook"
    assert (named.host, named.sni_hostname) == ("localhost:9443", "localhost")


async def test_ipv6_forms_of_private_ipv4_addresses_are_refused() -> None:
    for url in ("http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::]/", "http://[::127.0.0.1]/"):
        with pytest.raises(EndpointRefused):
            await check_endpoint(url, allow_hosts=())


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b:1::a9fe:a9fe]/",  # local-use NAT64 to the metadata address
        "http://[::ffff:0:a9fe:a9fe]/",  # IPv4-translated, the same
        "http://[fec0::1]/",  # site-local
        "http://192.0.0.8/",  # IETF protocol assignments
    ],
)
async def test_addresses_some_pythons_call_global_are_refused(url: str) -> None:
    with pytest.raises(EndpointRefused, match="non-public"):
        await check_endpoint(url, allow_hosts=())


async def test_a_port_out_of_range_is_refused_not_an_error() -> None:
    with pytest.raises(EndpointRefused, match="bad port"):
        await check_endpoint("http://93.184.215.14:99999/hook", allow_hosts=())
