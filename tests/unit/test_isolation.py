"""Notify's per-endpoint circuit breaker and in-flight cap, on a clock the test controls."""

from __future__ import annotations

import asyncio

import pytest

from services.notify.isolation import CircuitBreaker, Endpoints, endpoint_key


def test_breaker_opens_after_the_threshold_and_lets_one_trial_through_after_the_cooldown() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown_s=10.0, clock=lambda: now[0])

    breaker.record(success=False)
    assert breaker.wait() == 0.0
    breaker.record(success=False)
    assert breaker.is_open
    assert breaker.wait() == pytest.approx(10.0)

    now[0] = 10.5
    assert breaker.wait() == 0.0  # the trial
    assert breaker.wait() == pytest.approx(10.0)  # the others wait for its result
    breaker.record(success=True)
    assert not breaker.is_open
    assert breaker.wait() == 0.0


def test_a_failed_trial_opens_the_breaker_again() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=1, cooldown_s=5.0, clock=lambda: now[0])
    breaker.record(success=False)
    now[0] = 6.0
    assert breaker.wait() == 0.0

    breaker.record(success=False)

    assert breaker.wait() == pytest.approx(5.0)


def test_in_flight_attempts_are_capped_per_endpoint() -> None:
    endpoints = Endpoints(threshold=5, cooldown_s=30.0, max_in_flight=2)
    a, b = endpoint_key("https://a.example/hook"), endpoint_key("https://b.example:8443/x")

    assert endpoints.try_enter(a)
    assert endpoints.try_enter(a)
    assert not endpoints.try_enter(a)
    assert endpoints.try_enter(b)
    endpoints.leave(a)
    assert endpoints.try_enter(a)
    assert (a, b) == ("https://a.example", "https://b.example:8443")


async def test_a_delivery_waits_briefly_in_line_for_a_busy_endpoint() -> None:
    endpoints = Endpoints(threshold=5, cooldown_s=30.0, max_in_flight=1)
    key = endpoint_key("https://desk.example/hook")
    assert await endpoints.enter(key, wait_s=0.0)

    waiting = asyncio.create_task(endpoints.enter(key, wait_s=5.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the one slot is taken: it waits
    endpoints.leave(key)

    assert await waiting  # it got the freed slot
    assert not await endpoints.enter(key, wait_s=0.05)  # none freed in time: postpone
