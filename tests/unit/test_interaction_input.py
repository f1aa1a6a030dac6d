"""An interaction as a feed or a publisher gives it: its link, its time and its size."""

from __future__ import annotations

from datetime import UTC, datetime

import feedparser
import pytest

from services.ingest.feeds import entry_to_interaction
from services.ingest.service import (
    RECORD_OVERHEAD_BYTES,
    InputLimits,
    InteractionIn,
    _new_interaction,
    author_key,
    received_event,
)

FEED = {"_id": "f1", "url": "https://forum.example.com/c/support.rss", "channel": "forum"}


def interaction_of(link: str) -> dict[str, object]:
    rss = f"""<?xml version="1.0"?><rss version="2.0"><channel><title>Support</title>
      <item><guid>t-1</guid><title>Refund stuck</title><link>{link}</link></item>
    </channel></rss>"""
    parsed = feedparser.parse(rss)
    interaction = entry_to_interaction(FEED, parsed, parsed.entries[0])
    assert interaction is not None, "the entry was dropped"
    return {"url": str(interaction.url) if interaction.url else None, "text": interaction.text}


def test_a_relative_link_is_made_absolute_against_the_feed() -> None:
    assert interaction_of("/t/123")["url"] == "https://forum.example.com/t/123"


@pytest.mark.parametrize("link", ["javascript:alert(1)", "http://[broken", "mailto:a@b.example"])
def test_a_link_that_is_no_web_page_costs_the_link_not_the_entry(link: str) -> None:
    assert interaction_of(link) == {"url": None, "text": "Refund stuck"}


def test_a_feed_authors_control_characters_become_spaces_not_a_lost_entry() -> None:
    rss = """<?xml version="1.0"?><rss version="2.0"><channel><title>Support</title>
      <item><guid>t-1</guid><title>Refund stuck</title>
      <author>Ann&#10;\u202eEvil\u202c Example</author></item>
    </channel></rss>"""
    parsed = feedparser.parse(rss)

    interaction = entry_to_interaction(FEED, parsed, parsed.entries[0])

    assert interaction is not None, "the entry was dropped"
    assert interaction.author.handle == "Ann Evil Example"


def test_a_publish_time_without_an_offset_is_taken_as_utc() -> None:
    posted = InteractionIn.model_validate(
        {
            "channel": "twitter",
            "source": "s",
            "external_id": "1",
            "author": {"handle": "@ada"},
            "text": "hello",
            "created_at": "2026-01-02T03:04:05",
        }
    )

    assert posted.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def posted(**fields: object) -> InteractionIn:
    return InteractionIn.model_validate(
        {"channel": "twitter", "source": "s", "external_id": "1", "author": {"handle": "@ada"}}
        | {"text": "hello"}
        | fields
    )


def test_attributes_are_measured_as_their_json() -> None:
    limits = InputLimits(max_attributes_bytes=18)

    assert limits.attribute_errors(posted(attributes={"k": "x" * 10})) == []  # {"k":"xxxxxxxxxx"}
    [problem] = limits.attribute_errors(posted(attributes={"k": "é" * 10}))
    assert problem == {
        "field": "attributes",
        "reason": "28 bytes as JSON, more than the 18 allowed",
    }


def test_an_event_over_the_brokers_largest_record_names_its_largest_field() -> None:
    limits = InputLimits(max_message_bytes=4_096 + RECORD_OVERHEAD_BYTES)

    def errors_of(item: InteractionIn) -> list[dict[str, str]]:
        interaction = _new_interaction(item, datetime.now(UTC))
        return limits.event_errors(received_event(interaction, None), author_key(interaction))

    assert errors_of(posted(text="x" * 3_000)) == []
    [problem] = errors_of(posted(text="x" * 5_000))
    assert problem["field"] == "text"
    assert "more than the 4096 the broker takes" in problem["reason"]
    assert "text, is 5002 bytes" in problem["reason"]
