"""How long a failing feed waits before its next poll."""

from __future__ import annotations

from datetime import timedelta

from services.ingest.feeds import MAX_BACKOFF, failed_poll_backoff


def test_each_failure_in_a_row_doubles_the_wait() -> None:
    assert failed_poll_backoff(60, 1) == timedelta(seconds=120)
    assert failed_poll_backoff(60, 3) == timedelta(seconds=480)


def test_a_feed_failing_for_weeks_waits_the_longest_backoff_and_no_more() -> None:
    # 300 s * 2**39 no longer fits a timedelta: the cap must come before it is one.
    for failures in (6, 39, 1_000, 100_000):
        assert failed_poll_backoff(300, failures) == MAX_BACKOFF


def test_a_failing_feed_is_never_polled_more_often_than_a_healthy_one() -> None:
    day = 86_400
    assert failed_poll_backoff(day, 1) == timedelta(seconds=day)
    assert failed_poll_backoff(day, 50) == timedelta(seconds=day)
