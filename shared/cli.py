"""The ``switchboard`` command: run the whole system on one machine, or one service.

switchboard up            broker, a store per service, the four services and the sample
                          desk, each restarted with backoff if it exits (RestartPolicy)
switchboard serve NAME    one service (ingest, enrich, router, notify), settings from env
switchboard desk          the sample agent desk: prints each verified webhook
switchboard demo          register a customer, an agent, a subscription; post mentions
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.access import key_id_of
from shared.embedded import Child, CrashLoopError, EmbeddedStack, Supervisor
from shared.http import KEEP_ALIVE_S
from shared.logging import configure_logging
from shared.settings import LogSettings

SERVICES = ("ingest", "enrich", "router", "notify")


class LocalSettings(BaseSettings):
    """Where `switchboard up` puts things on this machine."""

    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", frozen=True, extra="ignore")

    home: Path = Path(".switchboard")
    broker_port: int = Field(default=9092, ge=1, le=65535)
    store_port: int = Field(default=27017, ge=1, le=65535)
    ingest_port: int = Field(default=8081, ge=1, le=65535)
    enrich_port: int = Field(default=8082, ge=1, le=65535)
    router_port: int = Field(default=8083, ge=1, le=65535)
    notify_port: int = Field(default=8084, ge=1, le=65535)
    desk_port: int = Field(default=8089, ge=1, le=65535)

    def port(self, service: str) -> int:
        port: int = getattr(self, f"{service}_port")
        return port

    def store_port_of(self, service: str) -> int:
        """Each service's database has a store process of its own, as production gives
        each its own database, so that no service's writes wait behind another's: on
        ``store_port`` and the next three ports, in the order of ``SERVICES``."""
        return self.store_port + SERVICES.index(service)

    def store_url_of(self, service: str) -> str:
        return f"mongodb://127.0.0.1:{self.store_port_of(service)}"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.port(service)}"

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials.env"

    @property
    def desk_secrets_file(self) -> Path:
        return self.home / "desk-secrets.json"


def read_credentials(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def write_credentials(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))


def service_env(local: LocalSettings, admin_token: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{local.broker_port}",
            "SWITCHBOARD_MONGO_URL": f"mongodb://127.0.0.1:{local.store_port}",
            "SWITCHBOARD_AUTH_ADMIN_TOKEN": admin_token,
            "SWITCHBOARD_LOG_JSON_OUTPUT": "true",
        }
    )
    # Of this machine, webhooks may reach the sample desk only, and feeds nothing: not the
    # store, the broker or a service's API. An allow-list set in the environment wins.
    desk = [f"127.0.0.1:{local.desk_port}", f"localhost:{local.desk_port}"]
    env.setdefault("SWITCHBOARD_NOTIFY_ALLOW_HOSTS", json.dumps(desk))
    env.setdefault("SWITCHBOARD_INGEST_ALLOW_HOSTS", json.dumps([]))
    for service in SERVICES:
        prefix = f"SWITCHBOARD_{service.upper()}_"
        env[f"{prefix}EXPOSE_DOCS"] = "true"  # on this machine only
        env[f"{prefix}PORT"] = str(local.port(service))
        env[f"{prefix}DATA_DIR"] = str(local.home / "run")
    return env


def wait_ready(local: LocalSettings, supervisor: Supervisor, timeout_s: float = 90.0) -> None:
    """Wait until every service answers /readyz, restarting any that exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    waiting = set(SERVICES)
    while waiting:
        supervisor.tend()
        for service in sorted(waiting):
            try:
                if httpx.get(f"{local.url(service)}/readyz", timeout=1.0).status_code == 200:
                    waiting.discard(service)
            except httpx.HTTPError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout_s:.0f}s: {', '.join(sorted(waiting))}")
        time.sleep(0.25)


ROLE_KEYS = {
    "SWITCHBOARD_ADMIN_KEY": {"role": "admin", "name": "local admin"},
    "SWITCHBOARD_OPERATOR_KEY": {"role": "operator", "name": "local operator"},
}


def ensure_keys(local: LocalSettings, credentials: dict[str, str]) -> None:
    """One live key per role in the credentials file: kept if the services still know
    it, issued again if not (a wiped store), and known to every service before use."""
    bootstrap = {"Authorization": f"Bearer {credentials['SWITCHBOARD_AUTH_ADMIN_TOKEN']}"}
    with httpx.Client(timeout=10.0, headers=bootstrap) as http:
        listed = http.get(f"{local.url('ingest')}/v1/keys").raise_for_status().json()["keys"]
        live = {key["id"] for key in listed if key["revoked_at"] is None}
        missing = [
            name
            for name in (*ROLE_KEYS, "SWITCHBOARD_PUBLISHER_KEY", "SWITCHBOARD_AGENT_KEY")
            if key_id_of(credentials.get(name, "")) not in live
        ]
        for name in missing:
            credentials[name] = issue_key(http, local, name, credentials)
        wanted = {key_id_of(credentials[name]) for name in missing}
        deadline = time.monotonic() + 30
        for service in SERVICES:  # the other services learn the keys from Kafka
            while not wanted <= {key["id"] for key in keys_known(http, local, service)}:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{service} did not learn the new keys")
                time.sleep(0.2)


def keys_known(http: httpx.Client, local: LocalSettings, service: str) -> list[dict[str, str]]:
    keys: list[dict[str, str]] = http.get(f"{local.url(service)}/v1/keys").json()["keys"]
    return keys


