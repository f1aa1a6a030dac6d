"""Notify's HTTP API: subscriptions (admin) and the deliveries made for them (admin and
operator: read and replay)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.notify.service import NotifyService, SubscriptionIn
from shared.access import AdminOnly, AdminOrOperator
from shared.audit import record_change
from shared.egress import EndpointRefused, without_userinfo
from shared.http import app_service, not_found, public
from shared.mongo import epoch_ms

router = APIRouter(prefix="/v1")


Service = Annotated[NotifyService, Depends(app_service)]


def delivery_out(doc: dict[str, Any]) -> dict[str, Any]:
    """A delivery as the API shows it: its attempts have an endpoint of their own."""
    return public(doc, hide=("lease", "attempts"))


def subscription_out(doc: dict[str, Any]) -> dict[str, Any]:
    """A subscription as the API shows it (and the audit log records it): never its
    signing secret, nor a password in its URL."""
    shown = public(doc, hide=("secret", "previous_secret"))
    if isinstance(shown.get("url"), str):
        shown["url"] = without_userinfo(shown["url"])
    shown["enabled"] = bool(shown.get("enabled"))  # stored as 1/0 by some stores
    return shown


@router.post(
    "/subscriptions",
    status_code=status.HTTP_201_CREATED,
    response_model=None,
    dependencies=[AdminOnly],
)
async def create_subscription(
    payload: SubscriptionIn, service: Service, request: Request
) -> dict[str, Any] | JSONResponse:
    """The signing secret is shown here once."""
    try:
        subscription, secret = await service.create_subscription(payload)
    except EndpointRefused as exc:
        return JSONResponse(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            content={"detail": [{"field": "url", "reason": str(exc)}]},
        )
    record_change(request, None, subscription_out(subscription))
    return {**subscription_out(subscription), "secret": secret}


@router.post("/subscriptions/{subscription_id}/rotate-secret", dependencies=[AdminOnly])
async def rotate_secret(subscription_id: str, service: Service, request: Request) -> dict[str, str]:
    """A new signing secret, shown once. Until the overlap ends, deliveries carry a
    signature for each secret, so receivers can switch without missing one."""
    secret = await service.rotate_secret(subscription_id)
    if secret is None:
        raise not_found("subscription_id", "subscription")
    record_change(request, {"secret": "previous"}, {"secret": "rotated"})  # never the values
    return {"id": subscription_id, "secret": secret}


class EnabledIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool


@router.put("/subscriptions/{subscription_id}/enabled", dependencies=[AdminOnly])
async def set_enabled(
    subscription_id: str, payload: EnabledIn, service: Service, request: Request
) -> dict[str, Any]:
    """Pause or resume a subscription (an endpoint answering 410 Gone pauses it too)."""
    before = await service.get_subscription(subscription_id)
    subscription = await service.set_enabled(subscription_id, payload.enabled)
    if before is None or subscription is None:
        raise not_found("subscription_id", "subscription")
    record_change(request, subscription_out(before), subscription_out(subscription))
    return subscription_out(subscription)


@router.get("/subscriptions/{subscription_id}", dependencies=[AdminOnly])
async def get_subscription(subscription_id: str, service: Service) -> dict[str, Any]:
    subscription = await service.get_subscription(subscription_id)
    if subscription is None:
        raise not_found("subscription_id", "subscription")
    return subscription_out(subscription)


@router.get("/deliveries", dependencies=[AdminOrOperator])
async def list_deliveries(
    service: Service,
    subscription_id: str | None = None,
    delivery_status: Annotated[
        Literal["pending", "delivered", "dead", "cancelled"] | None, Query(alias="status")
    ] = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    """Deliveries, oldest first, by subscription, status and creation time."""
    filters: dict[str, Any] = {
        name: value
        for name, value in (("subscription_id", subscription_id), ("status", delivery_status))
        if value is not None
    }
    created = {op: epoch_ms(at) for op, at in (("$gte", since), ("$lte", until)) if at is not None}
    if created:
        filters["created_ms"] = created
    deliveries = await service.list_deliveries(filters, limit)
    return [delivery_out(delivery) for delivery in deliveries]


@router.get("/deliveries/{delivery_id}/attempts", dependencies=[AdminOrOperator])
async def list_attempts(delivery_id: str, service: Service) -> list[dict[str, Any]]:
    """Every attempt at one delivery: when, status, latency and a response excerpt."""
    attempts = await service.list_attempts(delivery_id)
    if attempts is None:
        raise not_found("delivery_id", "delivery")
    return attempts


@router.post(
    "/deliveries/{delivery_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminOrOperator],
)
async def replay_delivery(delivery_id: str, service: Service) -> dict[str, Any]:
    """Send a delivered, dead or cancelled delivery again, under the same webhook-id."""
    replayed = await service.replay(delivery_id)
    if replayed is None:
        raise not_found("delivery_id", "finished delivery")
    return delivery_out(replayed)


class ReplayDeadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime
    until: AwareDatetime
    limit: int = Field(default=1_000, ge=1, le=10_000)


@router.post("/deliveries/replay", dependencies=[AdminOrOperator])
async def replay_dead(payload: ReplayDeadIn, service: Service) -> dict[str, int]:
    """Replay every dead delivery created between ``since`` and ``until``."""
    return {"replayed": await service.replay_dead(payload.since, payload.until, payload.limit)}
