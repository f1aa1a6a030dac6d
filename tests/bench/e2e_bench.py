"""End to end, beside a bare-Kafka baseline: interactions in through ingest's public API,
offers out as webhooks at a local desk, on the whole stack `switchboard up` starts.

Run with `make bench`. It

1. starts `switchboard up` in a child process (temporary home, free ports, loopback
   only), a desk of its own (a real HTTP server in this process), a subscription to
   ``assignment.offered`` webhooks, and enough online agents with room for every item,
   so each interaction becomes exactly one offer and one webhook;
2. drives two phases through ``POST /v1/interactions``: full load (batches of 100, a few
   in flight, until a fixed count) and a fixed rate (200/s, open loop, for a fixed time),
   and times each interaction from its accept to its webhook at the desk;
3. runs the same two phases through the baseline (``tests.bench.baseline``: HTTP in, as
   many Kafka hops as Switchboard's path, HTTP out, no work) on the same broker;
4. prints ours against the baseline, where the time goes (each service's metrics and
   each process's CPU, before and after each phase), checks that every interaction
   reached the desk exactly once, and writes it all to ``bench/results/``.

It asserts nothing about timings; a lost or doubled interaction is printed with its id
and makes the exit status 1. Settings: ``BENCH_*`` variables, see ``Options``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from shared.cli import SERVICES, LocalSettings, read_credentials
from shared.embedded import free_port, free_ports
from tests.bench.ingest_bench import mention
from tests.support import children_of

PORTS = ("broker", "store", "ingest", "enrich", "router", "notify", "desk")
OFFERED = "io.switchboard.assignment.offered.v1"
RESULTS = Path("bench/results")
GOALS = {
    "throughput_per_s": 1000.0,
    "p99_ms_at_rate": 250.0,
    "ratio_to_baseline": 0.5,
    "cpu_ms_per_interaction": 1.0,
    "documents_per_interaction": 4.0,
}
# Processes that are the bench's, not the system's: left out of its CPU per interaction.
NOT_THE_SYSTEM = ("bench (load + desk)", "sample desk")
# Settings `switchboard up` gets beyond its defaults, and why:
STACK_OVERRIDES = {
    # The per-publisher limit (1,000/s by default) would cap the full-load phase by design.
    "SWITCHBOARD_INGEST_RATE_LIMIT_PER_S": "1000000",
    "SWITCHBOARD_INGEST_RATE_LIMIT_BURST": "1000000",
    # No offer may time out and be offered again (a second webhook) during the run.
    "SWITCHBOARD_ROUTER_OFFER_TIMEOUT_S": "3600",
    # The bench's webhook receiver listens on a free port, not the sample desk's.
    "SWITCHBOARD_NOTIFY_ALLOW_HOSTS": '["127.0.0.1"]',
}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, str(default)))


@dataclass(frozen=True)
class Options:
    # Enough for several seconds at full load: a stall that a short burst hides shows.
    full_count: int = field(default_factory=lambda: env_int("BENCH_FULL_COUNT", 3000))
    full_batch: int = field(default_factory=lambda: env_int("BENCH_FULL_BATCH", 100))
    full_in_flight: int = field(default_factory=lambda: env_int("BENCH_FULL_IN_FLIGHT", 4))
    rate_per_s: float = field(default_factory=lambda: env_float("BENCH_RATE", 200.0))
    rate_seconds: float = field(default_factory=lambda: env_float("BENCH_RATE_SECONDS", 5.0))
    rate_batch: int = field(default_factory=lambda: env_int("BENCH_RATE_BATCH", 1))
    # A rate well inside what the stack sustains: latency with no backlog (0: skipped).
    low_rate_per_s: float = field(default_factory=lambda: env_float("BENCH_LOW_RATE", 20.0))
    low_rate_seconds: float = field(
        default_factory=lambda: env_float("BENCH_LOW_RATE_SECONDS", 5.0)
    )
    warmup: int = field(default_factory=lambda: env_int("BENCH_WARMUP", 200))
    # Kafka hops on Switchboard's path: received, enriched, assignments.
    baseline_hops: int = field(default_factory=lambda: env_int("BENCH_BASELINE_HOPS", 3))
    baseline_in_flight: int = field(default_factory=lambda: env_int("BENCH_BASELINE_IN_FLIGHT", 32))
    # How long a phase may wait for its last webhooks, and for no progress at all.
    drain_timeout_s: float = field(default_factory=lambda: env_float("BENCH_DRAIN_TIMEOUT_S", 150))
    stall_s: float = field(default_factory=lambda: env_float("BENCH_STALL_S", 30))
    # Time after the last expected webhook for a doubled one to show up.
    settle_s: float = field(default_factory=lambda: env_float("BENCH_SETTLE_S", 3))

    @property
    def rate_count(self) -> int:
        return math.ceil(self.rate_per_s * self.rate_seconds)

    @property
    def low_rate_count(self) -> int:
        return math.ceil(self.low_rate_per_s * self.low_rate_seconds)


# -- the desk -----------------------------------------------------------------------


@dataclass
class Desk:
    """Records when each webhook arrives, by interaction id, for Switchboard (``/ours``,
    CloudEvents whose data names the interaction) and the baseline (``/baseline``).

    An aiohttp server: it shares this process with the load generator, and answers a few
    thousand requests a second here, well above what either system sends it."""

    ours: dict[str, list[float]] = field(default_factory=dict)
    baseline: dict[str, list[float]] = field(default_factory=dict)
    other_types: Counter[str] = field(default_factory=Counter)

    async def on_ours(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        event = json.loads(await request.read())
        if event.get("type") != OFFERED:
            self.other_types[str(event.get("type"))] += 1
        self.ours.setdefault(str(event["data"]["interaction_id"]), []).append(now)
        return web.Response(status=204)

    async def on_baseline(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        record = json.loads(await request.read())
        self.baseline.setdefault(str(record["id"]), []).append(now)
        return web.Response(status=204)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve on a free loopback port; yields the base URL."""
        app = web.Application()
        app.router.add_post("/ours", self.on_ours)
        app.router.add_post("/baseline", self.on_baseline)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


