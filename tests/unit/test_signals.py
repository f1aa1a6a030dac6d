"""Which posts are cancellation threats, and how urgent a complaint is whatever its tone."""

from __future__ import annotations

import pytest

from services.enrich.signals import HIGH_INFLUENCE, IntentRules, urgency
from shared.events import Sentiment

POSITIVE = Sentiment(label="positive", score=0.2, analyzer="test")
NEUTRAL = Sentiment(label="neutral", score=0.0, analyzer="test")


@pytest.fixture(scope="module")
def intents() -> IntentRules:
    return IntentRules()


@pytest.mark.parametrize(
    "text",
    [
        "I'm cancelling, this is the worst.",
        "Worst service ever, I'm cancelling my plan!",
        "Cancelling @acme today. Worst service I have ever had.",
        "Please cancel my subscription",
        "We are going to cancel our contract",
        "I'll cancel if this happens again",
        "I\u2019ll cancel tomorrow",
        "Switching to Verizon next month",
        "Time to switch to another provider",
        "I'm closing my account",
        "How do I unsubscribe?",
    ],
)
def test_a_customer_threatening_to_leave_is_a_cancellation_threat(
    intents: IntentRules, text: str
) -> None:
    assert "cancellation_threat" in intents.detect(text)


@pytest.mark.parametrize(
    "text",
    [
        "How do I switch to dark mode?",
        "My order was cancelled and nobody told me",
        "Nothing to cancel, all good",
        "See https://acme.com/help/cancel-order for the steps",
        "Docs at www.acme.com/cancellation",
    ],
)
def test_mentioning_a_cancellation_is_not_threatening_one(intents: IntentRules, text: str) -> None:
    assert "cancellation_threat" not in intents.detect(text)


def test_a_link_with_a_query_is_not_a_question(intents: IntentRules) -> None:
    assert intents.detect("Our new range: https://acme.com/shop?page=2") == ()


def test_a_complaint_is_never_low_urgency_however_its_words_score() -> None:
    # "My parcel never arrived!!!": the exclamation marks score positive.
    assert urgency(POSITIVE, ("complaint",), reach=1.0) == "normal"


def test_an_influential_complaint_is_urgent_whatever_its_sentiment() -> None:
    assert urgency(POSITIVE, ("complaint",), reach=HIGH_INFLUENCE) == "high"
    assert urgency(NEUTRAL, ("complaint",), reach=HIGH_INFLUENCE) == "high"


def test_influential_praise_stays_low() -> None:
    assert urgency(POSITIVE, ("praise",), reach=HIGH_INFLUENCE) == "low"
