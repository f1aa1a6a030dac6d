"""Router's HTTP API: agents and their presence (admin), the state of routed items, and
what agents do with their work (each with its own token)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status

from services.router.service import (
    Action,
    ActionRefused,
    AgentIn,
    ItemNotFound,
    PresenceIn,
    RouterService,
)
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


@admin.put("/agents/{agent_id}/presence")
async def set_presence(agent_id: str, payload: PresenceIn, service: Service) -> dict[str, Any]:
    agent = await service.set_presence(agent_id, payload.presence)
    if agent is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such agent")
    return agent_out(agent)


@admin.get("/items/{interaction_id}")
async def get_item(interaction_id: str, service: Service) -> dict[str, Any]:
    item = await service.get_item(interaction_id)
    if item is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such item")
    return public(item)


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
