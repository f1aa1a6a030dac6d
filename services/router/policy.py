"""The routing policy: queues, and ordered rules whose conditions are CEL expressions.

CEL (Common Expression Language) is the condition language Kubernetes, Envoy and
Google's IAM use: side-effect free, always terminating, and compiled once here when a
policy is saved (``common-expression-language``, Rust bindings: about 10 µs to run one
condition). A condition sees the variables ``CONDITION_VARIABLES`` lists, for example::

    customer.tier in ["platinum", "gold"] && sentiment.label == "negative"
    influence >= 50.0 || "cancellation_threat" in intents
    "refund" in words && channel == "twitter"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import cel
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.events import EnrichedInteraction

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
Skill = Annotated[str, Field(min_length=1, max_length=64)]
Priority = Annotated[int, Field(ge=1, le=5)]
# Up to 30 days: a target beyond that is no target, and a due time must stay a date.
SlaSeconds = Annotated[float, Field(gt=0, le=30 * 86_400, allow_inf_nan=False)]

CONDITION_VARIABLES = {
    "customer": "id, tier, value, prospect",
    "sentiment": "label (negative, neutral, positive), score (-1..1), confidence, scored",
    "influence": "0-100",
    "intents": "list, e.g. complaint, question, cancellation_threat, praise",
    "urgency": "low, normal, high",
    "channel": "twitter, facebook, forum, review, ...",
    "language": "ISO 639-1 code, empty when unknown",
    "text": "the post",
    "words": "the post's lower-case words, for keyword tests",
    "author": "handle, followers, verified",
}
_WORDS = re.compile(r"\w+")


class QueueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    # First-response targets in seconds for priorities 1..5: waiting longer is a breach.
    sla_s: tuple[SlaSeconds, SlaSeconds, SlaSeconds, SlaSeconds, SlaSeconds] = (
        900.0,
        1800.0,
        3600.0,
        14_400.0,
        86_400.0,
    )
    required_skills: list[Skill] = Field(default_factory=list, max_length=16)
    overflow: Name | None = Field(default=None, description="Where a breached item moves")
    offer_timeout_s: float | None = Field(default=None, gt=0, le=86_400)


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    when: str = Field(min_length=1, max_length=2_000, description="A CEL condition")
    queue: Name
    priority: Priority = 3
    skills: list[Skill] = Field(default_factory=list, max_length=16)


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queues: list[QueueIn] = Field(min_length=1, max_length=100)
    rules: list[RuleIn] = Field(default_factory=list, max_length=500)
    default_queue: Name
    default_priority: Priority = 4

    @model_validator(mode="after")
    def queues_exist(self) -> PolicyIn:
        """Every queue a rule, an overflow or the default names is defined, once."""
        names = [queue.name for queue in self.queues]
        if len(set(names)) != len(names):
            raise ValueError("queue names must be unique")
        known = set(names)
        if self.default_queue not in known:
            raise ValueError(f"default_queue {self.default_queue!r} is not a queue")
        for queue in self.queues:
            if queue.overflow is not None and queue.overflow not in known:
                raise ValueError(
                    f"queue {queue.name!r}: overflow {queue.overflow!r} is not a queue"
                )
        for rule in self.rules:
            if rule.queue not in known:
                raise ValueError(f"rule {rule.name!r}: queue {rule.queue!r} is not a queue")
        return self


class PolicyError(ValueError):
    """A condition that does not compile: names the rule's field and the position."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def compile_condition(field: str, source: str) -> cel.Program:
    try:
        program = cel.compile(source)
    except (ValueError, RuntimeError) as error:
        raise PolicyError(field, str(error).replace("<input>", "position")) from error
    unknown = sorted(set(program.variables()) - set(CONDITION_VARIABLES))
    if unknown:
        raise PolicyError(
            field,
            f"unknown variable {', '.join(unknown)}; conditions may use "
            + ", ".join(CONDITION_VARIABLES),
        )
    return program


RuleResult = Literal["matched", "not matched", "error"]


@dataclass(frozen=True)
class RuleOutcome:
    rule: str
    when: str
    result: RuleResult
    error: str | None = None


