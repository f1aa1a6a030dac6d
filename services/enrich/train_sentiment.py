"""Train the default sentiment model: ``make train-sentiment``.

Trains on ``semeval-2013-2016-sentiment-train.tsv`` only (SemEval 2013-2016 tweets with
every TweetEval validation and test tweet removed), so that ``make eval-sentiment`` on
the TweetEval validation file reports on tweets the model never saw. scikit-learn does
the fitting (a development dependency); what ships is plain JSON weights that
``LinearModel`` scores with the very same ``tokens``/``features`` functions.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from services.enrich.eval_sentiment import DATA, read_labelled
from services.enrich.sentiment import LINEAR_MODEL, features, lexicon_features, tokens

TRAIN_FILE = DATA / "semeval-2013-2016-sentiment-train.tsv"
MIN_DOCUMENTS = 2  # a feature seen in one tweet only is noise
C = 0.5  # inverse regularisation: the best of 0.5-8 by 5-fold cross-validation on the training file


def analyse(text: str) -> list[str]:
    return features(tokens(text))


def lexicon_matrix(texts: list[str]) -> sparse.csr_matrix:
    return sparse.csr_matrix(np.array([lexicon_features(tokens(text)) for text in texts]))


def train(path: Path) -> dict[str, object]:
    texts, labels = read_labelled(path)
    vectorizer = TfidfVectorizer(analyzer=analyse, min_df=MIN_DOCUMENTS, sublinear_tf=True)
    matrix = sparse.hstack([vectorizer.fit_transform(texts), lexicon_matrix(texts)]).tocsr()
    model = LogisticRegression(C=C, max_iter=5000, class_weight="balanced")
    model.fit(matrix, labels)
    vocabulary_size = len(vectorizer.vocabulary_)
    coefficients = model.coef_  # (3 classes, vocabulary + 2 lexicon features)
    weights = {
        feature: [round(float(vectorizer.idf_[column]), 4)]
        + [round(float(coefficients[k, column]), 4) for k in range(3)]
        for feature, column in vectorizer.vocabulary_.items()
    }
    return {
        "analyzer": "linear-tweets-v1",
        "trained_on": f"{path.name}: {len(texts)} tweets",
        "labels": ["negative", "neutral", "positive"],
        "features": dict(sorted(weights.items())),
        "lexicon_weights": [
            [round(float(coefficients[k, vocabulary_size + row]), 4) for k in range(3)]
            for row in range(2)
        ],
        "bias": [round(float(b), 4) for b in model.intercept_],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=TRAIN_FILE)
    parser.add_argument("--out", type=Path, default=LINEAR_MODEL)
    args = parser.parse_args()
    model = train(args.data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(args.out, "wb", mtime=0) as raw:  # mtime 0: same input, same bytes
        raw.write(json.dumps(model, separators=(",", ":")).encode())
    print(f"wrote {args.out} ({len(model['features'])} features)")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
