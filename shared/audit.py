"""The audit log: every change made through a management API, in each service's own
``audit`` collection.

``AuditTrail`` wraps the app, so no route can forget it: after a successful POST, PUT,
PATCH or DELETE by an admin or operator key it stores who (the key id, never the key),
what (method, route and its path parameters), when and the status. Routes that change
policy or subscriptions add the state before and after with ``record_change``.
Publishers posting interactions and agents working their offers are not management:
their effects have their own records (the interaction, the item's decision record).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.access import AdminOnly, Principal
from shared.events import Role, utcnow
from shared.http import public
from shared.logging import get_logger
from shared.mongo import Document

log = get_logger(__name__)

CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUDITED_ROLES = frozenset({Role.ADMIN, Role.OPERATOR})


class AuditLog:
    """The only code that touches ``audit``."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.collection = db["audit"]

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("at_ms", DESCENDING)])

    async def record(
        self,
        principal: Principal,
        method: str,
        route: str,
        target: dict[str, Any],
        status: int,
        change: dict[str, Any] | None,
    ) -> None:
        now = utcnow()
        await self.collection.insert_one(
            {
                "_id": str(uuid.uuid4()),
                "at": now.isoformat(),
                "at_ms": int(now.timestamp() * 1000),
                "key_id": principal.key_id,
                "role": principal.role.value,
                "action": f"{method} {route}",
                "target": target,
                "status": status,
                "change": change,
            }
        )

    async def recent(self, limit: int) -> list[Document]:
        cursor = self.collection.find({}).sort("at_ms", DESCENDING).limit(limit)
        return await cursor.to_list(length=limit)


def record_change(request: Request, before: Any, after: Any) -> None:
    """The state a change replaced and the state it left, for the audit entry."""
    request.state.audit_change = {"before": before, "after": after}


class AuditTrail:
    """ASGI middleware: an audit entry for each successful management change."""

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in CHANGING_METHODS:
            await self.app(scope, receive, send)
            return
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        state = scope.get("state") or {}
        principal = state.get("principal")
        if not isinstance(principal, Principal) or principal.role not in AUDITED_ROLES:
            return
        if status >= 400 or not state.get("audited", True):
            return
        route = str(getattr(scope.get("route"), "path", scope["path"]))
        target = {str(k): str(v) for k, v in (scope.get("path_params") or {}).items()}
        await self.audit.record(
            principal, scope["method"], route, target, status, state.get("audit_change")
        )


audit_api = APIRouter(prefix="/v1/audit", tags=["audit"])


@audit_api.get("", dependencies=[AdminOnly])
async def audit_entries(
    request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, list[dict[str, Any]]]:
    """The latest changes made through this service's management APIs, newest first."""
    audit: AuditLog = request.app.state.audit
    return {"entries": [public(doc, hide=("at_ms",)) for doc in await audit.recent(limit)]}
