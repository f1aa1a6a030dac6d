"""Router's domain: decide queue and priority for each enriched interaction, then offer
it to the best available agent. Every change of an assignment is an event."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any, Literal

from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field
from pymongo.errors import PyMongoError

from services.router.config import RouterSettings
from services.router.decisions import (
    offered_step,
    readable,
    routed_step,
    transition_step,
    waiting_step,
)
from services.router.policy import DEFAULT_POLICY, Decision, Policy, PolicyIn
from services.router.repository import CANDIDATES_READ, QueueCounts, RouterRepository, owed_by
from shared.emit import Emitter
from shared.events import (
    SLA_BREACHED,
    Assignment,
    AssignmentStatus,
    CloudEvent,
    EnrichedInteraction,
    SlaBreach,
    assignment_type,
    derived_event_id,
    utcnow,
)
from shared.logging import get_logger, handling
from shared.mongo import Document, epoch_ms
from shared.outbox import Outbox, OutboxEntry
from shared.text import Name
from shared.topics import Topics
from shared.tracing import Spans, child_of, trace_id

SOURCE = "/switchboard/router"
# Queued items read at a time while offering waiting work: one read per page.
DRAIN_PAGE = 200
log = get_logger(__name__)
Presence = Literal["online", "away", "offline"]


class Action(StrEnum):
    ACCEPT = "accept"
    DECLINE = "decline"
    RESOLVE = "resolve"
    RELEASE = "release"


@dataclass(frozen=True)
class ActionRule:
    from_states: frozenset[str]
    to_state: str
    event: AssignmentStatus
    frees_agent: bool


ACTIONS = {
    Action.ACCEPT: ActionRule(frozenset({"offered"}), "accepted", AssignmentStatus.ACCEPTED, False),
    Action.DECLINE: ActionRule(frozenset({"offered"}), "queued", AssignmentStatus.DECLINED, True),
    Action.RESOLVE: ActionRule(
        frozenset({"accepted"}), "resolved", AssignmentStatus.RESOLVED, True
    ),
    Action.RELEASE: ActionRule(
        frozenset({"offered", "accepted"}), "queued", AssignmentStatus.REQUEUED, True
    ),
}


class ItemNotFound(LookupError):
    pass


class ActionRefused(Exception):
    pass


@dataclass
class Writes:
    """What placing items owes besides the items themselves: events and decision steps,
    written together by ``flush``. A crash before it loses nothing that matters: a
    redelivered item is found stored, and its offer event is owed again."""

    events: list[OutboxEntry] = field(default_factory=list)
    steps: list[Document] = field(default_factory=list)
    # Items whose owing change is written: settled once their events are sent or in the
    # outbox.
    owing: list[Document] = field(default_factory=list)
    # The agents as the decision steps describe them: read once, then kept up to date
    # with this process's own reservations.
    agents: list[Document] | None = None

    def reserved(self, agent: Document) -> None:
        if self.agents is not None:
            self.agents = [agent if a["_id"] == agent["_id"] else a for a in self.agents]


@dataclass(frozen=True)
class Offer:
    """An item as offered to an agent, the agent as it is after the offer took a unit of
    its capacity, and every agent as they stood then (for the decision step)."""

    item: Document
    agent: Document
    agents: list[Document]


def has_room(agent: Document) -> bool:
    return agent.get("presence") == "online" and int(agent["free"]) > 0


def best_agent(agents: Sequence[Document], item: Document) -> Document | None:
    """The agent ``RouterRepository.reserve_agent`` would choose among ``agents``: online,
    with every skill needed, not one that declined the item, with free capacity; the most
    free, then the longest idle."""
    needed = set(item.get("required_skills", []))
    declined = set(item.get("declined_by", []))
    able = [
        agent
        for agent in agents
        if has_room(agent)
        and agent["_id"] not in declined
        and needed <= set(agent.get("skills", []))
    ]
    return min(
        able, key=lambda a: (-int(a["free"]), int(a.get("last_offer_ms") or 0)), default=None
    )


class NotYours(Exception):
    """An agent acting on an item offered or assigned to someone else (or to no one)."""


class AgentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(min_length=1, max_length=128)
    skills: list[str] = Field(default_factory=list, max_length=64)
    capacity: int = Field(default=3, ge=1, le=100)
    presence: Presence = "offline"


class AgentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = Field(default=None, min_length=1, max_length=128)
    skills: list[str] | None = Field(default=None, max_length=64)
    capacity: int | None = Field(default=None, ge=1, le=100)


class PresenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    presence: Presence


def new_item(
    enriched: EnrichedInteraction, decision: Decision, sla_s: float, traceparent: str | None
) -> Document:
    interaction = enriched.interaction
    now = utcnow()
    return {
        "_id": interaction.id,
        "state": "queued",
        "queue": decision.queue,
        "priority": decision.priority,
        "rule": decision.rule,
        "policy_version": decision.policy_version,
        "required_skills": list(decision.skills),
        "traceparent": traceparent,
        "offer": 0,
        "agent_id": None,
        "enqueued_at": now,
        "enqueued_ms": epoch_ms(now),  # what the queue statistics' oldest wait is counted from
        "sla_due_ms": epoch_ms(now + timedelta(seconds=sla_s)),
        "sla_breached_ms": None,
        "customer": enriched.customer.model_dump(mode="json"),
        "sentiment": enriched.sentiment.label,
        "channel": interaction.channel.value,
        "author_handle": interaction.author.handle,
        "text": interaction.text,
        "url": str(interaction.url) if interaction.url else None,
    }


def assignment_owed(status: AssignmentStatus, agent_id: str | None, offer: int) -> Document:
    return {"kind": "assignment", "status": status.value, "agent_id": agent_id, "offer": offer}


def breach_owed(item: Document, at: datetime) -> Document:
    """What the breach event needs of the item as it was before its escalation."""
    return {
        "kind": SLA_BREACHED,
        "queue": item["queue"],
        "priority": item["priority"],
        "at_ms": epoch_ms(at),
    }


def offered_event(item: Document) -> CloudEvent[Assignment]:
    """The offer an item's stored state describes; the same event however often it is built."""
    return assignment_event(item, AssignmentStatus.OFFERED, item["agent_id"])