@dataclass(frozen=True)
class Decision:
    """Where an item goes and why: the rule (or ``default``) and the policy version."""

    rule: str
    queue: str
    priority: int
    skills: tuple[str, ...]
    policy_version: int
    trace: tuple[RuleOutcome, ...] = ()


def condition_context(item: EnrichedInteraction) -> dict[str, Any]:
    interaction = item.interaction
    return {
        "customer": item.customer.model_dump(mode="json"),
        "sentiment": item.sentiment.model_dump(mode="json"),
        "influence": float(item.influence),
        "intents": list(item.intents),
        "urgency": item.urgency,
        "channel": interaction.channel.value,
        "language": item.language or "",
        "text": interaction.text,
        "words": _WORDS.findall(interaction.text.lower()),
        "author": {
            "handle": interaction.author.handle,
            "followers": interaction.author.followers,
            "verified": interaction.author.verified,
        },
    }


class Policy:
    """A saved policy, compiled: ``decide`` is first match wins, else the default."""

    def __init__(self, spec: PolicyIn, version: int) -> None:
        self.spec = spec
        self.version = version
        self.queues = {queue.name: queue for queue in spec.queues}
        self.programs = [
            compile_condition(f"rules.{index}.when", rule.when)
            for index, rule in enumerate(spec.rules)
        ]
        self.variables = {name for program in self.programs for name in program.variables()}

    def decide(self, item: EnrichedInteraction) -> Decision:
        # One CEL context for all the rules, holding only the variables they use: turning
        # Python values into CEL ones is most of a rule's cost (bench/HISTORY.md).
        context = cel.Context(
            {
                name: value
                for name, value in condition_context(item).items()
                if name in self.variables
            }
        )
        trace = []
        for rule, program in zip(self.spec.rules, self.programs, strict=True):
            outcome = evaluate(rule, program, context)
            trace.append(outcome)
            if outcome.result == "matched":
                return self.decision(rule.name, rule.queue, rule.priority, rule.skills, trace)
        default = self.spec
        return self.decision("default", default.default_queue, default.default_priority, [], trace)

    def decision(
        self, rule: str, queue: str, priority: int, skills: list[str], trace: list[RuleOutcome]
    ) -> Decision:
        required = sorted({*self.queues[queue].required_skills, *skills})
        return Decision(rule, queue, priority, tuple(required), self.version, tuple(trace))

    def sla_s(self, queue: str, priority: int) -> float:
        return self.queues[queue].sla_s[priority - 1]


def evaluate(rule: RuleIn, program: cel.Program, context: cel.Context) -> RuleOutcome:
    """A condition that fails at run time (compares a string to a number, names a field
    the item lacks, divides by zero, indexes past the end) or does not yield a boolean
    counts as not matching, and says why. Whatever the CEL library raises: one bad rule
    must not stop every item from being routed."""
    try:
        value = program.execute(context)
    except Exception as error:
        return RuleOutcome(rule.name, rule.when, "error", str(error))
    if not isinstance(value, bool):
        return RuleOutcome(rule.name, rule.when, "error", f"yields {value!r}, not true or false")
    return RuleOutcome(rule.name, rule.when, "matched" if value else "not matched")


VALUED = 'customer.tier in ["platinum", "gold"]'
NEGATIVE = 'sentiment.label == "negative"'

# Ships with the router and is version 1 until someone saves another: the vocal and
# the valuable are seen first. Influence 50 is about 15,000 followers (see enrich).
DEFAULT_POLICY = PolicyIn(
    queues=[
        QueueIn(name="priority", sla_s=(300.0, 900.0, 1800.0, 3600.0, 14_400.0)),
        QueueIn(name="care", overflow="priority"),
        QueueIn(name="general", overflow="care"),
    ],
    rules=[
        RuleIn(
            name="valued-and-unhappy", when=f"{VALUED} && {NEGATIVE}", queue="priority", priority=1
        ),
        RuleIn(
            name="loud-and-unhappy",
            when=f"{NEGATIVE} && influence >= 50.0",
            queue="priority",
            priority=2,
        ),
        RuleIn(name="valued", when=VALUED, queue="priority", priority=2),
        RuleIn(name="unhappy", when=NEGATIVE, queue="care", priority=3),
    ],
    default_queue="general",
    default_priority=4,
)
