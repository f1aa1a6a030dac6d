"""The whole system as `make run` starts it: `switchboard up` in a child process, with its
own broker, store, services and desk on free ports. One mention goes in; one signed
webhook comes out; Ctrl-C leaves nothing running."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from shared.cli import SERVICES, LocalSettings, read_credentials
from shared.embedded import free_port, free_ports
from tests.support import at_least, children_of, eventually, receiving

PORTS = ("broker", "store", "ingest", "enrich", "router", "notify", "desk")


@dataclass
class System:
    local: LocalSettings
    process: subprocess.Popen[str]
    credentials: dict[str, str]

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials['SWITCHBOARD_ADMIN_KEY']}"}

    def operator(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials['SWITCHBOARD_OPERATOR_KEY']}"}

    def publisher(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials['SWITCHBOARD_PUBLISHER_KEY']}"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    env = dict(os.environ, SWITCHBOARD_HOME=str(tmp_path / "home"))
    env.update({f"SWITCHBOARD_{name.upper()}_PORT": str(free_port()) for name in PORTS})
    env["SWITCHBOARD_STORE_PORT"] = str(free_ports(len(SERVICES)))  # a store per service
    # The test's own webhook receiver listens on a free port, not the sample desk's.
    env["SWITCHBOARD_NOTIFY_ALLOW_HOSTS"] = '["127.0.0.1"]'
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as in a terminal
    )
    local = LocalSettings.model_validate(
        {"home": tmp_path / "home"}
        | {f"{name}_port": int(env[f"SWITCHBOARD_{name.upper()}_PORT"]) for name in PORTS}
    )
    deadline = time.monotonic() + 90
    while "SWITCHBOARD_PUBLISHER_KEY" not in read_credentials(local.credentials_file):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "switchboard up did not become ready"
        time.sleep(0.25)
    yield System(local, process, read_credentials(local.credentials_file))
    if process.poll() is None:
        process.kill()
        process.wait()


CUSTOMER_NAME = "Ada Quillfeather"
CUSTOMER_EMAIL = "ada.quillfeather@example.org"
POST_TEXT = "Three weeks late and nobody answers. Terrible."
PUBLISHER_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_one_mention_becomes_one_signed_offer_and_ctrl_c_stops_everything(
    system: System,
) -> None:
    local = system.local
    async with receiving() as desk, httpx.AsyncClient(timeout=10) as http:
        customer = await http.post(
            f"{local.url('enrich')}/v1/customers",
            json={
                "name": CUSTOMER_NAME,
                "emails": [CUSTOMER_EMAIL],
                "tier": "platinum",
                "identities": [{"channel": "twitter", "handle": "@ada_quill"}],
            },
            headers=system.admin(),
        )
        agent = await http.post(
            f"{local.url('router')}/v1/agents",
            json={"name": "Grace", "presence": "online"},
            headers=system.admin(),
        )
        subscription = await http.post(
            f"{local.url('notify')}/v1/subscriptions",
            json={"url": desk.url, "filters": {"agent_id": agent.json()["id"]}},
            headers=system.admin(),
        )
        posted = await http.post(
            f"{local.url('ingest')}/v1/interactions",
            json={
                "channel": "twitter",
                "source": "e2e",
                "external_id": "1",
                "author": {"handle": "ADA_QUILL"},
                "text": POST_TEXT,
            },
            headers={**system.publisher(), "traceparent": PUBLISHER_TRACE},
        )
        assert [r.status_code for r in (customer, agent, subscription, posted)] == [
            201,
            201,
            201,
            202,
        ]

        await eventually(lambda: at_least(desk.received, 1), timeout_s=60)
        await asyncio.sleep(2.0)  # time for a wrong second delivery to show up
        journey_url = f"{local.url('ingest')}/v1/interactions/{posted.json()['id']}/journey"

        async def delivered_journey() -> dict[str, Any] | None:
            body = (await http.get(journey_url, headers=system.operator())).json()
            steps = [step["step"] for step in body.get("steps", [])]
            return body if "webhook delivered" in steps else None

        journey = await eventually(delivered_journey, timeout_s=30)
        metrics = [(await http.get(f"{local.url(s)}/metrics")).text for s in SERVICES]

    [(headers, body)] = desk.received
    event = Webhook(subscription.json()["secret"]).verify(body, headers)
    assert event["type"] == "io.switchboard.assignment.offered.v1"
    assert event["data"]["interaction_id"] == posted.json()["id"]
    assert event["data"]["queue"] == "priority"
    assert event["data"]["agent_id"] == agent.json()["id"]
    assert event["data"]["customer"] == {
        "id": customer.json()["id"],
        "tier": "platinum",
        "value": 0.0,
        "prospect": False,
    }
    assert json.loads(body)["data"]["sentiment"] == "negative"
    # One trace from the publisher's request to the desk: same trace id, a later span.
    _, trace, span, _ = headers["traceparent"].split("-")
    assert trace == PUBLISHER_TRACE.split("-")[1]
    assert span != PUBLISHER_TRACE.split("-")[2]
    assert json.loads(body)["traceparent"].split("-")[1] == trace  # the event's own span
    # The journey lists every step in order, all under the trace the desk received.
    assert [step["step"] for step in journey["steps"]] == [
        "accepted",
        "published",
        "enriched",
        "offered",
        "webhook delivered",
    ]
    assert journey["trace_ids"] == [trace]
    assert journey["steps"][2]["tier"] == "platinum"

    children = children_of(system.process.pid)
    assert len(children) == 10  # broker, a store per service, four services, desk
    os.killpg(system.process.pid, signal.SIGINT)  # what Ctrl-C does: the whole group
    assert system.process.wait(timeout=60) == 0
    assert [pid for pid in children if alive(pid)] == []
    # Nothing secret or personal reached the logs or the metrics.
    output = system.process.communicate()[0]
    logs = {path.stem: path.read_text() for path in (local.home / "logs").iterdir()}
    assert all('"service started"' in logs[service] for service in SERVICES)  # really there
    secrets = [*system.credentials.values(), subscription.json()["secret"]]
    personal = [POST_TEXT, "Three weeks late", CUSTOMER_NAME, CUSTOMER_EMAIL, "ada_quill"]
    for text in (output, *logs.values(), *metrics):  # the broker's and store's logs too
        assert [s for s in secrets if s in text] == []
        assert [p for p in personal if p.lower() in text.lower()] == []