# -- load -----------------------------------------------------------------------------


@dataclass
class Load:
    """What one phase sent: when each interaction was sent and accepted, by id."""

    started: float = 0.0
    sent: dict[str, float] = field(default_factory=dict)
    accepted: dict[str, float] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)


async def post(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: Any, load: Load
) -> None:
    """One post (an interaction or a batch); what was accepted goes into ``load``."""
    count = 1 if isinstance(body, dict) else len(body)
    sent = time.monotonic()
    try:
        async with http.post(url, json=body, headers=headers) as answer:
            found = await answer.json() if answer.status in (200, 202) else None
            status = answer.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        load.refused[type(exc).__name__] += count
        return
    now = time.monotonic()
    if found is None:
        load.refused[f"HTTP {status}"] += count
        return
    for result in found["results"] if isinstance(body, list) else [found]:
        if "id" in result and result.get("status", "accepted") == "accepted":
            load.sent[result["id"]] = sent
            load.accepted[result["id"]] = now
        else:
            load.refused[str(result.get("status"))] += 1


async def full_load(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    bodies: list[Any],
    in_flight: int,
) -> Load:
    """Closed loop: ``in_flight`` posters, each sending its next body once answered."""
    load = Load(started=time.monotonic())
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def poster() -> None:
        while not queue.empty():
            await post(http, url, headers, queue.get_nowait(), load)

    await asyncio.gather(*(poster() for _ in range(in_flight)))
    return load


async def at_rate(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], bodies: list[Any], per_s: float
) -> Load:
    """Open loop: body k leaves at start + k / per_s whether or not earlier ones were
    answered (a slow answer delays nothing after it), so a backlog shows as latency."""
    load = Load(started=time.monotonic())
    tasks = []
    for k, body in enumerate(bodies):
        delay = load.started + k / per_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(post(http, url, headers, body, load)))
    await asyncio.gather(*tasks)
    return load


def batches(items: list[dict[str, Any]], size: int) -> list[Any]:
    if size <= 1:
        return list(items)
    return [items[k : k + size] for k in range(0, len(items), size)]


async def wait_for_arrivals(
    arrivals: dict[str, list[float]], ids: set[str], options: Options, since: float
) -> None:
    """Until every id has arrived, or nothing arrived for ``stall_s``, or the drain time is up."""
    deadline = since + options.drain_timeout_s
    seen, progress = -1, time.monotonic()
    while True:
        now = time.monotonic()
        arrived = sum(1 for i in ids if i in arrivals)
        if arrived == len(ids):
            break
        if arrived != seen:
            seen, progress = arrived, now
        if now > deadline or now - progress > options.stall_s:
            print(f"    gave up waiting: {arrived}/{len(ids)} arrived", flush=True)
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(options.settle_s)


# -- figures --------------------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def longest_quiet_ms(times: list[float]) -> float:
    """The longest time between two webhooks in a row (seconds in, ms out): a stall shows
    here even where the percentiles hide it."""
    ordered = sorted(times)
    return max((b - a for a, b in pairwise(ordered)), default=0.0) * 1000


