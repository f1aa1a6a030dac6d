"""Ingest against the real embedded broker and store, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from bson import Binary, ObjectId
from fastapi import FastAPI, Request, Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient

from services.ingest.config import IngestSettings
from services.ingest.journey import delivery_step
from services.ingest.main import create_app
from services.ingest.service import InteractionIn, author_key, received_event
from shared.embedded import EmbeddedStack
from shared.events import (
    DELIVERY_ATTEMPTED,
    INTERACTION_RECEIVED,
    CloudEvent,
    DeliveryAttempt,
    Interaction,
    RejectedSubmission,
    encode,
    utcnow,
)
from tests.support import (
    admin_headers,
    at_least,
    client_of,
    eventually,
    publish,
    read_topic,
    service_settings,
    serving,
)


@dataclass
class Ingest:
    http: httpx.AsyncClient
    settings: IngestSettings
    key: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@asynccontextmanager
async def running_ingest(
    stack: EmbeddedStack, namespace: str, run_dir: Path, **overrides: Any
) -> AsyncIterator[Ingest]:
    overrides.setdefault("allow_hosts", frozenset({"127.0.0.1"}))  # the test's feed server
    settings = service_settings(IngestSettings, stack, namespace, run_dir, **overrides)
    async with client_of(create_app(settings)) as http:
        created = await http.post(
            "/v1/publishers", json={"name": "listener"}, headers=admin_headers()
        )
        assert created.status_code == 201
        yield Ingest(http, settings, created.json()["api_key"])


async def post_many(ingest: Ingest, prefix: str, count: int) -> list[httpx.Response]:
    return [
        await ingest.http.post(
            "/v1/interactions", json=mention(f"{prefix}{n}"), headers=ingest.headers()
        )
        for n in range(count)
    ]


@pytest.fixture
async def ingest(stack: EmbeddedStack, namespace: str, run_dir: Path) -> AsyncIterator[Ingest]:
    async with running_ingest(stack, namespace, run_dir) as running:
        yield running


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
    assert key == b"twitter:ada_l"  # the normalised identity: one author, one partition
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


async def test_single_posts_at_once_are_answered_as_if_one_by_one(ingest: Ingest) -> None:
    bodies = [mention(f"at-once-{n % 20}") for n in range(30)] + [mention(text="")]

    answers = await asyncio.gather(
        *(ingest.http.post("/v1/interactions", json=b, headers=ingest.headers()) for b in bodies)
    )

    by_external_id: dict[str, list[httpx.Response]] = {}
    for body, answer in zip(bodies[:30], answers[:30], strict=True):
        by_external_id.setdefault(body["external_id"], []).append(answer)
    for repeats in by_external_id.values():  # the first stored wins, the repeat names it
        assert sorted(a.status_code for a in repeats) in ([202], [200, 202])
        assert len({a.json()["id"] for a in repeats}) == 1
    assert answers[30].status_code == 422
    topic = ingest.settings.kafka.topics.received
    events = await read_topic(ingest.settings.kafka, topic, Interaction, 20, settle_s=1.5)
    assert sorted(event.id for _, event in events) == sorted(
        repeats[0].json()["id"] for repeats in by_external_id.values()
    )


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


async def test_a_publisher_key_cannot_manage_publishers(ingest: Ingest) -> None:
    answer = await ingest.http.post("/v1/publishers", json={"name": "x"}, headers=ingest.headers())

    assert answer.status_code == 403


async def test_health_and_readiness_reflect_the_database(ingest: Ingest) -> None:
    assert (await ingest.http.get("/healthz")).status_code == 200
    assert (await ingest.http.get("/readyz")).json() == {"status": "ready"}


async def _published(ingest: Ingest, interaction_id: str) -> dict[str, Any] | None:
    answer = await ingest.http.get(f"/v1/interactions/{interaction_id}", headers=ingest.headers())
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body if body["published_at"] else None


async def test_journey_carries_the_callers_trace_from_the_published_event(
    ingest: Ingest,
) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    posted = await ingest.http.post(
        "/v1/interactions",
        json=mention("traced"),
        headers=ingest.headers() | {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )
    interaction_id = posted.json()["id"]
    await eventually(lambda: _published(ingest, interaction_id))

    answer = await ingest.http.get(
        f"/v1/interactions/{interaction_id}/journey", headers=admin_headers()
    )

    assert [step["step"] for step in answer.json()["steps"]] == ["accepted", "published"]
    assert answer.json()["trace_ids"] == [trace]


def _attempt(interaction_id: str, attempt: int, outcome: str) -> CloudEvent[DeliveryAttempt]:
    data = DeliveryAttempt(
        delivery_id=f"delivery-{interaction_id}",
        subscription_id="desk",
        interaction_id=interaction_id,
        event_id=f"offer-{interaction_id}",
        event_type="assignment.offered",
        attempt=attempt,
        outcome=outcome,
        at=utcnow(),
    )
    return CloudEvent[DeliveryAttempt](
        id=f"attempt-{attempt}-{interaction_id}",
        source="/notify",
        type=DELIVERY_ATTEMPTED,
        data=data,
    )


async def _journey_steps(ingest: Ingest, interaction_id: str) -> list[str]:
    answer = await ingest.http.get(
        f"/v1/interactions/{interaction_id}/journey", headers=admin_headers()
    )
    assert answer.status_code == 200
    return [step["step"] for step in answer.json()["steps"]]


async def test_journey_keeps_each_events_step_once_however_batches_were_cut(
    ingest: Ingest,
) -> None:
    """Steps are stored a consumed batch to a document; a redelivery cut differently
    stores some twice, and a step kept one to a document (as before) is read too."""
    posted = await ingest.http.post("/v1/interactions", json=mention(), headers=ingest.headers())
    other = await ingest.http.post(
        "/v1/interactions", json=mention("tw-other"), headers=ingest.headers()
    )
    mine, theirs = posted.json()["id"], other.json()["id"]
    await eventually(lambda: _published(ingest, mine))
    await eventually(lambda: _published(ingest, theirs))
    retry, delivered, dead = (
        _attempt(mine, 1, "retry"),
        _attempt(mine, 2, "delivered"),
        _attempt(theirs, 1, "dead"),
    )
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        ingest.settings.mongo.url.get_secret_value(), tz_aware=True
    )
    db = client[ingest.settings.mongo.database("ingest")]
    await db["journey"].insert_one(delivery_step(retry) or {})  # an earlier layout's step
    await client.close()
    topic = ingest.settings.kafka.topics.deliveries

    await publish(ingest.settings.kafka, topic, [(mine, retry), (mine, delivered)])
    await eventually(lambda: _has_steps(ingest, mine, 4))
    again = _attempt(mine, 3, "delivered")
    await publish(
        ingest.settings.kafka,
        topic,
        [(mine, delivered), (mine, retry), (mine, dead), (mine, again)],
    )
    await eventually(lambda: _has_steps(ingest, mine, 5))
    await asyncio.sleep(1.0)  # anything more would have come with the last batch

    assert await _journey_steps(ingest, mine) == [
        "accepted",
        "published",
        "webhook retry",
        "webhook delivered",
        "webhook delivered",
    ]
    assert await _journey_steps(ingest, theirs) == ["accepted", "published", "webhook dead"]


async def _has_steps(ingest: Ingest, interaction_id: str, count: int) -> bool:
    return len(await _journey_steps(ingest, interaction_id)) >= count


async def test_what_was_stored_in_the_earlier_layout_is_read_and_published(
    ingest: Ingest,
) -> None:
    """Interactions stored as sub-documents and outbox entries with their headers as
    binary pairs (how both were kept before) are still read, deduped and published."""
    now = utcnow()
    earlier = Interaction(
        id=str(uuid.uuid4()),
        received_at=now,
        **InteractionIn.model_validate(mention("kept-1")).model_dump(),
    )
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    record = encode(received_event(earlier, caller), author_key(earlier))
    traceparent = dict(record.headers)["ce_traceparent"].decode()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        ingest.settings.mongo.url.get_secret_value(), tz_aware=True
    )
    db = client[ingest.settings.mongo.database("ingest")]
    await db["interactions"].insert_one(
        {
            "_id": earlier.id,
            "source": earlier.source,
            "external_id": earlier.external_id,
            "publisher_id": "earlier",
            "stored_at": now,
            "interaction": earlier.model_dump(mode="json"),
        }
    )
    await db["outbox"].insert_one(
        {
            "_id": earlier.id,
            "seq": ObjectId(),
            "pending": True,
            "topic": ingest.settings.kafka.topics.received,
            "key": Binary(record.key),
            "key_text": author_key(earlier),
            "value": Binary(record.value),
            "headers": [[name, Binary(value)] for name, value in record.headers],
            "stored_at": now,
        }
    )
    await client.close()

    repeat = await ingest.http.post(
        "/v1/interactions", json=mention("kept-1"), headers=ingest.headers()
    )
    topic = ingest.settings.kafka.topics.received
    [(key, event)] = await read_topic(ingest.settings.kafka, topic, Interaction, 1, settle_s=1.0)
    journey = await ingest.http.get(
        f"/v1/interactions/{earlier.id}/journey", headers=admin_headers()
    )

    assert repeat.json() == {"id": earlier.id, "status": "duplicate"}
    assert (key, event.id, event.traceparent) == (record.key, earlier.id, traceparent)
    assert event.data == earlier
    assert journey.json()["trace_ids"] == ["0af7651916cd43dd8448eb211c80319c"]


async def test_batch_gives_each_item_its_outcome_and_one_event_per_new_item(ingest: Ingest) -> None:
    earlier = [mention(f"old-{n}") for n in range(10)]
    first = await ingest.http.post("/v1/interactions", json=earlier, headers=ingest.headers())
    invalid = [mention(f"bad-{n}", channel="carrier-pigeon") for n in range(10)]
    new = [mention(f"new-{n}") for n in range(980)]

    answer = await ingest.http.post(
        "/v1/interactions", json=[*invalid, *earlier, *new], headers=ingest.headers()
    )

    assert first.status_code == 200
    body = answer.json()
    assert answer.status_code == 200
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (980, 10, 10)
    assert [e["field"] for e in body["results"][0]["errors"]] == ["channel"]
    assert [r["id"] for r in body["results"][10:20]] == [r["id"] for r in first.json()["results"]]
    topic = ingest.settings.kafka.topics.received
    events = await read_topic(
        ingest.settings.kafka, topic, Interaction, 990, timeout_s=60, settle_s=1.0
    )
    assert len(events) == 990
    assert len({event.id for _, event in events}) == 990


async def test_cloudevents_structured_and_batch_are_accepted(ingest: Ingest) -> None:
    def cloudevent(event_id: str) -> dict[str, Any]:
        data = {k: v for k, v in mention().items() if k not in ("source", "external_id")}
        return {"specversion": "1.0", "id": event_id, "source": "crm", "type": "post", "data": data}

    one = await ingest.http.post(
        "/v1/interactions",
        content=json.dumps(cloudevent("ce-1")),
        headers=ingest.headers() | {"content-type": "application/cloudevents+json"},
    )
    many = await ingest.http.post(
        "/v1/interactions",
        content=json.dumps([cloudevent("ce-1"), cloudevent("ce-2"), {"specversion": "0.3"}]),
        headers=ingest.headers() | {"content-type": "application/cloudevents-batch+json"},
    )

    assert one.status_code == 202
    assert [r["status"] for r in many.json()["results"]] == ["duplicate", "accepted", "rejected"]
    assert many.json()["results"][0]["id"] == one.json()["id"]
    stored = await ingest.http.get(f"/v1/interactions/{one.json()['id']}", headers=ingest.headers())
    assert (
        stored.json()["interaction"]["source"],
        stored.json()["interaction"]["external_id"],
    ) == ("crm", "ce-1")


async def test_wrong_content_type_gets_415_and_broken_json_400(ingest: Ingest) -> None:
    xml = await ingest.http.post(
        "/v1/interactions",
        content="<post/>",
        headers=ingest.headers() | {"content-type": "application/xml"},
    )
    broken = await ingest.http.post(
        "/v1/interactions",
        content="{not json",
        headers=ingest.headers() | {"content-type": "application/json"},
    )
    empty = await ingest.http.post("/v1/interactions", json=[], headers=ingest.headers())

    assert (xml.status_code, xml.json()["detail"][0]["field"]) == (415, "content-type")
    assert (broken.status_code, broken.json()["detail"][0]["field"]) == (400, "body")
    assert (empty.status_code, empty.json()["detail"][0]["field"]) == (422, "body")


async def test_key_used_outside_its_scope_gets_403(ingest: Ingest) -> None:
    created = await ingest.http.post(
        "/v1/publishers",
        json={"name": "forum bridge", "channels": ["forum"], "sources": ["bridge"]},
        headers=admin_headers(),
    )
    scoped = {"Authorization": f"Bearer {created.json()['api_key']}"}

    outside = await ingest.http.post("/v1/interactions", json=mention(), headers=scoped)
    inside = await ingest.http.post(
        "/v1/interactions", json=mention(channel="forum", source="bridge"), headers=scoped
    )

    assert outside.status_code == 403
    assert {e["field"] for e in outside.json()["detail"]} == {"channel", "source"}
    assert inside.status_code == 202


async def test_over_rate_publisher_gets_429_with_retry_after(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running_ingest(
        stack, namespace, run_dir, rate_limit_per_s=0.5, rate_limit_burst=2
    ) as ingest:
        answers = await post_many(ingest, "r", 3)

    assert [a.status_code for a in answers] == [202, 202, 429]
    assert int(answers[2].headers["retry-after"]) >= 1


async def test_body_over_the_limit_gets_413(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running_ingest(stack, namespace, run_dir, max_body_bytes=2048) as ingest:
        answer = await ingest.http.post(
            "/v1/interactions", json=mention(text="x" * 4000), headers=ingest.headers()
        )

    assert answer.status_code == 413


MIB = 1024 * 1024


async def test_an_interaction_too_big_for_the_broker_is_refused_and_the_next_is_published(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    # Attributes may be large here, so that the event's size is what refuses it.
    async with running_ingest(stack, namespace, run_dir, max_attributes_bytes=4 * MIB) as ingest:
        poison = mention("big-1", attributes={"k": "x" * MIB})
        refused = await ingest.http.post("/v1/interactions", json=poison, headers=ingest.headers())
        after = await ingest.http.post(
            "/v1/interactions", json=mention("after-1"), headers=ingest.headers()
        )
        topic = ingest.settings.kafka.topics.received
        events = await read_topic(ingest.settings.kafka, topic, Interaction, 1, settle_s=1.0)

    assert refused.status_code == 413, refused.text
    [problem] = refused.json()["detail"]
    assert problem["field"] == "attributes"
    assert "the broker takes" in problem["reason"]
    assert after.status_code == 202
    assert [event.id for _, event in events] == [after.json()["id"]]


async def test_attributes_over_their_total_limit_are_refused_naming_them(
    ingest: Ingest,
) -> None:
    # 64 keys (the most allowed) of 300 characters: about 19 KiB of JSON, over 16 KiB.
    many = {f"key-{n}": "v" * 300 for n in range(64)}
    refused = await ingest.http.post(
        "/v1/interactions", json=mention("a-1", attributes=many), headers=ingest.headers()
    )
    fitting = {f"key-{n}": "v" * 150 for n in range(64)}  # about 10 KiB
    taken = await ingest.http.post(
        "/v1/interactions", json=mention("a-2", attributes=fitting), headers=ingest.headers()
    )

    assert refused.status_code == 413, refused.text
    assert refused.json()["detail"] == [
        {"field": "attributes", "reason": "19959 bytes as JSON, more than the 16384 allowed"}
    ]
    assert taken.status_code == 202


async def test_a_batch_refuses_its_oversized_items_and_takes_the_others(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running_ingest(stack, namespace, run_dir, max_attributes_bytes=4 * MIB) as ingest:
        batch = [mention("b-1"), mention("b-2", attributes={"k": "x" * MIB}), mention("b-3")]
        answer = await ingest.http.post("/v1/interactions", json=batch, headers=ingest.headers())
        topic = ingest.settings.kafka.topics.received
        events = await read_topic(ingest.settings.kafka, topic, Interaction, 2, settle_s=1.0)

    body = answer.json()
    assert answer.status_code == 200
    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "accepted"]
    [problem] = body["results"][1]["errors"]
    assert problem["field"] == "attributes"
    assert "the broker takes" in problem["reason"]
    assert sorted(event.data.external_id for _, event in events) == ["b-1", "b-3"]


async def test_interactions_accepted_while_the_broker_is_down_all_arrive(
    own_stack: EmbeddedStack, tmp_path: Path, namespace: str
) -> None:
    async with running_ingest(own_stack, namespace, tmp_path / "run") as ingest:
        own_stack.stop_broker()
        answers = await post_many(ingest, "o", 200)
        own_stack.start_broker()
        topic = ingest.settings.kafka.topics.received
        events = await read_topic(ingest.settings.kafka, topic, Interaction, 200, timeout_s=90)

    assert {a.status_code for a in answers} == {202}
    assert {event.id for _, event in events} == {a.json()["id"] for a in answers}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)
ALMOST_AN_INTERACTION = st.fixed_dictionaries(
    {
        "channel": st.sampled_from(["twitter", "forum", "", "TWITTER"]) | JSON,
        "source": st.text(max_size=200) | JSON,
        "external_id": st.text(max_size=300) | JSON,
        "author": st.fixed_dictionaries({"handle": st.text(max_size=300) | JSON}) | JSON,
        "text": st.text(max_size=50) | JSON,
    },
    optional={"url": st.text() | JSON, "created_at": st.text() | JSON, "attributes": JSON},
)


async def test_arbitrary_json_never_gets_a_server_error(ingest: Ingest) -> None:
    """Hypothesis drives a blocking client from a worker thread while the service runs here."""

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=JSON | ALMOST_AN_INTERACTION | st.lists(ALMOST_AN_INTERACTION, max_size=3))
    def post(body: Any) -> None:
        answer = client.post("/v1/interactions", content=json.dumps(body), headers=headers)
        assert answer.status_code in {200, 202, 400, 403, 422}, answer.text

    headers = ingest.headers() | {"content-type": "application/json"}
    with httpx.Client(base_url=str(ingest.http.base_url)) as client:
        await asyncio.to_thread(post)


def rss(items: list[tuple[str, str]]) -> str:
    entries = "".join(
        f"<item><guid>{guid}</guid><title>{title}</title><link>https://forum.example/t/{guid}</link>"
        "<author>moderator@forum.example (Mo)</author>"
        "<pubDate>Tue, 24 Nov 2026 10:00:00 GMT</pubDate></item>"
        for guid, title in items
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>Acme forum</title>{entries}</channel></rss>'


@dataclass
class FeedServer:
    """A real HTTP server for one RSS feed that honours If-None-Match."""

    items: list[tuple[str, str]]
    requests: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/feed.xml")
        async def feed(request: Request) -> Response:
            self.requests.append(dict(request.headers))
            etag = f'"{len(self.items)}"'
            if request.headers.get("if-none-match") == etag:
                return Response(status_code=304)
            return Response(
                rss(self.items), media_type="application/rss+xml", headers={"ETag": etag}
            )

        return app


async def test_feed_yields_one_interaction_per_new_entry_across_polls(ingest: Ingest) -> None:
    server = FeedServer([("t-1", "Login broken again?"), ("t-2", "Love the new app")])
    async with serving(server.app()) as url:
        created = await ingest.http.post(
            "/v1/feeds",
            json={"url": f"{url}/feed.xml", "channel": "forum", "poll_interval_s": 1},
            headers=admin_headers(),
        )
        topic = ingest.settings.kafka.topics.received
        first = await read_topic(ingest.settings.kafka, topic, Interaction, 2)
        await eventually(lambda: at_least(server.requests, 2))  # a second, conditional poll
        server.items.append(("t-3", "Refund still missing"))
        events = await read_topic(ingest.settings.kafka, topic, Interaction, 3, settle_s=2.5)

    assert created.status_code == 201
    assert sorted(e.data.external_id for _, e in first) == ["t-1", "t-2"]
    assert sorted(e.data.external_id for _, e in events) == ["t-1", "t-2", "t-3"]
    assert {e.data.channel for _, e in events} == {"forum"}
    assert server.requests[1].get("if-none-match") == '"2"'
    [third] = [e.data for _, e in events if e.data.external_id == "t-3"]
    assert third.text == "Refund still missing"
    assert str(third.url) == "https://forum.example/t/t-3"


async def test_kafka_native_submissions_are_taken_in_or_rejected_with_reasons(
    ingest: Ingest,
) -> None:
    kafka, topics = ingest.settings.kafka, ingest.settings.kafka.topics
    as_cloudevent = {k: v for k, v in mention().items() if k not in ("source", "external_id")}
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await producer.start()
    try:
        for value, headers in [
            (json.dumps(mention("k-1")).encode(), []),
            (json.dumps(mention("k-1")).encode(), []),  # a repeat: nothing new
            (json.dumps(as_cloudevent).encode(), [("ce_source", b"crm"), ("ce_id", b"77")]),
            (b"{oops", []),
            (json.dumps(mention("k-2", channel="fax")).encode(), []),
        ]:
            await producer.send_and_wait(topics.submitted, value, key=b"k", headers=headers)
    finally:
        await producer.stop()

    received = await read_topic(kafka, topics.received, Interaction, 2, settle_s=1.5)
    rejected = await read_topic(kafka, topics.rejected, RejectedSubmission, 2, settle_s=0.5)

    assert sorted((e.data.source, e.data.external_id) for _, e in received) == [
        ("crm", "77"),
        ("listener", "k-1"),
    ]
    reasons = sorted((e.data.offset, [p.field for p in e.data.errors]) for _, e in rejected)
    assert [fields for _, fields in reasons] == [["value"], ["channel"]]
    assert {e.data.topic for _, e in rejected} == {topics.submitted}


async def test_a_restarted_ingest_publishes_what_it_stored_before(
    own_stack: EmbeddedStack, tmp_path: Path, namespace: str
) -> None:
    async with running_ingest(own_stack, namespace, tmp_path / "run") as before:
        own_stack.stop_broker()
        answers = await post_many(before, "s", 5)
    own_stack.start_broker()
    async with running_ingest(own_stack, namespace, tmp_path / "run") as after:
        topic = after.settings.kafka.topics.received
        events = await read_topic(after.settings.kafka, topic, Interaction, 5, timeout_s=60)

    assert {event.id for _, event in events} == {a.json()["id"] for a in answers}


async def test_a_failing_feed_backs_off_and_says_why(ingest: Ingest) -> None:
    server = FeedServer([("t-1", "hello")])
    server_app = server.app()

    @server_app.get("/broken.xml")
    async def broken() -> Response:
        server.requests.append({"broken": "yes"})
        return Response(status_code=503)

    async with serving(server_app) as url:
        await ingest.http.post(
            "/v1/feeds",
            json={"url": f"{url}/broken.xml", "poll_interval_s": 1},
            headers=admin_headers(),
        )
        [feed] = await eventually(lambda: _failing_feeds(ingest, 2), timeout_s=20)
        polls = len(server.requests)
        await asyncio.sleep(2.5)  # two intervals: without backoff there would be two more polls

    assert "503" in feed["last_error"]
    assert len(server.requests) - polls <= 1


async def test_a_redirect_to_an_address_that_cannot_be_vetted_is_a_failed_poll(
    ingest: Ingest,
) -> None:
    server = FeedServer([("t-1", "hello")])
    server_app = server.app()

    @server_app.get("/odd.xml")
    async def odd() -> Response:
        server.requests.append({"odd": "yes"})
        return Response(status_code=302, headers={"location": "http://1.1.1.1:99999/x"})

    async with serving(server_app) as url:
        await ingest.http.post(
            "/v1/feeds",
            json={"url": f"{url}/odd.xml", "poll_interval_s": 1},
            headers=admin_headers(),
        )
        # Failing twice means the poller outlived the first: it used to die on it unheard.
        [feed] = await eventually(lambda: _failing_feeds(ingest, 2), timeout_s=20)

    assert "Port out of range" in feed["last_error"]


async def _failing_feeds(ingest: Ingest, failures: int) -> list[dict[str, Any]]:
    feeds: list[dict[str, Any]] = (
        await ingest.http.get("/v1/feeds", headers=admin_headers())
    ).json()
    return [feed for feed in feeds if feed["failures"] >= failures]


async def test_metrics_count_outcomes_and_publish_lag(ingest: Ingest) -> None:
    await ingest.http.post(
        "/v1/interactions", json=[mention("m1"), mention("m1"), {}], headers=ingest.headers()
    )
    await eventually(lambda: _lag_observed(ingest))

    text = (await ingest.http.get("/metrics")).text

    for channel, outcome in (
        ("twitter", "accepted"),
        ("twitter", "duplicate"),
        ("unknown", "rejected"),
    ):
        labels = f'channel="{channel}",outcome="{outcome}",publisher="listener"'
        assert f"switchboard_ingest_interactions_total{{{labels}}}" in text


async def _lag_observed(ingest: Ingest) -> bool:
    text = (await ingest.http.get("/metrics")).text
    counts = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("switchboard_ingest_publish_lag_seconds_count")
    ]
    return bool(counts) and counts[0] > 0


async def test_a_feed_inside_the_network_is_refused_and_so_is_a_redirect_into_it(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    server = FeedServer([("t-1", "hello")])
    server_app = server.app()

    @server_app.get("/moved.xml")
    async def moved() -> Response:
        server.requests.append({"moved": "yes"})
        return Response(status_code=302, headers={"location": "http://10.1.2.3/feed.xml"})

    async with running_ingest(stack, namespace, run_dir, allow_hosts=frozenset()) as closed:
        inside = await closed.http.post(
            "/v1/feeds", json={"url": "http://127.0.0.1:9/feed.xml"}, headers=admin_headers()
        )
    async with running_ingest(stack, namespace, run_dir) as ingest, serving(server_app) as url:
        await ingest.http.post(
            "/v1/feeds",
            json={"url": f"{url}/moved.xml", "poll_interval_s": 1},
            headers=admin_headers(),
        )
        [feed] = await eventually(lambda: _failing_feeds(ingest, 1), timeout_s=20)

    assert inside.status_code == 422
    assert inside.json()["detail"][0]["field"] == "url"
    assert "non-public" in inside.json()["detail"][0]["reason"]
    assert "EndpointRefused" in feed["last_error"]  # the redirect was vetted, not followed
    assert "10.1.2.3" in feed["last_error"]
