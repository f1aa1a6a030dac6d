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
#
# An English cancellation threat is the customer's own act, present or coming ("cancel my",
# "I'm cancelling", "going to cancel", "switching to Verizon"), not any cancel word: "my
# order was cancelled", "nothing to cancel" and "switch to dark mode" are no threat.
DEFAULT_INTENTS: dict[str, list[str]] = {
    "cancellation_threat": [
        r"\bcancel(l?ing)? (my|our|@\w+)\b",
        r"\b(i['\u2019]?m|i am|we['\u2019]?re|we are) (cancell?ing|unsubscribing)\b",
        r"\b(going to|gonna|about to|ready to|want to|wanna|(i|we)( will|['\u2019]ll)"
        r"|thinking (of|about)|considering) (cancel(l?ing)?|unsubscrib(e|ing))\b",
        # a competitor by its capitalised name or @handle, or any other provider
        r"\bswitch(ing)? to ((?-i:[A-Z])|@\w|(another|a different|a better|a competitor)\b)",
        r"\bswitch(ing)? (provider|carrier|network|bank|compan(y|ie))s\b",
        r"\b(unsubscrib(e|ing)|clos(e|ing) (my|our) account|leaving you)\b",
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


# Links are left out of what intents are read from: a path like /help/cancel-order or a
# query's "?" says nothing about what the author wants.
_URL = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)


class IntentRules:
    """Compiled once; an intent matches when any of its patterns is found (case-insensitive)
    in the text without its links."""

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
        words = _URL.sub(" ", text)
        return tuple(name for name, pattern in self.patterns.items() if pattern.search(words))


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
    """High for a cancellation threat or an unhappy author with reach; low for a positive
    post that asks nothing. A complaint counts as unhappy whatever the sentiment: its
    words can score positive ("My parcel never arrived!!!": the '!' weighs positive)."""
    unhappy = sentiment.label == "negative" or "complaint" in intents
    if "cancellation_threat" in intents or (unhappy and reach >= HIGH_INFLUENCE):
        return "high"
    if sentiment.label == "positive" and not {"question", "complaint"} & set(intents):
        return "low"
    return "normal"
