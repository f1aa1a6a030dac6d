"""Keeping one bad endpoint from hurting the others: a circuit breaker and a cap on
attempts in flight, per endpoint (scheme, host and port), in each notify process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def endpoint_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


class CircuitBreaker:
    """Opens after ``threshold`` failures in a row and stays open for ``cooldown_s``; then
    lets one trial attempt through (half-open), which closes it or opens it again."""

    def __init__(
        self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold, self.cooldown_s, self.clock = threshold, cooldown_s, clock
        self.failures = 0
        self.open_until = 0.0

    @property
    def is_open(self) -> bool:
        return self.failures >= self.threshold and self.clock() < self.open_until

    def wait(self) -> float:
        """Seconds until an attempt may be made; 0 means go (and, half-open, be the trial)."""
        if self.failures < self.threshold:
            return 0.0
        now = self.clock()
        if now < self.open_until:
            return self.open_until - now
        self.open_until = now + self.cooldown_s  # the trial: the others wait for its result
        return 0.0

    def record(self, success: bool) -> None:
        if success:
            self.failures, self.open_until = 0, 0.0
            return
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = self.clock() + self.cooldown_s


@dataclass
class Endpoints:
    """Per-endpoint breakers and in-flight counts."""

    threshold: int
    cooldown_s: float
    max_in_flight: int
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    freed: dict[str, asyncio.Event] = field(default_factory=dict)  # set when a slot frees

    def breaker(self, key: str) -> CircuitBreaker:
        if key not in self.breakers:
            self.breakers[key] = CircuitBreaker(self.threshold, self.cooldown_s)
        return self.breakers[key]

    def try_enter(self, key: str) -> bool:
        if self.in_flight.get(key, 0) >= self.max_in_flight:
            return False
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        return True

    async def enter(self, key: str, wait_s: float) -> bool:
        """Take one of the endpoint's slots, waiting up to ``wait_s`` for one to free: a
        busy endpoint's deliveries wait briefly in line rather than go to the back of the
        schedule. False if none freed (the caller postpones, holding no worker)."""
        deadline = time.monotonic() + wait_s
        while not self.try_enter(key):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            freed = self.freed.setdefault(key, asyncio.Event())
            freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(freed.wait(), remaining)
        return True

    def leave(self, key: str) -> None:
        self.in_flight[key] -= 1
        if key in self.freed:
            self.freed[key].set()

    def open_count(self) -> int:
        return sum(breaker.is_open for breaker in self.breakers.values())
