"""Ingest's HTTP API: publishers post interactions; admins manage publisher keys."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response, status
from pydantic import BaseModel, Field

from services.ingest.service import IngestService, InteractionIn
from shared.events import Interaction
from shared.http import AdminOnly, Bearer, app_service, unauthorized

router = APIRouter(prefix="/v1")


Service = Annotated[IngestService, Depends(app_service)]


async def current_publisher(service: Service, credentials: Bearer) -> str:
    """The publisher whose API key the request carries."""
    if credentials is None:
        raise unauthorized()
    publisher_id = await service.publisher_for_key(credentials.credentials)
    if publisher_id is None:
        raise unauthorized("unknown or revoked API key")
    return publisher_id


Publisher = Annotated[str, Depends(current_publisher)]


class AcceptedOut(BaseModel):
    id: str
    status: str


@router.post(
    "/interactions",
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": AcceptedOut, "description": "A repeat: the original's id"}},
)
async def post_interaction(
    payload: InteractionIn, service: Service, publisher: Publisher, response: Response
) -> AcceptedOut:
    accepted = await service.accept(payload, publisher)
    if accepted.duplicate:
        response.status_code = status.HTTP_200_OK
        return AcceptedOut(id=accepted.interaction_id, status="duplicate")
    return AcceptedOut(id=accepted.interaction_id, status="accepted")


@router.get("/interactions/{interaction_id}")
async def get_interaction(interaction_id: str, service: Service, _: Publisher) -> Interaction:
    interaction = await service.get(interaction_id)
    if interaction is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such interaction")
    return interaction


class PublisherIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)


@router.post("/publishers", status_code=status.HTTP_201_CREATED, dependencies=[AdminOnly])
async def create_publisher(payload: PublisherIn, service: Service) -> dict[str, Any]:
    """The key is shown here once; only its hash is stored."""
    publisher = await service.create_publisher(payload.name)
    return {"id": publisher.id, "name": publisher.name, "api_key": publisher.api_key}


@router.post(
    "/publishers/{publisher_id}/revoke",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[AdminOnly],
)
async def revoke_publisher(publisher_id: str, service: Service) -> None:
    if not await service.revoke_publisher(publisher_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such active publisher")
