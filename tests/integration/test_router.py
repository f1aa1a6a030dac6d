"""Router against the real embedded broker and store: rules, capacity, priority, idempotence."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

from services.router.config import RouterSettings
from services.router.decisions import step
from services.router.main import create_app
from services.router.repository import RECENT_RESERVATIONS, RouterRepository
from services.router.service import DRAIN_PAGE, RouterService
from shared.embedded import EmbeddedStack
from shared.events import (
    INTERACTION_ENRICHED,
    Assignment,
    CloudEvent,
    EnrichedInteraction,
    SlaBreach,
    utcnow,
)
from shared.mongo import epoch_ms
from tests.support import (
    admin_headers,
    client_of,
    eventually,
    metric_sum,
    publish,
    read_topic,
    service_settings,
)


@dataclass
class Router:
    http: httpx.AsyncClient
    settings: RouterSettings
    service: RouterService
    tokens: dict[str, str] = field(default_factory=dict)

    async def send(self, *items: EnrichedInteraction) -> None:
        events = [
            (
                item.customer.id,
                CloudEvent[EnrichedInteraction](
                    id=f"enriched-{item.interaction.id}",
                    source="/test",
                    type=INTERACTION_ENRICHED,
                    data=item,
                ),
            )
            for item in items
        ]
        await publish(self.settings.kafka, self.settings.kafka.topics.enriched, events)

    async def offers(self, expect: int, settle_s: float = 0.0) -> list[Assignment]:
        """Assignment events about agents: every one but ``queued``."""
        return await self.assignments(expect, settle_s, lambda e: e.data.status != "queued")

    async def assignments(
        self,
        expect: int,
        settle_s: float = 0.0,
        keep: Callable[[CloudEvent[Assignment]], bool] | None = None,
    ) -> list[Assignment]:
        topic = self.settings.kafka.topics.assignments
        events = await read_topic(
            self.settings.kafka, topic, Assignment, expect, settle_s=settle_s, keep=keep
        )
        return [event.data for _, event in events]

    async def agent(
        self, presence: str = "online", capacity: int = 3, skills: tuple[str, ...] = ()
    ) -> str:
        answer = await self.http.post(
            "/v1/agents",
            json={"name": "Grace", "capacity": capacity, "presence": presence, "skills": skills},
            headers=admin_headers(),
        )
        assert answer.status_code == 201
        self.tokens[answer.json()["id"]] = answer.json()["token"]
        return str(answer.json()["id"])

    def agent_headers(self, agent_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[agent_id]}"}

    async def act(self, agent_id: str, interaction_id: str, action: str) -> httpx.Response:
        return await self.http.post(
            f"/v1/items/{interaction_id}/{action}", headers=self.agent_headers(agent_id)
        )

    async def save_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.put("/v1/policy", json=policy, headers=admin_headers())
        assert response.status_code == 200, response.text
        saved: dict[str, Any] = response.json()
        return saved

    async def item_state(self, interaction_id: str) -> str | None:
        answer = await self.http.get(f"/v1/items/{interaction_id}", headers=admin_headers())
        return str(answer.json()["state"]) if answer.status_code == 200 else None


@asynccontextmanager
async def running_router(
    stack: EmbeddedStack, namespace: str, run_dir: Path, **overrides: Any
) -> AsyncIterator[Router]:
    settings = service_settings(RouterSettings, stack, namespace, run_dir, **overrides)
    app = create_app(settings)
    async with client_of(app) as http:
        yield Router(http, settings, app.state.service)


@pytest.fixture
async def router(stack: EmbeddedStack, namespace: str, run_dir: Path) -> AsyncIterator[Router]:
    async with running_router(stack, namespace, run_dir) as running:
        yield running


def enriched(
    tier: str = "standard", sentiment: str = "neutral", influence: float = 1.0, text: str = "hello"
) -> EnrichedInteraction:
    data: dict[str, Any] = {
        "interaction": {
            "id": str(uuid.uuid4()),
            "channel": "twitter",
            "source": "listener",
            "external_id": uuid.uuid4().hex,
            "author": {"handle": "@someone"},
            "text": text,
            "received_at": utcnow(),
        },
        "customer": {"id": str(uuid.uuid4()), "tier": tier, "value": 10.0},
        "sentiment": {"label": sentiment, "score": 0.0, "analyzer": "test"},
        "influence": influence,
    }
    return EnrichedInteraction.model_validate(data)


async def test_unhappy_platinum_customer_goes_first_to_an_online_agent(router: Router) -> None:
    agent_id = await router.agent()
    item = enriched(tier="platinum", sentiment="negative")

    await router.send(item)
    [offer] = await router.offers(1)

    assert offer.interaction_id == item.interaction.id
    assert (offer.queue, offer.priority, offer.rule) == ("priority", 1, "valued-and-unhappy")
    assert offer.agent_id == agent_id
    assert offer.customer.tier == "platinum"


async def test_rules_fall_through_to_the_default_queue(router: Router) -> None:
    await router.agent()
    loud = enriched(sentiment="negative", influence=58.0)
    plain = enriched()

    await router.send(loud, plain)
    offers = {o.interaction_id: o for o in await router.offers(2)}

    assert (offers[loud.interaction.id].queue, offers[loud.interaction.id].rule) == (
        "priority",
        "loud-and-unhappy",
    )
    assert (offers[plain.interaction.id].queue, offers[plain.interaction.id].priority) == (
        "general",
        4,
    )


async def test_agent_coming_online_gets_the_most_urgent_work_first(router: Router) -> None:
    agent_id = await router.agent(presence="offline", capacity=1)
    routine, urgent = enriched(), enriched(tier="gold", sentiment="negative")
    await router.send(routine, urgent)
    await eventually(lambda: router.item_state(urgent.interaction.id))
    await eventually(lambda: router.item_state(routine.interaction.id))

    went_online = await router.http.put(
        f"/v1/agents/{agent_id}/presence", json={"presence": "online"}, headers=admin_headers()
    )
    offers = await router.offers(1, settle_s=1.5)

    assert went_online.status_code == 200
    assert [o.interaction_id for o in offers] == [urgent.interaction.id]
    assert await router.item_state(routine.interaction.id) == "queued"
    agent = (await router.http.get(f"/v1/agents/{agent_id}", headers=admin_headers())).json()
    assert (agent["load"], agent["free"]) == (1, 0)


async def test_redelivered_event_makes_one_offer(router: Router) -> None:
    await router.agent()
    item = enriched()

    await router.send(item, item)
    # In one batch, one offer; in two, the second sends the same offer again, same id.
    offers = await read_topic(
        router.settings.kafka,
        router.settings.kafka.topics.assignments,
        Assignment,
        1,
        settle_s=2.0,
    )

    assert {(event.id, event.data.interaction_id) for _, event in offers} == {
        (offers[0][1].id, item.interaction.id)
    }
    assert await router.item_state(item.interaction.id) == "offered"


async def test_an_event_redelivered_later_offers_nothing_more_and_holds_no_capacity(
    router: Router,
) -> None:
    agent_id = await router.agent(capacity=3)
    item = enriched()
    await router.send(item)
    await router.offers(1)

    await router.send(item)  # redelivered once its item is stored and offered
    # Sent straight to the broker, the offer goes out again under its id (notify keeps one).
    offers = await read_topic(
        router.settings.kafka, router.settings.kafka.topics.assignments, Assignment, 2
    )
    agent = (await router.http.get(f"/v1/agents/{agent_id}", headers=admin_headers())).json()

    assert {(event.id, event.data.interaction_id) for _, event in offers} == {
        (offers[0][1].id, item.interaction.id)
    }
    assert (agent["load"], agent["free"]) == (1, 2)  # the unit chosen for the repeat given back
    assert "reservations" not in agent


async def test_agents_api_validates_and_needs_admin_token(router: Router) -> None:
    anonymous = await router.http.post("/v1/agents", json={"name": "A"})
    bad = await router.http.post(
        "/v1/agents", json={"name": "A", "capacity": 0}, headers=admin_headers()
    )

    assert anonymous.status_code == 401
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "capacity"


async def test_accept_then_resolve_is_two_events_and_frees_the_agent(router: Router) -> None:
    agent_id = await router.agent(capacity=1)
    first, second = enriched(), enriched()
    await router.send(first, second)
    [offer] = await router.offers(1)

    accepted = await router.act(agent_id, offer.interaction_id, "accept")
    resolved = await router.act(agent_id, offer.interaction_id, "resolve")
    events = await router.offers(4)

    assert (accepted.status_code, resolved.status_code) == (200, 200)
    # Order holds per interaction (its key), not across the two.
    other = ({first.interaction.id, second.interaction.id} - {offer.interaction_id}).pop()
    assert [e.status for e in events if e.interaction_id == offer.interaction_id] == [
        "offered",
        "accepted",
        "resolved",
    ]
    assert [e.status for e in events if e.interaction_id == other] == ["offered"]
    assert {e.agent_id for e in events} == {agent_id}


async def test_a_declined_offer_goes_to_another_agent(router: Router) -> None:
    grace = await router.agent()
    item = enriched()
    await router.send(item)
    [offer] = await router.offers(1)
    ada = await router.agent()  # a second agent, who has had no offer yet

    declined = await router.act(str(offer.agent_id), item.interaction.id, "decline")
    events = await router.offers(3)

    assert declined.status_code == 200
    assert [(e.status, e.agent_id) for e in events] == [
        ("offered", grace),
        ("declined", grace),
        ("offered", ada),
    ]


async def test_only_the_agent_holding_an_item_may_act_on_it(router: Router) -> None:
    holder = await router.agent()
    item = enriched()
    await router.send(item)
    await router.offers(1)
    other = await router.agent(presence="offline")

    by_other = await router.act(other, item.interaction.id, "accept")
    too_early = await router.act(holder, item.interaction.id, "resolve")
    anonymous = await router.http.post(f"/v1/items/{item.interaction.id}/accept")
    unknown = await router.act(holder, "no-such-item", "accept")
    accepted = await router.act(holder, item.interaction.id, "accept")
    resolved_by_other = await router.act(other, item.interaction.id, "resolve")
    read_by_other = await router.http.get(
        f"/v1/items/{item.interaction.id}", headers=router.agent_headers(other)
    )
    read_by_holder = await router.http.get(
        f"/v1/items/{item.interaction.id}", headers=router.agent_headers(holder)
    )
    other_presence = await router.http.put(
        f"/v1/agents/{holder}/presence",
        json={"presence": "offline"},
        headers=router.agent_headers(other),
    )

    assert by_other.status_code == 403
    assert too_early.status_code == 409
    [conflict] = too_early.json()["detail"]
    assert conflict["field"] == "action"
    assert anonymous.status_code == 401
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == [{"field": "interaction_id", "reason": "no such item"}]
    assert accepted.status_code == 200
    assert resolved_by_other.status_code == 403
    assert read_by_other.status_code == 403
    assert read_by_holder.status_code == 200
    assert read_by_holder.json()["agent_id"] == holder
    assert other_presence.status_code == 403


async def test_an_offer_not_accepted_in_time_goes_to_the_next_agent(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running_router(
        stack, namespace, run_dir, offer_timeout_s=1.0, timer_tick_s=0.2
    ) as router:
        first = await router.agent()
        item = enriched()
        await router.send(item)
        await router.offers(1)
        second = await router.agent()

        events = await router.offers(3)
        first_agent = (await router.http.get(f"/v1/agents/{first}", headers=admin_headers())).json()

    assert [(e.status, e.agent_id) for e in events] == [
        ("offered", first),
        ("timed_out", first),
        ("offered", second),
    ]
    assert (first_agent["load"], first_agent["presence"]) == (0, "away")


async def test_on_a_desk_of_one_an_offer_that_timed_out_returns_with_its_agent(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running_router(
        stack, namespace, run_dir, offer_timeout_s=1.0, timer_tick_s=0.2
    ) as router:
        only = await router.agent()
        item = enriched()
        await router.send(item)
        await router.offers(2)  # offered, then timed out: the agent is away
        back = await router.http.put(
            f"/v1/agents/{only}/presence", json={"presence": "online"}, headers=admin_headers()
        )
        events = await router.offers(3)

    assert back.status_code == 200
    assert [(e.status, e.agent_id, e.offer) for e in events] == [
        ("offered", only, 1),
        ("timed_out", only, 1),
        ("offered", only, 2),
    ]


async def test_an_sla_breach_is_raised_once_also_across_a_restart(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    fast_sla = {"timer_tick_s": 0.2}
    item = enriched()  # the default rule: priority 4, and no agent to take it
    async with running_router(stack, namespace, run_dir, **fast_sla) as router:
        await router.save_policy(
            {
                "queues": [{"name": "general", "sla_s": [60, 60, 60, 1, 60]}],
                "default_queue": "general",
            }
        )
        await router.send(item)
        topic = router.settings.kafka.topics.escalations
        await read_topic(router.settings.kafka, topic, SlaBreach, 1)
    async with running_router(stack, namespace, run_dir, **fast_sla) as restarted:
        await asyncio.sleep(1.5)  # time for a wrong second breach
        breaches = await read_topic(restarted.settings.kafka, topic, SlaBreach, 1, settle_s=1.0)
        escalated = await restarted.item_state(item.interaction.id)
        stored = (
            await restarted.http.get(f"/v1/items/{item.interaction.id}", headers=admin_headers())
        ).json()

    [(key, breach)] = breaches
    assert key == item.interaction.id.encode()
    assert (breach.data.priority_before, breach.data.priority_after) == (4, 3)
    assert breach.data.waited_s >= 1.0
    assert escalated == "queued"
    assert stored["priority"] == 3


SPANISH_POLICY: dict[str, Any] = {
    "queues": [
        {"name": "general"},
        {"name": "spanish", "required_skills": ["es"]},
    ],
    "rules": [{"name": "spanish", "when": '"hola" in words', "queue": "spanish", "priority": 1}],
    "default_queue": "general",
}


async def test_every_save_is_a_new_version_and_offers_name_theirs(router: Router) -> None:
    first = (await router.http.get("/v1/policy", headers=admin_headers())).json()
    saved = await router.save_policy(SPANISH_POLICY)
    old = await router.http.get(f"/v1/policy/versions/{first['version']}", headers=admin_headers())
    await router.agent(skills=("es",))
    await router.send(enriched(text="hola, my order?"))
    [offer] = await router.offers(1)

    assert first["version"] == 1
    assert first["rules"][0]["name"] == "valued-and-unhappy"
    assert saved["version"] == 2
    assert old.json()["rules"] == first["rules"]
    assert (offer.rule, offer.queue, offer.policy_version) == ("spanish", "spanish", 2)
    assert offer.required_skills == ("es",)


async def test_a_bad_expression_is_refused_with_its_rule_and_position(router: Router) -> None:
    policy = {
        **SPANISH_POLICY,
        "rules": [
            SPANISH_POLICY["rules"][0],
            {"name": "broken", "when": "influence >= ", "queue": "general"},
        ],
    }

    answer = await router.http.put("/v1/policy", json=policy, headers=admin_headers())
    current = (await router.http.get("/v1/policy", headers=admin_headers())).json()

    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["field"] == "rules.1.when"
    assert "1:14" in problem["reason"]
    assert current["version"] == 1


async def test_evaluate_explains_the_match_without_routing(router: Router) -> None:
    sample = enriched(tier="gold", sentiment="negative")

    answer = await router.http.post(
        "/v1/policy:evaluate", json=sample.model_dump(mode="json"), headers=admin_headers()
    )
    # Routed, the sample would be queued (no agent is online) and say so on the topic.
    published = await router.assignments(0, settle_s=2.0)

    assert answer.status_code == 200
    body = answer.json()
    assert (body["rule"], body["queue"], body["priority"]) == ("valued-and-unhappy", "priority", 1)
    assert body["rules"] == [
        {
            "rule": "valued-and-unhappy",
            "when": 'customer.tier in ["platinum", "gold"] && sentiment.label == "negative"',
            "result": "matched",
            "error": None,
        }
    ]
    assert published == []
    assert await router.item_state(sample.interaction.id) is None


async def test_skills_are_respected_and_do_not_block_the_queue(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    # The periodic drain an hour apart: only the drain of the agent coming online can offer.
    async with running_router(stack, namespace, run_dir, stats_interval_s=3600) as router:
        await router.save_policy(SPANISH_POLICY)
        generalist = await router.agent(presence="offline")
        spanish = enriched(text="hola, help")
        english = enriched(text="hello, help")
        await router.send(spanish, english)
        await eventually(lambda: _is_queued(router, spanish.interaction.id))
        await eventually(lambda: _is_queued(router, english.interaction.id))

        await router.http.put(
            f"/v1/agents/{generalist}/presence",
            json={"presence": "online"},
            headers=admin_headers(),
        )
        [offer] = await router.offers(1, settle_s=1.0)
        stats = (await router.http.get("/v1/queues", headers=admin_headers())).json()["queues"]
        depth = await metric_sum(
            router.http, "/metrics", "switchboard_router_queue_depth", queue="spanish", priority="1"
        )
        load = await metric_sum(
            router.http, "/metrics", "switchboard_router_agents_load", queue="general"
        )
        spanish_state = await router.item_state(spanish.interaction.id)

    # The Spanish item, first in line at priority 1, waits for an agent who speaks it.
    assert (offer.interaction_id, offer.agent_id) == (english.interaction.id, generalist)
    assert spanish_state == "queued"
    by_name = {queue["name"]: queue for queue in stats}
    assert by_name["spanish"]["waiting"]["1"] == 1
    # Queued before the agent came online, it has waited at least the offers' 1 s settle.
    assert by_name["spanish"]["oldest_wait_s"] >= 1.0
    assert by_name["spanish"]["sla_breached"] == 0
    assert by_name["spanish"]["agents_online"] == 0
    assert by_name["general"]["offered"] == 1
    assert by_name["general"]["agents_load"] == 1
    assert (depth, load) == (1.0, 1.0)


async def test_any_number_of_items_nobody_can_take_do_not_hide_the_one_behind(
    router: Router,
) -> None:
    await router.save_policy(SPANISH_POLICY)
    generalist = await router.agent(presence="offline")
    spanish = [enriched(text=f"hola {n}") for n in range(DRAIN_PAGE + 1)]  # over a page
    english = enriched(text="hello, help")
    await router.send(*spanish, english)
    await eventually(lambda: _is_queued(router, english.interaction.id), timeout_s=30)

    await router.http.put(
        f"/v1/agents/{generalist}/presence", json={"presence": "online"}, headers=admin_headers()
    )
    [offer] = await router.offers(1, settle_s=1.0)

    assert (offer.interaction_id, offer.agent_id) == (english.interaction.id, generalist)


async def _is_queued(router: Router, interaction_id: str) -> bool:
    return await router.item_state(interaction_id) == "queued"


async def test_an_sla_breach_moves_the_item_to_its_overflow_queue(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running_router(stack, namespace, run_dir, timer_tick_s=0.2) as router:
        await router.save_policy(
            {
                "queues": [
                    {
                        "name": "general",
                        "sla_s": [60, 60, 60, 1, 60],
                        "required_skills": ["billing"],
                        "overflow": "backup",
                    },
                    {"name": "backup"},
                ],
                "default_queue": "general",
            }
        )
        agent = await router.agent()  # no billing skill: only the overflow queue fits
        item = enriched()
        await router.send(item)
        breaches = await read_topic(
            router.settings.kafka, router.settings.kafka.topics.escalations, SlaBreach, 1
        )
        [offer] = await router.offers(1)

    [(_, breach)] = breaches
    assert (breach.data.queue, breach.data.queue_after) == ("general", "backup")
    assert (offer.queue, offer.agent_id) == ("backup", agent)


async def test_more_capacity_takes_waiting_work_at_once(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    # The periodic drain an hour apart: only the drain the new capacity starts can offer.
    async with running_router(stack, namespace, run_dir, stats_interval_s=3600) as router:
        agent = await router.agent(capacity=1)
        first, second = enriched(), enriched()
        await router.send(first)
        await router.offers(1)
        await router.send(second)
        await eventually(lambda: _is_queued(router, second.interaction.id))

        patched = await router.http.patch(
            f"/v1/agents/{agent}", json={"capacity": 2, "skills": ["es"]}, headers=admin_headers()
        )
        offers = await router.offers(2)
        listed = (await router.http.get("/v1/agents", headers=admin_headers())).json()["agents"]

    assert patched.status_code == 200
    assert (patched.json()["capacity"], patched.json()["skills"]) == (2, ["es"])
    # Two items, two partitions: the topic gives no order between them.
    assert {o.interaction_id for o in offers} == {first.interaction.id, second.interaction.id}
    assert [(a["id"], a["load"], a["free"]) for a in listed] == [(agent, 2, 0)]


async def test_a_burst_is_shared_out_to_capacity_and_the_rest_waits(router: Router) -> None:
    agents = [await router.agent(capacity=2) for _ in range(3)]
    burst = [enriched() for _ in range(10)]
    await router.send(*burst)

    offers = await router.offers(6, settle_s=1.0)
    queued = await router.assignments(4, keep=lambda e: e.data.status == "queued")
    listed = (await router.http.get("/v1/agents", headers=admin_headers())).json()["agents"]

    offered_ids = [o.interaction_id for o in offers]
    assert len(offered_ids) == len(set(offered_ids)) == 6
    assert collections.Counter(o.agent_id for o in offers) == dict.fromkeys(agents, 2)
    assert {q.interaction_id for q in queued} == {b.interaction.id for b in burst} - set(
        offered_ids
    )
    assert {(a["id"], a["load"], a["free"]) for a in listed} == {(a, 2, 0) for a in agents}


async def test_capacity_a_crashed_replica_reserved_is_given_back(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    fast = {"stats_interval_s": 0.2, "reconcile_after_s": 0.5}
    async with running_router(stack, namespace, run_dir, **fast) as router:
        agent = await router.agent(capacity=1)
        # What a replica that died between reserving the agent and recording the offer
        # leaves behind: one unit of capacity taken, no item holding it.
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            router.settings.mongo.url.get_secret_value()
        )
        agents = client[router.settings.mongo.database("router")]["agents"]
        await agents.update_one(
            {"_id": agent},
            {"$inc": {"free": -1, "load": 1}, "$set": {"last_offer_ms": epoch_ms(utcnow())}},
        )
        item = enriched()
        await router.send(item)
        [offer] = await router.offers(1, settle_s=0.5)

    assert (offer.interaction_id, offer.agent_id) == (item.interaction.id, agent)


async def test_work_a_missed_drain_left_waiting_is_offered_all_the_same(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running_router(stack, namespace, run_dir, stats_interval_s=0.2) as router:
        agent = await router.agent(presence="offline")
        item = enriched()
        await router.send(item)
        await eventually(lambda: _is_queued(router, item.interaction.id))
        # What a router killed between freeing an agent and offering it work leaves: a
        # free agent, an item waiting, and nothing on its way to bring them together.
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            router.settings.mongo.url.get_secret_value()
        )
        agents = client[router.settings.mongo.database("router")]["agents"]
        await agents.update_one({"_id": agent}, {"$set": {"presence": "online"}})
        [offer] = await router.offers(1, settle_s=0.5)
        await client.close()

    assert (offer.interaction_id, offer.agent_id) == (item.interaction.id, agent)


@pytest.mark.parametrize("action", ["accept", "decline"])
async def test_an_event_a_stopped_router_owed_is_added_by_the_timers(
    stack: EmbeddedStack,
    namespace: str,
    run_dir: Path,
    action: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_router(stack, namespace, run_dir, owed_after_s=0.5) as router:
        grace = await router.agent(capacity=1)
        item = enriched()
        await router.send(item)
        await router.offers(1)
        # The store fails between the change and its event, as a router killed there would
        # leave it: the change stored, its event in no outbox.
        monkeypatch.setattr(router.service.outbox, "add", failing_once(router.service.outbox.add))
        answer = await router.act(grace, item.interaction.id, action)
        monkeypatch.undo()
        events = await router.offers(2, settle_s=1.0)
        state = await router.item_state(item.interaction.id)

    assert answer.status_code == 500
    assert state == {"accept": "accepted", "decline": "queued"}[action]
    assert [(e.status, e.agent_id, e.offer) for e in events] == [
        ("offered", grace, 1),
        ({"accept": "accepted", "decline": "declined"}[action], grace, 1),
    ]


async def test_an_offer_a_stopped_drain_owed_is_added_by_the_timers(
    stack: EmbeddedStack, namespace: str, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_router(stack, namespace, run_dir, owed_after_s=0.5) as router:
        grace = await router.agent(presence="offline")
        item = enriched()
        await router.send(item)
        await eventually(lambda: _is_queued(router, item.interaction.id))
        monkeypatch.setattr(router.service.outbox, "add", failing_once(router.service.outbox.add))
        answer = await router.http.put(
            f"/v1/agents/{grace}/presence", json={"presence": "online"}, headers=admin_headers()
        )
        monkeypatch.undo()
        [offer] = await router.offers(1, settle_s=1.0)

    assert answer.status_code == 500  # the offer was stored by the drain, its event not
    assert (offer.interaction_id, offer.agent_id, offer.offer) == (item.interaction.id, grace, 1)


def failing_once(add: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    failed: list[bool] = []

    async def add_or_fail(*args: Any) -> Any:
        if not failed:
            failed.append(True)
            raise AutoReconnect("the store went away")
        return await add(*args)

    return add_or_fail


async def test_a_recount_between_a_resolve_and_its_release_frees_the_unit_once(
    stack: EmbeddedStack, namespace: str, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stats far apart: the recounts here are the ones this test makes.
    quiet = {"stats_interval_s": 3600, "reconcile_after_s": 0.1}
    async with running_router(stack, namespace, run_dir, **quiet) as router:
        grace = await router.agent(capacity=2)
        item = enriched()
        await router.send(item)
        await router.offers(1)
        await router.act(grace, item.interaction.id, "accept")
        await asyncio.sleep(0.2)  # the agent is quiet: its load is recounted
        record_step = router.service.repository.record_step

        async def recount_first(step: dict[str, Any]) -> None:  # the item resolved, not yet
            await router.service.reconcile_capacity()  # its agent's unit released
            await record_step(step)

        monkeypatch.setattr(router.service.repository, "record_step", recount_first)
        resolved = await router.act(grace, item.interaction.id, "resolve")
        monkeypatch.undo()
        [agent] = (await router.http.get("/v1/agents", headers=admin_headers())).json()["agents"]

    assert resolved.status_code == 200
    assert (agent["load"], agent["free"]) == (0, 2)


async def test_an_item_nobody_can_take_yet_is_queued_then_offered(router: Router) -> None:
    item = enriched()
    await router.send(item)
    [queued] = await router.assignments(1)
    agent = await router.agent()
    events = await router.assignments(2, settle_s=0.5)

    assert (queued.status, queued.agent_id, queued.queue) == ("queued", None, "general")
    assert [(e.status, e.agent_id) for e in events] == [("queued", None), ("offered", agent)]


async def test_a_released_item_is_requeued_and_offered_again(router: Router) -> None:
    grace = await router.agent(capacity=1)
    item = enriched()
    await router.send(item)
    await router.offers(1)
    accepted = await router.act(grace, item.interaction.id, "accept")

    released = await router.act(grace, item.interaction.id, "release")
    events = await router.offers(4)

    assert accepted.status_code == released.status_code == 200
    assert [(e.status, e.agent_id, e.offer) for e in events] == [
        ("offered", grace, 1),
        ("accepted", grace, 1),
        ("requeued", grace, 1),
        ("offered", grace, 2),
    ]


async def test_the_decision_record_says_why_each_agent_was_or_was_not_chosen(
    router: Router,
) -> None:
    await router.save_policy(SPANISH_POLICY)
    away = await router.agent(presence="offline", skills=("es",))
    no_spanish = await router.agent()
    chosen = await router.agent(skills=("es",))
    item = enriched(text="hola, my order?")
    await router.send(item)
    await router.offers(1)
    await router.act(chosen, item.interaction.id, "decline")
    await router.offers(2)  # nobody else speaks Spanish: it waits

    record = (
        await router.http.get(f"/v1/items/{item.interaction.id}/decision", headers=admin_headers())
    ).json()

    routed, offered, declined = record["steps"][:3]
    assert routed["policy_version"] == 2
    assert [(r["rule"], r["result"]) for r in routed["rules"]] == [("spanish", "matched")]
    reasons = {c["agent_id"]: c["reason"] for c in offered["candidates"]}
    assert offered["agent_id"] == chosen
    assert reasons[chosen].startswith("chosen")
    assert reasons[away] == "offline"
    assert reasons[no_spanish] == "missing skill es"
    assert (declined["step"], declined["agent_id"]) == ("declined", chosen)
    assert record["summary"][0].startswith("policy v2: rule 'spanish' matched -> queue spanish")


async def test_a_body_over_the_limit_is_refused_unread_whether_declared_or_streamed(
    router: Router,
) -> None:
    huge = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for start in range(0, len(huge), 64 * 1024):
            yield huge[start : start + 64 * 1024]

    declared = await router.http.post("/v1/agents", content=huge, headers=admin_headers())
    streamed = await router.http.post("/v1/agents", content=chunks(), headers=admin_headers())
    small = await router.http.post("/v1/agents", json={"name": "Grace"}, headers=admin_headers())

    for answer in (declared, streamed):
        assert answer.status_code == 413
        assert answer.json()["detail"][0]["field"] == "body"
    assert small.status_code == 201


async def test_the_latest_of_many_policy_versions_is_the_one_routing(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    policy = {"default_queue": "general", "queues": [{"name": "general"}], "rules": []}
    async with running_router(stack, namespace, run_dir) as router:
        saved = [(await router.save_policy(policy))["version"] for _ in range(11)]
    # A router that saved none of them knows only what the store gives it as the latest.
    async with running_router(stack, namespace, run_dir) as started:
        current = await started.http.get("/v1/policy", headers=admin_headers())
        await started.agent()
        item = enriched()
        await started.send(item)
        [offer] = await started.offers(1)

    assert saved == list(range(2, 13))  # version 1 is the shipped policy
    # Not 9: versions are not sorted as text.
    assert current.json()["version"] == 12
    assert (offer.interaction_id, offer.policy_version) == (item.interaction.id, 12)


async def test_decision_steps_stored_together_or_again_read_back_once_each(
    stack: EmbeddedStack, namespace: str
) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_url)
    repository = RouterRepository(client[namespace])
    await repository.ensure_indexes()
    item = {"_id": "i-1", "enqueued_at": utcnow()}
    routed = step("i-1", "routed", summary="policy v1")
    offered = step("i-1", "offered", 1, agent_id="a-1", candidates=[{"agent_id": "a-1"}])
    other = step("i-2", "routed", summary="policy v1")
    # As kept before: one document per item per batch, its candidates as JSON text.
    earlier = {**offered, "candidates": '[{"agent_id":"a-1"}]'}
    await client[namespace]["decisions"].insert_one(earlier)

    await repository.record_steps([routed, offered, other])  # a batch, one document
    await repository.record_steps([routed, offered, other])  # the batch redelivered
    await repository.record_steps([step("i-1", "routed", summary="policy v1")])  # alone
    stored = await client[namespace]["decision_buckets"].count_documents({})
    steps = await repository.steps_for(item)
    await client.close()

    assert stored == 2  # the batch once, i-1's routed step alone
    assert [s["step"] for s in steps] == ["routed", "offered"]
    assert steps[1]["candidates"] == [{"agent_id": "a-1"}]


async def test_capacity_is_reserved_in_one_write_and_only_where_it_was_free(
    stack: EmbeddedStack, namespace: str
) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_url)
    repository = RouterRepository(client[namespace])
    agents = client[namespace]["agents"]
    await agents.insert_many(
        [
            {"_id": "a-1", "presence": "online", "capacity": 3, "free": 3, "load": 0},
            {"_id": "a-2", "presence": "offline", "capacity": 3, "free": 3, "load": 0},
            {"_id": "a-3", "presence": "online", "capacity": 1, "free": 1, "load": 0},
        ]
    )
    now = utcnow()

    partly = await repository.reserve_agents({"a-1": 2, "a-2": 1, "a-3": 2}, now)
    wholly = await repository.reserve_agents({"a-1": 1, "a-3": 1}, now)
    for _ in range(RECENT_RESERVATIONS + 5):
        await repository.release_agent("a-1")
        await repository.reserve_agents({"a-1": 1}, now)
    stored = {agent["_id"]: agent async for agent in agents.find()}
    await client.close()

    assert partly == {"a-1"}  # a-2 is offline, a-3 had one unit free, not two
    assert wholly == {"a-1", "a-3"}
    assert [(stored[a]["free"], stored[a]["load"]) for a in ("a-1", "a-2", "a-3")] == [
        (0, 3),
        (3, 0),
        (0, 1),
    ]
    assert len(stored["a-1"]["reservations"]) == RECENT_RESERVATIONS  # kept short
