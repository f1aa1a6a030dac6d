from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_ROUTER_", frozen=True, extra="ignore")

    port: int = Field(default=8083, ge=0, le=65535)

    # How long an agent has to accept an offer before it goes to the next agent, for
    # queues whose policy does not say.
    offer_timeout_s: float = Field(default=120.0, gt=0)
    # SLA targets, skills and overflow are per queue, in the routing policy (PUT /v1/policy).
    timer_tick_s: float = Field(default=1.0, gt=0)
    stats_interval_s: float = Field(default=5.0, gt=0)
    # An agent offered nothing for this long has its load recounted from the items it
    # holds, giving back capacity a crashed replica reserved but never offered.
    reconcile_after_s: float = Field(default=30.0, gt=0)
    # An event a change of an item owes and has not put in the outbox after this long was
    # owed by a router stopped in between: the timers add it.
    owed_after_s: float = Field(default=10.0, gt=0)
