"""The wire contract: binary-mode encode/decode, derived ids and topic names."""

from __future__ import annotations

import pytest

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
from shared.topics import Topics
from shared.tracing import child_of, start_trace, trace_id


def make_interaction(text: str = "hello") -> Interaction:
    return Interaction.model_validate(
        {
            "id": "i-1",
            "channel": "twitter",
            "source": "listener",
            "external_id": "ext-1",
            "author": {"handle": "@ada", "followers": 12},
            "text": text,
            "received_at": utcnow(),
        }
    )


def make_event(text: str = "hello") -> CloudEvent[Interaction]:
    return CloudEvent[Interaction](
        id="evt-1", source="/test", type=INTERACTION_RECEIVED, data=make_interaction(text)
    )


def test_encode_sets_cloudevents_headers_and_key() -> None:
    record = encode(make_event(), "twitter:ada")
    headers = dict(record.headers)

    assert record.key == b"twitter:ada"
    assert headers["ce_id"] == b"evt-1"
    assert headers["ce_type"] == INTERACTION_RECEIVED.encode()
    assert headers["ce_source"] == b"/test"
    assert headers["content-type"] == b"application/json"


def test_decode_round_trips_an_encoded_event() -> None:
    event = make_event()
    record = encode(event, "k")

    decoded = decode(record.headers, record.value, Interaction)

    assert (decoded.id, decoded.source, decoded.type) == (event.id, event.source, event.type)
    assert decoded.time == event.time
    assert decoded.data == event.data


def test_decode_accepts_headers_as_a_mapping() -> None:
    record = encode(make_event(), "k")

    assert decode(dict(record.headers), record.value, Interaction).id == "evt-1"


def test_unicode_and_emoji_text_survives_the_round_trip_exactly() -> None:
    text = "Still waiting 😤 — ¿dónde está? 你好 👩🏽‍💻"
    record = encode(make_event(text), "k")

    assert decode(record.headers, record.value, Interaction).data.text == text


def test_decode_rejects_a_record_without_ce_id() -> None:
    record = encode(make_event(), "k")
    headers = [(name, value) for name, value in record.headers if name != "ce_id"]

    with pytest.raises(UndecodableEvent, match="id"):
        decode(headers, record.value, Interaction)


def test_decode_rejects_invalid_json() -> None:
    record = encode(make_event(), "k")

    with pytest.raises(UndecodableEvent):
        decode(record.headers, b"{not json", Interaction)


def test_decode_rejects_data_that_does_not_fit_the_model() -> None:
    record = encode(make_event(), "k")

    with pytest.raises(UndecodableEvent):
        decode(record.headers, b'{"id": "only an id"}', Interaction)


def test_derived_event_id_is_deterministic() -> None:
    assert derived_event_id("evt-1", "enriched") == derived_event_id("evt-1", "enriched")


def test_derived_event_id_differs_for_different_parts() -> None:
    base = derived_event_id("evt-1", "enriched")

    assert derived_event_id("evt-2", "enriched") != base
    assert derived_event_id("evt-1", "offered") != base
    assert derived_event_id("evt-1", "enriched", "1") != base


def test_topics_apply_their_prefix() -> None:
    topics = Topics("staging.")

    assert topics.received == "staging.switchboard.interactions.received.v1"
    assert topics.name("custom") == "staging.custom"
    assert all(name.startswith("staging.switchboard.") for name in topics.all())


def test_topics_without_prefix_use_the_base_names() -> None:
    assert Topics().assignments == "switchboard.assignments.v1"


def test_a_child_context_keeps_the_trace_and_is_the_same_when_built_again() -> None:
    started = start_trace("6f1c6a4e-2f43-4d7c-9a57-3c1b0f2d9e11")
    child = child_of(started, "event-2")

    assert trace_id(started) == "6f1c6a4e2f434d7c9a573c1b0f2d9e11"
    assert trace_id(child) == trace_id(started)
    assert child != started
    assert child == child_of(started, "event-2")
    assert start_trace("6f1c6a4e-2f43-4d7c-9a57-3c1b0f2d9e11", "garbage") == started


def test_trace_context_travels_as_a_ce_header_and_a_malformed_one_is_dropped() -> None:
    event = CloudEvent[Interaction](
        id="e-1", source="/t", type="t", traceparent=TRACE, data=make_interaction()
    )
    record = encode(event, "k")
    bad = [(n, b"00-nope" if n == "ce_traceparent" else v) for n, v in record.headers]

    assert ("ce_traceparent", TRACE.encode()) in record.headers
    assert decode(record.headers, record.value, Interaction).traceparent == TRACE
    assert decode(bad, record.value, Interaction).traceparent is None


TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
