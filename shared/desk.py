"""The sample agent desk: a webhook receiver that verifies each delivery's Standard
Webhooks signature and prints the work it was offered. A stand-in for a real desk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def known_secrets(path: Path) -> list[str]:
    """Signing secrets of the subscriptions that point here (written by `switchboard demo`)."""
    if not path.exists():
        return []
    secrets: list[str] = json.loads(path.read_text())
    return secrets


def verify(body: bytes, headers: dict[str, str], secrets: list[str]) -> dict[str, Any] | None:
    for secret in secrets:
        try:
            payload: dict[str, Any] = Webhook(secret).verify(body, headers)
        except WebhookVerificationError:
            continue
        return payload
    return None


def describe(event: dict[str, Any]) -> str:
    data = event.get("data", {})
    customer = data.get("customer", {})
    return (
        f"[{event.get('type', '?').removeprefix('io.switchboard.')}] "
        f"queue={data.get('queue')} p{data.get('priority')} rule={data.get('rule')} "
        f"agent={data.get('agent_id')} | {customer.get('tier')} customer, "
        f"{data.get('sentiment')} | {data.get('author_handle')}: {data.get('text', '')[:80]!r}"
    )


def create_desk(secrets_file: Path) -> FastAPI:
    app = FastAPI(title="Switchboard sample desk")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.post("/webhooks")
    async def webhooks(request: Request) -> Response:
        body = await request.body()
        event = verify(body, dict(request.headers), known_secrets(secrets_file))
        if event is None:
            print("desk: ✗ rejected a delivery whose signature did not verify", flush=True)
            return Response(status_code=401)
        print(f"desk: ✓ signature verified {describe(event)}", flush=True)
        return Response(status_code=204)

    return app


def run_desk(port: int, secrets_file: Path) -> int:
    uvicorn.run(create_desk(secrets_file), host="127.0.0.1", port=port, log_level="warning")
    return 0
