"""Ingest's HTTP API: publishers post interactions (publisher keys); admins manage
publishers and feeds; admins and operators follow an interaction's journey."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.ingest.config import IngestSettings
from services.ingest.service import (
    BadRequest,
    ContentKind,
    FeedIn,
    IngestService,
    InteractionIn,
    Outcome,
    Publisher,
    unpack,
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
from shared.egress import EndpointRefused, without_userinfo
from shared.events import Channel, Role
from shared.http import app_service, field_problem, not_found, parse_json, public
from shared.text import Name

router = APIRouter(prefix="/v1")

Service = Annotated[IngestService, Depends(app_service)]

CONTENT_KINDS: dict[str, ContentKind] = {
    "application/json": "json",
    "application/cloudevents+json": "cloudevent",
    "application/cloudevents-batch+json": "cloudevents-batch",
}


async def settings_of(request: Request) -> IngestSettings:  # async: see app_service
    settings: IngestSettings = request.app.state.runtime.settings
    return settings


Settings = Annotated[IngestSettings, Depends(settings_of)]


async def current_publisher(
    service: Service, caller: Annotated[Principal, allow(Role.PUBLISHER)]
) -> Publisher:
    """The publisher whose key the request carries."""
    publisher = await service.publisher(str(caller.subject))
    if publisher is None:
        raise forbidden("this key's publisher is revoked")
    return publisher


CurrentPublisher = Annotated[Publisher, Depends(current_publisher)]


def problem(
    code: int, field: str, reason: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=code, content={"detail": [{"field": field, "reason": reason}]}, headers=headers
    )


def content_kind(request: Request) -> ContentKind | None:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return CONTENT_KINDS.get(media_type)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it is over ``limit`` bytes (declared or actually sent)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            return None
    return bytes(body)


INTERACTIONS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        InteractionIn.model_json_schema(
                            ref_template="#/components/schemas/{model}"
                        ),
                        {"type": "array", "items": {"$ref": "#/components/schemas/InteractionIn"}},
                    ]
                }
            },
            "application/cloudevents+json": {"schema": {"type": "object"}},
            "application/cloudevents-batch+json": {"schema": {"type": "array"}},
        },
    }
}


@router.post(
    "/interactions",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=INTERACTIONS_BODY,
    responses={
        200: {"description": "A repeat (the original's id), or a batch's per-item outcomes"},
        413: {
            "description": "Body over the size limit, or an interaction too large (its "
            "attributes, or its event for the broker), naming the field"
        },
        415: {"description": "Not JSON or CloudEvents JSON"},
        422: {"description": "Invalid fields, each named with the reason"},
        429: {"description": "Over the publisher's rate limit; see Retry-After"},
    },
)
async def post_interactions(
    request: Request, service: Service, publisher: CurrentPublisher, settings: Settings
) -> JSONResponse:
    """One interaction (JSON object), a batch (JSON array), or CloudEvents (structured or batch)."""
    kind = content_kind(request)
    if kind is None:
        return problem(415, "content-type", "send application/json or CloudEvents JSON")
    body = await read_body(request, settings.max_body_bytes)
    if body is None:
        return problem(413, "body", f"larger than {settings.max_body_bytes} bytes")
    decoded = parse_json(body)
    try:
        unpacked = unpack(kind, decoded, settings.max_batch)
    except BadRequest as exc:
        return JSONResponse(status_code=422, content={"detail": exc.errors})
    wait = service.throttle(publisher, len(unpacked.items))
    if wait > 0:
        retry_after = str(max(1, math.ceil(wait)))
        return problem(
            429, "body", "over this publisher's rate limit", {"Retry-After": retry_after}
        )
    caller = request.headers.get("traceparent")  # W3C trace context, continued if valid
    with service.spans.span("accept interactions", caller, count=len(unpacked.items)):
        if unpacked.batch:
            outcomes = await service.accept(
                unpacked.items, publisher, [caller] * len(unpacked.items)
            )
            return JSONResponse(status_code=200, content=batch_answer(outcomes))
        [item] = unpacked.items
        return single_answer(await service.accept_one(item, publisher, caller))


def single_answer(outcome: Outcome) -> JSONResponse:
    codes = {"accepted": 202, "duplicate": 200, "rejected": 422, "forbidden": 403}
    if outcome.errors:
        code = 413 if outcome.too_large else codes[outcome.status]
        return JSONResponse(status_code=code, content={"detail": outcome.errors})
    return JSONResponse(
        status_code=codes[outcome.status], content={"id": outcome.id, "status": outcome.status}
    )


def batch_answer(outcomes: list[Outcome]) -> dict[str, Any]:
    counts = {s: 0 for s in ("accepted", "duplicate", "rejected", "forbidden")}
    results = []
    for index, outcome in enumerate(outcomes):
        counts[outcome.status] += 1
        result: dict[str, Any] = {"index": index, "status": outcome.status}
        if outcome.id is not None:
            result["id"] = outcome.id
        if outcome.errors:
            result["errors"] = outcome.errors
        results.append(result)
    return {**counts, "results": results}


@router.get("/interactions/{interaction_id}")
async def get_interaction(
    interaction_id: str,
    service: Service,
    caller: Annotated[Principal, allow(Role.ADMIN, Role.OPERATOR, Role.PUBLISHER)],
) -> dict[str, Any]:
    """The interaction, when ingest stored it and when its event was published. A
    publisher sees only its own."""
    found = await service.get(interaction_id)
    if found is None:
        raise not_found("interaction_id", "interaction")
    require_subject(caller, found["publisher_id"], "interaction")
    return found


@router.get("/interactions/{interaction_id}/journey", dependencies=[AdminOrOperator])
async def get_journey(interaction_id: str, service: Service) -> dict[str, Any]:
    """The interaction's path with times and trace ids: accepted, published, enriched
    (customer, tier, sentiment), queued, offered, accepted, resolved, and every webhook
    attempt. Built from the events the services publish."""
    found = await service.journey(interaction_id)
    if found is None:
        raise not_found("interaction_id", "interaction")
    return found


class PublisherIn(BaseModel):
    name: Name = Field(min_length=1, max_length=128)
    channels: list[Channel] | None = Field(default=None, max_length=32)
    sources: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, max_length=64
    )


@router.post("/publishers", status_code=status.HTTP_201_CREATED)
async def create_publisher(
    payload: PublisherIn,
    service: Service,
    keys: Keys,
    caller: AdminKey,
) -> dict[str, Any]:
    """A publisher and its first key (role ``publisher``), shown here once; only its
    hash is stored. Limit it to some channels or sources, or leave those out to allow
    all. ``POST /v1/keys`` issues more keys for it, for rotation."""
    channels = [c.value for c in payload.channels] if payload.channels is not None else None
    publisher = await service.create_publisher(payload.name, channels, payload.sources)
    record, key = await keys.issue(
        Role.PUBLISHER, f"publisher {payload.name}", caller.key_id, publisher.id
    )
    return {"id": publisher.id, "name": publisher.name, "key_id": record.id, "api_key": key}


@router.get("/publishers", dependencies=[AdminOnly])
async def list_publishers(service: Service) -> list[dict[str, Any]]:
    return [public(doc) for doc in await service.list_publishers()]


@router.post(
    "/publishers/{publisher_id}/revoke",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[AdminOnly],
)
async def revoke_publisher(publisher_id: str, service: Service, keys: Keys) -> None:
    """The publisher and every key it has are refused from now on."""
    if not await service.revoke_publisher(publisher_id):
        raise not_found("publisher_id", "active publisher")
    await keys.revoke_subject(Role.PUBLISHER, publisher_id)


@router.post("/feeds", status_code=status.HTTP_201_CREATED, dependencies=[AdminOnly])
async def create_feed(payload: FeedIn, service: Service, settings: Settings) -> dict[str, Any]:
    """An RSS or Atom feed to listen to: each new entry becomes an interaction. A host
    that resolves to a private or loopback address is refused (unless allow-listed)."""
    try:
        return feed_out(await service.create_feed(payload, settings.allow_hosts))
    except EndpointRefused as exc:
        raise field_problem("url", str(exc)) from exc


@router.get("/feeds", dependencies=[AdminOnly])
async def list_feeds(service: Service) -> list[dict[str, Any]]:
    return [feed_out(feed) for feed in await service.list_feeds()]


def feed_out(feed: dict[str, Any]) -> dict[str, Any]:
    """A feed as shown: a URL stored with a user name or password shows neither."""
    return public(feed) | {"url": without_userinfo(feed["url"])}


@router.delete("/feeds/{feed_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[AdminOnly])
async def delete_feed(feed_id: str, service: Service) -> None:
    if not await service.delete_feed(feed_id):
        raise not_found("feed_id", "feed")
