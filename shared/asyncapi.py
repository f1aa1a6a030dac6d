"""The event contract as an AsyncAPI 3 document, generated from the models in ``events``.

``make asyncapi`` writes ``docs/asyncapi.json``; a test fails when the models and the
checked-in document disagree, and checks the document against the AsyncAPI 3 schema.
Channels are topics, messages are event types, payloads are the models' JSON schemas;
the CloudEvents attributes travel as ``ce_*`` headers (Kafka binary content mode).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel

from shared import topics
from shared.events import (
    ACCESS_KEY_CHANGED,
    DELIVERY_ATTEMPTED,
    DELIVERY_DEAD,
    INTERACTION_ENRICHED,
    INTERACTION_RECEIVED,
    INTERACTION_REJECTED,
    SLA_BREACHED,
    AccessKey,
    Assignment,
    AssignmentStatus,
    DeadDelivery,
    DeliveryAttempt,
    EnrichedInteraction,
    Interaction,
    RejectedSubmission,
    SlaBreach,
    assignment_type,
)
from shared.outbox import OUTBOX_DEAD, DeadEntry

# The type named for a dead-lettered record in this document: on the wire it keeps the
# ce_* headers it was consumed with (if any), so it carries no type of its own.
CONSUMED_DEAD = "io.switchboard.consumed.dead.v1"

# Each topic, what it is for, and the event types (with their data models) it carries.
CHANNELS: dict[str, tuple[str, dict[str, type[BaseModel] | None]]] = {
    topics.INTERACTIONS_SUBMITTED: (
        "Interactions from publishers that speak Kafka, as POST /v1/interactions takes them "
        "(see ingest's OpenAPI schema); ingest validates and dedupes them.",
        {"io.switchboard.interaction.submitted.v1": None},
    ),
    topics.INTERACTIONS_REJECTED: (
        "What ingest could not take from the submitted topic, with the reasons.",
        {INTERACTION_REJECTED: RejectedSubmission},
    ),
    topics.INTERACTIONS_RECEIVED: (
        "Every interaction ingest accepted, keyed by its author's identity.",
        {INTERACTION_RECEIVED: Interaction},
    ),
    topics.INTERACTIONS_ENRICHED: (
        "Interactions with their customer, sentiment, language, intents and influence, "
        "keyed by customer.",
        {INTERACTION_ENRICHED: EnrichedInteraction},
    ),
    topics.ASSIGNMENTS: (
        "Every change of an item's assignment, keyed by interaction.",
        {assignment_type(status): Assignment for status in AssignmentStatus},
    ),
    topics.ESCALATIONS: (
        "Items that waited past their SLA, and how they were escalated.",
        {SLA_BREACHED: SlaBreach},
    ),
    topics.DELIVERIES_DEAD: (
        "Webhook deliveries that used up their retry schedule.",
        {DELIVERY_DEAD: DeadDelivery},
    ),
    topics.DELIVERIES: (
        "Every webhook attempt and what it led to, keyed by interaction.",
        {DELIVERY_ATTEMPTED: DeliveryAttempt},
    ),
    topics.ACCESS_KEYS: (
        "Every API key issued or revoked (its hash, never the key), keyed by key id; "
        "each service keeps a replica to check the keys it is shown.",
        {ACCESS_KEY_CHANGED: AccessKey},
    ),
    topics.OUTBOX_DEAD: (
        "Outbox entries the broker refused for good (too large, a topic it does not take), "
        "moved aside so that the entries after them are published: where each was going "
        "and why, keyed as the entry was. The entry itself is kept in the service's "
        "<outbox>_dead collection.",
        {OUTBOX_DEAD: DeadEntry},
    ),
    topics.CONSUMED_DEAD: (
        "Records a consumer could not handle, however often it tried (not a valid event, "
        "or one whose handling always fails): each as it was consumed (key, value and "
        "headers, ce_* included), with headers switchboard-dead-reason, -topic, "
        "-partition, -offset, -consumer and -at saying where it came from and why.",
        {CONSUMED_DEAD: None},
    ),
}

CLOUDEVENT_HEADERS: dict[str, Any] = {
    "type": "object",
    "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type"],
    "properties": {
        "ce_specversion": {"type": "string", "const": "1.0"},
        "ce_id": {"type": "string", "description": "Unique per event; consumers dedupe by it"},
        "ce_source": {"type": "string", "description": "The service, e.g. /switchboard/enrich"},
        "ce_type": {"type": "string"},
        "ce_time": {"type": "string", "format": "date-time"},
        "ce_subject": {"type": "string", "description": "The interaction the event is about"},
        "ce_traceparent": {
            "type": "string",
            "description": "W3C trace context: one trace per interaction, ingest to webhook",
        },
        "content-type": {"type": "string", "const": "application/json"},
    },
}


def message_name(event_type: str) -> str:
    """``io.switchboard.assignment.offered.v1`` -> ``assignment.offered.v1``."""
    return event_type.removeprefix("io.switchboard.")


def channel_name(topic: str) -> str:
    return topic.removeprefix("switchboard.").replace(".", "-")


def payload_schema(model: type[BaseModel] | None, schemas: dict[str, Any]) -> dict[str, Any]:
    """The model's schema, its nested definitions hoisted into ``components.schemas``."""
    if model is None:
        return {"type": "object"}
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic, (description, event_types) in CHANNELS.items():
        name = channel_name(topic)
        channel_messages = {}
        for event_type, model in event_types.items():
            key = message_name(event_type)
            messages[key] = {
                "name": event_type,
                "contentType": "application/json",
                "headers": {"$ref": "#/components/schemas/CloudEventHeaders"},
                "payload": payload_schema(model, schemas),
            }
            channel_messages[key] = {"$ref": f"#/components/messages/{key}"}
        channels[name] = {
            "address": topic,
            "description": description,
            "messages": channel_messages,
        }
        operations[f"on-{name}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"Consume {topic}",
        }
    schemas["CloudEventHeaders"] = CLOUDEVENT_HEADERS
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Switchboard events",
            "version": "1.0.0",
            "description": (
                "CloudEvents 1.0 in Kafka's binary content mode: attributes as ce_* headers, "
                "data as the JSON value. Types are versioned by name; a breaking change is a "
                "new .v2 type on a new topic."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
