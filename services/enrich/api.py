"""Enrich's HTTP API: customer profiles (admin token)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status

from services.enrich.repository import IdentityTaken
from services.enrich.service import CustomerIn, EnrichService
from shared.http import AdminOnly, app_service, public

router = APIRouter(prefix="/v1", dependencies=[AdminOnly])


Service = Annotated[EnrichService, Depends(app_service)]


@router.post("/customers", status_code=status.HTTP_201_CREATED)
async def create_customer(payload: CustomerIn, service: Service) -> dict[str, Any]:
    try:
        customer = await service.create_customer(payload)
    except IdentityTaken as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "an identity already belongs to another customer"
        ) from exc
    return public(customer)


@router.get("/customers/{customer_id}")
async def get_customer(customer_id: str, service: Service) -> dict[str, Any]:
    customer = await service.get_customer(customer_id)
    if customer is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such customer")
    return public(customer)
