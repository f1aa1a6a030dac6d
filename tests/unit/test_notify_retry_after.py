"""Retry-After, read and capped, and the retry schedule's end as a bound on every wait."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import ValidationError

from services.notify.config import NotifySettings
from services.notify.delivery import parse_retry_after
from services.notify.service import NextTry, next_try, schedule_span_s

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
CEILING_S = 3600.0


def http_date(at: datetime) -> str:
    return format_datetime(at, usegmt=True)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        (http_date(NOW + timedelta(seconds=90)), 90.0),
        ("Mon, 07 Dec 2026 13:00:00 +0100", 0.0),  # noon UTC: now
        ("Mon, 07 Dec 2026 12:01:00 -0000", 60.0),  # no zone given: UTC
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW, CEILING_S) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "99999999999",
        "inf",
        "Infinity",
        "1e20",
        "1e400",
        http_date(NOW + timedelta(days=2)),
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ],
)
def test_a_longer_or_infinite_retry_after_is_cut_to_the_ceiling(value: str) -> None:
    assert parse_retry_after(value, NOW, CEILING_S) == CEILING_S


@pytest.mark.parametrize(
    "value",
    [
        "-5",
        "-inf",
        "nan",
        "NaN",
        "",
        "soon",
        "Wed, 21 Oct 2015 07:28:00 GMT",  # past
        "Mon, 32 Dec 2026 00:00:00 GMT",
        "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
    ],
)
def test_a_negative_past_or_unreadable_retry_after_asks_for_no_extra_wait(value: str) -> None:
    assert parse_retry_after(value, NOW, CEILING_S) == 0.0


def test_the_ceiling_follows_the_setting() -> None:
    assert parse_retry_after("inf", NOW, 2.5) == 2.5
    assert NotifySettings().retry_after_max_s == 3600.0


# --- the next try ----------------------------------------------------------------------

SCHEDULE = (10.0, 60.0, 300.0)


def test_a_retry_after_within_the_schedule_is_honoured() -> None:
    assert next_try(SCHEDULE, 1, 120.0, left_s=400.0) == NextTry(120.0, last=False)


def test_a_retry_after_shorter_than_the_step_keeps_the_step() -> None:
    then = next_try(SCHEDULE, 2, 1.0, left_s=400.0)

    assert then is not None
    assert not then.last
    assert 48.0 <= then.delay_s <= 72.0


def test_a_retry_after_past_the_schedules_end_is_cut_there_and_that_try_is_the_last() -> None:
    assert next_try(SCHEDULE, 1, 3600.0, left_s=400.0) == NextTry(400.0, last=True)


def test_past_the_schedules_end_a_retry_after_leaves_the_step_and_one_last_try() -> None:
    then = next_try(SCHEDULE, 1, 3600.0, left_s=-5.0)

    assert then is not None
    assert then.last
    assert 8.0 <= then.delay_s <= 12.0


def test_without_retry_after_the_schedules_end_changes_nothing() -> None:
    then = next_try(SCHEDULE, 3, None, left_s=-100.0)

    assert then is not None
    assert not then.last
    assert next_try(SCHEDULE, 4, None, left_s=1000.0) is None


def test_the_schedules_end_is_its_steps_at_their_longest_jitter() -> None:
    assert schedule_span_s(SCHEDULE) == pytest.approx(370.0 * 1.2)


# --- settings that would overflow a date -------------------------------------------------


@pytest.mark.parametrize("schedule", [(5.0, float("inf")), (float("nan"),), (-1.0,), (1e20,), ()])
def test_a_retry_schedule_of_endless_or_negative_steps_is_refused(
    schedule: tuple[float, ...],
) -> None:
    with pytest.raises(ValidationError, match="retry_schedule_s"):
        NotifySettings(retry_schedule_s=schedule)


@pytest.mark.parametrize("field", ["retry_after_max_s", "breaker_cooldown_s", "webhook_timeout_s"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e20])
def test_endless_waits_are_refused_as_settings(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        NotifySettings.model_validate({field: value})
