"""Router's HTTP API: policy and agents (admin), queues, items and decisions (admin and
operator), and what agents do with their own work (each with its own agent key)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, status

from services.router.policy import CONDITION_VARIABLES, Policy, PolicyError, PolicyIn
from services.router.service import (
    Action,
    ActionRefused,
    AgentIn,
    AgentPatch,
    ItemNotFound,
    NotYours,
    PresenceIn,
    RouterService,
)
from shared.access import (
    AdminKey,
    AdminOnly,
    AdminOrOperator,
    Keys,
    Principal,
    allow,
    forbidden,
    require_subject,
)
from shared.audit import record_change
from shared.events import EnrichedInteraction, Role
from shared.http import app_service, field_problem, not_found, public

router = APIRouter(prefix="/v1")

Service = Annotated[RouterService, Depends(app_service)]
Caller = Annotated[Principal, allow(Role.ADMIN, Role.OPERATOR, Role.AGENT)]
AgentOrAdmin = Annotated[Principal, allow(Role.ADMIN, Role.AGENT)]
AgentKey = Annotated[Principal, allow(Role.AGENT)]


def agent_out(doc: dict[str, Any]) -> dict[str, Any]:
    return public(doc, hide=("reservations",))  # the router's own bookkeeping


def item_out(doc: dict[str, Any]) -> dict[str, Any]:
    return public(doc, hide=("owed", "owed_token", "owed_ms"))  # the router's own bookkeeping


@router.post("/agents", status_code=status.HTTP_201_CREATED)
async def register_agent(
    payload: AgentIn, service: Service, keys: Keys, caller: AdminKey
) -> dict[str, Any]:
    """The agent's key (role ``agent``), for its presence and its own work, is shown here
    once; ``POST /v1/keys`` issues more, ``POST /v1/keys/{id}/revoke`` revokes one."""
    agent = await service.register_agent(payload)
    record, key = await keys.issue(Role.AGENT, f"agent {payload.name}", caller.key_id, agent["_id"])
    return {**agent_out(agent), "key_id": record.id, "token": key}


@router.get("/agents/{agent_id}")
async def get_agent(agent_id: str, service: Service, caller: Caller) -> dict[str, Any]:
    require_subject(caller, agent_id, "agent")
    agent = await service.get_agent(agent_id)
    if agent is None:
        raise not_found("agent_id", "agent")
    return agent_out(agent)


@router.get("/agents", dependencies=[AdminOrOperator])
async def list_agents(service: Service) -> dict[str, list[dict[str, Any]]]:
    """Every agent with presence, skills, capacity, load and free capacity."""
    return {"agents": [agent_out(agent) for agent in await service.list_agents()]}


@router.patch("/agents/{agent_id}", dependencies=[AdminOnly])
async def update_agent(agent_id: str, payload: AgentPatch, service: Service) -> dict[str, Any]:
    """Name, skills or capacity; more capacity offers waiting work at once."""
    agent = await service.update_agent(agent_id, payload)
    if agent is None:
        raise not_found("agent_id", "agent")
    return agent_out(agent)


@router.put("/agents/{agent_id}/presence")
async def set_presence(
    agent_id: str, payload: PresenceIn, service: Service, caller: AgentOrAdmin
) -> dict[str, Any]:
    """An agent sets its own presence; an admin anyone's."""
    require_subject(caller, agent_id, "agent")
    agent = await service.set_presence(agent_id, payload.presence)
    if agent is None:
        raise not_found("agent_id", "agent")
    return agent_out(agent)


def policy_out(policy: Policy) -> dict[str, Any]:
    return {"version": policy.version, **policy.spec.model_dump(mode="json")}


@router.get("/policy", dependencies=[AdminOrOperator])
async def get_policy(service: Service) -> dict[str, Any]:
    """The policy routing now, with its version, and the variables conditions may use."""
    return {**policy_out(service.policy), "condition_variables": CONDITION_VARIABLES}


@router.put("/policy")
async def save_policy(
    payload: PolicyIn, service: Service, caller: AdminKey, request: Request
) -> dict[str, Any]:
    """Saves a new version (every save is one); a condition that does not compile is a
    422 naming the rule and the position."""
    before = policy_out(service.policy)
    try:
        saved = policy_out(await service.save_policy(payload, saved_by=caller.key_id))
    except PolicyError as error:
        raise field_problem(error.field, error.reason) from error
    record_change(request, before, saved)
    return saved


@router.get("/policy/versions/{version}", dependencies=[AdminOrOperator])
async def get_policy_version(
    version: Annotated[int, Path(ge=1, le=2**31)], service: Service
) -> dict[str, Any]:
    stored = await service.policy_version(version)
    if stored is None:
        raise not_found("version", "policy version")
    return {"version": stored["_id"], **stored["policy"], "saved_at": stored["saved_at"]}


@router.post("/policy:evaluate", dependencies=[allow(Role.ADMIN, Role.OPERATOR, changes=False)])
async def evaluate_policy(sample: EnrichedInteraction, service: Service) -> dict[str, Any]:
    """Which rule the current policy picks for a sample enriched event, and each rule's
    result on the way, without routing anything."""
    decision = service.policy.decide(sample)
    return {
        "policy_version": decision.policy_version,
        "rule": decision.rule,
        "queue": decision.queue,
        "priority": decision.priority,
        "required_skills": list(decision.skills),
        "rules": [asdict(outcome) for outcome in decision.trace],
    }


@router.get("/queues", dependencies=[AdminOrOperator])
async def queue_stats(service: Service) -> dict[str, Any]:
    """Per queue: items waiting by priority, offered, oldest wait, SLA breaches, and
    the online agents able to serve it with their load and capacity."""
    return {"queues": [asdict(queue) for queue in await service.queue_stats()]}


@router.get("/items/{interaction_id}")
async def get_item(interaction_id: str, service: Service, caller: Caller) -> dict[str, Any]:
    """An item's state; an agent sees only the items offered or assigned to it."""
    item = await service.get_item(interaction_id)
    if item is None:
        raise not_found("interaction_id", "item")
    require_subject(caller, item.get("agent_id"), "item")
    return item_out(item)


@router.get("/items/{interaction_id}/decision", dependencies=[AdminOrOperator])
async def item_decision(interaction_id: str, service: Service) -> dict[str, Any]:
    """Why the item is where it is: the policy version and each rule's result, every
    offer with each agent and why it was or was not chosen, and every later step."""
    record = await service.decision_record(interaction_id)
    if record is None:
        raise not_found("interaction_id", "item")
    return record


@router.post("/items/{interaction_id}/{action}")
async def act_on_item(
    interaction_id: str, action: Action, agent: AgentKey, service: Service
) -> dict[str, Any]:
    """accept or decline an offer; resolve accepted work; release it back to its queue.
    Only the agent the item is with may act on it."""
    try:
        return item_out(await service.act(str(agent.subject), interaction_id, action))
    except ItemNotFound as exc:
        raise not_found("interaction_id", "item") from exc
    except NotYours as exc:
        raise forbidden("this item is not with this agent") from exc
    except ActionRefused as exc:
        raise field_problem("action", str(exc), status.HTTP_409_CONFLICT) from exc
