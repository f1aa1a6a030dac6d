"""Router's policy: which queue and priority each enriched interaction gets, and why."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.router.policy import DEFAULT_POLICY, Policy, PolicyError, PolicyIn
from services.router.service import new_item
from shared.events import EnrichedInteraction, utcnow
from shared.mongo import epoch_ms


def enriched(
    tier: str = "standard",
    sentiment: str = "neutral",
    reach: float = 1.0,
    text: str = "hello",
    intents: tuple[str, ...] = (),
) -> EnrichedInteraction:
    data: dict[str, Any] = {
        "interaction": {
            "id": "i-1",
            "channel": "twitter",
            "source": "listener",
            "external_id": "ext-1",
            "author": {"handle": "@someone"},
            "text": text,
            "received_at": utcnow(),
        },
        "customer": {"id": "c-1", "tier": tier, "value": 10.0},
        "sentiment": {"label": sentiment, "score": 0.0, "analyzer": "test"},
        "influence": reach,
        "intents": intents,
    }
    return EnrichedInteraction.model_validate(data)


DEFAULT = Policy(DEFAULT_POLICY, version=1)


def where(policy: Policy, item: EnrichedInteraction) -> tuple[str, str, int]:
    decision = policy.decide(item)
    return decision.rule, decision.queue, decision.priority


def policy(*rules: tuple[str, str, str, int], **queues: Any) -> Policy:
    names = {queue for _, _, queue, _ in rules} | {"general"}
    spec = PolicyIn.model_validate(
        {
            "queues": [{"name": name, **queues.get(name, {})} for name in sorted(names)],
            "rules": [
                {"name": name, "when": when, "queue": queue, "priority": priority}
                for name, when, queue, priority in rules
            ],
            "default_queue": "general",
        }
    )
    return Policy(spec, version=7)


def test_unhappy_platinum_customer_is_valued_and_unhappy() -> None:
    assert where(DEFAULT, enriched("platinum", "negative")) == ("valued-and-unhappy", "priority", 1)


def test_unhappy_standard_customer_with_influence_is_loud_and_unhappy() -> None:
    item = enriched("standard", "negative", reach=58.0)

    assert where(DEFAULT, item) == ("loud-and-unhappy", "priority", 2)


def test_neutral_gold_customer_is_valued() -> None:
    assert where(DEFAULT, enriched("gold", "neutral")) == ("valued", "priority", 2)


def test_unhappy_standard_customer_with_little_influence_goes_to_care() -> None:
    assert where(DEFAULT, enriched("standard", "negative", reach=49.9)) == ("unhappy", "care", 3)


def test_neutral_standard_customer_gets_the_default() -> None:
    assert where(DEFAULT, enriched("standard", "neutral")) == ("default", "general", 4)


def test_first_matching_rule_wins_and_the_trace_says_so() -> None:
    decision = DEFAULT.decide(enriched("gold", "negative", reach=90.0))

    assert decision.rule == "valued-and-unhappy"
    assert [(o.rule, o.result) for o in decision.trace] == [("valued-and-unhappy", "matched")]


def test_the_trace_lists_each_rule_that_did_not_match() -> None:
    decision = DEFAULT.decide(enriched("standard", "neutral"))

    assert [o.result for o in decision.trace] == ["not matched"] * 4
    assert decision.policy_version == 1


def test_custom_rules_apply_in_order_and_name_their_version() -> None:
    rules = policy(
        ("everyone", "true", "first", 5), ("platinum", 'customer.tier == "platinum"', "second", 1)
    )

    decision = rules.decide(enriched("platinum"))

    assert (decision.rule, decision.queue, decision.priority) == ("everyone", "first", 5)
    assert decision.policy_version == 7


def test_keywords_intents_and_influence_are_conditions() -> None:
    rules = policy(
        ("refunds", '"refund" in words', "billing", 2),
        ("threats", '"cancellation_threat" in intents || influence >= 80.0', "retention", 1),
    )

    assert where(rules, enriched(text="I want a REFUND now"))[0] == "refunds"
    assert where(rules, enriched(intents=("cancellation_threat",)))[0] == "threats"
    assert where(rules, enriched(reach=85.0))[0] == "threats"
    assert where(rules, enriched())[0] == "default"


def test_a_condition_that_fails_at_run_time_does_not_match_and_says_why() -> None:
    rules = policy(("odd", "customer.tier > 3", "odd", 1), ("not-bool", "influence", "x", 1))

    decision = rules.decide(enriched())

    assert decision.rule == "default"
    assert [o.result for o in decision.trace] == ["error", "error"]
    assert decision.trace[1].error is not None
    assert "not true or false" in decision.trace[1].error


def test_a_condition_that_does_not_compile_names_the_rule_and_the_position() -> None:
    with pytest.raises(PolicyError) as raised:
        policy(("ok", "true", "a", 1), ("broken", 'customer.tier == "gold" &&& x', "a", 1))

    assert raised.value.field == "rules.1.when"
    assert "1:27" in raised.value.reason


def test_a_condition_over_an_unknown_variable_is_refused() -> None:
    with pytest.raises(PolicyError, match="unknown variable tier"):
        policy(("typo", 'tier == "gold"', "a", 1))


def test_required_skills_are_the_queues_and_the_rules() -> None:
    spec = PolicyIn.model_validate(
        {
            "queues": [{"name": "es", "required_skills": ["spanish"]}, {"name": "general"}],
            "rules": [
                {"name": "es", "when": 'language == "es"', "queue": "es", "skills": ["billing"]}
            ],
            "default_queue": "general",
        }
    )
    item = enriched().model_copy(update={"language": "es"})

    assert Policy(spec, 2).decide(item).skills == ("billing", "spanish")


def test_a_policy_naming_an_undefined_queue_is_refused() -> None:
    with pytest.raises(ValidationError, match="'nowhere' is not a queue"):
        PolicyIn.model_validate(
            {
                "queues": [{"name": "general"}],
                "rules": [{"name": "r", "when": "true", "queue": "nowhere"}],
                "default_queue": "general",
            }
        )


@pytest.mark.parametrize(
    "when",
    [
        'customer.teir == "gold"',  # a field the item lacks
        "author.followers / 0 > 1",  # division by zero
        'words[5] == "help"',  # past the end of the words
        "9223372036854775807 + 1 > 0",  # past the largest integer
    ],
)
def test_any_failure_of_a_condition_is_an_error_outcome_not_a_stop(when: str) -> None:
    rules = policy(("bad", when, "odd", 1), ("valued", 'customer.tier == "gold"', "vip", 2))

    decision = rules.decide(enriched(tier="gold"))

    assert (decision.rule, decision.queue) == ("valued", "vip")
    assert decision.trace[0].result == "error"
    assert decision.trace[0].error


@pytest.mark.parametrize("sla", [0.0, -1.0, 31 * 86_400.0, 1e309, float("nan")])
def test_a_target_time_out_of_range_is_refused_by_position(sla: float) -> None:
    targets = [900.0, sla, 3600.0, 14_400.0, 86_400.0]
    with pytest.raises(ValidationError) as raised:
        PolicyIn.model_validate(
            {"queues": [{"name": "general", "sla_s": targets}], "default_queue": "general"}
        )

    assert [error["loc"] for error in raised.value.errors()] == [("queues", 0, "sla_s", 1)]


def test_the_longest_target_time_still_gives_an_item_a_due_time() -> None:
    rules = policy(general={"sla_s": [30 * 86_400.0] * 5})
    item = enriched()
    decision = rules.decide(item)

    stored = new_item(item, decision, rules.sla_s(decision.queue, decision.priority), None)

    assert stored["sla_due_ms"] > epoch_ms(utcnow()) + 29 * 86_400_000
