"""Notify's pure parts: matching, retry timing, signatures and the SSRF guard."""

from __future__ import annotations

import uuid

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.notify.delivery import (
    EndpointRefused,
    check_endpoint,
    new_signing_secret,
    resolve_endpoint,
    signed_headers,
)
from services.notify.service import next_delay, wants
from shared.events import Assignment, AssignmentStatus, CloudEvent, assignment_type, utcnow


def offered(
    agent_id: str = "a1", queue: str = "priority", tier: str = "gold"
) -> CloudEvent[Assignment]:
    data = Assignment.model_validate(
        {
            "interaction_id": "i1",
            "status": "offered",
            "queue": queue,
            "priority": 1,
            "rule": "r",
            "agent_id": agent_id,
            "customer": {"id": "c1", "tier": tier},
            "sentiment": "negative",
            "channel": "twitter",
            "author_handle": "@a",
            "text": "t",
            "enqueued_at": utcnow(),
        }
    )
    return CloudEvent[Assignment](
        id=str(uuid.uuid4()), source="/t", type=assignment_type(AssignmentStatus.OFFERED), data=data
    )


def subscription(types: list[str], **filters: str) -> dict[str, object]:
    return {"_id": "s1", "event_types": types, "filters": filters}


def test_subscriptions_match_by_type_pattern_and_filters() -> None:
    event = offered(agent_id="a1", queue="priority", tier="gold")

    assert wants(subscription(["io.switchboard.assignment.*"]), event)
    assert wants(subscription(["io.switchboard.assignment.offered.v1"], agent_id="a1"), event)
    assert not wants(subscription(["io.switchboard.sla.*"]), event)
    assert not wants(subscription(["io.switchboard.*"], agent_id="a2"), event)
    assert not wants(subscription(["io.switchboard.*"], tier="platinum"), event)
    assert wants(subscription(["io.switchboard.*"], queue="priority", tier="gold"), event)


def test_retry_delays_follow_the_schedule_with_jitter_and_honour_retry_after() -> None:
    schedule = (10.0, 60.0)

    assert 8.0 <= (next_delay(schedule, 1, None) or 0) <= 12.0
    assert 48.0 <= (next_delay(schedule, 2, None) or 0) <= 72.0
    assert next_delay(schedule, 3, None) is None
    assert next_delay(schedule, 1, retry_after_s=300.0) == 300.0


def test_signed_headers_verify_with_the_standard_webhooks_library() -> None:
    secret = new_signing_secret()
    body = '{"id": "e1", "data": {"text": "é 😤"}}'

    headers = signed_headers(secret, "msg_1", utcnow(), body)

    assert secret.startswith("whsec_")
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["id"] == "e1"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_signing_secret()).verify(body, headers)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://127.0.0.1:8089/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://224.0.0.1/",
        "ftp://93.184.215.14/",
    ],
)
async def test_non_public_endpoints_are_refused(url: str) -> None:
    with pytest.raises(EndpointRefused):
        await check_endpoint(url, allow_hosts=())


async def test_allow_listed_and_public_endpoints_pass() -> None:
    await check_endpoint("http://127.0.0.1:8089/hook", allow_hosts={"127.0.0.1"})
    await check_endpoint("https://93.184.215.14/hook", allow_hosts=())


async def test_attempts_connect_to_the_vetted_address_keeping_the_name() -> None:
    plain = await resolve_endpoint("http://127.0.0.1:8089/x?y=1#frag", allow_hosts={"127.0.0.1"})
    named = await resolve_endpoint("https://localhost:9443/hook", allow_hosts={"localhost"})

    assert (plain.url, plain.host, plain.sni_hostname) == (
        "http://127.0.0.1:8089/x?y=1",
        "127.0.0.1:8089",
        None,
    )
    assert named.url in ("https://127.0.0.1:9443/hook", "https://[::1]:9443/hook")
    assert (named.host, named.sni_hostname) == ("localhost:9443", "localhost")
