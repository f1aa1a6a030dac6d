"""The event contract: the checked-in AsyncAPI document matches the models and is valid."""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft7Validator

from shared import events, topics
from shared.asyncapi import CONSUMED_DEAD, document, render
from shared.events import AssignmentStatus
from shared.outbox import OUTBOX_DEAD

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


# The one event type no Switchboard service produces: publishers that speak Kafka put it
# on the submitted topic, and ingest consumes it.
SUBMITTED = "io.switchboard.interaction.submitted.v1"
# The dead letters: the outbox's, typed where the relay makes them; a consumer's, the
# records as they were consumed, named in the document only.
DEAD_LETTERS = {OUTBOX_DEAD, CONSUMED_DEAD}


def produced_event_types() -> set[str]:
    """The event types the services emit, read from the contract module itself: every
    type constant in ``shared.events``, and one assignment type per status (as the router
    names them), spelled out here rather than taken from the document's channel table."""
    constants = {
        value
        for name, value in vars(events).items()
        if name.isupper()
        and isinstance(value, str)
        and value.startswith("io.switchboard.")
        and value.endswith(".v1")
    }
    assignments = {f"io.switchboard.assignment.{status.value}.v1" for status in AssignmentStatus}
    return constants | assignments


def test_every_topic_and_event_type_is_in_the_document() -> None:
    doc = document()
    addresses = [channel["address"] for channel in doc["channels"].values()]
    messages = doc["components"]["messages"]
    names = {message["name"] for message in messages.values()}
    [assignments] = [c for c in doc["channels"].values() if c["address"] == topics.ASSIGNMENTS]
    on_assignments = {messages[key]["name"] for key in assignments["messages"]}

    assert sorted(addresses) == sorted(topics.ALL)
    assert names == produced_event_types() | {SUBMITTED} | DEAD_LETTERS
    assert on_assignments == {
        f"io.switchboard.assignment.{status.value}.v1" for status in AssignmentStatus
    }


def test_a_payload_schema_follows_its_model() -> None:
    enriched = document()["components"]["schemas"]["EnrichedInteraction"]

    assert {"interaction", "customer", "sentiment", "influence"} <= set(enriched["properties"])
    assert enriched["properties"]["influence"]["maximum"] == 100.0
