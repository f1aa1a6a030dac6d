"""Edge cases, each of which once let bad input through or named the wrong thing."""

from __future__ import annotations

import pytest

from services.notify.service import next_delay
from shared.events import Channel, Interaction, UndecodableEvent, decode
from shared.http import field_errors
from shared.identity import normalise_identity


def test_a_header_that_is_not_utf8_makes_the_record_undecodable_not_a_crash() -> None:
    with pytest.raises(UndecodableEvent):
        decode([("ce_id", b"\xff"), ("ce_source", b"s"), ("ce_type", b"t")], b"{}", Interaction)


def test_a_status_url_resolves_to_its_author_not_the_status_id() -> None:
    assert (
        normalise_identity(Channel.TWITTER, "https://twitter.com/Ada_L/status/123")
        == "twitter:ada_l"
    )


def test_only_the_leading_location_is_dropped_from_a_field_name() -> None:
    errors = [{"loc": ("body", "attributes", "path"), "msg": "bad"}]

    assert field_errors(errors) == [{"field": "attributes.path", "reason": "bad"}]


def test_next_delay_treats_attempt_zero_as_the_first() -> None:
    delays = [next_delay((10.0, 600.0), 0, None) for _ in range(200)]

    # The first step of the schedule, 10 s, with its ±20% jitter: not 0, not the second.
    assert all(delay is not None and 8.0 <= delay <= 12.0 for delay in delays), delays
