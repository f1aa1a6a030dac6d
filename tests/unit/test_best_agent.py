"""The agent a batch of offers chooses in memory: the one the store's reservation would."""

from __future__ import annotations

from services.router.decisions import CANDIDATES_SHOWN, offered_step
from services.router.service import best_agent
from shared.mongo import Document


def agent(name: str, free: int = 2, last_offer_ms: int = 0, **fields: object) -> Document:
    return {
        "_id": name,
        "presence": "online",
        "free": free,
        "skills": [],
        "last_offer_ms": last_offer_ms,
        **fields,
    }


def test_the_most_free_capacity_wins_then_the_longest_idle() -> None:
    agents = [
        agent("busy", free=1),
        agent("recent", last_offer_ms=20),
        agent("idle", last_offer_ms=10),
    ]

    chosen = best_agent(agents, {})

    assert chosen is not None
    assert chosen["_id"] == "idle"


def test_only_an_online_agent_with_room_every_skill_and_no_decline_qualifies() -> None:
    agents = [
        agent("away", presence="offline", skills=["es"]),
        agent("full", free=0, skills=["es"]),
        agent("declined", skills=["es"]),
        agent("english"),
        agent("able", free=1, skills=["es", "fr"]),
    ]
    item = {"required_skills": ["es"], "declined_by": ["declined"]}

    chosen = best_agent(agents, item)

    assert chosen is not None
    assert chosen["_id"] == "able"
    assert best_agent(agents[:4], item) is None


def test_a_decision_step_names_the_chosen_and_the_closest_agents_and_counts_the_rest() -> None:
    offline = [agent(f"off{n}", presence="offline", load=0, capacity=2) for n in range(12)]
    able = [agent(f"able{n}", free=1, last_offer_ms=n, load=1, capacity=2) for n in range(5)]
    chosen = agent("chosen", free=2, load=0, capacity=2)
    item = {"_id": "i", "offer": 1}
    taken = {**chosen, "free": 1, "load": 1}  # as the offer left it

    step = offered_step(item, [*offline, *able, taken], taken)

    shown = [c["agent_id"] for c in step["candidates"]]
    assert shown[:6] == ["chosen", "able0", "able1", "able2", "able3", "able4"]
    assert len(shown) == CANDIDATES_SHOWN
    assert set(shown[6:]) <= {a["_id"] for a in offline}
    assert step["candidates_not_shown"] == 18 - CANDIDATES_SHOWN
    assert step["candidates"][0]["reason"].startswith("chosen")
    assert step["candidates"][1]["reason"] == "less free capacity (1 against 2)"
    assert step["candidates"][-1]["reason"] == "offline"
