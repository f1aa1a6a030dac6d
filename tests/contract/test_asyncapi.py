"""The event contract: the checked-in AsyncAPI document matches the models and is valid."""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft7Validator

from shared.asyncapi import CHANNELS, document, render
from shared.events import AssignmentStatus

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "docs" / "asyncapi.json"
SCHEMA = Path(__file__).with_name("asyncapi-3.0.0.schema.json")


def test_the_checked_in_document_matches_the_models() -> None:
    assert CHECKED_IN.read_text(encoding="utf-8") == render(), (
        "docs/asyncapi.json is out of date with shared/events.py: run `make asyncapi`"
    )


def test_the_document_is_valid_asyncapi_3() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    errors = sorted(Draft7Validator(schema).iter_errors(document()), key=str)

    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def test_every_topic_and_assignment_status_is_in_the_document() -> None:
    doc = document()
    addresses = {channel["address"] for channel in doc["channels"].values()}
    messages = doc["components"]["messages"]

    assert addresses == set(CHANNELS)
    for status in AssignmentStatus:
        assert f"assignment.{status.value}.v1" in messages


def test_a_payload_schema_follows_its_model() -> None:
    enriched = document()["components"]["schemas"]["EnrichedInteraction"]

    assert {"interaction", "customer", "sentiment", "influence"} <= set(enriched["properties"])
    assert enriched["properties"]["influence"]["maximum"] == 100.0
