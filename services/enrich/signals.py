"""What a post asks for: intents from keyword patterns, influence, urgency (pure rules)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from shared.events import Sentiment, Urgency

# Default intent patterns in English, Spanish, French, German and Portuguese. Deployments
# replace them with a JSON file of {"intent": ["regex", ...]} (SWITCHBOARD_ENRICH_INTENTS_FILE).
DEFAULT_INTENTS: dict[str, list[str]] = {
    "cancellation_threat": [
        r"\b(cancel\w*|unsubscrib\w*|switch(ing)? to|clos(e|ing) my account|leaving you)\b",
        r"\b(cancelar|darme de baja|me cambio a)\b",
        r"\b(résilier|résiliation|je pars chez)\b",
        r"\b(kündig\w*|wechsle zu)\b",
        r"\b(cancelar|vou mudar para)\b",
    ],
    "complaint": [
        r"\b(broken|late|never arrived|worst|refund|terrible|awful|still waiting|not working)\b",
        r"\b(roto|nunca llegó|nunca llego|reembolso|pésimo|no funciona)\b",
        r"\b(cassé|jamais arrivée?|remboursement|nul|ne marche pas|en panne)\b",
        r"\b(kaputt|nie angekommen|erstattung|schlecht|funktioniert nicht)\b",
        r"\b(quebrado|nunca chegou|reembolso|péssimo|não funciona)\b",
    ],
    "question": [
        r"\?|¿",
        r"\b(how do i|how can i|can you|is there|does anyone know)\b",
        r"\b(cómo puedo|como puedo|comment faire|wie kann ich|como faço)\b",
    ],
    "praise": [
        r"\b(thank(s| you)|love|great|awesome|amazing)\b",
        r"\b(gracias|encanta|genial|merci|génial|danke|toll|obrigad[oa]|adoro)\b",
    ],
    "purchase_intent": [
        r"\b(want to buy|looking to buy|how much (is|does)|price of|where can i buy|upgrade to)\b",
        r"\b(quiero comprar|combien coûte|wo kann ich kaufen|quero comprar)\b",
    ],
}


class IntentRules:
    """Compiled once; an intent matches when any of its patterns is found (case-insensitive)."""

    def __init__(self, patterns: Mapping[str, Sequence[str]] = DEFAULT_INTENTS) -> None:
        self.patterns = {
            intent: re.compile("|".join(f"(?:{p})" for p in alternatives), re.IGNORECASE)
            for intent, alternatives in patterns.items()
        }

    @classmethod
    def from_file(cls, path: Path | None) -> IntentRules:
        if path is None:
            return cls()
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def detect(self, text: str) -> tuple[str, ...]:
        return tuple(name for name, pattern in self.patterns.items() if pattern.search(text))


def influence(followers: int, verified: bool, prior_posts: int = 0) -> float:
    """0-100: how far a post carries and how engaged its author is.

    - reach: 12 points per order of magnitude of followers, at most 72 (a million);
    - verification: 10 points;
    - engagement: 6 points per doubling of the author's earlier posts here, at most 18.

    12 followers score 13, 80,000 score 59, a verified million with 7 earlier posts 100.
    """
    reach = min(12.0 * math.log10(followers + 1), 72.0)
    engagement = min(6.0 * math.log2(prior_posts + 1), 18.0)
    return round(reach + (10.0 if verified else 0.0) + engagement, 1)


HIGH_INFLUENCE = 50.0  # about 15,000 followers, or fewer with verification and history


def urgency(sentiment: Sentiment, intents: Sequence[str], reach: float) -> Urgency:
    if "cancellation_threat" in intents or (
        sentiment.label == "negative" and reach >= HIGH_INFLUENCE
    ):
        return "high"
    if sentiment.label == "positive" and "question" not in intents:
        return "low"
    return "normal"
