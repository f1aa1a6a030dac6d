"""Router's HTTP API: agents and their presence, and the state of routed items."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status

from services.router.service import AgentIn, PresenceIn, RouterService
from shared.http import AdminOnly, app_service, public

router = APIRouter(prefix="/v1", dependencies=[AdminOnly])


Service = Annotated[RouterService, Depends(app_service)]


@router.post("/agents", status_code=status.HTTP_201_CREATED)
async def register_agent(payload: AgentIn, service: Service) -> dict[str, Any]:
    return public(await service.register_agent(payload))


@router.get("/agents/{agent_id}")
async def get_agent(agent_id: str, service: Service) -> dict[str, Any]:
    agent = await service.get_agent(agent_id)
    if agent is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such agent")
    return public(agent)


@router.put("/agents/{agent_id}/presence")
async def set_presence(agent_id: str, payload: PresenceIn, service: Service) -> dict[str, Any]:
    agent = await service.set_presence(agent_id, payload.presence)
    if agent is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such agent")
    return public(agent)


@router.get("/items/{interaction_id}")
async def get_item(interaction_id: str, service: Service) -> dict[str, Any]:
    item = await service.get_item(interaction_id)
    if item is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such item")
    return public(item)
