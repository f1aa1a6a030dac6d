"""Enrich against the real embedded broker and store: identity, prospects, idempotence."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.enrich.config import EnrichSettings
from services.enrich.main import create_app
from shared.embedded import EmbeddedStack
from shared.events import INTERACTION_RECEIVED, CloudEvent, EnrichedInteraction, Interaction, utcnow
from tests.support import (
    admin_headers,
    client_of,
    publish,
    read_topic,
    service_settings,
)


@dataclass
class Enrich:
    http: httpx.AsyncClient
    settings: EnrichSettings

    async def send(self, *interactions: Interaction) -> None:
        events = [
            (
                i.author.handle,
                CloudEvent[Interaction](id=i.id, source="/test", type=INTERACTION_RECEIVED, data=i),
            )
            for i in interactions
        ]
        await publish(self.settings.kafka, self.settings.kafka.topics.received, events)

    async def enriched(self, expect: int, settle_s: float = 0.0) -> list[EnrichedInteraction]:
        topic = self.settings.kafka.topics.enriched
        events = await read_topic(
            self.settings.kafka, topic, EnrichedInteraction, expect, settle_s=settle_s
        )
        return [event.data for _, event in events]


@pytest.fixture
async def enrich(stack: EmbeddedStack, namespace: str, run_dir: Path) -> AsyncIterator[Enrich]:
    settings = service_settings(
        EnrichSettings,
        stack,
        namespace,
        run_dir,
    )
    async with client_of(create_app(settings)) as http:
        yield Enrich(http, settings)


def interaction(
    handle: str, text: str = "Where is my parcel? It is late again.", **author: Any
) -> Interaction:
    return Interaction.model_validate(
        {
            "id": str(uuid.uuid4()),
            "channel": "twitter",
            "source": "listener",
            "external_id": uuid.uuid4().hex,
            "author": {"handle": handle, **author},
            "text": text,
            "received_at": utcnow(),
        }
    )


async def test_known_handle_in_any_form_resolves_to_its_customer(enrich: Enrich) -> None:
    created = await enrich.http.post(
        "/v1/customers",
        json={
            "name": "Ada Lovelace",
            "tier": "platinum",
            "value": 12000,
            "identities": [{"channel": "twitter", "handle": "https://twitter.com/Ada_L"}],
        },
        headers=admin_headers(),
    )
    assert created.status_code == 201

    await enrich.send(interaction("@ada_l"), interaction("ADA_L"))
    results = await enrich.enriched(2)

    assert {r.customer.id for r in results} == {created.json()["id"]}
    assert {r.customer.tier for r in results} == {"platinum"}
    assert not any(r.customer.prospect for r in results)


async def test_unknown_author_becomes_a_prospect_known_on_the_next_post(enrich: Enrich) -> None:
    await enrich.send(interaction("@stranger", followers=80_000, verified=True))
    [first] = await enrich.enriched(1)
    await enrich.send(interaction("@Stranger", text="I love it, thanks!"))
    second = (await enrich.enriched(2))[1]

    assert first.customer.prospect
    assert first.customer.tier == "prospect"
    assert first.influence > 9
    assert second.customer.id == first.customer.id
    assert second.sentiment.label == "positive"
    stored = await enrich.http.get(f"/v1/customers/{first.customer.id}", headers=admin_headers())
    assert stored.json()["identities"] == ["twitter:stranger"]


async def test_scores_sentiment_and_flags_intents(enrich: Enrich) -> None:
    await enrich.send(interaction("@angry", text="Worst service ever, I'm cancelling my plan!"))
    [result] = await enrich.enriched(1)

    assert result.sentiment.label == "negative"
    assert result.sentiment.analyzer == "vader"
    assert {"cancellation_threat", "complaint"} <= set(result.intents)
    assert result.urgency == "high"


async def test_redelivered_event_yields_one_enriched_event(enrich: Enrich) -> None:
    post = interaction("@twice")
    await enrich.send(post, post)

    results = await enrich.enriched(1, settle_s=2.0)

    assert [r.interaction.id for r in results] == [post.id]


async def test_an_identity_belongs_to_one_customer(enrich: Enrich) -> None:
    body = {"name": "A", "identities": [{"channel": "x", "handle": "@same"}]}
    first = await enrich.http.post("/v1/customers", json=body, headers=admin_headers())
    second = await enrich.http.post(
        "/v1/customers",
        json={"name": "B", "identities": [{"channel": "twitter", "handle": "Same"}]},
        headers=admin_headers(),
    )

    assert first.status_code == 201
    assert second.status_code == 409


async def test_customers_api_needs_admin_token_and_valid_fields(enrich: Enrich) -> None:
    anonymous = await enrich.http.post("/v1/customers", json={"name": "A"})
    bad_tier = await enrich.http.post(
        "/v1/customers", json={"name": "A", "tier": "diamond"}, headers=admin_headers()
    )

    assert anonymous.status_code == 401
    assert bad_tier.status_code == 422
    assert bad_tier.json()["detail"][0]["field"] == "tier"