def issue_key(
    http: httpx.Client, local: LocalSettings, name: str, credentials: dict[str, str]
) -> str:
    if name == "SWITCHBOARD_PUBLISHER_KEY":
        answer = http.post(f"{local.url('ingest')}/v1/publishers", json={"name": "local"})
        return str(answer.raise_for_status().json()["api_key"])
    if name == "SWITCHBOARD_AGENT_KEY":  # an agent who starts offline: set it online to work
        answer = http.post(
            f"{local.url('router')}/v1/agents", json={"name": "Local agent", "presence": "offline"}
        )
        credentials["SWITCHBOARD_AGENT_ID"] = answer.raise_for_status().json()["id"]
        return str(answer.json()["token"])
    answer = http.post(f"{local.url('ingest')}/v1/keys", json=ROLE_KEYS[name])
    return str(answer.raise_for_status().json()["key"])


def up(local: LocalSettings) -> int:
    """Start everything, print where it listens, restart whatever exits unexpectedly (see
    ``RestartPolicy``), and stop it all on Ctrl-C, SIGTERM or a crash loop."""
    credentials = read_credentials(local.credentials_file)
    credentials.setdefault("SWITCHBOARD_AUTH_ADMIN_TOKEN", secrets.token_urlsafe(32))
    stack = EmbeddedStack(local.home, local.broker_port, local.store_port)
    supervisor = Supervisor()
    # Both signals stop everything, even where SIGINT came in ignored (a background job).
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        last_store = local.store_port_of(SERVICES[-1])
        print(
            f"starting broker on :{local.broker_port} and a store per service on "
            f":{local.store_port}-{last_store} ..."
        )
        stack.logs.mkdir(parents=True, exist_ok=True)
        # The broker and stores are restarted too: the services heal from a broker that
        # lost its log (it keeps it in memory) and reconnect to a store that came back.
        supervisor.start(stack.broker_child())
        for service in SERVICES:
            supervisor.start(stack.store_child(f"store-{service}", local.store_port_of(service)))
        env = service_env(local, credentials["SWITCHBOARD_AUTH_ADMIN_TOKEN"])
        for child in local_children(local, env):
            supervisor.start(child)
        wait_ready(local, supervisor)
        ensure_keys(local, credentials)
        write_credentials(local.credentials_file, credentials)
        print_summary(local)
        while True:
            supervisor.tend()
            time.sleep(0.25)
    except CrashLoopError as exc:
        print(f"{exc}; see the logs in {stack.logs}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        supervisor.stop()
        print("stopped: no Switchboard process is left running")


def local_children(local: LocalSettings, env: dict[str, str]) -> list[Child]:
    """The four services, each logging to a file of its own and with a store of its own,
    and the sample desk, which prints to this terminal."""
    logs = local.home / "logs"
    serve = [sys.executable, "-m", "shared.cli", "serve"]
    services = [
        Child(
            name,
            [*serve, name],
            logs / f"{name}.log",
            env | {"SWITCHBOARD_MONGO_URL": local.store_url_of(name)},
        )
        for name in SERVICES
    ]
    desk = Child("desk", [sys.executable, "-m", "shared.cli", "desk"], None, env)
    return [*services, desk]


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def print_summary(local: LocalSettings) -> None:
    print("\nSwitchboard is ready:")
    for service in SERVICES:
        print(f"  {service:<7} {local.url(service)}   (docs: {local.url(service)}/docs)")
    print(f"  desk    {local.url('desk')}/webhooks   (prints each offer it receives)")
    print(f"  broker  127.0.0.1:{local.broker_port}")
    for service in SERVICES:
        print(f"  store   {local.store_url_of(service)}   ({service}'s database)")
    print(f"\n  credentials: {local.credentials_file}   logs: {local.home / 'logs'}")
    print("  try it: `make demo` in another terminal. Ctrl-C stops everything.\n", flush=True)


def service_factories() -> dict[str, Callable[[], FastAPI]]:
    """Each service's settings (from the environment) and app, imported only when asked for."""
    from services.enrich.config import EnrichSettings
    from services.enrich.main import create_app as enrich_app
    from services.ingest.config import IngestSettings
    from services.ingest.main import create_app as ingest_app
    from services.notify.config import NotifySettings
    from services.notify.main import create_app as notify_app
    from services.router.config import RouterSettings
    from services.router.main import create_app as router_app

    return {
        "ingest": lambda: ingest_app(IngestSettings()),
        "enrich": lambda: enrich_app(EnrichSettings()),
        "router": lambda: router_app(RouterSettings()),
        "notify": lambda: notify_app(NotifySettings()),
    }


def serve(service: str) -> int:
    from shared.app import freeze_heap_after_startup
    from shared.metrics import time_collections

    time_collections(service)
    app = freeze_heap_after_startup(service_factories()[service]())
    settings = app.state.runtime.settings
    configure_logging(settings.log)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        # libuv's loop and a C parser. The API, Faust's agents, the Kafka producers and
        # pymongo share this loop; Faust's consumer thread keeps an asyncio loop of its own.
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchboard", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the whole system on the embedded broker and store")
    serve_parser = commands.add_parser("serve", help="run one service")
    serve_parser.add_argument("service", choices=SERVICES)
    commands.add_parser("desk", help="run the sample agent desk")
    commands.add_parser("demo", help="register sample data and post a few mentions")
    args = parser.parse_args(argv)
    local = LocalSettings()
    if args.command == "up":
        return up(local)
    if args.command == "serve":
        return serve(args.service)
    configure_logging(LogSettings())
    if args.command == "desk":
        from shared.desk import run_desk

        return run_desk(local.desk_port, local.desk_secrets_file)
    from shared.demo import run_demo

    return run_demo(local)


if __name__ == "__main__":
    sys.exit(main())
