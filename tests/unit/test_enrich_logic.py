"""Enrich's pure rules: identity normalisation, influence, intents, urgency, sentiment."""

from __future__ import annotations

import pytest

from services.enrich.customers import parse_identity
from services.enrich.sentiment import LanguageDetector, LinearAnalyzer, VaderAnalyzer, tokens
from services.enrich.signals import HIGH_INFLUENCE, IntentRules, influence, urgency
from shared.events import Channel, Sentiment
from shared.identity import normalise_identity

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


def test_a_linkedin_profile_url_names_the_member() -> None:
    assert (
        normalise_identity(Channel.LINKEDIN, "https://www.linkedin.com/in/Ada-L/")
        == "linkedin:ada-l"
    )


def test_an_identity_is_written_channel_colon_handle() -> None:
    assert parse_identity("twitter:@Ada") == (Channel.TWITTER, "@Ada")
    with pytest.raises(ValueError, match="unknown channel"):
        parse_identity("myspace:ada")
    with pytest.raises(ValueError, match="channel:handle"):
        parse_identity("ada")


def test_influence_is_zero_without_followers_or_history() -> None:
    assert influence(0, verified=False) == 0.0


def test_a_stranger_with_80k_followers_is_far_above_one_with_12() -> None:
    assert influence(80_000, verified=False) >= HIGH_INFLUENCE
    assert influence(12, verified=False) < 15


def test_influence_grows_with_followers_verification_and_history() -> None:
    assert influence(1_000, verified=False) < influence(100_000, verified=False)
    assert influence(99, verified=True) == pytest.approx(influence(99, verified=False) + 10.0)
    assert influence(99, verified=False, prior_posts=3) > influence(99, verified=False)


def test_influence_is_capped_at_100() -> None:
    assert influence(10**9, verified=True, prior_posts=10**6) == 100.0


@pytest.fixture(scope="module")
def intents() -> IntentRules:
    return IntentRules()


def test_detect_intents_finds_every_matching_intent(intents: IntentRules) -> None:
    found = intents.detect("I'm cancelling, this is the worst. Can you refund me?")

    assert set(found) == {"cancellation_threat", "complaint", "question"}


def test_detect_intents_finds_praise(intents: IntentRules) -> None:
    assert intents.detect("Thanks, the new app is awesome") == ("praise",)


@pytest.mark.parametrize(
    "text",
    [
        "Mi pedido nunca llegó, quiero un reembolso",
        "Ma commande n'est jamais arrivée, remboursement svp",
        "Meine Bestellung ist nie angekommen, bitte Erstattung",
    ],
)
def test_complaints_are_found_in_other_languages(intents: IntentRules, text: str) -> None:
    assert "complaint" in intents.detect(text)


def test_detect_intents_finds_nothing_in_plain_text(intents: IntentRules) -> None:
    assert intents.detect("The parcel arrived on Tuesday") == ()


def test_intent_patterns_are_configurable() -> None:
    rules = IntentRules({"billing": [r"\binvoice\b", r"\bfactura\b"]})

    assert rules.detect("Where is my factura?") == ("billing",)


def test_cancellation_threat_is_urgent_whatever_the_sentiment() -> None:
    assert urgency(POSITIVE, ("cancellation_threat",), reach=0.0) == "high"


def test_negative_and_influential_is_urgent() -> None:
    assert urgency(NEGATIVE, (), reach=HIGH_INFLUENCE) == "high"


def test_negative_with_little_reach_is_normal() -> None:
    assert urgency(NEGATIVE, ("complaint",), reach=HIGH_INFLUENCE - 0.1) == "normal"


def test_positive_without_a_question_is_low() -> None:
    assert urgency(POSITIVE, ("praise",), reach=90.0) == "low"


def test_positive_with_a_question_is_normal() -> None:
    assert urgency(POSITIVE, ("question",), reach=1.0) == "normal"


def test_neutral_is_normal() -> None:
    assert urgency(NEUTRAL, (), reach=1.0) == "normal"


def test_tokens_fold_case_links_and_long_runs() -> None:
    assert tokens("Sooooo GOOD http://t.co/x :) 😍") == ["soo", "good", "http", ":)", "😍"]


@pytest.fixture(scope="module", params=[LinearAnalyzer, VaderAnalyzer])
def analyzer(request: pytest.FixtureRequest) -> LinearAnalyzer | VaderAnalyzer:
    cls: type[LinearAnalyzer | VaderAnalyzer] = request.param
    return cls()


def test_an_angry_text_is_negative(analyzer: LinearAnalyzer | VaderAnalyzer) -> None:
    sentiment = analyzer.analyze("This is terrible, I hate it")

    assert sentiment.label == "negative"
    assert sentiment.score < 0
    assert sentiment.scored


def test_a_happy_text_is_positive(analyzer: LinearAnalyzer | VaderAnalyzer) -> None:
    sentiment = analyzer.analyze("Thank you, I love it!")

    assert sentiment.label == "positive"
    assert sentiment.score > 0


def test_a_factual_text_is_neutral(analyzer: LinearAnalyzer | VaderAnalyzer) -> None:
    assert analyzer.analyze("The parcel arrived on Tuesday").label == "neutral"


def test_the_analyzer_names_itself(analyzer: LinearAnalyzer | VaderAnalyzer) -> None:
    assert analyzer.analyze("ok").analyzer == analyzer.name


def test_linear_confidence_is_the_probability_of_its_label() -> None:
    sentiment = LinearAnalyzer().analyze("Worst airline ever, never again")

    assert 1 / 3 < sentiment.confidence <= 1.0
    assert -1.0 <= sentiment.score <= 1.0


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector()


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("My order never arrived and nobody answers the phone", "en"),
        ("Mi pedido nunca llegó y nadie contesta el teléfono", "es"),
        ("Meine Bestellung ist nie angekommen und niemand geht ans Telefon", "de"),
    ],
)
def test_detects_the_language(detector: LanguageDetector, text: str, language: str) -> None:
    assert detector.detect(text) == language


def test_a_text_too_short_to_tell_has_no_language(detector: LanguageDetector) -> None:
    assert detector.detect("ok") is None
