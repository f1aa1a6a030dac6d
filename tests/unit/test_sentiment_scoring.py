"""When a sentiment is a judgement (scored) and when it is only a placeholder."""

from __future__ import annotations

import pytest

from services.enrich.sentiment import LinearAnalyzer, VaderAnalyzer, primary_language


@pytest.fixture(scope="module", params=[LinearAnalyzer, VaderAnalyzer])
def analyzer(request: pytest.FixtureRequest) -> LinearAnalyzer | VaderAnalyzer:
    cls: type[LinearAnalyzer | VaderAnalyzer] = request.param
    return cls()


@pytest.mark.parametrize("text", ["", "   ", "😡😡😡", "👍"])
def test_text_without_words_the_analyzer_knows_is_not_scored(
    analyzer: LinearAnalyzer | VaderAnalyzer, text: str
) -> None:
    sentiment = analyzer.analyze(text)

    assert not sentiment.scored
    assert (sentiment.label, sentiment.score, sentiment.confidence) == ("neutral", 0.0, 0.0)
    assert sentiment.analyzer == analyzer.name


def test_a_factual_text_is_a_scored_neutral(analyzer: LinearAnalyzer | VaderAnalyzer) -> None:
    sentiment = analyzer.analyze("The parcel arrived on Tuesday")

    assert sentiment.scored
    assert sentiment.label == "neutral"


def test_an_emoji_vader_knows_is_scored() -> None:
    sentiment = VaderAnalyzer().analyze("😍")

    assert sentiment.scored
    assert sentiment.label == "positive"


@pytest.mark.parametrize("tag", ["en", "EN", "en-GB", "en_US", " en_us "])
def test_a_locale_names_its_primary_language(tag: str) -> None:
    assert primary_language(tag) == "en"
