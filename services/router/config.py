from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_ROUTER_", frozen=True, extra="ignore")

    port: int = Field(default=8083, ge=0, le=65535)

    # How long an agent has to accept an offer before it goes to the next agent.
    offer_timeout_s: float = Field(default=120.0, gt=0)
    # First-response targets by priority 1..5: waiting longer raises sla.breached.
    sla_s: tuple[float, float, float, float, float] = (900.0, 1800.0, 3600.0, 14_400.0, 86_400.0)
    timer_tick_s: float = Field(default=1.0, gt=0)
