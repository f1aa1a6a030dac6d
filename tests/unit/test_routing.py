"""Router's rules: which queue and priority each enriched interaction gets."""

from __future__ import annotations

from typing import Any

from services.router.service import DEFAULT_DECISION, DEFAULT_RULES, Decision, Rule, route
from shared.events import EnrichedInteraction, utcnow


def enriched(
    tier: str = "standard", sentiment: str = "neutral", reach: float = 1.0
) -> EnrichedInteraction:
    data: dict[str, Any] = {
        "interaction": {
            "id": "i-1",
            "channel": "twitter",
            "source": "listener",
            "external_id": "ext-1",
            "author": {"handle": "@someone"},
            "text": "hello",
            "received_at": utcnow(),
        },
        "customer": {"id": "c-1", "tier": tier, "value": 10.0},
        "sentiment": {"label": sentiment, "score": 0.0, "analyzer": "test"},
        "influence": reach,
    }
    return EnrichedInteraction.model_validate(data)


def test_unhappy_platinum_customer_is_valued_and_unhappy() -> None:
    assert route(enriched("platinum", "negative")) == Decision("valued-and-unhappy", "priority", 1)


def test_unhappy_standard_customer_with_influence_is_loud_and_unhappy() -> None:
    assert route(enriched("standard", "negative", reach=58.0)) == Decision(
        "loud-and-unhappy", "priority", 2
    )


def test_neutral_gold_customer_is_valued() -> None:
    assert route(enriched("gold", "neutral")) == Decision("valued", "priority", 2)


def test_unhappy_standard_customer_with_little_influence_goes_to_care() -> None:
    assert route(enriched("standard", "negative", reach=49.9)) == Decision("unhappy", "care", 3)


def test_neutral_standard_customer_gets_the_default() -> None:
    decision = route(enriched("standard", "neutral"))

    assert decision == DEFAULT_DECISION
    assert (decision.rule, decision.queue, decision.priority) == ("default", "general", 4)


def test_first_matching_rule_wins_in_the_defaults() -> None:
    # Both valued-and-unhappy and loud-and-unhappy match; the earlier one is chosen.
    item = enriched("gold", "negative", reach=90.0)

    assert DEFAULT_RULES[0].matches(item)
    assert DEFAULT_RULES[1].matches(item)
    assert route(item).rule == "valued-and-unhappy"


def test_custom_rules_are_applied_in_order() -> None:
    rules = (
        Rule("everyone", "first", 5),
        Rule("platinum", "second", 1, tiers=frozenset({"platinum"})),
    )

    assert route(enriched("platinum"), rules) == Decision("everyone", "first", 5)
    assert route(enriched("platinum"), rules[1:]) == Decision("platinum", "second", 1)


def test_custom_rules_fall_through_to_the_default() -> None:
    rules = [Rule("happy", "fans", 3, sentiments=frozenset({"positive"}))]

    assert route(enriched(sentiment="positive"), rules).queue == "fans"
    assert route(enriched(sentiment="negative"), rules) == DEFAULT_DECISION


def test_min_influence_is_inclusive() -> None:
    rule = Rule("loud", "q", 1, min_influence=7.0)

    assert rule.matches(enriched(reach=7.0))
    assert not rule.matches(enriched(reach=6.99))
