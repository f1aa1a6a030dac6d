"""Access control across the four services, on the real broker and store.

The walk below takes every route from every service's OpenAPI schema and calls it with
no key, a malformed key, an unknown key and a key of each role. ``ROUTES`` says which
roles each route admits; a route missing from it (a new one) fails the test, so no
route ships without a decision about who may call it.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from shared.embedded import EmbeddedStack
from shared.events import Role, utcnow
from tests.support import admin_headers, eventually
from tests.system import (
    ADMIN,
    AGENT,
    FACTORIES,
    OPERATOR,
    PUBLISHER,
    System,
    bearer,
    issue,
    known_to,
    running,
)

STAFF = frozenset({ADMIN, OPERATOR})
EVERY_SERVICE = {
    ("POST", "/v1/keys"): {ADMIN},
    ("GET", "/v1/keys"): {ADMIN},
    ("GET", "/v1/keys/{key_id}"): {ADMIN},
    ("POST", "/v1/keys/{key_id}/revoke"): {ADMIN},
    ("GET", "/v1/audit"): {ADMIN},
}
ROUTES: dict[str, dict[tuple[str, str], set[Role] | frozenset[Role]]] = {
    "ingest": {
        ("POST", "/v1/interactions"): {PUBLISHER},
        ("GET", "/v1/interactions/{interaction_id}"): {ADMIN, OPERATOR, PUBLISHER},
        ("GET", "/v1/interactions/{interaction_id}/journey"): STAFF,
        ("POST", "/v1/publishers"): {ADMIN},
        ("GET", "/v1/publishers"): {ADMIN},
        ("POST", "/v1/publishers/{publisher_id}/revoke"): {ADMIN},
        ("POST", "/v1/feeds"): {ADMIN},
        ("GET", "/v1/feeds"): {ADMIN},
        ("DELETE", "/v1/feeds/{feed_id}"): {ADMIN},
    },
    "enrich": {
        ("POST", "/v1/customers"): {ADMIN},
        ("GET", "/v1/customers"): STAFF,
        ("POST", "/v1/customers:import"): {ADMIN},
        ("GET", "/v1/customers/{customer_id}"): STAFF,
        ("PATCH", "/v1/customers/{customer_id}"): {ADMIN},
        ("DELETE", "/v1/customers/{customer_id}"): {ADMIN},
        ("POST", "/v1/customers/{customer_id}:merge"): {ADMIN},
        ("POST", "/v1/customers/{customer_id}/identities"): {ADMIN},
        ("DELETE", "/v1/customers/{customer_id}/identities/{identity}"): {ADMIN},
    },
    "router": {
        ("POST", "/v1/agents"): {ADMIN},
        ("GET", "/v1/agents"): STAFF,
        ("GET", "/v1/agents/{agent_id}"): {ADMIN, OPERATOR, AGENT},
        ("PATCH", "/v1/agents/{agent_id}"): {ADMIN},
        ("PUT", "/v1/agents/{agent_id}/presence"): {ADMIN, AGENT},
        ("GET", "/v1/policy"): STAFF,
        ("PUT", "/v1/policy"): {ADMIN},
        ("GET", "/v1/policy/versions/{version}"): STAFF,
        ("POST", "/v1/policy:evaluate"): STAFF,
        ("GET", "/v1/queues"): STAFF,
        ("GET", "/v1/items/{interaction_id}"): {ADMIN, OPERATOR, AGENT},
        ("GET", "/v1/items/{interaction_id}/decision"): STAFF,
        ("POST", "/v1/items/{interaction_id}/{action}"): {AGENT},
    },
    "notify": {
        ("POST", "/v1/subscriptions"): {ADMIN},
        ("POST", "/v1/subscriptions/{subscription_id}/rotate-secret"): {ADMIN},
        ("PUT", "/v1/subscriptions/{subscription_id}/enabled"): {ADMIN},
        ("GET", "/v1/subscriptions/{subscription_id}"): {ADMIN},
        ("GET", "/v1/deliveries"): STAFF,
        ("GET", "/v1/deliveries/{delivery_id}/attempts"): STAFF,
        ("POST", "/v1/deliveries/{delivery_id}/replay"): STAFF,
        ("POST", "/v1/deliveries/replay"): STAFF,
    },
}
MALFORMED_KEY = "not-a-key"
UNKNOWN_KEY = "sbk_0123456789abcdef_" + "x" * 43


def operations(app: FastAPI) -> list[tuple[str, str]]:
    schema = app.openapi()
    return [(method.upper(), path) for path, item in schema["paths"].items() for method in item]


def concrete(path: str, agent_id: str) -> str:
    """A callable path: the test agent's own id for agent ids, a placeholder elsewhere."""
    path = path.replace("{agent_id}", agent_id).replace("{version}", "1")
    path = path.replace("{action}", "accept")
    return re.sub(r"\{[a-z_]+\}", "nothing-here", path)


