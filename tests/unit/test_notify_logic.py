"""Notify's pure parts: subscription matching, retry timing, signing and the SSRF guard."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.notify.cache import FreshDeliveries
from services.notify.delivery import new_signing_secret, signed_headers
from services.notify.service import SubscriptionIn, body_for, next_delay, wants
from shared.egress import EndpointRefused, check_endpoint
from shared.events import (
    SLA_BREACHED,
    Assignment,
    AssignmentStatus,
    CloudEvent,
    SlaBreach,
    assignment_type,
    utcnow,
)

OFFERED = assignment_type(AssignmentStatus.OFFERED)


def offered(
    agent_id: str | None = "a1", queue: str = "priority", tier: str = "gold"
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
    return CloudEvent[Assignment](id="e1", source="/test", type=OFFERED, data=data)


def subscription(types: list[str], filters: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"_id": "s1", "event_types": types, "filters": filters}


# --- wants -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern", ["io.switchboard.assignment.*", "io.switchboard.*", "*", OFFERED]
)
def test_wants_matches_wildcard_and_exact_event_types(pattern: str) -> None:
    assert wants(subscription([pattern]), offered())


def test_wants_ignores_other_event_types() -> None:
    assert not wants(subscription(["io.switchboard.delivery.*"]), offered())


def test_wants_matches_when_any_pattern_matches() -> None:
    assert wants(subscription(["io.switchboard.delivery.*", "*.offered.v1"]), offered())


def test_none_filters_match_every_event() -> None:
    filters = {"agent_id": None, "queue": None, "tier": None}

    assert wants(subscription(["*"], filters), offered())
    assert wants(subscription(["*"], None), offered())


@pytest.mark.parametrize(
    ("name", "matching", "other"),
    [("agent_id", "a1", "a2"), ("queue", "priority", "care"), ("tier", "gold", "platinum")],
)
def test_each_filter_selects_on_its_field(name: str, matching: str, other: str) -> None:
    event = offered(agent_id="a1", queue="priority", tier="gold")

    assert wants(subscription(["*"], {name: matching}), event)
    assert not wants(subscription(["*"], {name: other}), event)


def test_all_filters_must_match() -> None:
    event = offered(agent_id="a1", queue="priority", tier="gold")

    assert wants(subscription(["*"], {"queue": "priority", "tier": "gold"}), event)
    assert not wants(subscription(["*"], {"queue": "priority", "tier": "silver"}), event)


def test_agent_filter_does_not_match_an_unassigned_event() -> None:
    assert not wants(subscription(["*"], {"agent_id": "a1"}), offered(agent_id=None))


# --- next_delay ------------------------------------------------------------------------

SCHEDULE = (10.0, 60.0, 300.0)


@pytest.mark.parametrize(("attempts_made", "base"), [(1, 10.0), (2, 60.0), (3, 300.0)])
def test_next_delay_follows_the_schedule_within_twenty_percent(
    attempts_made: int, base: float
) -> None:
    delays = [next_delay(SCHEDULE, attempts_made, None) for _ in range(200)]

    assert all(d is not None and base * 0.8 <= d <= base * 1.2 for d in delays)


def test_next_delay_is_jittered() -> None:
    assert len({next_delay(SCHEDULE, 1, None) for _ in range(50)}) > 1


def test_next_delay_is_none_once_the_schedule_is_spent() -> None:
    assert next_delay(SCHEDULE, 4, None) is None
    assert next_delay(SCHEDULE, 10, None) is None


def test_next_delay_honours_a_larger_retry_after() -> None:
    assert next_delay(SCHEDULE, 1, retry_after_s=900.0) == 900.0


def test_next_delay_keeps_the_schedule_when_retry_after_is_smaller() -> None:
    delay = next_delay(SCHEDULE, 2, retry_after_s=1.0)

    assert delay is not None
    assert 48.0 <= delay <= 72.0


# --- signing ---------------------------------------------------------------------------

BODY = '{"id": "e1", "data": {"text": "é 😤"}}'


def test_new_signing_secret_has_the_whsec_prefix_and_is_random() -> None:
    secret = new_signing_secret()

    assert secret.startswith("whsec_")
    assert len(secret) > len("whsec_")
    assert new_signing_secret() != secret


def test_signed_headers_carry_id_timestamp_and_signature() -> None:
    at = utcnow()
    headers = signed_headers([new_signing_secret()], "msg_1", at, BODY)

    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"


def test_signed_headers_verify_with_standard_webhooks() -> None:
    secret = new_signing_secret()
    headers = signed_headers([secret], "msg_1", utcnow(), BODY)

    assert Webhook(secret).verify(BODY, headers) == {"id": "e1", "data": {"text": "é 😤"}}


def test_signed_headers_do_not_verify_with_another_secret() -> None:
    headers = signed_headers([new_signing_secret()], "msg_1", utcnow(), BODY)

    with pytest.raises(WebhookVerificationError):
        Webhook(new_signing_secret()).verify(BODY, headers)


def test_signed_headers_do_not_verify_a_tampered_body() -> None:
    secret = new_signing_secret()
    headers = signed_headers([secret], "msg_1", utcnow(), BODY)

    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace("e1", "e2"), headers)


# --- check_endpoint --------------------------------------------------------------------


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
    ],
)
async def test_check_endpoint_refuses_non_public_addresses(url: str) -> None:
    with pytest.raises(EndpointRefused, match="non-public"):
        await check_endpoint(url, allow_hosts=())


@pytest.mark.parametrize("url", ["ftp://93.184.215.14/hook", "file:///etc/passwd", "http:///x"])
async def test_check_endpoint_refuses_non_http_urls_and_missing_hosts(url: str) -> None:
    with pytest.raises(EndpointRefused, match="http or https"):
        await check_endpoint(url, allow_hosts=())


async def test_check_endpoint_accepts_an_allow_listed_host() -> None:
    await check_endpoint("http://127.0.0.1:8089/hook", allow_hosts={"127.0.0.1"})


async def test_check_endpoint_allow_list_is_per_host() -> None:
    with pytest.raises(EndpointRefused):
        await check_endpoint("http://10.0.0.1/hook", allow_hosts={"127.0.0.1"})


@pytest.mark.parametrize("url", ["https://93.184.215.14/hook", "http://93.184.215.14:8080/"])
async def test_check_endpoint_accepts_a_public_ip_literal(url: str) -> None:
    await check_endpoint(url, allow_hosts=())


async def test_check_endpoint_judges_an_ipv4_mapped_address_by_its_ipv4() -> None:
    await check_endpoint("http://[::ffff:93.184.215.14]/", allow_hosts=())


def test_during_a_rotation_both_secrets_verify() -> None:
    old, new = new_signing_secret(), new_signing_secret()

    headers = signed_headers([new, old], "msg_1", utcnow(), BODY)

    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(BODY, headers) == Webhook(new).verify(BODY, headers)


def test_priority_filter_matches_only_its_priority() -> None:
    event = offered()

    assert wants(subscription(["io.switchboard.*"], {"priority": 1}), event)
    assert not wants(subscription(["io.switchboard.*"], {"priority": 2}), event)


def test_slack_format_is_a_text_message_naming_queue_and_customer() -> None:
    body = json.loads(body_for({"format": "slack"}, offered()))

    assert set(body) == {"text"}
    assert "`priority`" in body["text"]
    assert "gold customer" in body["text"]
    assert json.loads(body_for({}, offered()))["id"] == "e1"


def test_fresh_deliveries_too_close_to_their_lease_end_are_given_back() -> None:
    fresh = FreshDeliveries(room=3, lease="mine")
    fresh.add([{"_id": "old", "next_attempt_ms": 1_500}, {"_id": "new", "next_attempt_ms": 9_000}])
    assert fresh.room() == 1

    # At 1,000 ms, with 1,000 ms of lease needed, only "new" has enough left.
    taken, stale = fresh.take(5, now_ms=1_000, needed_ms=1_000)
    assert [d["_id"] for d in taken] == ["new"]
    assert stale == ["old"]
    assert fresh.room() == 3


def test_fresh_deliveries_are_taken_oldest_first_and_drained_on_the_way_out() -> None:
    fresh = FreshDeliveries(room=8, lease="mine")
    fresh.add([{"_id": f"d{n}", "next_attempt_ms": 10_000} for n in range(4)])

    assert [d["_id"] for d in fresh.take(2, now_ms=0, needed_ms=1)[0]] == ["d0", "d1"]
    assert fresh.drain() == ["d2", "d3"]
    assert fresh.take(2, now_ms=0, needed_ms=1) == ([], [])


# --- SLA breaches ----------------------------------------------------------------------


def breached(tier: str = "gold") -> CloudEvent[SlaBreach]:
    data = SlaBreach.model_validate(
        {
            "interaction_id": "i1",
            "queue": "priority",
            "priority_before": 3,
            "priority_after": 1,
            "waited_s": 400.0,
            "customer": {"id": "c1", "tier": tier},
            "enqueued_at": utcnow(),
        }
    )
    return CloudEvent[SlaBreach](id="e2", source="/test", type=SLA_BREACHED, data=data)


def test_a_breach_is_wanted_by_its_type_and_filtered_by_queue_tier_and_new_priority() -> None:
    assert wants(subscription(["io.switchboard.sla.*"]), breached())
    assert not wants(subscription(["io.switchboard.assignment.*"]), breached())
    assert wants(
        subscription(["*"], {"queue": "priority", "tier": "gold", "priority": 1}), breached()
    )
    assert not wants(subscription(["*"], {"priority": 3}), breached())
    assert not wants(subscription(["*"], {"agent_id": "a1"}), breached())  # a breach has no agent


def test_a_breach_as_a_slack_message_says_what_happened() -> None:
    text = json.loads(body_for({"format": "slack"}, breached()))["text"]

    assert text.startswith("*SLA breached*")
    assert "P3 → P1" in text


@pytest.mark.parametrize("pattern", ["io.switchboard.delivery.*", "io.switchboard.sla.v1", "x"])
def test_a_subscription_pattern_that_matches_nothing_sent_is_refused(pattern: str) -> None:
    with pytest.raises(ValidationError, match="matches no event type notify delivers"):
        SubscriptionIn.model_validate({"url": "https://desk.example", "event_types": [pattern]})


@pytest.mark.parametrize("pattern", ["*", "io.switchboard.*", SLA_BREACHED, "*.queued.v1"])
def test_a_subscription_pattern_that_matches_something_sent_is_taken(pattern: str) -> None:
    SubscriptionIn.model_validate({"url": "https://desk.example", "event_types": [pattern]})
