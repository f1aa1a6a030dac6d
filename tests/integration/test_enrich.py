"""Enrich against the real embedded broker and store: identity, prospects, idempotence."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from services.enrich.config import EnrichSettings
from services.enrich.main import create_app
from services.enrich.repository import EnrichRepository
from services.enrich.service import EnrichService
from services.enrich.signals import HIGH_INFLUENCE
from shared.embedded import EmbeddedStack
from shared.emit import Emitter
from shared.events import (
    INTERACTION_RECEIVED,
    Channel,
    CloudEvent,
    EnrichedInteraction,
    Interaction,
    encode,
    utcnow,
)
from shared.identity import normalise_identity
from shared.mongo import epoch_ms
from shared.settings import TracingSettings
from shared.tracing import start_trace, trace_id
from tests.integration.test_dead_letters import read_records
from tests.support import (
    admin_headers,
    client_of,
    eventually,
    publish,
    read_topic,
    receiving,
    service_settings,
)


@dataclass
class Enrich:
    http: httpx.AsyncClient
    settings: EnrichSettings
    service: EnrichService

    async def send(self, *interactions: Interaction) -> None:
        events = [
            (
                normalise_identity(i.channel, i.author.handle),  # as ingest keys them
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

    async def enriched_since(self, before: EnrichedInteraction) -> EnrichedInteraction:
        """The one enriched after ``before``: the two may be keyed to other partitions,
        so the topic's order says nothing of which came first."""
        [after] = [e for e in await self.enriched(2) if e.interaction.id != before.interaction.id]
        return after


@pytest.fixture
async def enrich(stack: EmbeddedStack, namespace: str, run_dir: Path) -> AsyncIterator[Enrich]:
    settings = service_settings(
        EnrichSettings,
        stack,
        namespace,
        run_dir,
    )
    app = create_app(settings)
    async with client_of(app) as http:
        yield Enrich(http, settings, app.state.service)


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
    assert first.influence >= HIGH_INFLUENCE
    assert second.customer.id == first.customer.id
    assert second.sentiment.label == "positive"
    stored = await enrich.http.get(f"/v1/customers/{first.customer.id}", headers=admin_headers())
    assert stored.json()["identities"] == ["twitter:stranger"]


async def test_scores_sentiment_and_flags_intents(enrich: Enrich) -> None:
    await enrich.send(interaction("@angry", text="Worst service ever, I'm cancelling my plan!"))
    [result] = await enrich.enriched(1)

    assert result.sentiment.label == "negative"
    assert result.sentiment.analyzer == "linear-tweets-v1"
    assert result.language == "en"
    assert {"cancellation_threat", "complaint"} <= set(result.intents)
    assert result.urgency == "high"


async def test_a_redelivered_post_is_enriched_again_under_the_same_event_id(
    enrich: Enrich,
) -> None:
    """No outbox remembers what was sent: the repeat goes out again, as the router,
    which drops an event it has by its interaction id, expects."""
    post = interaction("@twice")
    await enrich.send(post, post)

    events = await read_topic(
        enrich.settings.kafka, enrich.settings.kafka.topics.enriched, EnrichedInteraction, 2
    )

    assert [event.data.interaction.id for _, event in events] == [post.id, post.id]
    assert events[0][1].id == events[1][1].id
    assert (await profile(enrich, events[0][1].data.customer.id))["posts"] == 1


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


async def create(enrich: Enrich, **profile: Any) -> dict[str, Any]:
    response = await enrich.http.post("/v1/customers", json=profile, headers=admin_headers())
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_an_author_without_a_known_handle_resolves_by_email(enrich: Enrich) -> None:
    ada = await create(enrich, name="Ada", tier="gold", emails=["Ada@Example.com"])

    await enrich.send(interaction("@new_handle", email="ada@example.COM"))
    await enrich.send(interaction("@NEW_HANDLE"))  # now known by the handle itself
    results = await enrich.enriched(2)

    assert [r.customer.id for r in results] == [ada["id"], ada["id"]]
    assert [r.customer.tier for r in results] == ["gold", "gold"]


async def test_posts_handled_together_resolve_as_they_would_one_by_one(
    enrich: Enrich,
) -> None:
    ada = await create(
        enrich,
        name="Ada",
        tier="gold",
        emails=["ada@example.com"],
        identities=[{"channel": "twitter", "handle": "@ada"}],
    )
    posts = [
        interaction("@newcomer", followers=10),
        interaction("@ada"),
        interaction("@newcomer", followers=20),
        interaction("@ada_alt", email="ADA@example.com"),
        interaction("@newcomer", followers=30),
    ]

    await enrich.send(*posts)
    results = {r.interaction.id: r for r in await enrich.enriched(len(posts))}

    newcomer = {results[p.id].customer.id for p in posts if p.author.handle == "@newcomer"}
    assert len(newcomer) == 1  # one prospect, however many of its posts came at once
    assert [results[p.id].customer.id for p in posts[1::2]] == [ada["id"], ada["id"]]
    prospect = (
        await enrich.http.get(f"/v1/customers/{newcomer.pop()}", headers=admin_headers())
    ).json()
    assert (prospect["tier"], prospect["posts"], prospect["followers"]) == ("prospect", 3, 30)
    customer = (await enrich.http.get(f"/v1/customers/{ada['id']}", headers=admin_headers())).json()
    assert customer["posts"] == 2
    assert "twitter:ada_alt" in customer["identities"]


