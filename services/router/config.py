from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_ROUTER_", frozen=True, extra="ignore")

    port: int = Field(default=8083, ge=0, le=65535)
