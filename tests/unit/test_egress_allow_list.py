"""The SSRF guard's allow-list (a host, or a host and one port) and its refusal of
addresses that carry a user name or password."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from services.notify.config import NotifySettings
from shared.cli import LocalSettings, service_env
from shared.egress import EndpointRefused, allow_entry, check_endpoint, without_userinfo


async def test_an_entry_with_a_port_admits_that_port() -> None:
    await check_endpoint("http://127.0.0.1:8089/hook", allow_hosts={"127.0.0.1:8089"})
    await check_endpoint("http://localhost:8089/hook", allow_hosts={"localhost:8089"})


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:27017/", "http://127.0.0.1:9092/", "http://127.0.0.1/"]
)
async def test_an_entry_with_a_port_refuses_another_port_on_the_same_host(url: str) -> None:
    with pytest.raises(EndpointRefused, match="non-public"):
        await check_endpoint(url, allow_hosts={"127.0.0.1:8089"})


async def test_an_entry_with_a_port_counts_the_schemes_default_port() -> None:
    await check_endpoint("http://127.0.0.1/hook", allow_hosts={"127.0.0.1:80"})
    with pytest.raises(EndpointRefused):
        await check_endpoint("https://127.0.0.1/hook", allow_hosts={"127.0.0.1:80"})


async def test_a_bare_host_still_admits_any_port() -> None:
    await check_endpoint("http://127.0.0.1:27017/", allow_hosts={"127.0.0.1"})


async def test_an_ipv6_entry_names_its_port_in_brackets() -> None:
    await check_endpoint("http://[::1]:8089/", allow_hosts={"[::1]:8089"})
    await check_endpoint("http://[::1]:9092/", allow_hosts={"::1"})
    with pytest.raises(EndpointRefused):
        await check_endpoint("http://[::1]:9092/", allow_hosts={"[::1]:8089"})


async def test_a_malformed_entry_admits_nothing() -> None:
    with pytest.raises(EndpointRefused):
        await check_endpoint("http://127.0.0.1:8089/", allow_hosts={"127.0.0.1:http"})


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        ("127.0.0.1", ("127.0.0.1", None)),
        ("127.0.0.1:8089", ("127.0.0.1", 8089)),
        ("LocalHost:8089", ("localhost", 8089)),
        ("[::1]:8089", ("::1", 8089)),
        ("[::1]", ("::1", None)),
        ("::1", ("::1", None)),
    ],
)
def test_allow_entries_are_a_host_and_maybe_a_port(
    entry: str, parsed: tuple[str, int | None]
) -> None:
    assert allow_entry(entry) == parsed


@pytest.mark.parametrize("entry", ["", ":8089", "host:", "host:0", "host:65536", "h:x", "[::1]x"])
def test_a_malformed_allow_list_setting_is_refused_at_startup(entry: str) -> None:
    with pytest.raises(ValidationError, match="allow_hosts"):
        NotifySettings(allow_hosts=frozenset({entry}))


def test_make_run_lets_webhooks_reach_the_desk_only_and_feeds_nothing_local(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("SWITCHBOARD_NOTIFY_ALLOW_HOSTS", "SWITCHBOARD_INGEST_ALLOW_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    local = LocalSettings(desk_port=8089)

    env = service_env(local, "token")

    allowed = NotifySettings.model_validate_json(
        f'{{"allow_hosts": {env["SWITCHBOARD_NOTIFY_ALLOW_HOSTS"]}}}'
    ).allow_hosts
    assert allowed == {"127.0.0.1:8089", "localhost:8089"}
    assert env["SWITCHBOARD_INGEST_ALLOW_HOSTS"] == "[]"


async def test_make_runs_allow_list_admits_the_desk_the_demo_subscribes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SWITCHBOARD_NOTIFY_ALLOW_HOSTS", raising=False)
    local = LocalSettings(desk_port=18089, store_port=27017)
    allowed = json.loads(service_env(local, "token")["SWITCHBOARD_NOTIFY_ALLOW_HOSTS"])

    await check_endpoint(f"{local.url('desk')}/webhooks", allow_hosts=allowed)  # as the demo
    with pytest.raises(EndpointRefused):
        await check_endpoint(f"http://127.0.0.1:{local.store_port}/", allow_hosts=allowed)


def test_an_allow_list_in_the_environment_wins_over_make_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SWITCHBOARD_NOTIFY_ALLOW_HOSTS", '["127.0.0.1"]')

    env = service_env(LocalSettings(), "token")

    assert env["SWITCHBOARD_NOTIFY_ALLOW_HOSTS"] == '["127.0.0.1"]'


# --- userinfo --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw@93.184.215.14/hook",
        "https://user@93.184.215.14/hook",
        "http://:pw@93.184.215.14/hook",
        "http://user:pw@127.0.0.1:8089/hook",
    ],
)
async def test_an_address_with_a_user_name_or_password_is_refused(url: str) -> None:
    with pytest.raises(EndpointRefused, match="user name or password"):
        await check_endpoint(url, allow_hosts={"127.0.0.1"})


async def test_an_at_sign_in_the_path_or_query_is_not_userinfo() -> None:
    await check_endpoint("http://93.184.215.14/a@b?c=d@e", allow_hosts=())


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@desk.example:8443/hook?a=1", "http://desk.example:8443/hook?a=1"),
        ("https://u%40x:p%3A@desk.example/", "https://desk.example/"),
        ("https://desk.example/a@b", "https://desk.example/a@b"),
    ],
)
def test_an_address_is_shown_without_its_userinfo(url: str, shown: str) -> None:
    assert without_userinfo(url) == shown
