"""`switchboard demo`: a customer, an agent with the sample desk as its endpoint, and a few
mentions, through the public APIs of a running `switchboard up`."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from shared.cli import LocalSettings, read_credentials

MENTIONS = (
    (
        "@ada_lovelace",
        2_400,
        "@acme my order is three weeks late and support ignores me. Unacceptable!",
    ),
    ("@curious_cat", 35, "@acme does the new plan include international roaming?"),
    ("@famous_reviewer", 85_000, "Cancelling @acme today. Worst service I have ever had."),
)


def run_demo(local: LocalSettings) -> int:
    credentials = read_credentials(local.credentials_file)
    if "SWITCHBOARD_PUBLISHER_KEY" not in credentials:
        print(
            f"no credentials in {local.credentials_file}: start Switchboard with `make run` first"
        )
        return 1
    admin = {"Authorization": f"Bearer {credentials['SWITCHBOARD_ADMIN_KEY']}"}
    publisher = {"Authorization": f"Bearer {credentials['SWITCHBOARD_PUBLISHER_KEY']}"}
    with httpx.Client(timeout=10.0) as http:
        customer = http.post(
            f"{local.url('enrich')}/v1/customers",
            json={
                "name": "Ada Lovelace",
                "tier": "platinum",
                "value": 18_000,
                "identities": [
                    {"channel": "twitter", "handle": "https://twitter.com/ada_lovelace"}
                ],
            },
            headers=admin,
        )
        report("customer Ada Lovelace (platinum)", customer)
        agent = http.post(
            f"{local.url('router')}/v1/agents",
            json={
                "name": "Grace",
                "skills": ["en", "twitter"],
                "capacity": 5,
                "presence": "online",
            },
            headers=admin,
        )
        report("agent Grace (online, capacity 5)", agent)
        subscription = http.post(
            f"{local.url('notify')}/v1/subscriptions",
            json={
                "url": f"{local.url('desk')}/webhooks",
                "event_types": ["io.switchboard.assignment.*"],
                "filters": {"agent_id": agent.json()["id"]},
            },
            headers=admin,
        )
        report("subscription: Grace's offers to the sample desk", subscription)
        remember_secret(local, subscription.json()["secret"])
        run = int(time.time())
        for n, (handle, followers, text) in enumerate(MENTIONS):
            posted = http.post(
                f"{local.url('ingest')}/v1/interactions",
                json={
                    "channel": "twitter",
                    "source": "demo",
                    "external_id": f"demo-{run}-{n}",
                    "author": {"handle": handle, "followers": followers},
                    "text": text,
                },
                headers=publisher,
            )
            report(f"mention from {handle}", posted)
    print("\nwatch the `make run` terminal: the desk prints each offer as it arrives.")
    return 0


def report(what: str, answer: httpx.Response) -> None:
    body: Any = answer.json() if answer.content else {}
    summary = body.get("id", body) if isinstance(body, dict) else body
    mark = "✓" if answer.is_success else "✗"
    print(f"{mark} {what}: {answer.status_code} {summary}")
    if not answer.is_success and answer.status_code != 409:
        answer.raise_for_status()


def remember_secret(local: LocalSettings, secret: str) -> None:
    path = local.desk_secrets_file
    known = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*known, secret]))
    path.chmod(0o600)