def phase_figures(load: Load, arrivals: dict[str, list[float]]) -> dict[str, Any]:
    ids = list(load.accepted)
    counts = {i: len(arrivals.get(i, [])) for i in ids}
    missing = sorted(i for i, n in counts.items() if n == 0)
    doubled = sorted(i for i, n in counts.items() if n > 1)
    delivered = [i for i in ids if counts[i] > 0]
    latencies = sorted((arrivals[i][0] - load.accepted[i]) * 1000 for i in delivered)
    from_send = sorted((arrivals[i][0] - load.sent[i]) * 1000 for i in delivered)
    last_accept = max(load.accepted.values(), default=load.started)
    last_arrival = max((arrivals[i][0] for i in delivered), default=load.started)
    elapsed = max(last_arrival - load.started, 1e-9)
    return {
        "interactions": len(ids),
        "refused": dict(load.refused),
        "delivered": len(delivered),
        "missing": len(missing),
        "doubled": len(doubled),
        "missing_ids": missing[:20],
        "doubled_ids": doubled[:20],
        "accept_seconds": round(last_accept - load.started, 3),
        "accepted_per_s": round(len(ids) / max(last_accept - load.started, 1e-9), 1),
        "end_to_end_seconds": round(elapsed, 3),
        "throughput_per_s": round(len(delivered) / elapsed, 1),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p95": round(percentile(latencies, 95), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(latencies[-1], 1) if latencies else math.nan,
        },
        "longest_quiet_ms": round(longest_quiet_ms([arrivals[i][0] for i in delivered]), 1),
        "latency_from_send_ms": {
            "p50": round(percentile(from_send, 50), 1),
            "p99": round(percentile(from_send, 99), 1),
        },
    }


