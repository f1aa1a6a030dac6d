"""Router's HTTP API: agents and their presence (admin), the state of routed items, and
what agents do with their work (each with its own token)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status

from services.router.policy import CONDITION_VARIABLES, Policy, PolicyError, PolicyIn
from services.router.service import (
    Action,
    ActionRefused,
    AgentIn,
    AgentPatch,
    ItemNotFound,
    PresenceIn,
    RouterService,
)
from shared.events import EnrichedInteraction
from shared.http import AdminOnly, Bearer, app_service, public, unauthorized

router = APIRouter(prefix="/v1")
admin = APIRouter(dependencies=[AdminOnly])

Service = Annotated[RouterService, Depends(app_service)]


def agent_out(doc: dict[str, Any]) -> dict[str, Any]:
    return public(doc, hide=("token_hash",))


@admin.post("/agents", status_code=status.HTTP_201_CREATED)
async def register_agent(payload: AgentIn, service: Service) -> dict[str, Any]:
    """The agent's token, for accepting and resolving work, is shown here once."""
    agent, token = await service.register_agent(payload)
    return {**agent_out(agent), "token": token}


@admin.get("/agents/{agent_id}")
async def get_agent(agent_id: str, service: Service) -> dict[str, Any]:
    agent = await service.get_agent(agent_id)
    if agent is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such agent")
    return agent_out(agent)


@admin.get("/agents")
async def list_agents(service: Service) -> dict[str, list[dict[str, Any]]]:
    """Every agent with presence, skills, capacity, load and free capacity."""
    return {"agents": [agent_out(agent) for agent in await service.list_agents()]}


@admin.patch("/agents/{agent_id}")
async def update_agent(agent_id: str, payload: AgentPatch, service: Service) -> dict[str, Any]:
    """Name, skills or capacity; more capacity offers waiting work at once."""
    agent = await service.update_agent(agent_id, payload)
    if agent is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such agent")
    return agent_out(agent)


@admin.put("/agents/{agent_id}/presence")
async def set_presence(agent_id: str, payload: PresenceIn, service: Service) -> dict[str, Any]:
    agent = await service.set_presence(agent_id, payload.presence)
    if agent is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such agent")
    return agent_out(agent)


def policy_out(policy: Policy) -> dict[str, Any]:
    return {"version": policy.version, **policy.spec.model_dump(mode="json")}


@admin.get("/policy")
async def get_policy(service: Service) -> dict[str, Any]:
    """The policy routing now, with its version, and the variables conditions may use."""
    return {**policy_out(service.policy), "condition_variables": CONDITION_VARIABLES}


@admin.put("/policy")
async def save_policy(payload: PolicyIn, service: Service) -> dict[str, Any]:
    """Saves a new version (every save is one); a condition that does not compile is a
    422 naming the rule and the position."""
    try:
        return policy_out(await service.save_policy(payload, saved_by="admin"))
    except PolicyError as error:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, [{"field": error.field, "reason": error.reason}]
        ) from error


@admin.get("/policy/versions/{version}")
async def get_policy_version(version: int, service: Service) -> dict[str, Any]:
    stored = await service.policy_version(version)
    if stored is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such policy version")
    return {"version": stored["_id"], **stored["policy"], "saved_at": stored["saved_at"]}


@admin.post("/policy:evaluate")
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


@admin.get("/queues")
async def queue_stats(service: Service) -> dict[str, Any]:
    """Per queue: items waiting by priority, offered, oldest wait, SLA breaches, and
    the online agents able to serve it with their load and capacity."""
    return {"queues": [asdict(queue) for queue in await service.queue_stats()]}


@admin.get("/items/{interaction_id}")
async def get_item(interaction_id: str, service: Service) -> dict[str, Any]:
    item = await service.get_item(interaction_id)
    if item is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such item")
    return public(item)


@admin.get("/items/{interaction_id}/decision")
async def item_decision(interaction_id: str, service: Service) -> dict[str, Any]:
    """Why the item is where it is: the policy version and each rule's result, every
    offer with each agent and why it was or was not chosen, and every later step."""
    record = await service.decision_record(interaction_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such item")
    return record


async def current_agent(service: Service, credentials: Bearer) -> str:
    if credentials is None:
        raise unauthorized()
    agent_id = await service.agent_for_token(credentials.credentials)
    if agent_id is None:
        raise unauthorized("unknown agent token")
    return agent_id


CurrentAgent = Annotated[str, Depends(current_agent)]


@router.post("/items/{interaction_id}/{action}")
async def act_on_item(
    interaction_id: str, action: Action, agent_id: CurrentAgent, service: Service
) -> dict[str, Any]:
    """accept or decline an offer; resolve accepted work; release it back to its queue."""
    try:
        return public(await service.act(agent_id, interaction_id, action))
    except ItemNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such item") from exc
    except ActionRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


router.include_router(admin)
