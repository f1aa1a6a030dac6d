"""Who may call what: bearer API keys with roles, checked the same way by every service.

A key reads ``sbk_<id>_<secret>``: the id finds its record, the secret (256 random bits)
is checked against the stored SHA-256 hash in constant time. The key itself is shown
once, when it is issued, and stored nowhere.

Any service can issue or revoke a key. It stores the change in its own ``access_keys``
collection at once (a revoked key is refused there from the next request) and
publishes it on the access-keys topic through its outbox; every service consumes that
topic into its own collection, so each can check every key without asking another.
A record is created once and can only become revoked, so replicas merge without
conflict. A key found good is taken on trust for ``KEY_TRUSTED_S`` (no store read per
request); its revocation ends that trust at once where it is stored or merged, and
within ``KEY_TRUSTED_S`` on other replicas of the same service. The deployment's
bootstrap admin token (``SWITCHBOARD_AUTH_ADMIN_TOKEN``) is an admin key that lives in
the settings; it is how the first keys are made.

Roles:
- ``admin``: policy, queues, agents, subscriptions, publishers and feeds, keys,
  customer import and erasure, the audit log; everything an operator may do.
- ``operator``: read customers, queues, agents, items and their decisions, deliveries
  and journeys; replay deliveries.
- ``agent``: its own presence, its own offers and assignments (the key's subject).
- ``publisher``: ingest only (the key's subject is the publisher).

Every API route names its roles with ``allow(...)``; ``require_access_rules`` refuses
to build an app with a route that names none.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, Field, SecretStr, field_validator, model_validator
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.events import ACCESS_KEY_CHANGED, AccessKey, CloudEvent, Role, utcnow
from shared.http import field_problem, not_found
from shared.mongo import Document
from shared.outbox import Outbox
from shared.text import Name
from shared.topics import Topics

KEY_PREFIX = "sbk"
BOOTSTRAP_KEY_ID = "bootstrap"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Roles whose keys speak for someone, and so must name them; and where each is registered.
SUBJECT_ROLES = frozenset({Role.AGENT, Role.PUBLISHER})
REGISTRIES = {
    Role.AGENT: "agents are registered at the router: POST /v1/agents",
    Role.PUBLISHER: "publishers are registered at ingest: POST /v1/publishers",
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (never the key), its role and whom it speaks for."""

    key_id: str
    role: Role
    subject: str | None = None


KEY_TRUSTED_S = 5.0
KEY_LIFETIME_AT_MOST = timedelta(days=36_525)
KEYS_TRUSTED_AT_MOST = 10_000  # beyond, the trust is forgotten and built up again


def hash_key(key: str) -> str:
    """SHA-256 is enough for 256-bit random secrets: there is nothing to brute-force."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh ``(key id, key)``."""
    key_id = secrets.token_hex(8)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or len(key_id) != 16 or not secret:
        return None
    return key_id


def _ms(moment: datetime | None) -> int | None:
    # Epoch milliseconds: the store compares numbers reliably, dates less so.
    return None if moment is None else int(moment.timestamp() * 1000)


