from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.enrich.customers import DEFAULT_TIERS
from shared.settings import ServiceSettings


class EnrichSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_ENRICH_", frozen=True, extra="ignore")

    port: int = Field(default=8082, ge=0, le=65535)
    sentiment_analyzer: Literal["linear", "vader"] = "linear"
    # Tiers a profile may have, best first; "prospect" marks authors the CRM does not know.
    tiers: tuple[str, ...] = Field(default=DEFAULT_TIERS, min_length=1)
    # A JSON file {"intent": ["regex", ...]} replacing the built-in multilingual patterns.
    intents_file: Path | None = None
    # Below this probability a post's language counts as unknown rather than a guess.
    language_min_probability: float = Field(default=0.5, ge=0.0, le=1.0)
    import_batch: int = Field(default=500, ge=1, le=10_000)
    # A merge holding its profiles for longer was interrupted: the next merge of one of them
    # finishes it. Far longer than a merge takes, so that one under way is left alone.
    merge_abandoned_after_s: float = Field(default=60.0, ge=1.0, le=86_400.0)
    max_import_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