# -- where the time goes: metrics and CPU ----------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: httpx.AsyncClient, url: str) -> Samples:
    text = (await http.get(f"{url}/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def diff(after: Samples, before: Samples) -> Samples:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def service_time(service: str, d: Samples) -> dict[str, Any]:
    """Per-service figures for one phase, from the difference of two scrapes."""
    prefix = f"switchboard_{service}"

    def mean_ms(name: str, **labels: str) -> tuple[float, int]:
        count = total(d, f"{prefix}_{name}_count", **labels)
        if not count:
            return math.nan, 0
        return round(total(d, f"{prefix}_{name}_sum", **labels) / count * 1000, 2), int(count)

    handle_ms, batches_ = mean_ms("handle_seconds")
    lag_ms, published = mean_ms("publish_lag_seconds")
    figures: dict[str, Any] = {
        "events_in": int(total(d, f"{prefix}_events_in_total")),
        "events_out": int(total(d, f"{prefix}_events_out_total")),
        "batches_handled": batches_,
        "handle_ms_per_batch": handle_ms if batches_ else None,
        "handle_seconds_total": round(total(d, f"{prefix}_handle_seconds_sum"), 3),
        "publish_lag_ms_mean": lag_ms if published else None,
        # What the service asked of its database: commands, documents written, and the
        # time the answers took, summed (commands overlap, so it can exceed the phase).
        "store_commands": int(total(d, f"{prefix}_store_commands_total")),
        "store_documents": int(total(d, f"{prefix}_store_documents_total")),
        "store_seconds": round(total(d, f"{prefix}_store_command_seconds_total"), 2),
        "store_by_collection": store_by_collection(prefix, d),
        # Time the process stood still collecting garbage, and its full collections.
        "gc_pause_ms": round(total(d, f"{prefix}_gc_pause_seconds_sum") * 1000, 1),
        "full_collections": int(total(d, f"{prefix}_gc_pause_seconds_count", generation="2")),
    }
    if service == "ingest":
        post_ms, posts = mean_ms("http_request_seconds", method="POST", route="/v1/interactions")
        figures["post_interactions_ms_mean"] = post_ms if posts else None
        figures["posts"] = posts
    if service == "notify":
        count = total(d, "switchboard_notify_attempt_seconds_count")
        figures["attempts"] = int(count)
        figures["desk_answer_ms_mean"] = (
            round(total(d, "switchboard_notify_attempt_seconds_sum") / count * 1000, 2)
            if count
            else None
        )
    return figures


def store_by_collection(prefix: str, d: Samples) -> dict[str, dict[str, float]]:
    """The store figures by ``collection command``, the most documents first: which
    writes an interaction costs."""
    figures: dict[str, dict[str, float]] = {}
    for name, figure in (
        ("store_commands_total", "commands"),
        ("store_documents_total", "documents"),
        ("store_command_seconds_total", "seconds"),
    ):
        for (sample, labels), value in d.items():
            if sample == f"{prefix}_{name}" and value:
                named = dict(labels)
                key = f"{named.get('collection', '')} {named.get('command', '')}".strip()
                figures.setdefault(key, {})[figure] = round(value, 3)
    return dict(sorted(figures.items(), key=lambda kv: -kv[1].get("documents", 0)))


CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime, stime


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy since boot (everything on the machine)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICK


def process_name(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    words = [a.decode(errors="replace") for a in args if a]
    if "serve" in words:
        return words[words.index("serve") + 1]
    if "desk" in words:
        return "sample desk"
    if any("nx-27017" in w for w in words):  # a service's store, named by its folder
        return Path(words[words.index("--data-dir") + 1]).name
    if "broker" in words:
        return "broker"
    if "tests.bench.baseline" in words:
        role = words[words.index("tests.bench.baseline") + 1]
        return f"baseline {role} {words[words.index('--topic') + 1].rsplit('.', 1)[-1]}"
    return Path(words[0]).name if words else f"pid {pid}"


@dataclass
class CpuWatch:
    """CPU seconds of named processes (and of this one, the load generator and desk) and of
    the whole machine, so a phase's figures say which process was busy and how much else was."""

    pids: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, float]:
        shot = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        times = os.times()
        shot["bench (load + desk)"] = times.user + times.system
        shot["machine"] = machine_busy_seconds()
        shot["wall"] = time.monotonic()
        return shot

    @staticmethod
    def seconds(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
        """CPU seconds each process spent between two snapshots."""
        return {
            name: after[name] - before.get(name, 0.0)
            for name in after
            if name not in ("wall", "machine")
        }

    @staticmethod
    def cores(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
        wall = max(after["wall"] - before["wall"], 1e-9)
        used = {
            name: round((after[name] - before.get(name, 0.0)) / wall, 2)
            for name in after
            if name not in ("wall", "machine")
        }
        machine = round((after["machine"] - before["machine"]) / wall, 2)
        used["everything else on the machine"] = round(max(machine - sum(used.values()), 0.0), 2)
        used["machine (all)"] = machine
        return used


# -- the systems under test ------------------------------------------------------------


@dataclass
class Stack:
    local: LocalSettings
    process: subprocess.Popen[bytes]
    credentials: dict[str, str]

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials[f'SWITCHBOARD_{role.upper()}_KEY']}"}


@contextmanager
def switchboard_up(home: Path) -> Iterator[Stack]:
    env = dict(os.environ, SWITCHBOARD_HOME=str(home), **STACK_OVERRIDES)
    env.update({f"SWITCHBOARD_{name.upper()}_PORT": str(free_port()) for name in PORTS})
    env["SWITCHBOARD_STORE_PORT"] = str(free_ports(len(SERVICES)))  # one store per service
    local = LocalSettings.model_validate(
        {"home": home}
        | {f"{name}_port": int(env[f"SWITCHBOARD_{name.upper()}_PORT"]) for name in PORTS}
    )
    output = (home.parent / "up.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up"],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while "SWITCHBOARD_PUBLISHER_KEY" not in read_credentials(local.credentials_file):
            if process.poll() is not None:
                raise RuntimeError(
                    "switchboard up exited:\n" + (home.parent / "up.log").read_text()[-4000:]
                )
            if time.monotonic() > deadline:
                raise TimeoutError("switchboard up did not become ready in 120 s")
            time.sleep(0.25)
        yield Stack(local, process, read_credentials(local.credentials_file))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: it stops its children
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        output.close()


@dataclass
class Baseline:
    url: str
    processes: dict[str, subprocess.Popen[bytes]]


@asynccontextmanager
async def baseline_pipeline(
    bootstrap: str, desk_url: str, options: Options, logs: Path
) -> AsyncIterator[Baseline]:
    """The bare pipeline's processes on fresh topics of the same broker."""
    run = f"bench-baseline-{uuid.uuid4().hex[:6]}"
    topics = [f"{run}.t{k}" for k in range(options.baseline_hops)]
    await create_topics(bootstrap, topics)
    port = free_port()
    module = [sys.executable, "-m", "tests.bench.baseline"]
    common = ["--bootstrap", bootstrap]
    commands = {"ingress": [*module, "ingress", *common, "--topic", topics[0], "--port", str(port)]}
    for k in range(options.baseline_hops - 1):
        commands[f"relay {k + 1}"] = [
            *module, "relay", *common, "--topic", topics[k], "--to", topics[k + 1],
            "--group", f"{run}.relay{k}",
        ]  # fmt: skip
    commands["egress"] = [
        *module, "egress", *common, "--topic", topics[-1], "--group", f"{run}.egress",
        "--url", desk_url, "--in-flight", str(options.baseline_in_flight),
    ]  # fmt: skip
    log = (logs / "baseline.log").open("wb")
    processes = {
        name: subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603, ASYNC220
        for name, args in commands.items()
    }
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                async with httpx.AsyncClient(timeout=1) as http:
                    if (await http.get(f"{url}/readyz")).status_code == 200:
                        break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes.values()):
                raise RuntimeError(
                    "the baseline did not start:\n" + (logs / "baseline.log").read_text()[-4000:]
                )
            await asyncio.sleep(0.2)
        yield Baseline(url, processes)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


async def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 3, 1) for name in names])
    finally:
        await admin.close()


