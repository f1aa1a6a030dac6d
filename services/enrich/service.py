"""Enrich's domain: who is speaking (customer, tier, influence) and how they feel."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Protocol
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from services.enrich.repository import EnrichRepository
from shared.events import (
    INTERACTION_ENRICHED,
    Channel,
    CloudEvent,
    CustomerRef,
    EnrichedInteraction,
    Interaction,
    Sentiment,
    Urgency,
    derived_event_id,
    utcnow,
)
from shared.logging import get_logger, handling
from shared.mongo import Document
from shared.outbox import Outbox
from shared.topics import Topics

SOURCE = "/switchboard/enrich"
log = get_logger(__name__)
PROSPECT = "prospect"


class Tier(StrEnum):
    PLATINUM = "platinum"
    GOLD = "gold"
    SILVER = "silver"
    STANDARD = "standard"
    PROSPECT = PROSPECT


# One identity namespace per network: a handle on x is the same person on twitter.
_CHANNEL_ALIASES = {Channel.X: Channel.TWITTER}
_PROFILE_HOSTS = ("twitter.com", "x.com", "instagram.com", "facebook.com", "linkedin.com")


def normalise_identity(channel: Channel, handle: str) -> str:
    """``channel:handle`` in one canonical form: lower case, no leading @, no profile URL."""
    canonical = _CHANNEL_ALIASES.get(channel, channel)
    text = handle.strip()
    parsed = urlparse(text)
    if parsed.scheme in ("http", "https") and parsed.hostname:
        host = parsed.hostname.removeprefix("www.").removeprefix("mobile.")
        if host in _PROFILE_HOSTS:  # the profile is the first path segment, e.g. /ada/status/1
            text = parsed.path.strip("/").split("/")[0] or text
    return f"{canonical.value}:{text.lstrip('@').lower()}"


Email = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)]


class IdentityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    handle: str = Field(min_length=1, max_length=256)


class CustomerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    tier: Tier = Tier.STANDARD
    value: float = Field(default=0.0, ge=0)
    crm_id: str | None = Field(default=None, max_length=128)
    emails: list[Email] = Field(default_factory=list, max_length=16)
    identities: list[IdentityIn] = Field(default_factory=list, max_length=64)


class SentimentAnalyzer(Protocol):
    name: str

    def analyze(self, text: str) -> Sentiment: ...


class VaderAnalyzer:
    """VADER's lexicon and rules: fast, English only, tuned for social media."""

    name = "vader"

    def __init__(self) -> None:
        self._vader = SentimentIntensityAnalyzer()

    def analyze(self, text: str) -> Sentiment:
        compound = float(self._vader.polarity_scores(text)["compound"])
        label = "positive" if compound >= 0.05 else "negative" if compound <= -0.05 else "neutral"
        return Sentiment(label=label, score=compound, analyzer=self.name)


INTENT_PATTERNS: dict[str, re.Pattern[str]] = {
    "cancellation_threat": re.compile(
        r"\b(cancel\w*|unsubscrib\w*|switch(ing)? to|clos(e|ing) my account|leaving)\b", re.I
    ),
    "complaint": re.compile(
        r"\b(broken|late|never arrived|worst|refund|terrible|awful|still waiting|not working)\b",
        re.I,
    ),
    "question": re.compile(r"\?|\b(how do i|how can i|can you|is there)\b", re.I),
    "praise": re.compile(r"\b(thank(s| you)|love|great|awesome|amazing)\b", re.I),
}


def detect_intents(text: str) -> tuple[str, ...]:
    return tuple(name for name, pattern in INTENT_PATTERNS.items() if pattern.search(text))


def influence(followers: int, verified: bool) -> float:
    """0-10 from reach: two points per order of magnitude of followers, one for verification."""
    score = 2.0 * math.log10(followers + 1) + (1.0 if verified else 0.0)
    return round(min(score, 10.0), 2)