async def test_a_merged_profiles_old_id_resolves_to_the_survivor(enrich: Enrich) -> None:
    survivor = await create(enrich, name="Ada", tier="platinum", emails=["ada@example.com"])
    old = await create(
        enrich, name="Ada L", identities=[{"channel": "instagram", "handle": "ada.l"}]
    )

    merged = await enrich.http.post(
        f"/v1/customers/{survivor['id']}:merge",
        json={"merge_id": old["id"]},
        headers=admin_headers(),
    )
    by_old_id = await enrich.http.get(f"/v1/customers/{old['id']}", headers=admin_headers())
    post = interaction("@ada.l").model_copy(update={"channel": Channel.INSTAGRAM})
    await enrich.send(post)
    [result] = await enrich.enriched(1)

    assert merged.status_code == 200
    assert merged.json()["identities"] == ["instagram:ada.l"]
    assert by_old_id.json()["id"] == survivor["id"]
    assert result.customer.id == survivor["id"]
    assert result.customer.tier == "platinum"


async def everything_stored(enrich: Enrich) -> str:
    """Every document of enrich's database, as one text."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        enrich.settings.mongo.url.get_secret_value()
    )
    try:
        db = client[enrich.settings.mongo.database("enrich")]
        collections = await db.list_collection_names()
        return repr([[doc async for doc in db[name].find({})] for name in collections])
    finally:
        await client.close()


async def test_an_erased_customers_later_post_carries_no_trace_of_them(enrich: Enrich) -> None:
    ada = await create(
        enrich,
        name="Ada Lovelace",
        tier="platinum",
        value=50_000,
        crm_id="crm-ada",
        emails=["ada@example.com"],
        identities=[{"channel": "twitter", "handle": "@ada_l"}],
    )

    await enrich.send(interaction("@ada_l", text="Ada's own words"))
    [before] = await enrich.enriched(1)

    erased = await enrich.http.delete(f"/v1/customers/{ada['id']}", headers=admin_headers())
    gone = await enrich.http.get(f"/v1/customers/{ada['id']}", headers=admin_headers())
    await enrich.send(interaction("@ada_l", email="ada@example.com"))
    result = await enrich.enriched_since(before)
    kept = await everything_stored(enrich)
    stored = await enrich.http.get(f"/v1/customers/{result.customer.id}", headers=admin_headers())

    assert before.customer.id == ada["id"]
    assert erased.status_code == 204
    assert gone.status_code == 404
    assert "Ada's own words" not in kept
    assert result.customer.id != ada["id"]
    assert result.customer.prospect
    assert result.customer.value == 0
    assert "Lovelace" not in stored.text
    assert "crm-ada" not in stored.text
    assert "example.com" not in stored.text


async def test_a_profile_is_updated_searched_linked_and_unlinked(enrich: Enrich) -> None:
    ada = await create(enrich, name="Ada Lovelace", tier="silver", emails=["ada@example.com"])
    await create(enrich, name="Grace Hopper", tier="gold")
    path = f"/v1/customers/{ada['id']}"

    patched = await enrich.http.patch(
        path, json={"tier": "gold", "tags": ["vip"]}, headers=admin_headers()
    )
    linked = await enrich.http.post(
        f"{path}/identities",
        json={"channel": "x", "handle": "https://x.com/Ada_L"},
        headers=admin_headers(),
    )
    by_handle = await enrich.http.get(
        "/v1/customers", params={"handle": "@ADA_L"}, headers=admin_headers()
    )
    by_name = await enrich.http.get(
        "/v1/customers", params={"name": "lovel", "tier": "gold"}, headers=admin_headers()
    )
    by_email = await enrich.http.get(
        "/v1/customers", params={"email": "ADA@example.com"}, headers=admin_headers()
    )
    unlinked = await enrich.http.delete(f"{path}/identities/twitter:ada_l", headers=admin_headers())
    after = await enrich.http.get(
        "/v1/customers", params={"handle": "ada_l"}, headers=admin_headers()
    )

    assert patched.json()["tier"] == "gold"
    assert patched.json()["tags"] == ["vip"]
    assert linked.json()["identities"] == ["twitter:ada_l"]
    assert [c["id"] for c in by_handle.json()["customers"]] == [ada["id"]]
    assert [c["id"] for c in by_name.json()["customers"]] == [ada["id"]]
    assert [c["id"] for c in by_email.json()["customers"]] == [ada["id"]]
    assert unlinked.json()["identities"] == []
    assert after.json()["customers"] == []


async def test_a_crm_customer_absorbs_the_prospect_that_posted_first(enrich: Enrich) -> None:
    await enrich.send(interaction("@early_bird", followers=10))
    [first] = await enrich.enriched(1)

    ada = await create(
        enrich, name="Ada", tier="gold", identities=[{"channel": "twitter", "handle": "early_bird"}]
    )
    by_prospect_id = await enrich.http.get(
        f"/v1/customers/{first.customer.id}", headers=admin_headers()
    )

    assert first.customer.prospect
    assert by_prospect_id.json()["id"] == ada["id"]
    assert by_prospect_id.json()["posts"] == 1  # the prospect's history moved


async def test_a_post_in_a_language_the_analyzer_lacks_is_not_scored(enrich: Enrich) -> None:
    await enrich.send(interaction("@hans", text="Meine Bestellung ist nie angekommen, bitte!"))
    [result] = await enrich.enriched(1)

    assert result.language == "de"
    assert result.sentiment.label == "neutral"
    assert not result.sentiment.scored
    assert result.sentiment.confidence == 0.0
    assert "complaint" in result.intents


async def test_bad_profile_input_names_the_field(enrich: Enrich) -> None:
    bad_identity = await enrich.http.post(
        "/v1/customers",
        json={"name": "A", "identities": [{"channel": "myspace", "handle": "a"}]},
        headers=admin_headers(),
    )
    bad_patch = await enrich.http.patch(
        "/v1/customers/nobody", json={"value": -1}, headers=admin_headers()
    )
    missing = await enrich.http.patch(
        "/v1/customers/nobody", json={"value": 1}, headers=admin_headers()
    )

    assert bad_identity.status_code == 422
    assert bad_identity.json()["detail"][0]["field"].startswith("identities.0")
    assert bad_patch.status_code == 422
    assert bad_patch.json()["detail"][0]["field"] == "value"
    assert missing.status_code == 404


async def import_body(
    enrich: Enrich, body: bytes | AsyncIterator[bytes], media_type: str
) -> httpx.Response:
    return await enrich.http.post(
        "/v1/customers:import",
        content=body,
        headers={**admin_headers(), "Content-Type": media_type},
        timeout=300,
    )


async def test_a_csv_import_upserts_by_crm_id_and_reports_bad_lines(enrich: Enrich) -> None:
    csv_text = (
        "crm_id,name,tier,value,emails,identities,tags\n"
        "c1,Ada Lovelace,platinum,12000,ada@example.com,twitter:@Ada_L;instagram:ada.l,vip\n"
        'c2,"Hopper, Grace",gold,800,,twitter:grace,"note with\n'
        'a line break"\n'
        "c3,Nobody,diamond,1,,,\n"
        ",No CRM id,gold,1,,,\n"
        "c4,Taken,gold,1,,twitter:ADA_L,\n"
        "c1,Ada King,platinum,15000,,,\n"
    )

    report = await import_body(enrich, csv_text.encode(), "text/csv")
    [ada] = (
        await enrich.http.get("/v1/customers", params={"handle": "ada_l"}, headers=admin_headers())
    ).json()["customers"]
    [grace] = (
        await enrich.http.get("/v1/customers", params={"name": "grace"}, headers=admin_headers())
    ).json()["customers"]

    assert report.status_code == 200, report.text
    body = report.json()
    assert (body["imported"], body["updated"], body["rejected"]) == (2, 1, 3)
    assert [problem["line"] for problem in body["problems"]] == [5, 6, 7]
    assert "tier" in body["problems"][0]["reason"]
    assert "crm_id" in body["problems"][1]["reason"]
    assert "twitter:ada_l" in body["problems"][2]["reason"]
    by_email = await enrich.http.get(
        "/v1/customers", params={"email": "ada@example.com"}, headers=admin_headers()
    )
    assert [c["id"] for c in by_email.json()["customers"]] == [ada["id"]]  # kept: no cell
    assert (ada["name"], ada["value"], ada["crm_id"]) == ("Ada King", 15000, "c1")
    assert ada["identities"] == ["instagram:ada.l", "twitter:ada_l"]
    assert grace["tags"] == ["note with\na line break"]


@pytest.mark.timeout(300)  # about a minute: the embedded store takes ~2,500 rows/s
async def test_an_import_of_100k_rows_reports_correctly_in_bounded_memory(
    enrich: Enrich,
) -> None:
    rows = 100_000
    bad = {line for line in range(2, rows + 1, 997)}  # every 997th line has a bad tier

    async def jsonl() -> AsyncIterator[bytes]:
        for start in range(1, rows + 1, 1_000):
            chunk = []
            for line in range(start, min(start + 1_000, rows + 1)):
                tier = "diamond" if line in bad else "gold"
                chunk.append(
                    f'{{"crm_id": "crm-{line}", "name": "Customer {line}", "tier": "{tier}", '
                    f'"emails": ["c{line}@example.com"], "identities": ["twitter:@c{line}"]}}\n'
                )
            yield "".join(chunk).encode()

    tracemalloc.start()
    try:
        response = await import_body(enrich, jsonl(), "application/x-ndjson")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    body = response.json()

    assert response.status_code == 200, response.text
    assert body["imported"] == rows - len(bad)
    assert (body["updated"], body["rejected"]) == (0, len(bad))
    assert sorted(problem["line"] for problem in body["problems"]) == sorted(bad)
    # 100,000 parsed profiles held at once would take hundreds of MB; a batch takes a few.
    assert peak < 64 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"
    await enrich.send(interaction("@C99999"))
    [result] = await enrich.enriched(1)
    assert result.customer.tier == "gold"


async def test_spans_go_to_the_otlp_endpoint_under_the_interactions_trace(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    post = interaction("@traced")
    traceparent = start_trace(post.id)
    async with receiving() as collector:
        settings = service_settings(
            EnrichSettings,
            stack,
            namespace,
            run_dir,
            tracing=TracingSettings(otlp_endpoint=collector.url),
        )
        app = create_app(settings)
        async with client_of(app) as http:
            running = Enrich(http, settings, app.state.service)
            event = CloudEvent[Interaction](
                id=post.id,
                source="/test",
                type=INTERACTION_RECEIVED,
                traceparent=traceparent,
                data=post,
            )
            await publish(settings.kafka, settings.kafka.topics.received, [("k", event)])
            await running.enriched(1)
        # Leaving the app flushes its spans.

    exported = ExportTraceServiceRequest()
    exported.ParseFromString(collector.received[0][1])
    spans = [s for rs in exported.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert collector.received[0][0]["content-type"] == "application/x-protobuf"
    assert [s.name for s in spans] == ["enrich"]
    assert spans[0].trace_id.hex() == trace_id(traceparent)
    assert spans[0].parent_span_id.hex() == traceparent.split("-")[2]


async def test_a_csv_cell_too_large_to_read_is_a_bad_line_not_a_failed_import(
    enrich: Enrich,
) -> None:
    huge = "x" * 200_000  # over the csv module's 131,072-character field limit
    csv_text = f"crm_id,name,tier\nc1,Ada,gold\nc2,{huge},gold\nc3,Grace,gold\n"

    report = await import_body(enrich, csv_text.encode(), "text/csv")

    assert report.status_code == 200, report.text
    body = report.json()
    assert (body["imported"], body["rejected"]) == (2, 1)
    assert [problem["line"] for problem in body["problems"]] == [3]
    assert "field larger than field limit" in body["problems"][0]["reason"]


async def test_only_the_import_route_reads_a_body_over_the_limit(enrich: Enrich) -> None:
    huge = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'

    lookalike = await enrich.http.patch("/v1/customers/x:import", content=huge)
    real = await import_body(enrich, b"crm_id,name\nc1,Ada\n" + b"#" * len(huge), "text/csv")

    assert lookalike.status_code == 413
    assert lookalike.json()["detail"][0]["field"] == "body"
    assert real.status_code == 200, real.text


async def test_a_name_search_with_a_control_character_is_refused_naming_it(enrich: Enrich) -> None:
    answer = await enrich.http.get(
        "/v1/customers", params={"name": "Ada\x00"}, headers=admin_headers()
    )

    assert answer.status_code == 422
    assert answer.json()["detail"][0]["field"] == "name"


async def test_a_handle_that_is_not_a_url_is_stored_and_found_as_text(enrich: Enrich) -> None:
    created = await enrich.http.post(
        "/v1/customers",
        json={"name": "Ada", "identities": ["twitter:https://[x"]},
        headers=admin_headers(),
    )
    linked = await enrich.http.post(
        f"/v1/customers/{created.json()['id']}/identities",
        json={"channel": "x", "handle": "http://[ada"},
        headers=admin_headers(),
    )
    found = await enrich.http.get(
        "/v1/customers", params={"handle": "http://[ada"}, headers=admin_headers()
    )

    assert created.status_code == 201, created.text
    assert linked.status_code == 201, linked.text
    assert sorted(linked.json()["identities"]) == ["twitter:http://[ada", "twitter:https://[x"]
    assert [c["id"] for c in found.json()["customers"]] == [created.json()["id"]]


async def test_a_csv_saved_with_a_byte_order_mark_imports(enrich: Enrich) -> None:
    csv_text = "\ufeffcrm_id,name,tier\nc1,Ada,gold\nc2,Grace,silver\n"

    report = await import_body(enrich, csv_text.encode("utf-8"), "text/csv")

    assert report.status_code == 200, report.text
    body = report.json()
    assert (body["imported"], body["rejected"], body["problems"]) == (2, 0, [])


async def test_a_stray_quote_in_an_unquoted_csv_cell_leaves_the_rows_after_it_whole(
    enrich: Enrich,
) -> None:
    csv_text = (
        'crm_id,name,tier\nc1,Ada,gold\nc2,Bob 5" screen,silver\nc3,Carol,gold\nc4,Dan,gold\n'
    )

    report = await import_body(enrich, csv_text.encode(), "text/csv")
    [bob] = (
        await enrich.http.get("/v1/customers", params={"name": "bob"}, headers=admin_headers())
    ).json()["customers"]
    [dan] = (
        await enrich.http.get("/v1/customers", params={"name": "dan"}, headers=admin_headers())
    ).json()["customers"]

    assert report.status_code == 200, report.text
    assert (report.json()["imported"], report.json()["problems"]) == (4, [])
    assert (bob["name"], bob["tier"]) == ('Bob 5" screen', "silver")
    assert dan["crm_id"] == "c4"


@pytest.mark.parametrize(
    ("media_type", "body"),
    [
        ("text/csv", b"crm_id,name\nc1,Ada\nc2,Bj\xf6rn\nc3,Grace\n"),
        (
            "application/x-ndjson",
            b'{"crm_id": "c1", "name": "Ada"}\n{"crm_id": "c2", "name": "Bj\xf6rn"}\n'
            b'{"crm_id": "c3", "name": "Grace"}\n',
        ),
    ],
)
async def test_an_import_line_that_is_not_utf8_is_a_problem_line_and_the_others_import(
    enrich: Enrich, media_type: str, body: bytes
) -> None:
    report = await import_body(enrich, body, media_type)
    replaced = await enrich.http.get(
        "/v1/customers", params={"name": "\ufffd"}, headers=admin_headers()
    )

    assert report.status_code == 200, report.text
    assert (report.json()["imported"], report.json()["rejected"]) == (2, 1)
    [problem] = report.json()["problems"]
    line = 3 if media_type == "text/csv" else 2
    assert problem["line"] == line
    assert "not UTF-8: byte 0xf6" in problem["reason"]
    assert replaced.json()["customers"] == []


async def test_a_csv_streamed_in_pieces_that_split_quoted_cells_imports_whole(
    enrich: Enrich,
) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield b'crm_id,name,tier,tags\nc0,Bob 5" screen,gold,\nc1,"Lovelace, '
        yield b'Ada",gold,"first\nsec'
        yield b'ond"\nc2,Grace,gold,x\n'

    report = await import_body(enrich, pieces(), "text/csv")
    [ada] = (
        await enrich.http.get("/v1/customers", params={"name": "ada"}, headers=admin_headers())
    ).json()["customers"]

    assert report.status_code == 200, report.text
    assert (report.json()["imported"], report.json()["problems"]) == (3, [])
    assert (ada["name"], ada["tags"]) == ("Lovelace, Ada", ["first\nsecond"])


async def test_an_import_updates_a_merged_customer_by_each_of_its_crm_ids(enrich: Enrich) -> None:
    ada = await create(enrich, name="Ada", tier="gold", crm_id="crm-1")
    old = await create(enrich, name="Ada L", tier="silver", crm_id="crm-2")
    merged = await enrich.http.post(
        f"/v1/customers/{ada['id']}:merge", json={"merge_id": old["id"]}, headers=admin_headers()
    )
    csv_text = (
        "crm_id,name,tier,identities\n"
        "crm-1,Ada Lovelace,platinum,twitter:ada_l\n"
        "crm-2,Ada King,platinum,instagram:ada.k\n"
    )

    report = await import_body(enrich, csv_text.encode(), "text/csv")
    stored = (await enrich.http.get(f"/v1/customers/{ada['id']}", headers=admin_headers())).json()
    everyone = (await enrich.http.get("/v1/customers", headers=admin_headers())).json()

    assert merged.status_code == 200, merged.text
    assert report.status_code == 200, report.text
    body = report.json()
    assert (body["imported"], body["updated"], body["rejected"]) == (0, 2, 0), body
    assert (stored["name"], stored["tier"]) == ("Ada King", "platinum")  # the later row wins
    assert sorted(stored["identities"]) == ["instagram:ada.k", "twitter:ada_l"]
    assert [c["id"] for c in everyone["customers"]] == [ada["id"]]


async def test_a_post_tagged_with_a_regional_english_is_scored_as_english(enrich: Enrich) -> None:
    post = interaction("@ada", text="This is terrible, I hate it").model_copy(
        update={"language": "en_US"}
    )
    await enrich.send(post)
    [result] = await enrich.enriched(1)

    assert result.sentiment.scored
    assert result.sentiment.label == "negative"
    assert result.language == "en"  # as routing rules compare it


@pytest.mark.parametrize("form", ["twitter:@Ada", "x:@Ada", "TWITTER:ada", "x:https://x.com/Ada"])
async def test_an_identity_unlinks_in_any_form_it_links_in(enrich: Enrich, form: str) -> None:
    ada = await create(enrich, name="Ada", identities=[{"channel": "twitter", "handle": "@Ada"}])

    unlinked = await enrich.http.delete(
        f"/v1/customers/{ada['id']}/identities/{form}", headers=admin_headers()
    )
    found = await enrich.http.get(
        "/v1/customers", params={"handle": "ada"}, headers=admin_headers()
    )

    assert unlinked.status_code == 200, unlinked.text
    assert unlinked.json()["identities"] == []
    assert found.json()["customers"] == []


async def test_unlinking_an_identity_the_customer_lacks_names_it(enrich: Enrich) -> None:
    ada = await create(enrich, name="Ada", identities=[{"channel": "twitter", "handle": "@Ada"}])
    path = f"/v1/customers/{ada['id']}/identities"

    lacking = await enrich.http.delete(f"{path}/twitter:grace", headers=admin_headers())
    malformed = await enrich.http.delete(f"{path}/grace", headers=admin_headers())
    unknown_channel = await enrich.http.delete(f"{path}/myspace:ada", headers=admin_headers())
    nobody = await enrich.http.delete(
        "/v1/customers/nobody/identities/x:ada", headers=admin_headers()
    )

    assert lacking.status_code == 404
    assert lacking.json()["detail"][0]["field"] == "identity"
    assert "twitter:grace" in lacking.json()["detail"][0]["reason"]
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["field"] == "identity"
    assert unknown_channel.status_code == 422
    assert "unknown channel" in unknown_channel.json()["detail"][0]["reason"]
    assert nobody.status_code == 404


async def merge(enrich: Enrich, customer_id: str, merge_id: str) -> httpx.Response:
    return await enrich.http.post(
        f"/v1/customers/{customer_id}:merge",
        json={"merge_id": merge_id},
        headers=admin_headers(),
        timeout=30,  # a merge may wait for another that holds its profiles
    )


async def profile(enrich: Enrich, customer_id: str) -> dict[str, Any]:
    response = await enrich.http.get(f"/v1/customers/{customer_id}", headers=admin_headers())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_merge_keeps_what_the_survivor_gained_while_it_ran(
    enrich: Enrich, client: AsyncMongoClient[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ada = await create(enrich, name="Ada", tier="gold", identities=["twitter:ada"])
    old = await create(enrich, name="Ada L", identities=["instagram:ada.l"])
    store = client[enrich.settings.mongo.database("enrich")]
    write_merge = EnrichRepository.merge

    async def after_another_replica_wrote(self: EnrichRepository, *args: Any) -> Any:
        # Between the merge's reads and its write, the stream counts a post of Ada's and
        # an operator links a handle to her.
        await store["customers"].update_one({"_id": ada["id"]}, {"$inc": {"posts": 1}})
        await store["identities"].insert_one({"_id": "forum:ada", "customer_id": ada["id"]})
        await store["customers"].update_one(
            {"_id": ada["id"]}, {"$addToSet": {"identities": "forum:ada"}}
        )
        return await write_merge(self, *args)

    monkeypatch.setattr(EnrichRepository, "merge", after_another_replica_wrote)
    merged = await merge(enrich, ada["id"], old["id"])
    stored = await profile(enrich, ada["id"])

    assert merged.status_code == 200, merged.text
    assert stored["posts"] == 1
    assert sorted(stored["identities"]) == ["forum:ada", "instagram:ada.l", "twitter:ada"]
    assert stored["tier"] == "gold"


async def test_merges_in_opposite_directions_at_once_leave_one_profile(enrich: Enrich) -> None:
    ada = await create(enrich, name="Ada", tier="gold", identities=["twitter:ada"])
    grace = await create(enrich, name="Grace", tier="silver", identities=["twitter:grace"])

    answers = await asyncio.gather(
        merge(enrich, ada["id"], grace["id"]), merge(enrich, grace["id"], ada["id"])
    )
    [won] = [a for a in answers if a.status_code == 200]
    [refused] = [a for a in answers if a.status_code != 200]
    survivor = won.json()["id"]
    await enrich.send(interaction("@ada"), interaction("@grace"))
    results = await enrich.enriched(2)
    everyone = (await enrich.http.get("/v1/customers", headers=admin_headers())).json()

    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"][0]["field"] == "customer_id"
    assert "merged into" in refused.json()["detail"][0]["reason"]
    assert sorted(won.json()["identities"]) == ["twitter:ada", "twitter:grace"]
    assert [c["id"] for c in everyone["customers"]] == [survivor]
    assert {(await profile(enrich, c["id"]))["id"] for c in (ada, grace)} == {survivor}
    assert {r.customer.id for r in results} == {survivor}


async def test_a_customer_merged_into_a_prospect_keeps_its_crm_profile(enrich: Enrich) -> None:
    await enrich.send(interaction("@early_bird", followers=10))
    [first] = await enrich.enriched(1)
    ada = await create(
        enrich,
        name="Ada Lovelace",
        tier="gold",
        value=5_000,
        crm_id="crm-ada",
        emails=["ada@example.com"],
        identities=["twitter:ada_l"],
    )

    merged = await merge(enrich, first.customer.id, ada["id"])
    by_prospect_id = await profile(enrich, first.customer.id)
    await enrich.send(interaction("@early_bird"))
    second = await enrich.enriched_since(first)

    assert merged.status_code == 200, merged.text
    body = merged.json()
    assert body["id"] == ada["id"]  # the customer absorbs the prospect, as on creation
    assert (body["name"], body["crm_id"], body["tier"]) == ("Ada Lovelace", "crm-ada", "gold")
    assert (body["value"], body["emails"], body["created_at"]) == (
        5_000,
        ["ada@example.com"],
        ada["created_at"],
    )
    assert sorted(body["identities"]) == ["twitter:ada_l", "twitter:early_bird"]
    assert (body["posts"], body["followers"]) == (1, 10)  # the prospect's history moved
    assert by_prospect_id == body
    assert (second.customer.id, second.customer.tier) == (ada["id"], "gold")


async def test_a_merge_of_a_merged_away_unknown_or_same_id_is_refused_naming_it(
    enrich: Enrich,
) -> None:
    ada = await create(enrich, name="Ada", identities=["twitter:ada"])
    old = await create(enrich, name="Ada L", identities=["twitter:ada_l"])
    grace = await create(enrich, name="Grace")
    assert (await merge(enrich, ada["id"], old["id"])).status_code == 200

    again = await merge(enrich, ada["id"], old["id"])
    into_merged = await merge(enrich, old["id"], grace["id"])
    itself = await merge(enrich, ada["id"], ada["id"])
    unknown = await merge(enrich, ada["id"], "nobody")
    nobody = await merge(enrich, "nobody", ada["id"])

    assert (again.status_code, again.json()["detail"][0]["field"]) == (409, "merge_id")
    assert ada["id"] in again.json()["detail"][0]["reason"]
    assert (into_merged.status_code, into_merged.json()["detail"][0]["field"]) == (
        409,
        "customer_id",
    )
    assert (itself.status_code, itself.json()["detail"][0]["field"]) == (409, "merge_id")
    assert (unknown.status_code, unknown.json()["detail"][0]["field"]) == (404, "merge_id")
    assert (nobody.status_code, nobody.json()["detail"][0]["field"]) == (404, "customer_id")
    assert (await profile(enrich, grace["id"]))["id"] == grace["id"]


async def test_repeating_an_interrupted_merge_finishes_it_counting_once(
    enrich: Enrich, monkeypatch: pytest.MonkeyPatch
) -> None:
    await enrich.send(interaction("@early_bird"), interaction("@early_bird"))
    prospect = (await enrich.enriched(2))[0].customer.id
    ada = await create(enrich, name="Ada", tier="gold", identities=["twitter:ada"])
    grace = await create(enrich, name="Grace")
    drop_merged = EnrichRepository.drop_merged

    async def crash(self: EnrichRepository, *args: Any) -> Any:
        raise RuntimeError("the store went away")

    monkeypatch.setattr(EnrichRepository, "drop_merged", crash)
    interrupted = await merge(enrich, ada["id"], prospect)
    monkeypatch.setattr(EnrichRepository, "drop_merged", drop_merged)
    waiting = await merge(enrich, ada["id"], grace["id"])  # holds on for the interrupted one
    repeated = await merge(enrich, ada["id"], prospect)
    after = await merge(enrich, ada["id"], grace["id"])

    assert interrupted.status_code == 500
    assert (waiting.status_code, waiting.json()["detail"][0]["field"]) == (409, "customer_id")
    assert f"a merge of {prospect} into {ada['id']}" in waiting.json()["detail"][0]["reason"]
    assert repeated.status_code == 200, repeated.text
    assert repeated.json()["posts"] == 2  # the prospect's two posts, added once
    assert "merging" not in repeated.json()
    assert after.status_code == 200, after.text
    assert (await profile(enrich, prospect))["id"] == ada["id"]


async def test_two_merges_into_one_survivor_at_once_both_keep_their_identities(
    enrich: Enrich,
) -> None:
    ada = await create(enrich, name="Ada", tier="gold", identities=["twitter:ada"])
    old = await create(enrich, name="Ada L", identities=["twitter:ada_l"])
    older = await create(enrich, name="A. Lovelace", identities=["twitter:lovelace"])

    answers = await asyncio.gather(
        merge(enrich, ada["id"], old["id"]), merge(enrich, ada["id"], older["id"])
    )
    stored = await profile(enrich, ada["id"])

    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert sorted(stored["identities"]) == ["twitter:ada", "twitter:ada_l", "twitter:lovelace"]
    assert {(await profile(enrich, c["id"]))["id"] for c in (old, older)} == {ada["id"]}


async def test_a_redelivered_post_counts_once_in_its_authors_history(enrich: Enrich) -> None:
    post = interaction("@twice")
    await enrich.send(post)
    [first] = await enrich.enriched(1)
    later = interaction("@twice")
    # Redelivered alone, then twice in one batch, then behind the author's next post: one
    # handle is one partition, so once ``later`` is enriched the repeats were handled.
    await enrich.send(post)
    await enrich.send(post, post, later)
    results = await enrich.enriched(5)  # each delivery enriched and sent again

    assert [r.interaction.id for r in results] == [post.id] * 4 + [later.id]
    assert (await profile(enrich, first.customer.id))["posts"] == 2


async def test_a_batch_that_failed_after_counting_counts_once_when_retried(
    enrich: Enrich, monkeypatch: pytest.MonkeyPatch
) -> None:
    emit = Emitter.emit
    failures = [RuntimeError("the broker went away")]

    async def fails_once(self: Emitter, *args: Any, **kwargs: Any) -> Any:
        if failures:  # the posts are counted; the batch fails before it is acknowledged
            raise failures.pop()
        return await emit(self, *args, **kwargs)

    monkeypatch.setattr(Emitter, "emit", fails_once)
    await enrich.send(interaction("@retried"))
    [result] = await enrich.enriched(1)

    assert not failures
    assert (await profile(enrich, result.customer.id))["posts"] == 1


async def test_one_post_in_concurrent_batches_counts_once(enrich: Enrich) -> None:
    await enrich.send(interaction("@busy"))
    [first] = await enrich.enriched(1)
    again = interaction("@busy")
    event = CloudEvent[Interaction](
        id=again.id, source="/test", type=INTERACTION_RECEIVED, data=again
    )

    # As two replicas would, after a rebalance handed the partition from one to the other.
    await asyncio.gather(*(enrich.service.enrich_batch([event]) for _ in range(4)))
    stored = await profile(enrich, first.customer.id)

    assert stored["posts"] == 2
    assert "recent_posts" not in stored  # bookkeeping, not shown


async def store_profile(
    store: AsyncDatabase[dict[str, Any]], name: str, identities: list[str]
) -> str:
    """A profile as an earlier version stored it, identities keyed as they were then."""
    customer_id = str(uuid.uuid4())
    await store["customers"].insert_one(
        {"_id": customer_id, "name": name, "tier": "gold", "identities": identities}
    )
    if identities:
        await store["identities"].insert_many(
            [{"_id": identity, "customer_id": customer_id} for identity in identities]
        )
    return customer_id


async def test_identities_stored_in_an_earlier_form_are_found_after_a_start(
    stack: EmbeddedStack,
    namespace: str,
    run_dir: Path,
    client: AsyncMongoClient[dict[str, Any]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    settings = service_settings(EnrichSettings, stack, namespace, run_dir)
    store = client[settings.mongo.database("enrich")]
    # Before profile URLs were read per network, a URL on a host that rule did not know
    # (m.facebook.com, m.youtube.com) was kept whole, as typed.
    ada = await store_profile(
        store,
        "Ada",
        [
            "facebook:https://m.facebook.com/profile.php?id=100012",
            "twitter:ada",
            "youtube:https://m.youtube.com/channel/ucabc/videos",
        ],
    )
    bob = await store_profile(store, "Bob", ["instagram:https://m.instagram.com/bob.b/"])
    rob = await store_profile(store, "Rob", ["instagram:bob.b"])  # linked since the upgrade
    carol = await store_profile(store, "Carol", ["youtube:channel"])  # its channel id is lost
    dan = await store_profile(store, "Dan", ["twitter:https://m.twitter.com/dan_d"])
    # A start that stopped midway through re-keying Dan's had claimed the new form.
    await store["identities"].insert_one({"_id": "twitter:dan_d", "customer_id": dan})

    # Two replicas starting together both migrate.
    apps = [create_app(settings), create_app(settings)]
    async with contextlib.AsyncExitStack() as running:
        [http, _] = await asyncio.gather(
            *(running.enter_async_context(client_of(app)) for app in apps)
        )
        replica = Enrich(http, settings, apps[0].state.service)
        await replica.send(
            interaction("https://www.facebook.com/profile.php?id=100012").model_copy(
                update={"channel": Channel.FACEBOOK}
            )
        )
        [post] = await replica.enriched(1)

        async def found_by(handle: str) -> list[str]:
            answer = await http.get(
                "/v1/customers", params={"handle": handle}, headers=admin_headers()
            )
            return [c["id"] for c in answer.json()["customers"]]

        by_channel_url = await found_by("https://www.youtube.com/channel/UCabc")
        by_instagram = await found_by("bob.b")
        stored_ada = await profile(replica, ada)
        stored_bob = await profile(replica, bob)
        stored_dan = await profile(replica, dan)
    logged = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line[:1] == "{"]

    assert post.customer.id == ada
    assert by_channel_url == [ada]
    assert sorted(stored_ada["identities"]) == [
        "facebook:100012",
        "twitter:ada",
        "youtube:channel/ucabc",
    ]
    assert await store["identities"].count_documents({"customer_id": ada}) == 3
    assert stored_dan["identities"] == ["twitter:dan_d"]
    assert [i["_id"] async for i in store["identities"].find({"customer_id": dan})] == [
        "twitter:dan_d"
    ]
    # Bob's new form is Rob's: both kept, and the start says so, naming them.
    assert by_instagram == [rob]
    assert stored_bob["identities"] == ["instagram:https://m.instagram.com/bob.b/"]
    assert any((r.get("customer_id"), r.get("holder_id")) == (bob, rob) for r in logged)
    assert any(r.get("identities") == {"youtube:channel": carol} for r in logged)


async def test_a_merge_abandoned_midway_is_finished_by_the_next_merge_of_its_profiles(
    enrich: Enrich, client: AsyncMongoClient[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    await enrich.send(interaction("@early_bird"), interaction("@early_bird"))
    prospect = (await enrich.enriched(2))[0].customer.id
    ada = await create(enrich, name="Ada", tier="gold", identities=["twitter:ada"])
    grace = await create(enrich, name="Grace", identities=["twitter:grace"])
    store = client[enrich.settings.mongo.database("enrich")]

    async def crash(self: EnrichRepository, *args: Any) -> Any:
        raise RuntimeError("the process died")

    # The prospect's history is added to Ada, then the process dies holding both.
    monkeypatch.setattr(EnrichRepository, "drop_merged", crash)
    assert (await merge(enrich, ada["id"], prospect)).status_code == 500
    monkeypatch.undo()
    held = {"_id": {"$in": [ada["id"], prospect]}}
    assert await store["customers"].count_documents({**held, "merging": {"$exists": True}}) == 2
    # As a crash two minutes ago would have left it.
    two_minutes_ago = epoch_ms(utcnow() - timedelta(minutes=2))
    await store["customers"].update_many(held, {"$set": {"merging_since": two_minutes_ago}})

    merged = await merge(enrich, ada["id"], grace["id"])
    everyone = (await enrich.http.get("/v1/customers", headers=admin_headers())).json()
    await enrich.send(interaction("@early_bird"))
    post = (await enrich.enriched(3))[2]  # one author's posts, in order

    assert merged.status_code == 200, merged.text
    body = merged.json()
    assert sorted(body["identities"]) == ["twitter:ada", "twitter:early_bird", "twitter:grace"]
    assert body["posts"] == 2  # the prospect's two posts, added once
    assert not {"merging", "merging_since"} & set(body)
    assert [c["id"] for c in everyone["customers"]] == [ada["id"]]
    assert {(await profile(enrich, c))["id"] for c in (prospect, grace["id"])} == {ada["id"]}
    assert post.customer.id == ada["id"]
    assert await store["customers"].count_documents({"merging": {"$exists": True}}) == 0


async def test_a_merge_under_way_still_holds_its_profiles(
    enrich: Enrich, client: AsyncMongoClient[dict[str, Any]]
) -> None:
    ada = await create(enrich, name="Ada", tier="gold")
    grace = await create(enrich, name="Grace")
    store = client[enrich.settings.mongo.database("enrich")]
    now = epoch_ms(utcnow())
    mark = {"merging": f"nobody>{ada['id']}", "merging_since": now}
    await store["customers"].update_one({"_id": ada["id"]}, {"$set": mark})

    waiting = await merge(enrich, ada["id"], grace["id"])

    assert (waiting.status_code, waiting.json()["detail"][0]["field"]) == (409, "customer_id")
    assert f"a merge of nobody into {ada['id']}" in waiting.json()["detail"][0]["reason"]


async def test_a_post_whose_enriched_event_the_broker_refuses_is_dead_lettered_and_the_rest_go_on(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    """The enriched event is larger than the post's: a broker whose largest record lies
    between the two takes the post and refuses what enrich derives from it, for good."""
    big = interaction("@verbose", text="Where is my parcel? " * 40)
    received = encode(
        CloudEvent[Interaction](id=big.id, source="/test", type=INTERACTION_RECEIVED, data=big),
        "twitter:verbose",
    )
    settings = service_settings(EnrichSettings, stack, namespace, run_dir)
    limited = settings.kafka.model_copy(
        update={"max_message_bytes": len(received.value) + 200, "attempts_before_dead_letter": 2}
    )
    settings = settings.model_copy(update={"kafka": limited})
    app = create_app(settings)
    async with client_of(app) as http:
        enrich = Enrich(http, settings, app.state.service)
        small = [interaction("@verbose") for _ in range(3)]
        await enrich.send(small[0], big, *small[1:])

        async def the_rest_enriched() -> bool:
            # Sends before the refusal went out, and again as the records were retried.
            enriched = [result.interaction.id for result in await enrich.enriched(1)]
            return list(dict.fromkeys(enriched)) == [post.id for post in small]

        await eventually(the_rest_enriched, timeout_s=60)
        [dead] = await read_records(limited, limited.topics.consumed_dead, expect=1)

    headers = {name: value.decode() for name, value in dead.headers}
    assert headers["ce_id"] == big.id
    # The post with the dead letter's headers is over the limit too: it goes without it.
    assert headers["switchboard-dead-value-left-out"] == str(len(received.value))
    assert dead.value == b""
    assert headers["switchboard-dead-reason"].startswith("OutputRefused: the broker refuses")