# -- the run -----------------------------------------------------------------------------


@dataclass
class Target:
    """One system as the load generator sees it."""

    name: str
    url: str  # where interactions are posted
    headers: dict[str, str]
    arrivals: dict[str, list[float]]
    metrics_urls: dict[str, str]  # service -> base URL with /metrics
    cpu: CpuWatch


async def run_phases(
    http: httpx.AsyncClient,
    loader: aiohttp.ClientSession,
    target: Target,
    options: Options,
    run: str,
) -> tuple[dict[str, Any], set[str]]:
    """Warm-up, full load, fixed rate: each phase's figures, metrics and CPU, and every
    interaction id accepted."""
    results: dict[str, Any] = {}
    n = 0

    def bodies(count: int) -> list[dict[str, Any]]:
        nonlocal n
        made = [mention(k, f"{run}-{target.name}") for k in range(n, n + count)]
        n += count
        return made

    warm = await full_load(
        loader, target.url, target.headers, batches(bodies(options.warmup), 20), 2
    )
    await wait_for_arrivals(target.arrivals, set(warm.accepted), options, warm.started)
    print(f"  {target.name}: warmed up ({len(warm.accepted)} interactions)", flush=True)
    accepted = set(warm.accepted)

    phases: list[tuple[str, Callable[[], Awaitable[Load]]]] = [
        (
            "full_load",
            lambda: full_load(
                loader,
                target.url,
                target.headers,
                batches(bodies(options.full_count), options.full_batch),
                options.full_in_flight,
            ),
        ),
        (
            "at_rate",
            lambda: at_rate(
                loader,
                target.url,
                target.headers,
                batches(bodies(options.rate_count), options.rate_batch),
                options.rate_per_s / max(options.rate_batch, 1),
            ),
        ),
    ]
    if options.low_rate_count:
        phases.append(
            (
                "at_low_rate",
                lambda: at_rate(
                    loader,
                    target.url,
                    target.headers,
                    bodies(options.low_rate_count),
                    options.low_rate_per_s,
                ),
            )
        )
    for name, drive in phases:
        before = {s: await scrape(http, u) for s, u in target.metrics_urls.items()}
        cpu_before = target.cpu.snapshot()
        load = await drive()
        await wait_for_arrivals(
            target.arrivals, set(load.accepted), options, max(load.accepted.values(), default=0)
        )
        cpu_after = target.cpu.snapshot()
        after = {s: await scrape(http, u) for s, u in target.metrics_urls.items()}
        figures = phase_figures(load, target.arrivals)
        figures["cpu_cores"] = CpuWatch.cores(cpu_after, cpu_before)
        figures["services"] = {
            s: service_time(s, diff(after[s], before[s])) for s in target.metrics_urls
        }
        count = max(figures["interactions"], 1)
        figures["cpu_ms_per_interaction"] = cpu_ms_per_interaction(
            CpuWatch.seconds(cpu_after, cpu_before), count
        )
        figures["documents_per_interaction"] = documents_per_interaction(figures["services"], count)
        results[name] = figures
        print(
            f"  {target.name} {name}: {figures['delivered']}/{figures['interactions']} delivered, "
            f"{figures['throughput_per_s']:.0f}/s end to end, p99 {figures['latency_ms']['p99']:.0f} ms",
            flush=True,
        )
        accepted |= set(load.accepted)
    return results, accepted


def cpu_ms_per_interaction(spent: dict[str, float], interactions: int) -> dict[str, float]:
    """CPU milliseconds per interaction, each process's and the system's together (its
    services, store and broker; not the bench's load generator and desk). Steadier on a
    busy machine than a rate: another process's load slows the system, not its CPU."""
    system = {name: s for name, s in spent.items() if name not in NOT_THE_SYSTEM}
    figures = {name: round(s * 1000 / interactions, 3) for name, s in system.items()}
    figures["all"] = round(sum(system.values()) * 1000 / interactions, 3)
    return figures


