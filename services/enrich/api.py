"""Enrich's HTTP API: customer profiles, identities, merges, erasure and CRM imports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from services.enrich.customers import (
    CsvRows,
    CustomerFields,
    CustomerIn,
    IdentityIn,
    JsonLines,
    RowParser,
    parsed_rows,
)
from services.enrich.repository import MERGING, MERGING_SINCE, RECENT_POSTS, IdentityTaken
from services.enrich.service import (
    CrmIdTaken,
    EnrichService,
    IdentityNotHeld,
    MergeRefused,
    UnknownCustomer,
    UnknownTier,
)
from shared.access import AdminOnly, AdminOrOperator
from shared.events import Channel
from shared.http import app_service, field_problem, not_found, public
from shared.text import Name

router = APIRouter(prefix="/v1")

Service = Annotated[EnrichService, Depends(app_service)]
Document = dict[str, Any]


class MergeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    merge_id: str = Field(min_length=1, max_length=64, description="The profile merged away")


def taken(error: IdentityTaken) -> HTTPException:
    return field_problem(
        "identities", f"{', '.join(error.identities)} belong to another customer", 409
    )


def shown(customer: Document) -> Document:
    """A profile as the API shows it: without the marks a merge under way and the stream's
    counting of posts leave on it."""
    return public(customer, hide=(MERGING, MERGING_SINCE, RECENT_POSTS))


def found(customer: Document | None) -> Document:
    if customer is None:
        raise not_found("customer_id", "customer")
    return shown(customer)


@router.post("/customers", status_code=status.HTTP_201_CREATED, dependencies=[AdminOnly])
async def create_customer(payload: CustomerIn, service: Service) -> Document:
    try:
        return shown(await service.create_customer(payload))
    except UnknownTier as error:
        raise field_problem("tier", str(error)) from error
    except IdentityTaken as error:
        raise taken(error) from error
    except CrmIdTaken as error:
        raise field_problem("crm_id", "another customer has this CRM id", 409) from error


@router.get("/customers", dependencies=[AdminOrOperator])
async def search_customers(
    service: Service,
    handle: Annotated[str | None, Query(max_length=256)] = None,
    channel: Channel | None = None,
    email: Annotated[str | None, Query(max_length=320)] = None,
    # No control characters: MongoDB refuses a pattern with a NUL in it.
    name: Annotated[Name | None, Query(max_length=256)] = None,
    tier: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> dict[str, list[Document]]:
    """Profiles matching every filter given: handle (any form, on one channel or all),
    email, part of the name (case-insensitive), tier."""
    customers = await service.search_customers(
        handle=handle,
        channel=channel,
        email=email,
        name=name,
        tier=tier,
        limit=limit,
        offset=offset,
    )
    return {"customers": [shown(c) for c in customers]}


@router.post("/customers:import", dependencies=[AdminOnly])
async def import_customers(request: Request, service: Service) -> Document:
    """CRM rows as JSON lines (``application/x-ndjson``) or CSV (``text/csv``, list cells
    separated by ``;``, identities as ``channel:handle``), upserted by ``crm_id``. The body
    is read as a stream, so its size is bounded only by ``max_import_bytes``. A line that
    is not UTF-8, or a row that is not valid, is reported by its line number; the other
    rows are imported."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    parser: RowParser
    if media_type in ("application/x-ndjson", "application/jsonl", "application/json-seq"):
        parser = JsonLines()
    elif media_type in ("text/csv", "application/csv"):
        parser = CsvRows()
    else:
        raise field_problem(
            "content-type",
            "send application/x-ndjson or text/csv",
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        )
    limit = request.app.state.max_import_bytes
    report = await service.import_customers(parsed_rows(bounded(request, limit), parser))
    return asdict(report)


async def bounded(request: Request, limit: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise field_problem(
                "body", f"an import is at most {limit} bytes", status.HTTP_413_CONTENT_TOO_LARGE
            )
        yield chunk


@router.get("/customers/{customer_id}", dependencies=[AdminOrOperator])
async def get_customer(customer_id: str, service: Service) -> Document:
    """The profile; a merged-away id answers with the profile it was merged into."""
    return found(await service.get_customer(customer_id))


@router.patch("/customers/{customer_id}", dependencies=[AdminOnly])
async def update_customer(customer_id: str, patch: CustomerFields, service: Service) -> Document:
    try:
        return found(await service.update_customer(customer_id, patch))
    except UnknownTier as error:
        raise field_problem("tier", str(error)) from error
    except CrmIdTaken as error:
        raise field_problem("crm_id", "another customer has this CRM id", 409) from error


@router.delete(
    "/customers/{customer_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[AdminOnly]
)
async def erase_customer(customer_id: str, service: Service) -> Response:
    """Erasure: the profile, its identities and aliases go; later posts are from a stranger."""
    if not await service.erase_customer(customer_id):
        raise not_found("customer_id", "customer")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/customers/{customer_id}:merge", dependencies=[AdminOnly])
async def merge_customers(customer_id: str, payload: MergeIn, service: Service) -> Document:
    """Move ``merge_id``'s identities and history here; its id resolves here from now on.
    Merging a CRM customer into a prospect merges the prospect into the customer: the
    answer is the customer's profile. 404 names an id that matches nobody; 409 names
    one merged away already, the customer itself as ``merge_id``, or one another merge
    holds."""
    try:
        return found(await service.merge(customer_id, payload.merge_id))
    except UnknownCustomer as error:
        raise not_found(error.field, "customer") from error
    except MergeRefused as error:
        raise field_problem(error.field, error.reason, status.HTTP_409_CONFLICT) from error


@router.post(
    "/customers/{customer_id}/identities",
    status_code=status.HTTP_201_CREATED,
    dependencies=[AdminOnly],
)
async def link_identity(customer_id: str, identity: IdentityIn, service: Service) -> Document:
    try:
        return found(await service.link_identity(customer_id, identity))
    except IdentityTaken as error:
        raise taken(error) from error


# ``:path`` so that a profile URL, slashes and all, can name the identity.
@router.delete("/customers/{customer_id}/identities/{identity:path}", dependencies=[AdminOnly])
async def unlink_identity(customer_id: str, identity: str, service: Service) -> Document:
    """``identity`` as ``channel:handle`` in any form linking takes (``x:@Ada_L`` unlinks
    ``twitter:ada_l``); 404 naming it when the customer does not hold it."""
    try:
        return found(await service.unlink_identity(customer_id, identity))
    except IdentityNotHeld as error:
        raise field_problem("identity", str(error), 404) from error
    except ValueError as error:
        raise field_problem("identity", str(error)) from error
