"""`switchboard up` heals: a service killed with SIGKILL is started again, with a line
on the terminal naming it and its exit code, and every interaction still reaches the
desk exactly once. The stack runs in a child process with its own ports and home."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest

from shared.cli import SERVICES, LocalSettings, read_credentials, write_credentials
from shared.embedded import EmbeddedStack, free_port, free_ports
from shared.settings import KafkaSettings
from tests.faults.harness import QUEUED, RETRIES_S, Desk, Publisher, System, all_delivered
from tests.support import ADMIN_TOKEN, admin_headers, children_of, eventually

PORTS = ("broker", "store", "ingest", "enrich", "router", "notify", "desk")
BATCH = 100

pytestmark = pytest.mark.timeout(420)


@asynccontextmanager
async def switchboard_up(home: Path) -> AsyncIterator[tuple[System, subprocess.Popen[bytes]]]:
    """`switchboard up` on free ports, its terminal written to ``home``/terminal.log, with
    a desk subscribed to every queued item and a publisher key."""
    local = LocalSettings.model_validate(
        {"home": home}
        | {f"{name}_port": free_port() for name in PORTS}
        | {"store_port": free_ports(len(SERVICES))}  # a store per service, one after another
    )
    # A known admin token: `up` keeps the one its credentials file holds.
    write_credentials(local.credentials_file, {"SWITCHBOARD_AUTH_ADMIN_TOKEN": ADMIN_TOKEN})
    env = dict(
        os.environ,
        SWITCHBOARD_HOME=str(home),
        SWITCHBOARD_KAFKA_SESSION_TIMEOUT_S="3",
        SWITCHBOARD_KAFKA_HEARTBEAT_INTERVAL_S="0.5",
        SWITCHBOARD_NOTIFY_RETRY_SCHEDULE_S=json.dumps(RETRIES_S),
        SWITCHBOARD_NOTIFY_BREAKER_COOLDOWN_S="1",
        SWITCHBOARD_LOG_LEVEL="WARNING",
        SWITCHBOARD_NOTIFY_ALLOW_HOSTS=json.dumps(["127.0.0.1"]),  # the test's desk
    ) | {f"SWITCHBOARD_{name.upper()}_PORT": str(local.port(name)) for name in PORTS}
    process = start_up(home, env)
    stack = EmbeddedStack(home, local.broker_port, local.store_port)
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    system = System(stack, kafka, home, local, env, Desk())
    try:
        await eventually(lambda: started(process, local), timeout_s=120, interval_s=0.25)
        system.publisher_key = read_credentials(local.credentials_file)["SWITCHBOARD_PUBLISHER_KEY"]
        await system.desk.up()
        async with httpx.AsyncClient(timeout=10.0, headers=admin_headers()) as http:
            subscription = await http.post(
                f"{system.url('notify')}/v1/subscriptions",
                json={"url": system.desk.url, "event_types": [QUEUED]},
            )
            subscription.raise_for_status()
        yield system, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
            process.wait(timeout=90)
        await system.desk.down()


def start_up(home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`switchboard up` in its own process group, as in a terminal of its own."""
    with (home / "terminal.log").open("wb") as terminal:
        return subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up"],
            env=env,
            stdout=terminal,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def started(process: subprocess.Popen[bytes], local: LocalSettings) -> bool:
    assert process.poll() is None, "switchboard up exited while starting"
    return "SWITCHBOARD_PUBLISHER_KEY" in read_credentials(local.credentials_file)


def pid_of(up: subprocess.Popen[bytes], child: str) -> int | None:
    """The process of ``child`` (a service, ``broker`` or ``store-<service>``) under
    `switchboard up`, if one runs."""
    for pid in children_of(up.pid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if child_named(args[:-1], child):
            return pid
    return None


def child_named(args: list[bytes], child: str) -> bool:
    if child == "broker":
        return args[1:2] == [b"broker"]
    if child.startswith("store-"):  # a service's store, its files in a folder of that name
        is_store = any(arg.endswith(b"nx-27017") for arg in args[:2])
        return is_store and any(arg.endswith(f"/{child}".encode()) for arg in args)
    return args[-2:] == [b"serve", child.encode()]


def terminal(home: Path) -> str:
    return (home / "terminal.log").read_text()


async def restarted_and_ready(
    system: System, up: subprocess.Popen[bytes], child: str, killed: int
) -> bool:
    """Whether ``child`` runs again in a new process, and every service answers ready."""
    assert up.poll() is None, f"switchboard up exited:\n{terminal(system.home)}"
    pid = pid_of(up, child)
    if pid is None or pid == killed:
        return False
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            for service in SERVICES:
                if (await http.get(f"{system.url(service)}/readyz")).status_code != 200:
                    return False
    except httpx.HTTPError:
        return False
    return True


async def kill_and_see_it_back(system: System, up: subprocess.Popen[bytes], child: str) -> None:
    """kill -9 ``child``, wait for its restart, and check the terminal said why."""
    killed = pid_of(up, child)
    assert killed is not None, f"no {child} under switchboard up"
    os.kill(killed, signal.SIGKILL)
    killed_at = time.monotonic()
    await eventually(
        partial(restarted_and_ready, system, up, child, killed), timeout_s=120, interval_s=0.25
    )
    assert time.monotonic() - killed_at >= 1.0, "restarted before the backoff's 1 s"
    assert f"{child} exited unexpectedly with exit code 137 (SIGKILL)" in terminal(system.home)


async def test_each_service_killed_under_switchboard_up_comes_back_and_nothing_is_lost_or_doubled(
    tmp_path: Path,
) -> None:
    async with switchboard_up(tmp_path / "home") as (system, up):
        publisher = Publisher(system, "local-stack")
        for n, service in enumerate(SERVICES):
            await publisher.post(range(n * BATCH, (n + 1) * BATCH))
            await kill_and_see_it_back(system, up, service)
        await publisher.post(range(len(SERVICES) * BATCH, (len(SERVICES) + 1) * BATCH))

        assert len(set(publisher.ids.values())) == (len(SERVICES) + 1) * BATCH
        await all_delivered(system, set(publisher.ids.values()), timeout_s=180)

    assert up.returncode == 0, terminal(system.home)


async def test_the_store_killed_under_switchboard_up_comes_back_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    """A store keeps its files: what was stored before is there when it is back. The
    router's, whose items and agents' capacity decide every offer. (The broker's
    restart, which empties it, is the fault suite's.)"""
    async with switchboard_up(tmp_path / "home") as (system, up):
        publisher = Publisher(system, "local-stack-parts")
        await publisher.post(range(BATCH))
        await kill_and_see_it_back(system, up, "store-router")
        await publisher.post(range(BATCH, 2 * BATCH))

        await all_delivered(system, set(publisher.ids.values()), timeout_s=180)

    assert up.returncode == 0, terminal(system.home)