def assignment_event(
    item: Document, status: AssignmentStatus, agent_id: str | None
) -> CloudEvent[Assignment]:
    """A change of an item's assignment; its id derives from the item, the change and the
    offer it belongs to, so building it again yields the same event."""
    assignment = Assignment(
        interaction_id=item["_id"],
        status=status,
        queue=item["queue"],
        priority=item["priority"],
        rule=item["rule"],
        agent_id=agent_id,
        offer=item["offer"],
        customer=item["customer"],
        sentiment=item["sentiment"],
        channel=item["channel"],
        author_handle=item["author_handle"],
        text=item["text"],
        url=item["url"],
        enqueued_at=item["enqueued_at"],
        policy_version=item.get("policy_version"),
        required_skills=tuple(item.get("required_skills", ())),
    )
    event_id = derived_event_id(item["_id"], status.value, str(item["offer"]))
    return CloudEvent[Assignment](
        id=event_id,
        source=SOURCE,
        type=assignment_type(status),
        subject=item["_id"],
        traceparent=child_of(item.get("traceparent"), event_id),
        data=assignment,
    )


def sla_breached_event(item: Document, escalated: Document, now: datetime) -> CloudEvent[SlaBreach]:
    enqueued = item["enqueued_at"]
    return CloudEvent[SlaBreach](
        id=derived_event_id(item["_id"], SLA_BREACHED),
        source=SOURCE,
        type=SLA_BREACHED,
        subject=item["_id"],
        data=SlaBreach(
            interaction_id=item["_id"],
            queue=item["queue"],
            priority_before=item["priority"],
            priority_after=escalated["priority"],
            queue_after=escalated["queue"] if escalated["queue"] != item["queue"] else None,
            waited_s=round((now - enqueued).total_seconds(), 3),
            customer=item["customer"],
            enqueued_at=enqueued,
        ),
    )


