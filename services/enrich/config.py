from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class EnrichSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_ENRICH_", frozen=True, extra="ignore")

    port: int = Field(default=8082, ge=0, le=65535)
