"""The event contract and the small shared pieces, without broker or store."""

from __future__ import annotations

import uuid

import pytest

from services.ingest.service import TokenBucket
from shared.events import (
    INTERACTION_RECEIVED,
    CloudEvent,
    Interaction,
    UndecodableEvent,
    decode,
    derived_event_id,
    encode,
    utcnow,
)
from shared.http import field_errors
from shared.topics import Topics


def interaction(text: str = "Still waiting 😤 — ¿dónde está?") -> Interaction:
    return Interaction.model_validate(
        {
            "id": str(uuid.uuid4()),
            "channel": "twitter",
            "source": "listener",
            "external_id": "1",
            "author": {"handle": "@ada"},
            "text": text,
            "received_at": utcnow(),
        }
    )


def test_binary_mode_round_trip_keeps_attributes_and_exact_text() -> None:
    data = interaction()
    event = CloudEvent[Interaction](id=data.id, source="/t", type=INTERACTION_RECEIVED, data=data)

    record = encode(event, "twitter:@ada")
    decoded = decode(record.headers, record.value, Interaction)

    assert dict(record.headers)["ce_type"] == INTERACTION_RECEIVED.encode()
    assert record.key == b"twitter:@ada"
    assert decoded.id == event.id
    assert decoded.data == data
    assert decoded.data.text == "Still waiting 😤 — ¿dónde está?"


def test_decode_refuses_records_that_are_not_events() -> None:
    data = interaction()
    record = encode(CloudEvent[Interaction](id=data.id, source="/t", type="x", data=data), "k")
    without_id = [(k, v) for k, v in record.headers if k != "ce_id"]

    with pytest.raises(UndecodableEvent, match="id"):
        decode(without_id, record.value, Interaction)
    with pytest.raises(UndecodableEvent):
        decode(record.headers, b"{not json", Interaction)
    with pytest.raises(UndecodableEvent):
        decode(record.headers, b'{"id": "only an id"}', Interaction)


def test_derived_event_ids_are_stable_and_distinct() -> None:
    assert derived_event_id("a", "enriched") == derived_event_id("a", "enriched")
    assert derived_event_id("a", "enriched") != derived_event_id("b", "enriched")
    assert derived_event_id("a", "offered", "1") != derived_event_id("a", "offered", "2")


def test_topics_carry_the_deployment_prefix() -> None:
    assert Topics("staging.").received == "staging.switchboard.interactions.received.v1"
    assert Topics().assignments == "switchboard.assignments.v1"
    assert all(name.startswith("p.") for name in Topics("p.").all())


def test_field_errors_name_the_field_without_the_body_prefix() -> None:
    errors = [
        {"loc": ("body", "author", "handle"), "msg": "Field required"},
        {"loc": ("body",), "msg": "Invalid JSON"},
    ]

    assert field_errors(errors) == [
        {"field": "author.handle", "reason": "Field required"},
        {"field": "body", "reason": "Invalid JSON"},
    ]


def test_token_bucket_allows_bursts_then_says_how_long_to_wait() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=4, clock=lambda: now[0])

    assert bucket.take(4) == 0.0
    assert bucket.take(1) == pytest.approx(0.5)
    now[0] = 1.0
    assert bucket.take(2) == 0.0
    assert bucket.take(10) == pytest.approx(
        2.0
    )  # a take larger than the burst waits for a full bucket
