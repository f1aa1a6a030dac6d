"""How `switchboard up` restarts a child that exited: backoff from 1 s doubling to 30 s,
back to 1 s after a stable run, and a stop after more than 5 restarts in 10 minutes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shared.embedded import (
    Child,
    CrashLoopError,
    RestartPolicy,
    Restarts,
    Supervisor,
    exit_status,
)

MANY = RestartPolicy(max_restarts=1_000)


def delays(
    restarts: Restarts, exits: int, up_for_s: float = 0.0, apart_s: float = 1.0
) -> list[float | None]:
    return [restarts.after_exit(up_for_s, n * apart_s) for n in range(exits)]


def test_the_delay_doubles_from_one_second_up_to_thirty() -> None:
    assert delays(Restarts(MANY), 8) == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_child_that_stayed_up_a_minute_starts_over_at_one_second() -> None:
    restarts = Restarts(MANY)
    delays(restarts, 4)
    assert restarts.after_exit(up_for_s=59.0, now=100.0) == 16
    assert restarts.after_exit(up_for_s=60.0, now=200.0) == 1
    assert restarts.after_exit(up_for_s=0.5, now=202.0) == 2


def test_more_than_five_restarts_within_ten_minutes_is_a_crash_loop() -> None:
    restarts = Restarts(RestartPolicy())
    assert delays(restarts, 5, up_for_s=90.0, apart_s=100.0) == [1, 1, 1, 1, 1]
    assert restarts.after_exit(up_for_s=90.0, now=599.0) is None


def test_exits_spread_wider_than_the_window_never_stop_the_stack() -> None:
    restarts = Restarts(RestartPolicy())
    assert None not in delays(restarts, 20, up_for_s=150.0, apart_s=150.0)


def test_an_exit_by_signal_reads_as_the_shell_shows_it() -> None:
    assert exit_status(-9) == "exit code 137 (SIGKILL)"
    assert exit_status(-15) == "exit code 143 (SIGTERM)"
    assert exit_status(-40) == "exit code 168 (signal 40)"
    assert exit_status(3) == "exit code 3"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def exits_at_once(tmp_path: Path) -> Child:
    """A child that exits with code 3 as soon as it starts, leaving a line per start."""
    starts = tmp_path / "starts"
    code = f"open({str(starts)!r}, 'a').write('started\\n'); raise SystemExit(3)"
    return Child("flaky", [sys.executable, "-c", code], tmp_path / "flaky.log")


def starts(tmp_path: Path) -> int:
    path = tmp_path / "starts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_the_supervisor_restarts_an_exited_child_after_its_delay_and_says_so(
    tmp_path: Path,
) -> None:
    clock, said = Clock(), list[str]()
    supervisor = Supervisor(clock=clock, say=said.append)
    try:
        supervisor.start(exits_at_once(tmp_path))
        supervisor.tended["flaky"].process.wait()
        supervisor.tend()
        assert said == ["flaky exited unexpectedly with exit code 3; restarting it in 1s"]
        clock.now = 0.9
        supervisor.tend()
        assert starts(tmp_path) == 1
        clock.now = 1.0
        supervisor.tend()
        supervisor.tended["flaky"].process.wait()
        assert starts(tmp_path) == 2
        assert said[1].startswith("flaky restarted (pid ")
        assert len(supervisor.children.processes) == 1  # the new one took the old one's place
    finally:
        supervisor.stop()


def restart_once(supervisor: Supervisor, clock: Clock) -> None:
    supervisor.tended["flaky"].process.wait()
    supervisor.tend()  # notices the exit
    clock.now += 31.0  # past the longest delay
    supervisor.tend()  # starts it again


def test_the_supervisor_gives_up_on_a_crash_loop(tmp_path: Path) -> None:
    clock = Clock()
    supervisor = Supervisor(clock=clock, say=lambda _: None)
    try:
        supervisor.start(exits_at_once(tmp_path))
        for _ in range(5):
            restart_once(supervisor, clock)
        supervisor.tended["flaky"].process.wait()
        with pytest.raises(
            CrashLoopError, match="flaky exited with exit code 3, 6 times within 600s"
        ):
            supervisor.tend()
        assert starts(tmp_path) == 6
    finally:
        supervisor.stop()