def urgency(sentiment: Sentiment, intents: Sequence[str], reach: float) -> Urgency:
    if "cancellation_threat" in intents or (sentiment.label == "negative" and reach >= 7):
        return "high"
    if sentiment.label == "positive" and "question" not in intents:
        return "low"
    return "normal"


def customer_ref(doc: Document) -> CustomerRef:
    return CustomerRef(
        id=str(doc["_id"]),
        tier=str(doc.get("tier", PROSPECT)),
        value=float(doc.get("value", 0.0)),
        prospect=doc.get("tier") == PROSPECT,
    )


class EnrichService:
    def __init__(
        self,
        repository: EnrichRepository,
        outbox: Outbox,
        topics: Topics,
        analyzer: SentimentAnalyzer,
    ) -> None:
        self.repository = repository
        self.outbox = outbox
        self.topics = topics
        self.analyzer = analyzer

    async def create_customer(self, payload: CustomerIn) -> Document:
        """Raises IdentityTaken when one of its identities belongs to someone else."""
        identities = sorted({normalise_identity(i.channel, i.handle) for i in payload.identities})
        customer = {
            "_id": str(uuid.uuid4()),
            **payload.model_dump(mode="json", exclude={"identities"}),
            "identities": identities,
            "created_at": utcnow(),
        }
        await self.repository.insert_customer(customer, identities)
        return customer

    async def get_customer(self, customer_id: str) -> Document | None:
        return await self.repository.find_customer(customer_id)

    async def enrich_batch(self, received: Sequence[CloudEvent[Interaction]]) -> None:
        """Enrich each interaction and store the enriched events for publishing."""
        entries = []
        for event in received:
            with handling(event.id, event.data.id):
                enriched = await self.enrich(event.data)
                log.info(
                    "enriched",
                    customer_id=enriched.customer.id,
                    tier=enriched.customer.tier,
                    sentiment=enriched.sentiment.label,
                )
            entries.append(
                (self.topics.enriched, enriched.customer.id, enriched_event(event, enriched))
            )
        await self.outbox.add(entries)

    async def enrich(self, interaction: Interaction) -> EnrichedInteraction:
        customer = await self.resolve(interaction)
        sentiment = self.analyzer.analyze(interaction.text)
        intents = detect_intents(interaction.text)
        reach = influence(interaction.author.followers, interaction.author.verified)
        return EnrichedInteraction(
            interaction=interaction,
            customer=customer,
            sentiment=sentiment,
            language=interaction.language,
            intents=intents,
            urgency=urgency(sentiment, intents, reach),
            influence=reach,
        )

    async def resolve(self, interaction: Interaction) -> CustomerRef:
        """The author's customer; an unknown author becomes a prospect, known from now on."""
        author = interaction.author
        identity = normalise_identity(interaction.channel, author.handle)
        customer_id = await self.repository.customer_id_for(identity)
        if customer_id is None:
            customer_id = await self.repository.claim_identity(identity, str(uuid.uuid4()))
        customer = await self.repository.find_customer(customer_id)
        if customer is None or customer.get("tier") == PROSPECT:
            customer = await self.repository.upsert_prospect(
                {
                    "_id": customer_id,
                    "name": author.display_name or author.handle,
                    "tier": PROSPECT,
                    "value": 0.0,
                    "identities": [identity],
                    "created_at": utcnow(),
                },
                author.followers,
            )
        if customer is None:  # erased between the two writes: treat the author as new
            return await self.resolve(interaction)
        return customer_ref(customer)


def enriched_event(
    received: CloudEvent[Interaction], enriched: EnrichedInteraction
) -> CloudEvent[EnrichedInteraction]:
    return CloudEvent[EnrichedInteraction](
        id=derived_event_id(received.id, INTERACTION_ENRICHED),
        source=SOURCE,
        type=INTERACTION_ENRICHED,
        subject=enriched.interaction.id,
        data=enriched,
    )
