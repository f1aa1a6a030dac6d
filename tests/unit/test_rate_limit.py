"""Ingest's token bucket, on a clock the test controls."""

from __future__ import annotations

import pytest

from services.ingest.service import TokenBucket


def test_token_bucket_allows_bursts_then_says_how_long_to_wait() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=4, clock=lambda: now[0])

    assert bucket.take(4) == 0.0
    assert bucket.take(1) == pytest.approx(0.5)
    now[0] = 1.0
    assert bucket.take(2) == 0.0


def test_a_take_larger_than_the_burst_waits_for_a_full_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=4, clock=lambda: 0.0)
    bucket.take(4)

    assert bucket.take(10) == pytest.approx(2.0)