async def call(
    http: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> httpx.Response:
    body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH") else None
    return await http.request(method, path, json=body, headers=headers)


def verdict(
    allowed: set[Role] | frozenset[Role], role: Role | None, listing: bool, code: int
) -> bool:
    """Whether ``code`` is right for a caller of ``role`` (None: no valid key)."""
    if role is None:
        return code == 401
    if role not in allowed:
        return code == 403
    if listing:  # a GET without parameters has nothing to be missing: it must answer
        return code == 200
    return code not in (401, 403) and code < 500


async def walk(system: System, service: str) -> list[str]:
    """Every route of one service with every kind of caller: what answered wrongly."""
    expected = {**EVERY_SERVICE, **ROUTES[service]}
    found = operations(system.apps[service])
    assert sorted(found) == sorted(expected), f"{service}: a route has no expected roles here"
    callers: list[tuple[str, Role | None, dict[str, str]]] = [
        ("no key", None, {}),
        ("malformed key", None, bearer(MALFORMED_KEY)),
        ("unknown key", None, bearer(UNKNOWN_KEY)),
        *((role.value, role, system.headers(role)) for role in Role),
    ]
    wrong = []
    for method, template in found:
        path = concrete(template, system.agent_id)
        listing = method == "GET" and "{" not in template
        for name, role, headers in callers:
            code = (await call(system.http[service], method, path, headers)).status_code
            if not verdict(expected[(method, template)], role, listing, code):
                wrong.append(f"{service} {method} {path} with {name}: {code}")
    return wrong


async def test_every_route_of_every_service_admits_exactly_its_roles(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running(stack, namespace, run_dir, tuple(FACTORIES)) as system:
        wrong = [line for service in FACTORIES for line in await walk(system, service)]
        for http in system.http.values():
            for open_path in ("/healthz", "/readyz", "/metrics"):
                assert (await http.get(open_path)).status_code == 200
            assert (await http.get("/openapi.json")).status_code == 404  # docs are opt-in

    assert wrong == []


async def test_a_revoked_key_is_refused_at_once_and_everywhere_soon_after(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running(stack, namespace, run_dir, ("router", "enrich")) as system:
        router, enrich = system.http["router"], system.http["enrich"]
        key = system.keys[OPERATOR]
        before = await router.get("/v1/queues", headers=bearer(key))
        await known_to(enrich, key, live=True)
        trusted_elsewhere = await enrich.get("/v1/customers", headers=bearer(key))
        revoked = await router.post(f"/v1/keys/{key.split('_')[1]}/revoke", headers=admin_headers())
        at_once = await router.get("/v1/queues", headers=bearer(key))
        await known_to(enrich, key, live=False)
        elsewhere = await enrich.get("/v1/customers", headers=bearer(key))

    assert before.status_code == 200
    assert trusted_elsewhere.status_code == 200  # and so taken on trust there for a while
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert at_once.status_code == 401
    assert elsewhere.status_code == 401


async def test_an_expired_key_is_refused(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running(stack, namespace, run_dir, ("router",)) as system:
        router = system.http["router"]
        # Time enough to issue the key and use it once on a slow machine.
        soon = (utcnow() + timedelta(seconds=5)).isoformat()
        issued = await issue(router, {"role": "operator", "name": "short", "expires_at": soon})
        fresh = await router.get("/v1/queues", headers=bearer(issued["key"]))

        async def refused() -> bool:
            answer = await router.get("/v1/queues", headers=bearer(issued["key"]))
            return answer.status_code == 401

        await eventually(refused, timeout_s=30)
        past = await router.post(
            "/v1/keys",
            json={"role": "operator", "name": "late", "expires_at": "2020-01-01T00:00:00Z"},
            headers=admin_headers(),
        )
        no_agent = await router.post(
            "/v1/keys", json={"role": "agent", "name": "who?"}, headers=admin_headers()
        )

    assert fresh.status_code == 200
    assert past.status_code == 422
    assert "expires_at" in past.text
    assert no_agent.status_code == 422
    assert "subject" in no_agent.text


async def test_an_operator_reads_policy_but_cannot_change_it_and_changes_are_audited(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running(stack, namespace, run_dir, ("router",)) as system:
        router = system.http["router"]
        policy = {"default_queue": "general", "queues": [{"name": "general"}], "rules": []}
        read = await router.get("/v1/policy", headers=system.headers(OPERATOR))
        refused = await router.put("/v1/policy", json=policy, headers=system.headers(OPERATOR))
        saved = await router.put("/v1/policy", json=policy, headers=system.headers(ADMIN))
        audit = await router.get("/v1/audit", headers=system.headers(ADMIN))
        operator_audit = await router.get("/v1/audit", headers=system.headers(OPERATOR))

    assert read.status_code == 200
    assert refused.status_code == 403
    assert saved.status_code == 200, saved.text
    assert operator_audit.status_code == 403
    entries = audit.json()["entries"]
    [policy_change] = [e for e in entries if e["action"] == "PUT /v1/policy"]
    admin_key_id = system.keys[ADMIN].split("_")[1]
    assert policy_change["key_id"] == admin_key_id
    assert policy_change["role"] == "admin"
    assert policy_change["change"]["after"]["version"] == saved.json()["version"]
    assert policy_change["change"]["before"]["version"] == saved.json()["version"] - 1
    # Issuing the test's agent is in the log too; no key, hash or secret is.
    assert any(e["action"] == "POST /v1/agents" for e in entries)
    for key in system.keys.values():
        assert key not in audit.text
        assert key.split("_", 2)[2] not in audit.text
