"""How a post feels: sentiment analyzers behind one interface, and language detection.

The default analyzer is a linear model over word unigrams and bigrams (TF-IDF) plus two
lexicon features (VADER's valence sums), trained on SemEval 2013-2016 tweets by
``services.enrich.train_sentiment`` and shipped in the repo as plain JSON weights, so
nothing is downloaded or unpickled at run time. Scoring one text is a few dozen dict
lookups. ``make eval-sentiment`` measures it on a held-out set (see the README).
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal, Protocol

from py3langid.langid import MODEL_FILE, LanguageIdentifier
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from shared.events import Sentiment, SentimentLabel

LABELS: tuple[SentimentLabel, ...] = ("negative", "neutral", "positive")
LINEAR_MODEL = Path(__file__).parent / "models" / "sentiment-linear.json.gz"
AnalyzerName = Literal["linear", "vader"]


class SentimentAnalyzer(Protocol):
    name: str
    languages: frozenset[str]  # ISO 639-1 codes it was built for

    def analyze(self, text: str) -> Sentiment: ...


_URL = re.compile(r"https?://\S+|www\.\S+")
_REPEATS = re.compile(r"(.)\1{2,}")
_WORD = re.compile(r"[a-z0-9']+")
_TOKEN = re.compile(
    r"[a-z0-9']+"  # words, with their apostrophes (don't, it's)
    r"|[:;=8][\-o*']?[)\](\[dp/\\|@3]|<3"  # emoticons, after lower-casing
    r"|[!?]+"
    r"|[\U0001F300-\U0001FAFF\u2600-\u27BF]"  # emoji, one token each
)


def tokens(text: str) -> list[str]:
    """Lower-case tokens; links become ``http`` and long letter runs two (soooo -> soo)."""
    text = _REPEATS.sub(r"\1\1", _URL.sub(" http ", text.lower()))
    return _TOKEN.findall(text)


def has_words(text: str) -> bool:
    return any(_WORD.fullmatch(token) for token in tokens(text))


def features(words: Sequence[str]) -> list[str]:
    """Word unigrams and bigrams: the model's vocabulary is drawn from these."""
    return [*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))]


@cache
def vader_lexicon() -> dict[str, float]:
    return dict(SentimentIntensityAnalyzer().lexicon)


def lexicon_features(words: Sequence[str]) -> tuple[float, float]:
    """log(1 + summed positive valence), log(1 + summed negative valence) of the words."""
    lexicon = vader_lexicon()
    positive = negative = 0.0
    for word in words:
        valence = lexicon.get(word, 0.0)
        if valence > 0:
            positive += valence
        else:
            negative -= valence
    return math.log1p(positive), math.log1p(negative)


def labelled(probabilities: Sequence[float], analyzer: str) -> Sentiment:
    """The most probable label; the score is P(positive) - P(negative), in [-1, 1]."""
    best = max(range(len(LABELS)), key=probabilities.__getitem__)
    return Sentiment(
        label=LABELS[best],
        score=round(probabilities[2] - probabilities[0], 4),
        confidence=round(probabilities[best], 4),
        analyzer=analyzer,
    )


Weighted = tuple[float, tuple[float, float, float, float]]  # TF-IDF value, model entry