def documents_per_interaction(
    services: dict[str, dict[str, Any]], interactions: int
) -> dict[str, float]:
    """Documents each service's store commands inserted, updated or deleted per interaction,
    and all of them together."""
    figures = {s: round(f["store_documents"] / interactions, 2) for s, f in services.items()}
    figures["all"] = round(sum(f["store_documents"] for f in services.values()) / interactions, 2)
    return figures


async def register_agents(http: httpx.AsyncClient, stack: Stack, count: int) -> None:
    url = f"{stack.local.url('router')}/v1/agents"
    slots = asyncio.Semaphore(8)

    async def one(k: int) -> None:
        async with slots:
            answer = await http.post(
                url,
                json={"name": f"Bench agent {k}", "capacity": 100, "presence": "online"},
                headers=stack.headers("admin"),
            )
            answer.raise_for_status()

    await asyncio.gather(*(one(k) for k in range(count)))


async def bench(stack: Stack, options: Options, logs: Path) -> dict[str, Any]:
    desk = Desk()
    run = uuid.uuid4().hex[:6]
    # The load goes out through aiohttp: httpx's client slows down as requests queue in
    # its pool (about 250 requests/s with 32 in flight here, against 4,000 for aiohttp).
    # Idle connections are dropped before uvicorn's 5 s keep-alive ends: a request sent
    # on one the server is closing fails (ServerDisconnectedError) without reaching it.
    connector = aiohttp.TCPConnector(limit=200, keepalive_timeout=2.0)
    async with (
        desk.serving() as desk_url,
        httpx.AsyncClient(timeout=60) as http,
        aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=120)
        ) as loader,
    ):
        subscription = await http.post(
            f"{stack.local.url('notify')}/v1/subscriptions",
            json={"url": f"{desk_url}/ours", "event_types": [OFFERED]},
            headers=stack.headers("admin"),
        )
        subscription.raise_for_status()
        per_system = (
            options.warmup + options.full_count + options.rate_count + options.low_rate_count
        )
        agents = math.ceil(per_system / 100) + 5
        await register_agents(http, stack, agents)
        print(f"  switchboard: desk subscribed, {agents} agents online (100 items each)")
        stack_pids = {process_name(p): p for p in children_of(stack.process.pid)}
        ours = Target(
            "switchboard",
            f"{stack.local.url('ingest')}/v1/interactions",
            stack.headers("publisher"),
            desk.ours,
            {s: stack.local.url(s) for s in SERVICES},
            CpuWatch(stack_pids),
        )
        ours_results, ours_ids = await run_phases(http, loader, ours, options, run)

        bootstrap = f"127.0.0.1:{stack.local.broker_port}"
        async with baseline_pipeline(bootstrap, f"{desk_url}/baseline", options, logs) as pipeline:
            pids = {process_name(p.pid): p.pid for p in pipeline.processes.values()}
            pids["broker"] = stack_pids["broker"]
            base = Target(
                "baseline",
                f"{pipeline.url}/v1/interactions",
                {},
                desk.baseline,
                {},
                CpuWatch(pids),
            )
            base_results, base_ids = await run_phases(http, loader, base, options, run)
    return {
        "ours": ours_results,
        "baseline": base_results,
        "exactly_once": {
            "switchboard": exactly_once(ours_ids, desk.ours),
            "baseline": exactly_once(base_ids, desk.baseline),
        },
        "desk_other_event_types": dict(desk.other_types),
        "agents": agents,
    }


def exactly_once(accepted: set[str], arrivals: dict[str, list[float]]) -> dict[str, Any]:
    """Every accepted interaction of the run (warm-up included) against what the desk got."""
    missing = sorted(i for i in accepted if i not in arrivals)
    doubled = sorted(i for i in accepted if len(arrivals.get(i, [])) > 1)
    unexpected = sorted(set(arrivals) - accepted)
    return {
        "accepted": len(accepted),
        "exactly_once": len(accepted) - len(missing) - len(doubled),
        "missing": len(missing),
        "doubled": len(doubled),
        "unexpected": len(unexpected),
        "missing_ids": missing[:20],
        "doubled_ids": doubled[:20],
        "unexpected_ids": unexpected[:20],
    }


# -- report -----------------------------------------------------------------------------


