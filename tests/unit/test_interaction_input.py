"""An interaction as a feed or a publisher gives it: its link and its time."""

from __future__ import annotations

from datetime import UTC, datetime

import feedparser
import pytest

from services.ingest.feeds import entry_to_interaction
from services.ingest.service import InteractionIn

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
