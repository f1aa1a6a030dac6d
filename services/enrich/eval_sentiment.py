"""Measure a sentiment analyzer: ``make eval-sentiment``.

Scores it on TweetEval's sentiment validation split (2,000 tweets the default model
was not trained on) and prints macro-averaged recall (the benchmark's official
metric), accuracy, the confusion matrix and texts per second on one core.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import get_args

from services.enrich.sentiment import LABELS, AnalyzerName, SentimentAnalyzer, create_analyzer

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
EVAL_FILE = DATA / "tweeteval-sentiment-val.tsv"


def read_labelled(path: Path) -> tuple[list[str], list[int]]:
    """``LABEL<TAB>TEXT`` lines, labels 0 negative, 1 neutral, 2 positive."""
    texts, labels = [], []
    with path.open(encoding="utf-8") as file:
        for line in file:
            label, _, text = line.rstrip("\n").partition("\t")
            texts.append(text)
            labels.append(int(label))
    return texts, labels


@dataclass(frozen=True)
class Evaluation:
    analyzer: str
    texts: int
    macro_recall: float
    accuracy: float
    confusion: list[list[int]]  # rows: true label, columns: predicted label
    texts_per_second: float


def evaluate(analyzer: SentimentAnalyzer, texts: list[str], labels: list[int]) -> Evaluation:
    started = time.perf_counter()
    predicted = [LABELS.index(analyzer.analyze(text).label) for text in texts]
    elapsed = time.perf_counter() - started
    confusion = [[0] * len(LABELS) for _ in LABELS]
    for truth, guess in zip(labels, predicted, strict=True):
        confusion[truth][guess] += 1
    recalls = [row[k] / max(sum(row), 1) for k, row in enumerate(confusion)]
    return Evaluation(
        analyzer=analyzer.name,
        texts=len(texts),
        macro_recall=round(sum(recalls) / len(recalls), 4),
        accuracy=round(sum(confusion[k][k] for k in range(len(LABELS))) / len(texts), 4),
        confusion=confusion,
        texts_per_second=round(len(texts) / elapsed),
    )


def report(result: Evaluation) -> str:
    width = max(len(label) for label in LABELS) + 2
    lines = [
        f"analyzer          {result.analyzer}",
        f"texts             {result.texts}",
        f"macro recall      {result.macro_recall:.3f}",
        f"accuracy          {result.accuracy:.3f}",
        f"texts per second  {result.texts_per_second:,.0f} (one core)",
        "confusion (rows: true, columns: predicted)",
        " " * width + "".join(label.rjust(width) for label in LABELS),
    ]
    for label, row in zip(LABELS, result.confusion, strict=True):
        lines.append(label.ljust(width) + "".join(str(n).rjust(width) for n in row))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--analyzer", choices=get_args(AnalyzerName), default="linear")
    parser.add_argument("--data", type=Path, default=EVAL_FILE)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    texts, labels = read_labelled(args.data)
    result = evaluate(create_analyzer(args.analyzer), texts, labels)
    print(json.dumps(asdict(result)) if args.json else report(result))


if __name__ == "__main__":
    main()