def ratio(ours: float, base: float) -> float:
    return round(ours / base, 3) if base else math.nan


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    ours, base = results["ours"], results["baseline"]
    throughput = ours["full_load"]["throughput_per_s"]
    p99 = ours["at_rate"]["latency_ms"]["p99"]
    to_base = ratio(throughput, base["full_load"]["throughput_per_s"])
    cpu_ms = ours["full_load"]["cpu_ms_per_interaction"]["all"]
    documents = ours["full_load"]["documents_per_interaction"]["all"]
    return {
        "throughput_per_s": {"goal": GOALS["throughput_per_s"], "reached": throughput,
                             "met": throughput >= GOALS["throughput_per_s"]},
        "p99_ms_at_rate": {"goal": GOALS["p99_ms_at_rate"], "reached": p99,
                           "met": p99 <= GOALS["p99_ms_at_rate"]},
        "ratio_to_baseline": {"goal": GOALS["ratio_to_baseline"], "reached": to_base,
                              "met": to_base >= GOALS["ratio_to_baseline"]},
        "cpu_ms_per_interaction": {"goal": GOALS["cpu_ms_per_interaction"], "reached": cpu_ms,
                                   "met": cpu_ms <= GOALS["cpu_ms_per_interaction"]},
        "documents_per_interaction": {"goal": GOALS["documents_per_interaction"],
                                      "reached": documents,
                                      "met": documents <= GOALS["documents_per_interaction"]},
    }  # fmt: skip


def print_table(results: dict[str, Any], options: Options) -> None:
    ours, base = results["ours"], results["baseline"]
    rate = f"{options.rate_per_s:.0f}/s"
    rows: list[tuple[str, float, float]] = [
        ("end to end, full load (/s)", ours["full_load"]["throughput_per_s"],
         base["full_load"]["throughput_per_s"]),
        ("accepted, full load (/s)", ours["full_load"]["accepted_per_s"],
         base["full_load"]["accepted_per_s"]),
    ]  # fmt: skip
    for q in ("p50", "p95", "p99", "max"):
        rows.append(
            (f"accept -> webhook {q} at {rate} (ms)", ours["at_rate"]["latency_ms"][q],
             base["at_rate"]["latency_ms"][q])
        )  # fmt: skip
    rows.append(
        (f"end to end at {rate} (/s)", ours["at_rate"]["throughput_per_s"],
         base["at_rate"]["throughput_per_s"])
    )  # fmt: skip
    if "at_low_rate" in ours:
        low = f"{options.low_rate_per_s:.0f}/s"
        for q in ("p50", "p99"):
            rows.append(
                (f"accept -> webhook {q} at {low} (ms)", ours["at_low_rate"]["latency_ms"][q],
                 base["at_low_rate"]["latency_ms"][q])
            )  # fmt: skip
    rows.append(
        ("accept -> webhook p99 at full load (ms)", ours["full_load"]["latency_ms"]["p99"],
         base["full_load"]["latency_ms"]["p99"])
    )  # fmt: skip
    rows.append(
        ("longest with no webhook, full load (ms)", ours["full_load"]["longest_quiet_ms"],
         base["full_load"]["longest_quiet_ms"])
    )  # fmt: skip
    print(f"\n{'':42} {'switchboard':>12} {'baseline':>12} {'ratio':>8}")
    for label, mine, theirs in rows:
        print(f"{label:42} {mine:12.1f} {theirs:12.1f} {ratio(mine, theirs):8.2f}")
    for phase in ("full_load", "at_rate"):
        rows_cpu = ours[phase]["cpu_ms_per_interaction"]
        print(
            f"\nCPU ms per interaction, {phase.replace('_', ' ')}: "
            + ", ".join(f"{k} {v:.2f}" for k, v in rows_cpu.items())
            + f" (baseline all {base[phase]['cpu_ms_per_interaction']['all']:.2f})"
        )
        docs = ours[phase]["documents_per_interaction"]
        print("stored documents per interaction: " + ", ".join(f"{k} {v}" for k, v in docs.items()))
    print("\ngoals:")
    for name, verdict in results["goals"].items():
        mark = "met" if verdict["met"] else "NOT met"
        print(f"  {name:20} goal {verdict['goal']:>8}  reached {verdict['reached']:>8}  {mark}")