class RouterService:
    spans = Spans()  # main sets the service's own, exporting when tracing is on

    def __init__(
        self,
        repository: RouterRepository,
        outbox: Outbox,
        emitter: Emitter,
        topics: Topics,
        settings: RouterSettings,
    ) -> None:
        self.repository = repository
        self.outbox = outbox  # events of changes a request or a timer makes
        self.emitter = emitter  # events of the consumer's placing (see shared.emit)
        self.topics = topics
        self.settings = settings
        self.policy = Policy(DEFAULT_POLICY, version=1)
        # Agents whose load did not match the items they hold at the last recount, as
        # they stood then: (load, free, items held).
        self.load_mismatches: dict[str, tuple[int, int, int]] = {}

    # -- policy -------------------------------------------------------------------

    async def load_policy(self) -> None:
        """The latest saved policy; the shipped default becomes version 1 if none is."""
        stored = await self.repository.latest_policy()
        if stored is None:
            await self.repository.insert_policy(policy_document(DEFAULT_POLICY, 1, "default"))
            stored = await self.repository.latest_policy()
        if stored is not None and stored["_id"] != self.policy.version:
            self.policy = Policy(PolicyIn.model_validate(stored["policy"]), stored["_id"])

    async def save_policy(self, spec: PolicyIn, saved_by: str) -> Policy:
        """Compile and store the policy as the next version; raises PolicyError."""
        latest = await self.repository.latest_policy()
        policy = Policy(spec, (latest["_id"] if latest else 0) + 1)
        # Another save took the number: take the next one (never re-read, never loop forever).
        while not await self.repository.insert_policy(
            policy_document(spec, policy.version, saved_by)
        ):
            policy = Policy(spec, policy.version + 1)
        self.policy = policy
        log.info("policy saved", version=policy.version, rules=len(spec.rules))
        return policy

    async def policy_version(self, version: int) -> Document | None:
        return await self.repository.find_policy(version)

    # -- timers -------------------------------------------------------------------

    async def run_timers(self) -> None:
        """Offer timeouts and SLA breaches, from deadlines stored with the items, so a
        restart misses none and replicas do not double them (conditional updates).
        Also picks up a policy another replica saved."""
        while True:
            try:
                await self.load_policy()
                await self.pay_what_stopped_routers_owed()
                await self.expire_offers()
                await self.escalate_overdue()
            except PyMongoError as exc:
                log.warning("router timers failed, retrying", error=repr(exc))
            await asyncio.sleep(self.settings.timer_tick_s)

    async def expire_offers(self) -> None:
        """An offer not accepted in time goes back to the queue, and on to another agent.
        The agent who let it time out is set away, as not at the desk: offered nothing
        more until they are online again, and then this item too, if it still waits (a
        timeout is not a decline: on a desk of one it would leave the item to nobody)."""
        for item in await self.repository.expired_offers(utcnow()):
            agent_id = item["agent_id"]
            changes: Document = {"state": "queued", "agent_id": None, "timed_out_at": utcnow()}
            owed = assignment_owed(AssignmentStatus.TIMED_OUT, agent_id, item["offer"])
            updated = await self.repository.transition(
                item["_id"], agent_id, "offered", changes, owed
            )
            if updated is None:  # accepted or declined meanwhile
                continue
            await self.pay_owed([updated])
            why = f"offer {updated['offer']} not accepted in time: back to the queue"
            await self.repository.record_step(transition_step(updated, "timed_out", agent_id, why))
            log.info("offer timed out", interaction_id=item["_id"], agent_id=agent_id)
            if await self.repository.set_away_if_online(agent_id):
                log.info("agent set away: an offer timed out", agent_id=agent_id)
            await self.repository.release_agent(agent_id)
            await self.drain()

    async def escalate_overdue(self) -> None:
        """Raise sla.breached once per item and escalate it: to its queue's overflow
        queue if it has one, else up one priority."""
        now = utcnow()
        escalated_any = False
        for item in await self.repository.overdue_items(now):
            escalation = self.escalation(item)
            owed = breach_owed(item, now)
            breached = await self.repository.mark_breached(item["_id"], now, escalation, owed)
            if breached is None:
                continue
            escalated_any = True
            await self.pay_owed([breached])
            sla_breaches_counter().labels(item["queue"]).inc()
            why = (
                f"waited past its SLA: moved to queue {escalation['queue']}"
                if escalation["queue"] != item["queue"]
                else f"waited past its SLA: priority {item['priority']} -> {escalation['priority']}"
            )
            await self.repository.record_step(transition_step(breached, "sla_breached", None, why))
            log.info("sla breached", interaction_id=item["_id"], **escalation)
        if escalated_any:
            await self.drain()  # an item in its overflow queue may fit other agents

    def escalation(self, item: Document) -> Document:
        queue = self.policy.queues.get(item["queue"])
        if queue is not None and queue.overflow is not None:
            overflow = self.policy.queues[queue.overflow]
            return {
                "queue": overflow.name,
                "priority": item["priority"],
                "required_skills": list(overflow.required_skills),
            }
        return {"queue": item["queue"], "priority": max(1, int(item["priority"]) - 1)}

    async def route_batch(self, events: Sequence[CloudEvent[EnrichedInteraction]]) -> None:
        """Offer the batch's items together, in order, to agents chosen from one read of
        the agents, then store each item as it ends up, offered or queued: one write per
        item rather than stored and then moved. What that could not settle (a redelivered
        item, a reservation another replica won) is placed one item at a time. Events and
        decision steps are written together at the end."""
        # By interaction id: a repeat within the batch is the same item.
        routed: dict[str, tuple[CloudEvent[EnrichedInteraction], Document, Decision]] = {}
        for event in events:
            routed.setdefault(event.data.interaction.id, (event, *self.route(event)))
        writes = Writes()
        offers = await self.offer_together([item for _, item, _ in routed.values()], writes)
        fresh = await self.repository.insert_items(
            [
                settled.item if isinstance(settled := offers.get(i), Offer) else routed[i][1]
                for i in routed
            ]
        )
        for offer in offers.values():
            if isinstance(offer, Offer) and offer.item["_id"] not in fresh:
                await self.repository.release_agent(offer.agent["_id"])  # stored before
        for event, item, decision in routed.values():
            data = event.data
            with (
                handling(
                    event.id, data.interaction.id, data.customer.id, trace_id(event.traceparent)
                ),
                self.spans.span("route", event.traceparent, interaction_id=data.interaction.id),
            ):
                writes.steps.append(routed_step(item["_id"], decision))
                outcome = offers.get(item["_id"]) if item["_id"] in fresh else None
                if isinstance(outcome, Offer):
                    self.record_offer(outcome, writes)
                elif outcome == "no agent":
                    await self.wait_in_queue(item, writes)
                else:
                    await self.place(item, item["_id"] in fresh, writes)
        await self.flush(writes, consumed=True)

    async def offer_together(
        self, items: Sequence[Document], writes: Writes
    ) -> dict[str, Offer | Literal["no agent"]]:
        """Choose for queued items, in order, the agent ``reserve_agent`` would choose, and
        reserve their capacity: two round trips for the lot, the agents read and their
        capacity reserved. An item missing from the answer is left for ``place``."""
        if not items:
            return {}
        agents = await self.candidates(writes)
        every_agent_read = len(agents) < CANDIDATES_READ  # else an able one may be unread
        now = utcnow()
        chosen: dict[str, Offer | Literal["no agent"]] = {}
        for item in items:
            agent = best_agent(agents, item)
            if agent is None:
                if every_agent_read:
                    chosen[item["_id"]] = "no agent"
                continue
            taken = {**agent, "free": agent["free"] - 1, "load": agent["load"] + 1}
            agents = [taken if a["_id"] == agent["_id"] else a for a in agents]
            expires = now + timedelta(seconds=self.offer_timeout_s(item["queue"]))
            offered = {
                **item,
                "state": "offered",
                "agent_id": agent["_id"],
                "offered_at": now,
                "offer_expires_ms": epoch_ms(expires),
                "offer": int(item["offer"]) + 1,
            }
            chosen[item["_id"]] = Offer(offered, taken, agents)
        offers = [offer for offer in chosen.values() if isinstance(offer, Offer)]
        units = collections.Counter(offer.agent["_id"] for offer in offers)
        reserved = await self.repository.reserve_agents(dict(units), now)
        for offer in offers:
            if offer.agent["_id"] not in reserved:
                del chosen[offer.item["_id"]]  # place() tries again, one at a time
        # The decision steps describe agents as this batch expected to find them; a
        # reservation lost to another replica is the one case where they are off.
        writes.agents = agents
        return chosen

    def record_offer(self, offer: Offer, writes: Writes) -> None:
        item = offer.item
        writes.events.append((self.topics.assignments, item["_id"], offered_event(item)))
        writes.steps.append(offered_step(item, offer.agents, offer.agent))
        log.info(
            "offered",
            interaction_id=item["_id"],
            agent_id=offer.agent["_id"],
            queue=item["queue"],
            priority=item["priority"],
        )

    async def wait_in_queue(self, item: Document, writes: Writes) -> None:
        queued = assignment_event(item, AssignmentStatus.QUEUED, None)
        writes.events.append((self.topics.assignments, item["_id"], queued))
        writes.steps.append(waiting_step(item, await self.candidates(writes)))
        log.info("queued", queue=item["queue"], priority=item["priority"], rule=item["rule"])

    def route(self, event: CloudEvent[EnrichedInteraction]) -> tuple[Document, Decision]:
        """The item an enriched interaction becomes under the current policy."""
        decision = self.policy.decide(event.data)
        sla_s = self.policy.sla_s(decision.queue, decision.priority)
        return new_item(event.data, decision, sla_s, event.traceparent), decision

    async def place(self, item: Document, fresh: bool, writes: Writes) -> None:
        """Offer a newly stored item, or queue it; an item stored before (a redelivered
        event) is taken as it is now, and its offer event owed again if it was offered."""
        if not fresh:
            stored = await self.repository.find_item(item["_id"])
            if stored is None:
                return
            item = stored
        if item["state"] == "queued" and not await self.offer(item, writes):
            await self.wait_in_queue(item, writes)
        elif item["state"] == "offered":
            # Redelivered after the offer was stored: make sure its event is too.
            writes.events.append((self.topics.assignments, item["_id"], offered_event(item)))

    async def candidates(self, writes: Writes) -> list[Document]:
        if writes.agents is None:
            writes.agents = await self.repository.candidate_agents()
        return writes.agents

    async def flush(self, writes: Writes, consumed: bool = False) -> None:
        """Events first: a crash before the steps loses explanation, never an event.
        Placing what the consumer took (``consumed``) sends them straight to the broker:
        the offsets are committed after, and a redelivery finds its items stored and owes
        their events again. A drain's offers, which no redelivery makes again, go through
        the outbox."""
        events = writes.events + self.owed_events(writes.owing)
        if consumed:
            await self.emitter.emit(events)
        else:
            await self.outbox.add(events)
        await self.repository.settle(writes.owing)
        await self.repository.record_steps(writes.steps)

    async def pay_owed(self, items: Sequence[Document]) -> None:
        """Put the events ``items`` owe (as their owing change left them) in the outbox,
        and settle them."""
        await self.outbox.add(self.owed_events(items))
        await self.repository.settle(items)

    async def pay_what_stopped_routers_owed(self) -> None:
        """Events a change of an item owed and nobody put in the outbox (the router making
        it was stopped in between): added now, under the ids they would have had."""
        before = utcnow() - timedelta(seconds=self.settings.owed_after_s)
        owing = await self.repository.owing_items(before)
        if owing:
            log.warning("adding events owed by a stopped router", items=len(owing))
            await self.pay_owed(owing)

    def owed_events(self, items: Sequence[Document]) -> list[OutboxEntry]:
        """Every event each item owes: this change's, and any an earlier change left."""
        return [self.owed_event(item, owed) for item in items for owed in owed_by(item)]

    def owed_event(self, item: Document, owed: Document) -> OutboxEntry:
        """The event an owing change recorded, built from the item as it is now with what
        the change knew then (the offer, or the queue and priority before an escalation):
        the same id as when it was first owed, so the outbox and consumers take it once."""
        if owed["kind"] == SLA_BREACHED:
            before = {**item, "queue": owed["queue"], "priority": owed["priority"]}
            escalated = {"queue": item["queue"], "priority": item["priority"]}
            at = datetime.fromtimestamp(owed["at_ms"] / 1000, UTC)
            return self.topics.escalations, item["_id"], sla_breached_event(before, escalated, at)
        status = AssignmentStatus(owed["status"])
        event = assignment_event({**item, "offer": owed["offer"]}, status, owed["agent_id"])
        return self.topics.assignments, item["_id"], event

    async def offer(self, item: Document, writes: Writes) -> bool:
        """Offer a queued item to the best available agent; False if nobody can take it."""
        agent = await self.repository.reserve_agent(
            utcnow(), exclude=item.get("declined_by", []), skills=item.get("required_skills", [])
        )
        if agent is None:
            return False
        now = utcnow()
        expires = now + timedelta(seconds=self.offer_timeout_s(item["queue"]))
        owed = assignment_owed(AssignmentStatus.OFFERED, agent["_id"], int(item["offer"]) + 1)
        offered = await self.repository.offer_item(item, agent["_id"], now, expires, owed)
        if offered is None:  # another replica got there first
            await self.repository.release_agent(agent["_id"])
            return True
        writes.owing.append(offered)
        writes.reserved(agent)
        writes.steps.append(offered_step(offered, await self.candidates(writes), agent))
        log.info(
            "offered",
            interaction_id=offered["_id"],
            agent_id=agent["_id"],
            queue=offered["queue"],
            priority=offered["priority"],
        )
        return True

    def offer_timeout_s(self, queue_name: str) -> float:
        queue = self.policy.queues.get(queue_name)
        if queue is not None and queue.offer_timeout_s is not None:
            return queue.offer_timeout_s
        return self.settings.offer_timeout_s

    async def drain(self, page: int = DRAIN_PAGE) -> None:
        """Offer waiting work, most urgent first, while agents have room. An item nobody
        online can take now (the skills, or they all declined it) is passed over, and the
        queue read on past it: however many such items lead the queue, they must not keep
        the ones behind from an agent who is free."""
        passed_over = 0
        while True:
            agents = await self.repository.candidate_agents()
            every_agent_read = len(agents) < CANDIDATES_READ  # else an able one may be unread
            if every_agent_read and not any(has_room(agent) for agent in agents):
                return
            items = await self.repository.queued_items(page, skip=passed_over)
            for item in items:
                if every_agent_read and best_agent(agents, item) is None:
                    passed_over += 1  # no store write to learn what is known already
                    continue
                writes = Writes(agents=agents)  # written per offer: no redelivery makes it
                offered = await self.offer(item, writes)
                await self.flush(writes)
                agents = writes.agents or agents
                if not offered:
                    passed_over += 1
                    if not await self.repository.any_free_agent():
                        return
            if len(items) < page:
                return

    async def act(self, agent_id: str, item_id: str, action: Action) -> Document:
        """An agent accepts, declines, resolves or releases an item it holds.

        Raises ItemNotFound, or ActionRefused when the item is not in a state, or not with
        the agent, that allows the action.
        """
        rule = ACTIONS[action]
        item = await self.repository.find_item(item_id)
        if item is None:
            raise ItemNotFound(item_id)
        if item["agent_id"] != agent_id:
            raise NotYours(item_id)
        if item["state"] not in rule.from_states:
            raise ActionRefused(
                f"cannot {action.value} an item that is {item['state']} with this agent"
            )
        changes: Document = {"state": rule.to_state, f"{action.value}_at": utcnow()}
        if rule.to_state == "queued":
            changes["agent_id"] = None
        if action is Action.DECLINE:
            changes["declined_by"] = [*item.get("declined_by", []), agent_id]
        owed = assignment_owed(rule.event, agent_id, item["offer"])
        updated = await self.repository.transition(item_id, agent_id, item["state"], changes, owed)
        if updated is None:
            raise ActionRefused("the item changed meanwhile; look again")
        await self.pay_owed([updated])
        why = f"{rule.event.value} by the agent" + (
            ": back to the queue" if rule.to_state == "queued" else ""
        )
        await self.repository.record_step(transition_step(updated, rule.event.value, agent_id, why))
        log.info(action.value, interaction_id=item_id, agent_id=agent_id)
        if rule.frees_agent:
            await self.repository.release_agent(agent_id)
            await self.drain()
        return updated

    async def register_agent(self, payload: AgentIn) -> Document:
        agent = {
            "_id": str(uuid.uuid4()),
            **payload.model_dump(),
            "load": 0,
            "free": payload.capacity,
            "last_offer_ms": 0,
            "created_at": utcnow(),
        }
        await self.repository.insert_agent(agent)
        if payload.presence == "online":
            await self.drain()
        return agent

    async def set_presence(self, agent_id: str, presence: Presence) -> Document | None:
        agent = await self.repository.set_presence(agent_id, presence)
        if agent is not None and presence == "online":
            await self.drain()
        return agent

    async def get_agent(self, agent_id: str) -> Document | None:
        return await self.repository.find_agent(agent_id)

    async def list_agents(self, limit: int = 500) -> list[Document]:
        return await self.repository.list_agents(limit)

    async def update_agent(self, agent_id: str, patch: AgentPatch) -> Document | None:
        fields = patch.model_dump(exclude_unset=True, exclude={"capacity"})
        while True:
            agent = await self.repository.find_agent(agent_id)
            if agent is None:
                return None
            updated = await self.repository.update_agent(agent, fields, patch.capacity)
            if updated is not None:
                break
        if patch.capacity is not None and patch.capacity > int(agent["capacity"]):
            await self.drain()
        return updated

    async def reconcile_capacity(self) -> None:
        """Give back capacity a crashed replica reserved but never used: an agent not
        offered anything for a while has exactly the load of the items it holds.

        Only a mismatch seen twice, with the agent unchanged between, is corrected: an
        item just resolved or declined is no longer held a moment before its agent's
        unit is released, and correcting that moment would free the unit twice."""
        quiet_since = epoch_ms(utcnow()) - int(self.settings.reconcile_after_s * 1000)
        freed = False
        # An agent offered something lately may have a reservation on its way to
        # becoming an offer: only the quiet ones are recounted.
        quiet = [
            agent
            for agent in await self.repository.list_agents(10_000)
            if int(agent.get("last_offer_ms", 0)) <= quiet_since
        ]
        if not quiet:
            return
        held_by_agent = await self.repository.held_by_agent()
        mismatches = {}
        for agent in quiet:
            held = held_by_agent[agent["_id"]]
            if held == agent["load"]:
                continue
            seen = (int(agent["load"]), int(agent["free"]), held)
            if self.load_mismatches.get(agent["_id"]) != seen:
                mismatches[agent["_id"]] = seen  # corrected if it is still so next time
            elif await self.repository.correct_load(agent, held):
                log.warning(
                    "agent load corrected", agent_id=agent["_id"], was=agent["load"], now=held
                )
                freed = freed or held < agent["load"]
        self.load_mismatches = mismatches
        if freed:
            await self.drain()  # the capacity given back takes waiting work at once

    async def get_item(self, item_id: str) -> Document | None:
        return await self.repository.find_item(item_id)

    async def decision_record(self, item_id: str) -> dict[str, Any] | None:
        item = await self.repository.find_item(item_id)
        if item is None:
            return None
        return readable(item, await self.repository.steps_for(item))

    async def queue_stats(self) -> list[QueueStats]:
        """Depth by priority, oldest wait and breaches per queue; online agents' load."""
        now_ms = epoch_ms(utcnow())
        counts = await self.repository.queue_counts()
        stats = {
            name: QueueStats.of(name, counts.get(name, QueueCounts()), now_ms)
            for name in [*self.policy.queues, *sorted(counts.keys() - self.policy.queues.keys())]
        }
        agents = await self.repository.online_agents()
        for queue in stats.values():
            spec = self.policy.queues.get(queue.name)
            needed = set(spec.required_skills) if spec else set()
            able = [a for a in agents if needed <= set(a.get("skills", []))]
            queue.agents_online = len(able)
            queue.agents_load = sum(int(a["load"]) for a in able)
            queue.agents_capacity = sum(int(a["capacity"]) for a in able)
        export_queue_gauges(stats.values())
        return list(stats.values())

    async def report_queues(self) -> None:
        """Keeps the queue gauges current for Prometheus, and agents' load true, every
        few seconds; and offers waiting work a drain missed (a crash between an agent
        freed and the drain that follows, or a drain the store failed)."""
        while True:
            try:
                await self.queue_stats()
                await self.reconcile_capacity()
                await self.drain()
            except PyMongoError as exc:
                log.warning("queue statistics failed, retrying", error=repr(exc))
            await asyncio.sleep(self.settings.stats_interval_s)