def _moment(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _document(record: AccessKey) -> Document:
    return {
        "_id": record.id,
        "role": record.role.value,
        "subject": record.subject,
        "name": record.name,
        "key_hash": record.key_hash,
        "created_by": record.created_by,
        "created_at": _ms(record.created_at),
        "expires_at": _ms(record.expires_at),
        "revoked_at": _ms(record.revoked_at),
    }


def _record(doc: Document) -> AccessKey:
    return AccessKey(
        id=doc["_id"],
        role=Role(doc["role"]),
        subject=doc.get("subject"),
        name=doc["name"],
        key_hash=doc["key_hash"],
        created_by=doc["created_by"],
        created_at=_moment(doc["created_at"]) or utcnow(),
        expires_at=_moment(doc.get("expires_at")),
        revoked_at=_moment(doc.get("revoked_at")),
    )


class AccessKeys:
    """This service's replica of every key; the only code that touches ``access_keys``."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        outbox: Outbox,
        topics: Topics,
        bootstrap_token: SecretStr,
        service: str,
    ) -> None:
        self.collection = db["access_keys"]
        self.outbox = outbox
        self.topic = topics.access_keys
        self.bootstrap_token = bootstrap_token
        self.source = f"/switchboard/{service}"
        # Keys found good lately, by their hash: who they stand for, when they expire
        # (epoch ms), and until when (monotonic) they are taken without a store read.
        self.trusted: dict[str, tuple[Principal, int | None, float]] = {}

    async def issue(
        self,
        role: Role,
        name: str,
        created_by: str,
        subject: str | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[AccessKey, str]:
        """A new key of ``role``: its record, and the key itself (shown once, kept nowhere)."""
        key_id, key = new_key()
        record = AccessKey(
            id=key_id,
            role=role,
            subject=subject,
            name=name,
            key_hash=hash_key(key),
            created_by=created_by,
            created_at=utcnow(),
            expires_at=expires_at,
        )
        await self._publish(record)
        with contextlib.suppress(DuplicateKeyError):  # the topic may have brought it first
            await self.collection.insert_one(_document(record))
        return record, key

    async def revoke(self, key_id: str) -> AccessKey | None:
        """Revoke one key; refused here from now on, elsewhere once the event arrives."""
        doc = await self.collection.find_one({"_id": key_id})
        if doc is None:
            return None
        record = _record(doc)
        if record.revoked_at is None:
            record = record.model_copy(update={"revoked_at": utcnow()})
            await self._publish(record)
            await self._merge_revocation(record)
        return record

    async def revoke_subject(self, role: Role, subject: str) -> int:
        """Revoke every live key of one agent or publisher; returns how many."""
        docs = await self.collection.find({"subject": subject, "revoked_at": None}).to_list(None)
        revoked = 0
        for doc in docs:
            if doc["role"] == role.value and await self.revoke(doc["_id"]) is not None:
                revoked += 1
        return revoked

    async def registered(self, role: Role, subject: str) -> bool:
        """Whether an agent or publisher of this id was ever registered. Registering one
        (the router's ``POST /v1/agents``, ingest's ``POST /v1/publishers``) issues its
        first key, and every service holds every key's record: so each service can tell
        a registered id without asking the one that keeps the registry."""
        found = await self.collection.find_one(
            {"role": role.value, "subject": subject}, projection={"_id": 1}
        )
        return found is not None

    async def get(self, key_id: str) -> AccessKey | None:
        doc = await self.collection.find_one({"_id": key_id})
        return None if doc is None else _record(doc)

    async def list(self, role: Role | None = None) -> list[AccessKey]:
        query: Document = {} if role is None else {"role": role.value}
        docs = await self.collection.find(query).to_list(None)
        return sorted((_record(doc) for doc in docs), key=lambda record: record.created_at)

    async def authenticate(self, presented: str) -> Principal | None:
        """The caller a presented key stands for, or None if it is unknown, wrong,
        revoked or expired."""
        bootstrap = self.bootstrap_token.get_secret_value()
        if bootstrap and hmac.compare_digest(presented.encode(), bootstrap.encode()):
            return Principal(BOOTSTRAP_KEY_ID, Role.ADMIN)
        digest = hash_key(presented)
        now = _ms(utcnow()) or 0
        trusted = self.trusted.get(digest)
        if trusted is not None and trusted[2] > time.monotonic():
            principal, expires_ms, _ = trusted
            return principal if expires_ms is None or expires_ms > now else None
        key_id = key_id_of(presented)
        if key_id is None:
            return None
        doc = await self.collection.find_one({"_id": key_id})
        if doc is None or not hmac.compare_digest(doc["key_hash"], digest):
            return None
        if doc.get("revoked_at") is not None or (doc.get("expires_at") or now + 1) <= now:
            return None
        principal = Principal(key_id, Role(doc["role"]), doc.get("subject"))
        if len(self.trusted) >= KEYS_TRUSTED_AT_MOST:
            self.trusted.clear()
        self.trusted[digest] = (principal, doc.get("expires_at"), time.monotonic() + KEY_TRUSTED_S)
        return principal

    async def apply(self, events: Sequence[CloudEvent[AccessKey]]) -> None:
        """Merge key records from the topic (this service's own included): a new key is
        stored, a revocation applied; a repeat changes nothing."""
        for event in events:
            try:
                await self.collection.insert_one(_document(event.data))
            except DuplicateKeyError:
                if event.data.revoked_at is not None:
                    await self._merge_revocation(event.data)

    async def _merge_revocation(self, record: AccessKey) -> None:
        self.trusted = {
            digest: trusted
            for digest, trusted in self.trusted.items()
            if trusted[0].key_id != record.id
        }
        # The earliest revocation wins; a later one, or a repeat, matches nothing.
        revoked_at = _ms(record.revoked_at)
        await self.collection.update_one(
            {"_id": record.id, "revoked_at": None}, {"$set": {"revoked_at": revoked_at}}
        )

    async def _publish(self, record: AccessKey) -> None:
        event = CloudEvent[AccessKey](
            id=str(uuid.uuid4()),
            source=self.source,
            type=ACCESS_KEY_CHANGED,
            subject=record.id,
            data=record,
        )
        await self.outbox.add([(self.topic, record.id, event)])


# --- HTTP: the dependency every route names, and the key management API -------------

_bearer = HTTPBearer(auto_error=False)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def unauthorized(reason: str = "missing or invalid bearer token") -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=reason,
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbidden(reason: str) -> HTTPException:
    return HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail=reason)


class Allow:
    """Dependency: the caller, if its key is valid (else 401) and its role is one of
    ``roles`` (else 403). ``changes=False`` marks a POST that changes nothing (an
    evaluation, a search), which the audit log leaves out."""

    def __init__(self, roles: Sequence[Role], changes: bool = True) -> None:
        self.roles = frozenset(roles)
        self.changes = changes

    async def __call__(self, request: Request, credentials: Bearer) -> Principal:
        if credentials is None:
            raise unauthorized()
        keys: AccessKeys = request.app.state.access
        principal = await keys.authenticate(credentials.credentials)
        if principal is None:
            raise unauthorized("unknown, revoked or expired key")
        if principal.role not in self.roles:
            raise forbidden(f"a {principal.role.value} key may not do this")
        request.state.principal = principal
        request.state.audited = self.changes
        return principal


def allow(*roles: Role, changes: bool = True) -> Any:
    """``Depends`` on the caller having one of ``roles``: put it in a route's
    ``dependencies`` or annotate a parameter with it to get the ``Principal``."""
    return Depends(Allow(roles, changes))


AdminOnly = allow(Role.ADMIN)
AdminOrOperator = allow(Role.ADMIN, Role.OPERATOR)


def require_subject(principal: Principal, subject: str | None, what: str) -> None:
    """An agent or publisher key reaches only its own things (403 otherwise); admin and
    operator keys reach all."""
    if principal.role in SUBJECT_ROLES and principal.subject != subject:
        raise forbidden(f"this {what} belongs to someone else")


def access_rule(route: Any) -> Allow | None:
    """The ``Allow`` among a route's dependencies (its routers' included), if any."""
    pending = list(route.dependant.dependencies)
    while pending:
        dependency = pending.pop()
        if isinstance(dependency.call, Allow):
            return dependency.call
        pending.extend(dependency.dependencies)
    return None


def require_access_rules(app: FastAPI) -> None:
    """Refuse to build an app with a route that names no roles (default deny)."""
    for route in iter_route_contexts(app.routes):  # included routers, flattened
        if not isinstance(route.original_route, APIRoute) or route.path in PUBLIC_PATHS:
            continue
        if access_rule(route) is None:
            raise RuntimeError(f"route {route.path} has no access rule (see shared.access)")


class KeyIn(BaseModel):
    role: Role
    name: Name = Field(min_length=1, max_length=128)
    subject: Name | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The agent or publisher id the key speaks for (required for those roles).",
    )
    expires_at: AwareDatetime | None = None

    @field_validator("expires_at")
    @classmethod
    def _expires_in_the_future_within_reach(cls, moment: datetime | None) -> datetime | None:
        """Within a century: a later one is no expiry (leave it out), and one past the
        year 9999 in UTC (``9999-12-31T23:59:59-14:00``) could not be read back, which
        made the key impossible to list or revoke."""
        if moment is None:
            return None
        if moment <= utcnow():
            raise ValueError("must be in the future")
        if moment > utcnow() + KEY_LIFETIME_AT_MOST:
            raise ValueError("must be within 100 years; leave it out for a key that never expires")
        return moment

    @model_validator(mode="after")
    def _subject_matches_role(self) -> KeyIn:
        if self.role in SUBJECT_ROLES and self.subject is None:
            raise ValueError(f"subject: a {self.role.value} key must name its {self.role.value}")
        if self.role not in SUBJECT_ROLES and self.subject is not None:
            raise ValueError(f"subject: a {self.role.value} key speaks for no one")
        return self


def key_out(record: AccessKey) -> dict[str, Any]:
    return record.model_dump(mode="json", exclude={"key_hash"})


async def keys_of(request: Request) -> AccessKeys:  # async: see app_service
    keys: AccessKeys = request.app.state.access
    return keys


Keys = Annotated[AccessKeys, Depends(keys_of)]
AdminKey = Annotated[Principal, allow(Role.ADMIN)]

keys_api = APIRouter(prefix="/v1/keys", tags=["access keys"])


@keys_api.post("", status_code=status.HTTP_201_CREATED)
async def issue_key(payload: KeyIn, keys: Keys, caller: AdminKey) -> dict[str, Any]:
    """A new key; the key is in this answer only (its hash is what every service keeps).
    An agent's or publisher's key names one registered already (422 otherwise); a
    service learns of one registered elsewhere from the access-keys topic, within a
    second or so."""
    if payload.subject is not None and not await keys.registered(payload.role, payload.subject):
        where = REGISTRIES[payload.role]
        raise field_problem("subject", f"no {payload.role.value} has this id ({where})")
    record, key = await keys.issue(
        payload.role, payload.name, caller.key_id, payload.subject, payload.expires_at
    )
    return {**key_out(record), "key": key}


@keys_api.get("", dependencies=[AdminOnly])
async def list_keys(
    keys: Keys, role: Annotated[Role | None, Query()] = None
) -> dict[str, list[dict[str, Any]]]:
    return {"keys": [key_out(record) for record in await keys.list(role)]}


@keys_api.get("/{key_id}", dependencies=[AdminOnly])
async def get_key(key_id: str, keys: Keys) -> dict[str, Any]:
    record = await keys.get(key_id)
    if record is None:
        raise not_found("key_id", "key")
    return key_out(record)


@keys_api.post("/{key_id}/revoke", dependencies=[AdminOnly])
async def revoke_key(key_id: str, keys: Keys) -> dict[str, Any]:
    """Refused by this service from the next request, by the others once they have the
    event (normally well under a second)."""
    record = await keys.revoke(key_id)
    if record is None:
        raise not_found("key_id", "key")
    return key_out(record)
