import math

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.egress import AllowList
from shared.settings import ServiceSettings

# Seconds between attempts, in the spirit of the well-known providers: about a day in all.
DEFAULT_RETRY_SCHEDULE_S = (
    5.0,
    30.0,
    120.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    18000.0,
    36000.0,
    18000.0,
)
# The longest any one wait may be (a retry step, a Retry-After, a cooldown): longer ones are
# refused, since they would park a delivery for good or overflow the date of its next try.
MAX_WAIT_S = 30 * 24 * 3600.0


class NotifySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_NOTIFY_", frozen=True, extra="ignore")

    port: int = Field(default=8084, ge=0, le=65535)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=3600.0)
    # A delivery that never succeeds is dead-lettered when its schedule is spent.
    retry_schedule_s: tuple[float, ...] = Field(default=DEFAULT_RETRY_SCHEDULE_S, min_length=1)
    # The longest wait a 429's or 5xx's Retry-After may ask for; a longer, infinite or
    # unreadable one is cut to it (negative: no extra wait). No Retry-After carries a
    # delivery past the end of its schedule: the wait is cut there, and that try is the last.
    retry_after_max_s: float = Field(default=3600.0, ge=0, le=MAX_WAIT_S)
    # Endpoints that may resolve to private or loopback addresses (e.g. a desk on this
    # machine): "host" (any port) or "host:port" ("[::1]:8089" for IPv6), e.g.
    # ["127.0.0.1:8089"]. Anything else on a non-public address is refused.
    allow_hosts: AllowList = frozenset()
    max_concurrent_deliveries: int = Field(default=32, ge=1)
    max_in_flight_per_endpoint: int = Field(default=4, ge=1)
    # An endpoint that fails this many times in a row is left alone for the cooldown.
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0, le=MAX_WAIT_S)
    poll_interval_s: float = Field(default=0.5, gt=0)
    # How long a delivery handed to the dispatcher in memory may wait there; one that
    # waits longer goes back to the store, since its lease would not cover an attempt.
    # A lease runs 30 s past the webhook timeout (``NotifyService.lease_s``); at most 20
    # of them go to waiting, so an attempt always has 10 s left to be recorded.
    hand_over_wait_s: float = Field(default=10.0, gt=0, le=20.0)
    # How long this process uses the subscriptions as it last read them: a change made
    # through another replica takes effect within it (one made here, at once).
    subscriptions_max_age_s: float = Field(default=1.0, ge=0)
    # How long the previous signing secret keeps signing after a rotation.
    secret_rotation_overlap_s: float = Field(default=24 * 3600, ge=0, le=365 * 24 * 3600)

    @field_validator("retry_schedule_s")
    @classmethod
    def _steps_are_finite_waits(cls, schedule: tuple[float, ...]) -> tuple[float, ...]:
        for step in schedule:
            if not (math.isfinite(step) and 0 <= step <= MAX_WAIT_S):
                raise ValueError(f"each step must be between 0 and {MAX_WAIT_S:.0f} s: {step}")
        return schedule
