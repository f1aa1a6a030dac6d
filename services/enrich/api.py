"""Enrich's HTTP API: customer profiles (admin token)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status

from services.enrich.repository import IdentityTaken
from services.enrich.service import CustomerIn, EnrichService
from shared.http import AdminOnly

router = APIRouter(prefix="/v1", dependencies=[AdminOnly])


def get_service(request: Request) -> EnrichService:
    service: EnrichService = request.app.state.service
    return service


Service = Annotated[EnrichService, Depends(get_service)]


def customer_out(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}


@router.post("/customers", status_code=status.HTTP_201_CREATED)
async def create_customer(payload: CustomerIn, service: Service) -> dict[str, Any]:
    try:
        customer = await service.create_customer(payload)
    except IdentityTaken as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "an identity already belongs to another customer"
        ) from exc
    return customer_out(customer)


@router.get("/customers/{customer_id}")
async def get_customer(customer_id: str, service: Service) -> dict[str, Any]:
    customer = await service.get_customer(customer_id)
    if customer is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such customer")
    return customer_out(customer)
