from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_INGEST_", frozen=True, extra="ignore")

    port: int = Field(default=8081, ge=0, le=65535)
