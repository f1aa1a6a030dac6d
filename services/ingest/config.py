from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_INGEST_", frozen=True, extra="ignore")

    port: int = Field(default=8081, ge=0, le=65535)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_batch: int = Field(default=1_000, ge=1)
    # Per publisher, in interactions: a batch of 100 takes 100 tokens. Per process.
    rate_limit_per_s: float = Field(default=1_000.0, gt=0)
    rate_limit_burst: int = Field(default=5_000, ge=1)
    # Feed hosts allowed to resolve to private or loopback addresses (SSRF guard).
    allow_hosts: frozenset[str] = frozenset()
