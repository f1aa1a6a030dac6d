"""Ingest against the real embedded broker and store, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.ingest.config import IngestSettings
from services.ingest.main import create_app
from shared.embedded import EmbeddedStack
from shared.events import INTERACTION_RECEIVED, Interaction
from tests.support import (
    admin_headers,
    client_of,
    eventually,
    read_topic,
    service_settings,
)


@dataclass
class Ingest:
    http: httpx.AsyncClient
    settings: IngestSettings
    key: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
async def ingest(stack: EmbeddedStack, namespace: str, run_dir: Path) -> AsyncIterator[Ingest]:
    settings = service_settings(
        IngestSettings,
        stack,
        namespace,
        run_dir,
    )
    async with client_of(create_app(settings)) as http:
        created = await http.post(
            "/v1/publishers", json={"name": "listener"}, headers=admin_headers()
        )
        assert created.status_code == 201
        yield Ingest(http, settings, created.json()["api_key"])


def mention(external_id: str = "tw-1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "twitter",
        "source": "listener",
        "external_id": external_id,
        "author": {"handle": "@Ada_L", "followers": 1200},
        "text": "My order is late again 😡 — día tres",
    }
    return body | overrides


async def test_accepted_interaction_is_published_once_with_its_id(ingest: Ingest) -> None:
    answer = await ingest.http.post("/v1/interactions", json=mention(), headers=ingest.headers())

    assert answer.status_code == 202
    interaction_id = answer.json()["id"]
    topic = ingest.settings.kafka.topics.received
    [(key, event)] = await read_topic(ingest.settings.kafka, topic, Interaction, 1, settle_s=1.0)
    assert event.id == interaction_id
    assert event.type == INTERACTION_RECEIVED
    assert key == b"twitter:@ada_l"
    assert event.data.text == "My order is late again 😡 — día tres"


async def test_repeat_answers_200_with_original_id_and_emits_nothing(ingest: Ingest) -> None:
    first = await ingest.http.post(
        "/v1/interactions", json=mention("tw-9"), headers=ingest.headers()
    )
    again = await ingest.http.post(
        "/v1/interactions", json=mention("tw-9", text="edited"), headers=ingest.headers()
    )

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == {"id": first.json()["id"], "status": "duplicate"}
    topic = ingest.settings.kafka.topics.received
    events = await read_topic(ingest.settings.kafka, topic, Interaction, 1, settle_s=1.5)
    assert [event.id for _, event in events] == [first.json()["id"]]


async def test_stored_interaction_can_be_read_back(ingest: Ingest) -> None:
    posted = await ingest.http.post("/v1/interactions", json=mention(), headers=ingest.headers())
    interaction_id = posted.json()["id"]

    answer = await eventually(lambda: _published(ingest, interaction_id))

    assert answer["interaction"]["author"]["handle"] == "@Ada_L"
    assert answer["stored_at"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (mention(channel="pigeon"), "channel"),
        (mention(author={"followers": 3}), "author.handle"),
        (mention(text=""), "text"),
        (mention(surprise=True), "surprise"),
    ],
)
async def test_invalid_fields_get_422_naming_the_field(
    ingest: Ingest, body: dict[str, Any], field: str
) -> None:
    answer = await ingest.http.post("/v1/interactions", json=body, headers=ingest.headers())

    assert answer.status_code == 422
    assert field in [error["field"] for error in answer.json()["detail"]]


async def test_unknown_or_revoked_key_gets_401(ingest: Ingest) -> None:
    wrong = await ingest.http.post(
        "/v1/interactions", json=mention(), headers={"Authorization": "Bearer nope"}
    )
    created = await ingest.http.post(
        "/v1/publishers", json={"name": "old"}, headers=admin_headers()
    )
    revoked = await ingest.http.post(
        f"/v1/publishers/{created.json()['id']}/revoke", headers=admin_headers()
    )
    with_revoked = await ingest.http.post(
        "/v1/interactions",
        json=mention(),
        headers={"Authorization": f"Bearer {created.json()['api_key']}"},
    )

    assert wrong.status_code == 401
    assert revoked.status_code == 204
    assert with_revoked.status_code == 401


async def test_publisher_admin_needs_the_admin_token(ingest: Ingest) -> None:
    answer = await ingest.http.post("/v1/publishers", json={"name": "x"}, headers=ingest.headers())

    assert answer.status_code == 401


async def test_health_and_readiness_reflect_the_database(ingest: Ingest) -> None:
    assert (await ingest.http.get("/healthz")).status_code == 200
    assert (await ingest.http.get("/readyz")).json() == {"status": "ready"}


async def _published(ingest: Ingest, interaction_id: str) -> dict[str, Any] | None:
    answer = await ingest.http.get(f"/v1/interactions/{interaction_id}", headers=ingest.headers())
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body if body["published_at"] else None