def print_time(results: dict[str, Any], phase: str) -> None:
    figures = results["ours"][phase]
    seconds = figures["end_to_end_seconds"]
    print(f"\nwhere the time goes, switchboard, {phase.replace('_', ' ')} ({seconds:.1f} s):")
    print(
        f"  {'process':32} {'cores':>6} {'in':>7} {'out':>7} {'batches':>8} "
        f"{'ms/batch':>9} {'busy s':>7} {'publish lag ms':>15} "
        f"{'store cmds':>10} {'docs':>7} {'store s':>8} {'gc ms':>6}"
    )
    services = figures["services"]
    for name, cores in figures["cpu_cores"].items():
        s = services.get(name)
        if s is None:
            print(f"  {name:32} {cores:6.2f}")
            continue
        print(
            f"  {name:32} {cores:6.2f} {s['events_in']:7d} {s['events_out']:7d} "
            f"{s['batches_handled']:8d} {s['handle_ms_per_batch'] or math.nan:9.1f} "
            f"{s['handle_seconds_total']:7.1f} {s['publish_lag_ms_mean'] or math.nan:15.1f} "
            f"{s['store_commands']:10d} {s['store_documents']:7d} {s['store_seconds']:8.1f} "
            f"{s['gc_pause_ms']:6.0f}"
        )
    ingest, notify = services["ingest"], services["notify"]
    print(
        f"  ingest answers POST /v1/interactions in {ingest['post_interactions_ms_mean']} ms on "
        f"average ({ingest['posts']} posts); the desk answers notify in "
        f"{notify['desk_answer_ms_mean']} ms ({notify['attempts']} attempts)"
    )
    base = results["baseline"][phase]["cpu_cores"]
    print("  baseline, same phase, cores: " + ", ".join(f"{k} {v:.2f}" for k, v in base.items()))


def print_exactly_once(results: dict[str, Any]) -> bool:
    print("\nexactly once at the desk (by interaction id, warm-up included):")
    clean = True
    for system, check in results["exactly_once"].items():
        print(
            f"  {system:12} {check['exactly_once']}/{check['accepted']} exactly once; "
            f"missing {check['missing']}, doubled {check['doubled']}, "
            f"unexpected {check['unexpected']}"
        )
        for kind in ("missing", "doubled", "unexpected"):
            if check[kind]:
                clean = False
                print(f"    {kind}: {', '.join(check[f'{kind}_ids'])}")
    others = results["desk_other_event_types"]
    if others:
        clean = False
        print(f"  the desk also got events it was not subscribed to: {others}")
    return clean


def code_version() -> dict[str, Any]:
    """The commit the stack ran from, and any uncommitted change to its code."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "shared", "services"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": os.environ.get("BENCH_COMMIT"), "uncommitted": None}
    return {"commit": commit, "uncommitted": [line[3:] for line in changed if line.strip()]}


def write_results(results: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(results, indent=2, sort_keys=False, default=str) + "\n"
    (RESULTS / f"{stamp}.json").write_text(text)
    latest = RESULTS / "latest.json"
    latest.write_text(text)
    return latest


def main() -> int:
    options = Options()
    print(
        f"end-to-end bench: {options.full_count} interactions at full load (batches of "
        f"{options.full_batch}, {options.full_in_flight} in flight), then "
        f"{options.rate_count} at {options.rate_per_s:.0f}/s "
        f"({'single posts' if options.rate_batch <= 1 else f'batches of {options.rate_batch}'}), "
        f"then {options.low_rate_count} at {options.low_rate_per_s:.0f}/s; "
        f"the same through a bare aiokafka pipeline of {options.baseline_hops} hops",
        flush=True,
    )
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        with switchboard_up(home) as stack:
            print(f"  switchboard up: ready ({stack.local.home})", flush=True)
            results = asyncio.run(bench(stack, options, Path(tmp)))
        if os.environ.get("BENCH_KEEP_LOGS"):
            shutil.copytree(Path(tmp), os.environ["BENCH_KEEP_LOGS"], dirs_exist_ok=True)
    results = {
        "command": "make bench",
        "started_at": started.isoformat(timespec="seconds"),
        "code": code_version(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
        "options": asdict(options)
        | {"rate_count": options.rate_count, "low_rate_count": options.low_rate_count},
        "stack_overrides": STACK_OVERRIDES,
        "goals": {},
        **results,
    }
    results["goals"] = verdicts(results)
    print_table(results, options)
    for phase in ("full_load", "at_rate", "at_low_rate"):
        if phase in results["ours"]:
            print_time(results, phase)
    clean = print_exactly_once(results)
    machine = results["machine"]
    print(
        f"\nload average before/after: {machine['load_average_before']} / "
        f"{machine['load_average_after']} on {machine['cpus']} cores"
    )
    code = results["code"]
    print(f"code: commit {code['commit']}, uncommitted changes in {code['uncommitted']}")
    print(f"results written to {write_results(results)}")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
