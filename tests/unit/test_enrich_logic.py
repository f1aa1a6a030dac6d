"""Enrich's pure rules: identity normalisation, influence, intents, urgency, sentiment."""

from __future__ import annotations

import pytest

from services.enrich.service import (
    VaderAnalyzer,
    detect_intents,
    influence,
    normalise_identity,
    urgency,
)
from shared.events import Channel, Sentiment

NEGATIVE = Sentiment(label="negative", score=-0.8, analyzer="test")
NEUTRAL = Sentiment(label="neutral", score=0.0, analyzer="test")
POSITIVE = Sentiment(label="positive", score=0.8, analyzer="test")


@pytest.mark.parametrize("channel", [Channel.TWITTER, Channel.X])
@pytest.mark.parametrize(
    "handle", ["@Ada_L", "ada_l", "https://twitter.com/Ada_L", "https://x.com/ada_l/"]
)
def test_twitter_and_x_handles_normalise_to_one_identity(channel: Channel, handle: str) -> None:
    assert normalise_identity(channel, handle) == "twitter:ada_l"


def test_surrounding_whitespace_is_ignored() -> None:
    assert normalise_identity(Channel.X, "  @ADA_L ") == "twitter:ada_l"


def test_forum_handle_is_lower_cased_under_its_own_channel() -> None:
    assert normalise_identity(Channel.FORUM, "Mo_Derator") == "forum:mo_derator"


def test_influence_is_zero_without_followers() -> None:
    assert influence(0, verified=False) == 0.0


def test_influence_of_a_verified_account_with_80k_followers_exceeds_nine() -> None:
    assert influence(80_000, verified=True) > 9


def test_influence_grows_with_followers() -> None:
    assert influence(1_000, verified=False) < influence(100_000, verified=False)


def test_verification_adds_one_point() -> None:
    assert influence(99, verified=True) == pytest.approx(influence(99, verified=False) + 1.0)


def test_influence_is_capped_at_ten() -> None:
    assert influence(10**9, verified=True) == 10.0


def test_detect_intents_finds_every_matching_intent() -> None:
    intents = detect_intents("I'm cancelling, this is the worst. Can you refund me?")

    assert set(intents) == {"cancellation_threat", "complaint", "question"}


def test_detect_intents_finds_praise() -> None:
    assert detect_intents("Thanks, the new app is awesome") == ("praise",)


def test_detect_intents_finds_nothing_in_plain_text() -> None:
    assert detect_intents("The parcel arrived on Tuesday") == ()


def test_cancellation_threat_is_urgent_whatever_the_sentiment() -> None:
    assert urgency(POSITIVE, ("cancellation_threat",), reach=0.0) == "high"


def test_negative_and_influential_is_urgent() -> None:
    assert urgency(NEGATIVE, (), reach=7.0) == "high"


def test_negative_with_little_reach_is_normal() -> None:
    assert urgency(NEGATIVE, ("complaint",), reach=6.9) == "normal"


def test_positive_without_a_question_is_low() -> None:
    assert urgency(POSITIVE, ("praise",), reach=9.0) == "low"


def test_positive_with_a_question_is_normal() -> None:
    assert urgency(POSITIVE, ("question",), reach=1.0) == "normal"


def test_neutral_is_normal() -> None:
    assert urgency(NEUTRAL, (), reach=1.0) == "normal"


@pytest.fixture(scope="module")
def vader() -> VaderAnalyzer:
    return VaderAnalyzer()


def test_vader_labels_an_angry_text_negative(vader: VaderAnalyzer) -> None:
    sentiment = vader.analyze("This is terrible, I hate it")

    assert sentiment.label == "negative"
    assert sentiment.score <= -0.05


def test_vader_labels_a_happy_text_positive(vader: VaderAnalyzer) -> None:
    sentiment = vader.analyze("Thank you, I love it!")

    assert sentiment.label == "positive"
    assert sentiment.score >= 0.05


def test_vader_labels_a_factual_text_neutral(vader: VaderAnalyzer) -> None:
    assert vader.analyze("The parcel arrived on Tuesday").label == "neutral"


def test_vader_names_itself(vader: VaderAnalyzer) -> None:
    assert vader.name == "vader"
    assert vader.analyze("ok").analyzer == "vader"
