"""Why an item went where it went: the decision record, step by step.

Each step is one stored document with an id derived from the item and the step, so
recording it again (a redelivery, a second replica) changes nothing. Candidates are
judged as the router judged them: presence, skills, capacity, earlier declines, then
most free capacity and longest idle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.router.policy import Decision
from shared.events import derived_event_id, utcnow
from shared.mongo import Document, epoch_ms


def step(item_id: str, kind: str, number: int = 0, **details: Any) -> Document:
    return {
        "_id": derived_event_id(item_id, "decision", kind, str(number)),
        "item_id": item_id,
        "at_ms": epoch_ms(utcnow()),
        "step": kind,
        **details,
    }


def routed_step(item_id: str, decision: Decision) -> Document:
    matched = decision.rule
    summary = (
        f"policy v{decision.policy_version}: rule {matched!r} matched"
        if matched != "default"
        else f"policy v{decision.policy_version}: no rule matched, the default queue"
    )
    return step(
        item_id,
        "routed",
        policy_version=decision.policy_version,
        rules=[
            {"rule": o.rule, "when": o.when, "result": o.result, "error": o.error}
            for o in decision.trace
        ],
        rule=matched,
        queue=decision.queue,
        priority=decision.priority,
        required_skills=list(decision.skills),
        summary=f"{summary} -> queue {decision.queue}, priority {decision.priority}"
        + (f", skills {', '.join(decision.skills)}" if decision.skills else ""),
    )


# A step names this many agents: the one chosen and those that came closest. Naming every
# agent would make each step grow with the team (500 agents, some 50 KB per offer) and
# was most of the router's store time per batch; the rest are counted.
CANDIDATES_SHOWN = 10


def candidate_reasons(
    agents: Sequence[Document], item: Document, chosen: Document | None
) -> list[dict[str, Any]]:
    """The agents that came closest (the chosen one first), and why each was or was not
    given the item."""
    needed = set(item.get("required_skills", []))
    declined = set(item.get("declined_by", []))
    out = []
    for agent in sorted(agents, key=lambda a: closeness(a, chosen, needed, declined))[
        :CANDIDATES_SHOWN
    ]:
        is_chosen = chosen is not None and agent["_id"] == chosen["_id"]
        reserved = 1 if is_chosen else 0  # as it stood before this offer took its unit
        free = int(agent["free"]) + reserved
        out.append(
            {
                "agent_id": agent["_id"],
                "name": agent.get("name"),
                "chosen": is_chosen,
                "reason": reason(agent, free, needed, declined, chosen),
                "load": int(agent["load"]) - reserved,
                "capacity": int(agent["capacity"]),
            }
        )
    return out


def closeness(
    agent: Document, chosen: Document | None, needed: set[str], declined: set[str]
) -> tuple[bool, bool, int, int]:
    """Sort key: the chosen agent, then those able to take the item as the choice ranked
    them (most free, longest idle), then the rest, most free first."""
    able = (
        agent.get("presence") == "online"
        and needed <= set(agent.get("skills", []))
        and agent["_id"] not in declined
    )
    is_chosen = chosen is not None and agent["_id"] == chosen["_id"]
    return (not is_chosen, not able, -int(agent["free"]), int(agent.get("last_offer_ms") or 0))


def reason(
    agent: Document, free: int, needed: set[str], declined: set[str], chosen: Document | None
) -> str:
    if chosen is not None and agent["_id"] == chosen["_id"]:
        return f"chosen: online, has the skills, most free capacity ({free}), longest idle"
    if agent.get("presence") != "online":
        return str(agent.get("presence", "offline"))
    missing = sorted(needed - set(agent.get("skills", [])))
    if missing:
        return f"missing skill {', '.join(missing)}"
    if agent["_id"] in declined:
        return "declined this item before"
    if free <= 0:
        return f"at capacity ({agent['load']} of {agent['capacity']})"
    if chosen is not None and free < int(chosen["free"]) + 1:
        return f"less free capacity ({free} against {int(chosen['free']) + 1})"
    return "as free, but offered work more recently"


def offered_step(item: Document, agents: Sequence[Document], chosen: Document) -> Document:
    return step(
        item["_id"],
        "offered",
        int(item["offer"]),
        agent_id=chosen["_id"],
        candidates=candidate_reasons(agents, item, chosen),
        candidates_not_shown=max(0, len(agents) - CANDIDATES_SHOWN),
        summary=f"offer {item['offer']} to {chosen.get('name') or chosen['_id']}",
    )


def waiting_step(item: Document, agents: Sequence[Document]) -> Document:
    return step(
        item["_id"],
        "waiting",
        int(item["offer"]),
        candidates=candidate_reasons(agents, item, None),
        candidates_not_shown=max(0, len(agents) - CANDIDATES_SHOWN),
        summary="no agent could take it: it waits in its queue",
    )


def transition_step(item: Document, kind: str, agent_id: str | None, why: str) -> Document:
    return step(item["_id"], kind, int(item["offer"]), agent_id=agent_id, summary=why)


def readable(item: Document, steps: Sequence[Document]) -> dict[str, Any]:
    """The record as the API shows it: the item now, and every step in order (steps of
    the same millisecond in the order they were stored, which is the order they were
    made)."""
    ordered = sorted(steps, key=lambda s: s["at_ms"])
    return {
        "interaction_id": item["_id"],
        "state": item["state"],
        "queue": item["queue"],
        "priority": item["priority"],
        "agent_id": item.get("agent_id"),
        "policy_version": item.get("policy_version"),
        "summary": [s["summary"] for s in ordered],
        "steps": [{k: v for k, v in s.items() if k not in ("_id", "item_id")} for s in ordered],
    }
