"""Settings building blocks: frozen, explicit, read from ``SWITCHBOARD_*`` variables.

Nothing reads the environment at import: a service's Settings object is built once
at start-up (or in a test, by hand) and passed to ``create_app(settings)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.topics import Topics


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, frozen=True, extra="ignore")


class KafkaSettings(BaseSettings):
    """How to reach Kafka. Idempotence needs InitProducerId, which the embedded broker lacks."""

    model_config = _config("SWITCHBOARD_KAFKA_")

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    group_prefix: str = ""
    # Create missing topics at start-up; off where topics are managed (Strimzi KafkaTopic).
    create_topics: bool = True
    partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    idempotence: bool = False
    # Short sessions keep a group's join fast; the embedded broker waits half of it.
    session_timeout_s: float = Field(default=6.0, gt=0)
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=500, ge=1)
    # How long a consumer gathers a batch before handing it over.
    batch_within_s: float = Field(default=0.01, gt=0)
    # The same for consumers nobody waits on (access keys, ingest's journey): a consumer
    # wakes every such interval even when idle, and a fuller batch is one write, not many.
    background_batch_within_s: float = Field(default=0.25, gt=0)
    # How long the broker may hold a fetch with nothing to return. The embedded broker
    # hands a record that arrives meanwhile over late, in proportion to this wait, and
    # each consumer's idle fetching costs it CPU; 50 ms weighs the two (bench/HISTORY.md).
    # Kafka answers as soon as records arrive (500 ms is its default, and the manifests').
    fetch_max_wait_ms: int = Field(default=50, ge=1, le=10_000)
    # The largest record the brokers take (their topics' max.message.bytes, Kafka's
    # default); a producer refuses bigger ones, so input that would make one is refused.
    max_message_bytes: int = Field(default=1_048_576, ge=4_096)
    # How to authenticate to the brokers (Strimzi's TLS + SCRAM listener: SASL_SSL,
    # SCRAM-SHA-512, the KafkaUser's name and password, the cluster CA certificate).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    ssl_cafile: Path | None = None  # PEM; unset: the system's trusted CAs
    # How often a consumed batch, then each of its records alone, may fail for a reason that
    # is not an outage before the record that fails is moved to the dead-letter topic.
    attempts_before_dead_letter: int = Field(default=5, ge=1)

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def group_id(self, service: str) -> str:
        return f"{self.group_prefix}switchboard-{service}"


class MongoSettings(BaseSettings):
    model_config = _config("SWITCHBOARD_MONGO_")

    url: SecretStr = SecretStr("mongodb://127.0.0.1:27017")
    database_prefix: str = "switchboard_"
    timeout_ms: int = Field(default=5_000, ge=100)

    def database(self, service: str) -> str:
        return f"{self.database_prefix}{service}"


class LogSettings(BaseSettings):
    model_config = _config("SWITCHBOARD_LOG_")

    level: str = "INFO"
    json_output: bool | None = None  # None: JSON unless writing to a terminal


class TracingSettings(BaseSettings):
    model_config = _config("SWITCHBOARD_TRACING_")

    # OTLP/HTTP traces endpoint (e.g. http://otel-collector:4318/v1/traces); unset: off.
    otlp_endpoint: str | None = None


class AuthSettings(BaseSettings):
    model_config = _config("SWITCHBOARD_AUTH_")

    # The bootstrap admin key, kept in the deployment's secrets: it issues the other keys
    # (see shared.access). Empty: only issued keys are accepted.
    admin_token: SecretStr = SecretStr("")


class ServiceSettings(BaseSettings):
    """What every service has: where it listens, auth, Kafka, Mongo and logs.

    Each service's own Settings subclass sets its env prefix (``SWITCHBOARD_INGEST_``
    and so on) and its default port.
    """

    model_config = _config("SWITCHBOARD_SERVICE_")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Scratch space for the stream processor (no state of record lives here).
    data_dir: Path = Path(".switchboard/run")
    # Largest request body any route takes (bulk imports set their own, larger, limit).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Serve /openapi.json and /docs (they need no key, so they are off unless asked for).
    expose_docs: bool = False
    auth: AuthSettings = Field(default_factory=AuthSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    mongo: MongoSettings = Field(default_factory=MongoSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