@dataclass
class QueueStats:
    name: str
    waiting: dict[int, int] = field(default_factory=lambda: dict.fromkeys(range(1, 6), 0))
    offered: int = 0
    oldest_wait_s: float = 0.0
    sla_breached: int = 0
    agents_online: int = 0
    agents_load: int = 0
    agents_capacity: int = 0

    @classmethod
    def of(cls, name: str, counts: QueueCounts, now_ms: int) -> QueueStats:
        oldest = counts.oldest_enqueued_ms
        return cls(
            name,
            waiting=dict(counts.waiting),
            offered=counts.offered,
            oldest_wait_s=0.0 if oldest is None else max(0.0, round((now_ms - oldest) / 1000, 3)),
            sla_breached=counts.sla_breached,
        )


@dataclass(frozen=True)
class QueueGauges:
    depth: Gauge
    oldest_wait: Gauge
    agents_online: Gauge
    agents_load: Gauge


@cache
def queue_gauges() -> QueueGauges:
    return QueueGauges(
        depth=Gauge(
            "switchboard_router_queue_depth",
            "Items waiting by queue and priority",
            ["queue", "priority"],
        ),
        oldest_wait=Gauge(
            "switchboard_router_oldest_wait_seconds", "Longest wait in each queue", ["queue"]
        ),
        agents_online=Gauge(
            "switchboard_router_agents_online", "Online agents able to serve each queue", ["queue"]
        ),
        agents_load=Gauge(
            "switchboard_router_agents_load",
            "Items held by the agents able to serve each queue",
            ["queue"],
        ),
    )


@cache
def sla_breaches_counter() -> Counter:
    return Counter("switchboard_router_sla_breaches", "Items that waited past their SLA", ["queue"])


def export_queue_gauges(stats: Iterable[QueueStats]) -> None:
    gauges = queue_gauges()
    for queue in stats:
        for priority, waiting in queue.waiting.items():
            gauges.depth.labels(queue.name, str(priority)).set(waiting)
        gauges.oldest_wait.labels(queue.name).set(queue.oldest_wait_s)
        gauges.agents_online.labels(queue.name).set(queue.agents_online)
        gauges.agents_load.labels(queue.name).set(queue.agents_load)


def policy_document(spec: PolicyIn, version: int, saved_by: str) -> Document:
    return {
        "_id": version,
        "version": version,  # sorted on: some stores sort an integer _id as text
        "policy": spec.model_dump(mode="json"),
        "saved_by": saved_by,
        "saved_at": utcnow(),
    }
