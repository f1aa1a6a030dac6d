from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.egress import AllowList
from shared.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_INGEST_", frozen=True, extra="ignore")

    port: int = Field(default=8081, ge=0, le=65535)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_batch: int = Field(default=1_000, ge=1)
    # Per publisher, in interactions: a batch of 100 takes 100 tokens. Per process.
    rate_limit_per_s: float = Field(default=1_000.0, gt=0)
    rate_limit_burst: int = Field(default=5_000, ge=1)
    # An interaction's attributes, as compact JSON, at most this many bytes.
    max_attributes_bytes: int = Field(default=16 * 1024, ge=2)
    # Feed polls: a body over this many bytes, or a download (redirects included) longer
    # than this, is a failed poll; this many feeds are polled at once.
    feed_max_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    feed_timeout_s: float = Field(default=30.0, gt=0)
    feed_concurrency: int = Field(default=4, ge=1)
    # Feeds allowed to resolve to private or loopback addresses (SSRF guard): "host" (any
    # port) or "host:port" ("[::1]:8080" for IPv6), e.g. ["intranet.example:8443"].
    allow_hosts: AllowList = frozenset()
