"""Every Kafka topic name Switchboard uses, in one place.

A deployment may set a prefix (``SWITCHBOARD_KAFKA_TOPIC_PREFIX``) so that several
environments, or several test runs, share one cluster without sharing topics.
"""

from dataclasses import dataclass

INTERACTIONS_SUBMITTED = "switchboard.interactions.submitted.v1"
INTERACTIONS_REJECTED = "switchboard.interactions.rejected.v1"
INTERACTIONS_RECEIVED = "switchboard.interactions.received.v1"
INTERACTIONS_ENRICHED = "switchboard.interactions.enriched.v1"
ASSIGNMENTS = "switchboard.assignments.v1"
ESCALATIONS = "switchboard.escalations.v1"
DELIVERIES_DEAD = "switchboard.deliveries.dead.v1"
DELIVERIES = "switchboard.deliveries.v1"
ACCESS_KEYS = "switchboard.access-keys.v1"
OUTBOX_DEAD = "switchboard.outbox.dead.v1"
CONSUMED_DEAD = "switchboard.consumed.dead.v1"

ALL = (
    INTERACTIONS_SUBMITTED,
    INTERACTIONS_REJECTED,
    INTERACTIONS_RECEIVED,
    INTERACTIONS_ENRICHED,
    ASSIGNMENTS,
    ESCALATIONS,
    DELIVERIES_DEAD,
    DELIVERIES,
    ACCESS_KEYS,
    OUTBOX_DEAD,
    CONSUMED_DEAD,
)

# Topics where only the latest record per key matters.
COMPACTED = frozenset({ACCESS_KEYS})


@dataclass(frozen=True)
class Topics:
    """Topic names as one deployment sees them (its prefix applied)."""

    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def submitted(self) -> str:
        """Where systems that speak Kafka publish interactions for ingest to take in."""
        return self.name(INTERACTIONS_SUBMITTED)

    @property
    def rejected(self) -> str:
        """What ingest could not take from ``submitted``, with the reasons."""
        return self.name(INTERACTIONS_REJECTED)

    @property
    def received(self) -> str:
        return self.name(INTERACTIONS_RECEIVED)

    @property
    def enriched(self) -> str:
        return self.name(INTERACTIONS_ENRICHED)

    @property
    def assignments(self) -> str:
        return self.name(ASSIGNMENTS)

    @property
    def escalations(self) -> str:
        return self.name(ESCALATIONS)

    @property
    def deliveries_dead(self) -> str:
        return self.name(DELIVERIES_DEAD)

    @property
    def deliveries(self) -> str:
        """Every webhook attempt and its outcome, keyed by interaction."""
        return self.name(DELIVERIES)

    @property
    def access_keys(self) -> str:
        """Every API key issued or revoked, keyed by key id: each service keeps a replica
        (compacted: the latest record per key is all a new replica needs)."""
        return self.name(ACCESS_KEYS)

    @property
    def outbox_dead(self) -> str:
        """Outbox entries the broker refused for good (too large, say), moved aside: where
        each was going and why, keyed as the entry was; the entry itself stays in the
        service's ``<outbox>_dead`` collection."""
        return self.name(OUTBOX_DEAD)

    @property
    def consumed_dead(self) -> str:
        """Records a consumer could not handle, however often it tried: each as it was
        consumed, with ``switchboard-dead-*`` headers saying where from and why."""
        return self.name(CONSUMED_DEAD)

    def is_compacted(self, name: str) -> bool:
        return name.removeprefix(self.prefix) in COMPACTED

    def all(self) -> list[str]:
        return [self.name(base) for base in ALL]