@dataclass(frozen=True)
class LinearModel:
    """Multinomial logistic regression over sublinear TF-IDF features, L2-normalised."""

    weights: dict[str, tuple[float, float, float, float]]  # feature -> (idf, w_neg, w_neu, w_pos)
    lexicon_weights: tuple[tuple[float, float, float], tuple[float, float, float]]
    bias: tuple[float, float, float]

    @classmethod
    def load(cls, path: Path = LINEAR_MODEL) -> LinearModel:
        with gzip.open(path, "rt", encoding="utf-8") as file:
            raw = json.load(file)
        return cls(
            weights={feature: tuple(values) for feature, values in raw["features"].items()},
            lexicon_weights=tuple(tuple(row) for row in raw["lexicon_weights"]),  # type: ignore[arg-type]
            bias=tuple(raw["bias"]),
        )

    def probabilities(self, text: str) -> list[float]:
        words = tokens(text)
        return self.probabilities_of(self.known_features(words), lexicon_features(words))

    def known_features(self, words: Sequence[str]) -> list[Weighted]:
        """Each feature of the words that the model knows, with its TF-IDF value."""
        weighted = []
        for feature, count in Counter(features(words)).items():
            entry = self.weights.get(feature)
            if entry is not None:
                weighted.append(((1.0 + math.log(count)) * entry[0], entry))
        return weighted

    def probabilities_of(
        self, weighted: Sequence[Weighted], lexicon: tuple[float, float]
    ) -> list[float]:
        scores = list(self.bias)
        norm = math.sqrt(sum(value * value for value, _ in weighted)) or 1.0
        for value, (_, *classes) in weighted:
            for k in range(3):
                scores[k] += value / norm * classes[k]
        for value, row in zip(lexicon, self.lexicon_weights, strict=True):
            for k in range(3):
                scores[k] += value * row[k]
        top = max(scores)
        exps = [math.exp(score - top) for score in scores]
        total = sum(exps)
        return [e / total for e in exps]


@cache
def shipped_model() -> LinearModel:
    """Loaded once per process (about half a second), however many services it builds."""
    return LinearModel.load()


class LinearAnalyzer:
    """The default: a linear model trained on English tweets (see the module docstring)."""

    name = "linear-tweets-v1"
    languages = frozenset({"en"})

    def __init__(self, model: LinearModel | None = None) -> None:
        self.model = model or shipped_model()

    def analyze(self, text: str) -> Sentiment:
        words = tokens(text)
        known, lexicon = self.model.known_features(words), lexicon_features(words)
        if not known and not any(lexicon):  # the bias alone would pass for a calm post
            return unscored(self)
        return labelled(self.model.probabilities_of(known, lexicon), self.name)


class VaderAnalyzer:
    """VADER's lexicon and rules: no training, English only, weaker on tweets (see README)."""

    name = "vader"
    languages = frozenset({"en"})

    def __init__(self) -> None:
        self._vader = SentimentIntensityAnalyzer()

    def analyze(self, text: str) -> Sentiment:
        scores = self._vader.polarity_scores(text)
        compound = float(scores["compound"])
        if compound == 0 and not has_words(text):  # no emoji it knows, no words to weigh
            return unscored(self)
        label: SentimentLabel = (
            "positive" if compound >= 0.05 else "negative" if compound <= -0.05 else "neutral"
        )
        share = {"positive": scores["pos"], "negative": scores["neg"], "neutral": scores["neu"]}
        return Sentiment(
            label=label, score=compound, confidence=float(share[label]), analyzer=self.name
        )


def create_analyzer(name: AnalyzerName) -> SentimentAnalyzer:
    return LinearAnalyzer() if name == "linear" else VaderAnalyzer()


def primary_language(tag: str) -> str:
    """``en`` of ``en``, ``en-GB`` or ``en_US``: publishers write locales either way, and
    analyzers name ISO 639-1 languages."""
    return re.split(r"[-_]", tag.strip(), maxsplit=1)[0].lower()


def unscored(analyzer: SentimentAnalyzer) -> Sentiment:
    """What a post in a language the analyzer does not know gets, or one with nothing in
    it the analyzer can judge (only emoji it lacks, say): neutral, and says so."""
    return Sentiment(
        label="neutral", score=0.0, confidence=0.0, analyzer=analyzer.name, scored=False
    )


class LanguageDetector:
    """py3langid's naive Bayes over byte n-grams: 97 languages, ~15,000 tweets/s."""

    def __init__(self, min_probability: float = 0.5) -> None:
        self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self.min_probability = min_probability

    def detect(self, text: str) -> str | None:
        """The ISO 639-1 code, or None when the text is too short or mixed to tell."""
        language, probability = self._identifier.classify(text)
        return str(language) if probability >= self.min_probability else None
