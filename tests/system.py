"""The four services in one test, on one namespace of the real broker and store, each
over real HTTP, with a key per role that every service already knows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from services.enrich.config import EnrichSettings
from services.enrich.main import create_app as enrich_app
from services.ingest.config import IngestSettings
from services.ingest.main import create_app as ingest_app
from services.notify.config import NotifySettings
from services.notify.main import create_app as notify_app
from services.router.config import RouterSettings
from services.router.main import create_app as router_app
from shared.embedded import EmbeddedStack
from shared.events import Role
from shared.settings import ServiceSettings
from tests.support import admin_headers, client_of, eventually, service_settings

ADMIN, OPERATOR, AGENT, PUBLISHER = Role.ADMIN, Role.OPERATOR, Role.AGENT, Role.PUBLISHER
FACTORIES: dict[str, tuple[type[ServiceSettings], Callable[[Any], FastAPI]]] = {
    "ingest": (IngestSettings, ingest_app),
    "enrich": (EnrichSettings, enrich_app),
    "router": (RouterSettings, router_app),
    "notify": (NotifySettings, notify_app),
}


@dataclass
class System:
    apps: dict[str, FastAPI]
    http: dict[str, httpx.AsyncClient]
    keys: dict[Role, str]
    agent_id: str

    def headers(self, role: Role) -> dict[str, str]:
        return bearer(self.keys[role])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def running(
    stack: EmbeddedStack, namespace: str, run_dir: Path, services: tuple[str, ...]
) -> AsyncIterator[System]:
    """The named services on one namespace, with one key per role known to all of them."""
    async with AsyncExitStack() as running_stack:
        apps, clients = {}, {}
        for name in services:
            settings_class, factory = FACTORIES[name]
            apps[name] = factory(service_settings(settings_class, stack, namespace, run_dir))
            clients[name] = await running_stack.enter_async_context(client_of(apps[name]))
        first = clients[services[0]]
        keys = {
            role: (await issue(first, {"role": role.value, "name": role.value}))["key"]
            for role in (ADMIN, OPERATOR)
        }
        agent_id = ""
        if "router" in clients:
            agent = await clients["router"].post(
                "/v1/agents", json={"name": "Grace"}, headers=admin_headers()
            )
            agent_id, keys[AGENT] = agent.json()["id"], agent.json()["token"]
        if "ingest" in clients:
            publisher = await clients["ingest"].post(
                "/v1/publishers", json={"name": "listener"}, headers=admin_headers()
            )
            keys[PUBLISHER] = publisher.json()["api_key"]
        for client in clients.values():
            for key in keys.values():
                await known_to(client, key)
        yield System(apps, clients, keys, agent_id)


async def issue(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    answer = await http.post("/v1/keys", json=body, headers=admin_headers())
    assert answer.status_code == 201, answer.text
    issued: dict[str, Any] = answer.json()
    return issued


async def known_to(http: httpx.AsyncClient, key: str, live: bool = True) -> None:
    """Wait until a service has the key's record from the access-keys topic (and, with
    ``live=False``, its revocation)."""
    key_id = key.split("_")[1]

    async def arrived() -> bool:
        answer = await http.get(f"/v1/keys/{key_id}", headers=admin_headers())
        return answer.status_code == 200 and (answer.json()["revoked_at"] is None) == live

    await eventually(arrived, timeout_s=20)
