"""Enrich's and router's pure rules: identities, influence, intents, urgency, routing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from services.enrich.service import (
    VaderAnalyzer,
    detect_intents,
    influence,
    normalise_identity,
    urgency,
)
from services.router.service import DEFAULT_RULES, Rule, route
from shared.events import Channel, EnrichedInteraction, Sentiment, utcnow


@pytest.mark.parametrize(
    ("channel", "handle"),
    [
        (Channel.TWITTER, "@Ada_L"),
        (Channel.TWITTER, "ada_l"),
        (Channel.TWITTER, "https://twitter.com/Ada_L"),
        (Channel.X, "https://x.com/ada_l/"),
        (Channel.X, " @ADA_L "),
    ],
)
def test_identity_forms_normalise_to_one(channel: Channel, handle: str) -> None:
    assert normalise_identity(channel, handle) == "twitter:ada_l"


def test_identities_on_other_channels_keep_their_channel() -> None:
    assert normalise_identity(Channel.FORUM, "Mo_Derator") == "forum:mo_derator"


def test_influence_grows_with_reach_and_is_capped() -> None:
    assert influence(0, verified=False) == 0.0
    assert influence(80_000, verified=True) > 9
    assert influence(10**9, verified=True) == 10.0
    assert influence(1_000, verified=False) < influence(100_000, verified=False)


def test_intents_and_urgency() -> None:
    intents = detect_intents("I'm cancelling, this is the worst. Can you refund me?")
    negative = Sentiment(label="negative", score=-0.8, analyzer="t")
    positive = Sentiment(label="positive", score=0.8, analyzer="t")

    assert {"cancellation_threat", "complaint", "question"} <= set(intents)
    assert urgency(negative, intents, reach=1.0) == "high"
    assert urgency(negative, (), reach=8.0) == "high"
    assert urgency(positive, ("praise",), reach=1.0) == "low"
    assert urgency(negative, ("complaint",), reach=1.0) == "normal"


def test_vader_labels_obvious_texts() -> None:
    analyzer = VaderAnalyzer()

    assert analyzer.analyze("This is terrible, I hate it").label == "negative"
    assert analyzer.analyze("Thank you, I love it!").label == "positive"
    assert analyzer.analyze("The parcel arrived on Tuesday").label == "neutral"
    assert analyzer.analyze("ok").analyzer == "vader"


def enriched(
    tier: str = "standard", sentiment: str = "neutral", reach: float = 1.0
) -> EnrichedInteraction:
    data: dict[str, Any] = {
        "interaction": {
            "id": str(uuid.uuid4()),
            "channel": "twitter",
            "source": "s",
            "external_id": "1",
            "author": {"handle": "@a"},
            "text": "t",
            "received_at": utcnow(),
        },
        "customer": {"id": "c", "tier": tier},
        "sentiment": {"label": sentiment, "score": 0.0, "analyzer": "t"},
        "influence": reach,
    }
    return EnrichedInteraction.model_validate(data)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (enriched("platinum", "negative"), ("valued-and-unhappy", "priority", 1)),
        (enriched("standard", "negative", reach=8.0), ("loud-and-unhappy", "priority", 2)),
        (enriched("gold", "neutral"), ("valued", "priority", 2)),
        (enriched("standard", "negative"), ("unhappy", "care", 3)),
        (enriched("standard", "positive"), ("default", "general", 4)),
    ],
)
def test_default_rules(item: EnrichedInteraction, expected: tuple[str, str, int]) -> None:
    decision = route(item, DEFAULT_RULES)

    assert (decision.rule, decision.queue, decision.priority) == expected


def test_first_matching_rule_wins() -> None:
    rules = (
        Rule("everyone", "first", 5),
        Rule("platinum", "second", 1, tiers=frozenset({"platinum"})),
    )

    assert route(enriched("platinum"), rules).rule == "everyone"
    assert route(enriched("platinum"), rules[1:]).queue == "second"
