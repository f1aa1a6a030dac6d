"""The agent a batch of offers chooses in memory: the one the store's reservation would."""

from __future__ import annotations

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
