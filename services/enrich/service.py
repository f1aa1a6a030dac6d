"""Enrich's domain: who is speaking (customer, tier, influence) and how they feel."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass, field
from functools import cache

from prometheus_client import Counter, Histogram

from services.enrich.customers import (
    DEFAULT_TIERS,
    PROSPECT,
    CustomerFields,
    CustomerIn,
    IdentityIn,
    ImportRow,
    ParsedRow,
    RowProblem,
    parse_identity,
)
from services.enrich.repository import (
    MERGING,
    MERGING_SINCE,
    RECENT_POSTS,
    EnrichRepository,
    IdentityTaken,
    Merge,
    MergeBusy,
    merge_of,
)
from services.enrich.sentiment import (
    LanguageDetector,
    SentimentAnalyzer,
    primary_language,
    unscored,
)
from services.enrich.signals import IntentRules, influence, urgency
from shared.emit import Emitter
from shared.events import (
    INTERACTION_ENRICHED,
    Channel,
    CloudEvent,
    CustomerRef,
    EnrichedInteraction,
    Interaction,
    Sentiment,
    derived_event_id,
    utcnow,
)
from shared.identity import collapsed_identities, normalise_identity
from shared.logging import get_logger, handling
from shared.mongo import Document, epoch_ms
from shared.topics import Topics
from shared.tracing import Spans, child_of, trace_id

SOURCE = "/switchboard/enrich"
log = get_logger(__name__)
MAX_REPORTED_PROBLEMS = 1_000
MERGE_POLL_S = 0.05  # how often a merge looks again at a profile another merge holds

# How a merge combines the two profiles' history; any other field the survivor has, it keeps.
JOINED = ("emails", "tags", "identities")
SUMMED = ("posts",)
LARGEST = ("value", "followers")
NOT_COPIED = frozenset(
    {"_id", MERGING, MERGING_SINCE, RECENT_POSTS, "updated_at", *SUMMED, *LARGEST}
)


class UnknownTier(ValueError):
    def __init__(self, tier: str, tiers: Sequence[str]) -> None:
        super().__init__(f"unknown tier {tier!r}; one of {', '.join(tiers)}")


class CrmIdTaken(Exception):
    """Another profile already has this CRM id."""


class UnknownCustomer(LookupError):
    """The id given as ``field`` names no customer, nor one merged away."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field}: no such customer")
        self.field = field


class MergeRefused(Exception):
    """A merge that cannot be done as asked; ``field`` names the id in the way."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class MergeHindered(Exception):
    """A profile of a merge is gone, or another merge held it for too long."""

    def __init__(self, customer_id: str, reason: str) -> None:
        super().__init__(f"{customer_id}: {reason}")
        self.customer_id = customer_id
        self.reason = reason


class IdentityNotHeld(LookupError):
    """The customer does not hold this identity."""

    def __init__(self, identity: str) -> None:
        super().__init__(f"the customer does not hold {identity}")
        self.identity = identity


@dataclass(frozen=True)
class EnrichMetrics:
    seconds: Histogram
    sentiment: Counter
    tiers: Counter
    resolutions: Counter


@cache
def enrich_metrics() -> EnrichMetrics:
    return EnrichMetrics(
        seconds=Histogram("switchboard_enrich_seconds", "Time to enrich one interaction"),
        sentiment=Counter(
            "switchboard_enrich_sentiment",
            "Enriched interactions by sentiment label (scored false: language not covered, or "
            "nothing in the text to judge)",
            ["label", "scored"],
        ),
        tiers=Counter("switchboard_enrich_tiers", "Enriched interactions by tier", ["tier"]),
        resolutions=Counter(
            "switchboard_enrich_resolutions",
            "How authors were resolved: identity, email, prospect (known), unknown (new)",
            ["how"],
        ),
    )


@dataclass
class ImportReport:
    imported: int = 0
    updated: int = 0
    rejected: int = 0
    problems: list[RowProblem] = field(default_factory=list)  # the first 1,000

    def reject(self, problem: RowProblem) -> None:
        self.rejected += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(problem)


def now_iso() -> str:
    """Profile timestamps are only shown, never compared: ISO text reads well anywhere."""
    return utcnow().isoformat()


def customer_ref(doc: Document) -> CustomerRef:
    return CustomerRef(
        id=str(doc["_id"]),
        tier=str(doc.get("tier", PROSPECT)),
        value=float(doc.get("value", 0.0)),
        prospect=doc.get("tier") == PROSPECT,
    )


def is_prospect(profile: Document) -> bool:
    return profile.get("tier") == PROSPECT


def missing_fields(survivor: Document, other: Document) -> Document:
    """The other's fields the survivor lacks (lists too: the embedded store's $addToSet
    does not start a list)."""
    return {k: v for k, v in other.items() if k not in NOT_COPIED and k not in survivor}


def held_for_s(busy: MergeBusy, now_ms: int) -> float:
    """How long the merge in the way has held the profile; a mark made before marks were
    timed, forever."""
    if busy.since_ms is None:
        return float("inf")
    return (now_ms - busy.since_ms) / 1000


def history_of(other: Document, counted: Document | None = None) -> Document:
    """The other's history as an update of the survivor, less what ``counted`` (an earlier
    read of the other) has added already: identities, emails and tags join the
    survivor's, posts add up, value and followers keep the larger."""
    counted = counted or {}
    update: Document = {}
    joined = {k: sorted(set(other.get(k, [])) - set(counted.get(k, []))) for k in JOINED}
    if any(joined.values()):
        update["$addToSet"] = {k: {"$each": items} for k, items in joined.items() if items}
    posts = int(other.get("posts", 0)) - int(counted.get("posts", 0))
    if posts > 0:
        update["$inc"] = {"posts": posts}
    larger = {k: other[k] for k in LARGEST if k in other and other[k] != counted.get(k)}
    if larger:
        update["$max"] = larger
    return update


class EnrichService:
    spans = Spans()  # main sets the service's own, exporting when tracing is on

    def __init__(
        self,
        repository: EnrichRepository,
        emitter: Emitter,
        topics: Topics,
        analyzer: SentimentAnalyzer,
        *,
        detector: LanguageDetector | None = None,
        intents: IntentRules | None = None,
        tiers: Sequence[str] = (),
        import_batch: int = 500,
        merge_patience_s: float = 2.0,
        merge_abandoned_after_s: float = 60.0,
    ) -> None:
        self.repository = repository
        self.emitter = emitter
        self.topics = topics
        self.analyzer = analyzer
        self.detector = detector or LanguageDetector()
        self.intents = intents or IntentRules()
        self.tiers = tuple(tiers) or DEFAULT_TIERS
        self.import_batch = import_batch
        self.merge_patience_s = merge_patience_s  # how long a merge waits for another
        # A merge holding a profile for longer was interrupted: the next merge finishes it.
        self.merge_abandoned_after_s = merge_abandoned_after_s
        self.metrics = enrich_metrics()

    # -- profiles -----------------------------------------------------------------

    def check_tier(self, tier: str | None) -> None:
        if tier is not None and tier not in self.tiers:
            raise UnknownTier(tier, self.tiers)

    async def create_customer(self, payload: CustomerIn) -> Document:
        """Raises IdentityTaken when an identity belongs to another known customer, and
        CrmIdTaken for a CRM id in use. A prospect holding an identity is absorbed."""
        self.check_tier(payload.tier)
        customer = {
            "_id": str(uuid.uuid4()),
            **payload.model_dump(mode="json", exclude={"identities"}, exclude_none=True),
            "identities": payload.normalised_identities,
            "created_at": now_iso(),
        }
        prospects = await self.prospects_holding(customer["_id"], customer["identities"])
        if payload.crm_id and await self.repository.claim_crm_ids(
            [(payload.crm_id, customer["_id"])]
        ):
            raise CrmIdTaken
        await self.repository.customers.insert_one(customer)
        try:
            await self.absorb(customer["_id"], prospects)
            await self.repository.claim_identities(customer["_id"], customer["identities"])
        except IdentityTaken:
            await self.repository.erase(customer["_id"])
            raise
        await self.repository.index_emails([(e, customer["_id"]) for e in payload.emails])
        return await self.repository.find_customer(customer["_id"]) or customer

    async def prospects_holding(self, customer_id: str, identities: Sequence[str]) -> list[str]:
        """The prospects that hold some of the identities; IdentityTaken if a known
        customer other than ``customer_id`` holds one."""
        owners = await self.repository.owners_of(identities)
        others = {owner for owner in owners.values() if owner != customer_id}
        if not others:
            return []
        prospects = await self.repository.prospects_among(sorted(others))
        taken = [i for i, owner in owners.items() if owner in others and owner not in prospects]
        if taken:
            raise IdentityTaken(taken)
        return sorted(prospects)

    async def absorb(self, customer_id: str, prospects: Sequence[str]) -> None:
        """Merge prospects seen before the CRM knew them into the customer."""
        for prospect_id in prospects:
            # Merged elsewhere or erased meanwhile: claiming its identities then tells.
            with contextlib.suppress(MergeHindered):
                await self.merge_profiles(Merge(customer_id, prospect_id))

    async def get_customer(self, customer_id: str) -> Document | None:
        return await self.repository.find_customer(customer_id)

    async def update_customer(self, customer_id: str, patch: CustomerFields) -> Document | None:
        self.check_tier(patch.tier)
        fields = patch.model_dump(mode="json", exclude_unset=True, exclude_none=True)
        customer = await self.repository.find_customer(customer_id)
        if customer is None:
            return None
        if patch.crm_id:
            if await self.repository.claim_crm_ids([(patch.crm_id, customer["_id"])]):
                raise CrmIdTaken
            await self.repository.release_crm_ids(customer["_id"], keep=patch.crm_id)
        updated = await self.repository.update_customer(
            customer["_id"], {"$set": {**fields, "updated_at": now_iso()}}
        )
        if patch.emails is not None:
            owners = [(email, customer["_id"]) for email in patch.emails]
            await self.repository.reindex_emails(owners, [customer["_id"]])
        return updated

    async def search_customers(
        self,
        *,
        handle: str | None = None,
        channel: Channel | None = None,
        email: str | None = None,
        name: str | None = None,
        tier: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Document]:
        query: Document = {}
        if handle:
            channels = [channel] if channel else list(Channel)
            query["identities"] = {"$in": sorted({normalise_identity(c, handle) for c in channels})}
        if email:
            query["emails"] = email.strip().lower()
        if name:
            query.update(self.repository.name_query(name))
        if tier:
            query["tier"] = tier
        return await self.repository.search(query, limit, offset)

    async def link_identity(self, customer_id: str, identity: IdentityIn) -> Document | None:
        customer = await self.repository.find_customer(customer_id)
        if customer is None:
            return None
        normalised = identity.normalised
        prospects = await self.prospects_holding(customer["_id"], [normalised])
        await self.absorb(customer["_id"], prospects)
        await self.repository.claim_identities(customer["_id"], [normalised])
        return await self.repository.update_customer(
            customer["_id"], {"$addToSet": {"identities": normalised}}
        )

    async def unlink_identity(self, customer_id: str, identity: str) -> Document | None:
        """Unlink ``channel:handle`` in any form linking takes; None for an unknown customer.
        Raises ValueError for text that is no identity, IdentityNotHeld when the customer
        does not hold it."""
        customer = await self.repository.find_customer(customer_id)
        if customer is None:
            return None
        held = held_form(identity, customer.get("identities", []))
        await self.repository.release_identities(customer["_id"], [held])
        return await self.repository.update_customer(
            customer["_id"], {"$pull": {"identities": held}}
        )

    async def merge(self, survivor_id: str, other_id: str) -> Document | None:
        """Merge ``other_id`` into ``survivor_id``; the survivor as it is after.

        The survivor keeps its fields and takes those it lacks from the other; identities,
        emails and tags join, posts add up, value and followers keep the larger. A
        prospect never absorbs a CRM customer: asked to merge a customer into a prospect,
        this merges the prospect into the customer (as creating the customer would have),
        so the customer's profile and id are the answer and the prospect's id resolves to
        them. Repeating an interrupted merge finishes it.

        Raises UnknownCustomer for an id that names nobody, MergeRefused for the same
        customer twice, an id merged away already, or one another merge holds.
        """
        merge = Merge(survivor_id, other_id)
        survivor = await self.merge_party(survivor_id, "customer_id")
        if not merge.holds(survivor):  # a new merge, not one interrupted
            other = await self.merge_party(other_id, "merge_id")
            if other_id == survivor_id:
                raise MergeRefused("merge_id", "is the customer itself")
            if is_prospect(survivor) and not is_prospect(other):
                merge = Merge(other_id, survivor_id)
        try:
            await self.merge_profiles(merge)
        except MergeHindered as error:
            field = "customer_id" if error.customer_id == survivor_id else "merge_id"
            raise MergeRefused(field, error.reason) from error
        return await self.repository.find_customer(merge.survivor)

    async def merge_party(self, customer_id: str, field: str) -> Document:
        """The profile stored under the id, which a merge may take part in."""
        profile = await self.repository.customers.find_one({"_id": customer_id})
        if profile is not None:
            return profile
        survivor = await self.repository.alias_of(customer_id)
        if survivor is None:
            raise UnknownCustomer(field)
        raise MergeRefused(field, f"was merged into {survivor} already")

    async def merge_profiles(self, merge: Merge) -> None:
        """Move the other's identities and history to the survivor, then drop the other.

        Both profiles are marked first, so that a merge sharing one waits for this one
        to end; the survivor is only updated, never rewritten. Raises MergeHindered when
        a profile is gone, or another merge holds one for longer than the patience.
        """
        survivor, other = await self.hold_both(merge)
        if other is not None:  # None: an interrupted repeat that had dropped it already
            history = {**history_of(other), "$set": {"updated_at": now_iso()}}
            await self.repository.merge(merge, missing_fields(survivor, other), history)
            dropped = await self.repository.drop_merged(merge)
            await self.add_late_history(merge, history_of(dropped, other) if dropped else {})
        await self.repository.let_go(merge, merge.survivor)

    async def hold_both(self, merge: Merge) -> tuple[Document, Document | None]:
        """Both profiles, marked for the merge. Marked in id order, so that two merges of
        one pair (A into B, B into A) do not each hold one and wait for the other: the
        second waits, then finds its profile merged away."""
        held: dict[str, Document | None] = {}
        try:
            for customer_id in sorted((merge.survivor, merge.other)):
                held[customer_id] = await self.hold(merge, customer_id)
            survivor, other = held[merge.survivor], held[merge.other]
            if survivor is None:
                raise MergeHindered(merge.survivor, await self.gone(merge.survivor))
            if other is None and survivor.get(MERGING) != merge.applied:
                raise MergeHindered(merge.other, await self.gone(merge.other))
        except (MergeBusy, MergeHindered) as error:
            # Nothing was added to the survivor under a mark not yet applied: let go.
            for customer_id in (merge.survivor, merge.other):
                await self.repository.let_go(merge, customer_id, applied=False)
            if isinstance(error, MergeBusy):
                raise MergeHindered(
                    error.customer_id,
                    f"{merge_of(error.mark)} holds it: try again; if that merge was "
                    "interrupted, repeating it finishes it, as does any merge of its "
                    f"profiles {self.merge_abandoned_after_s:g} s after it began",
                ) from error
            raise
        return survivor, other

    async def hold(self, merge: Merge, customer_id: str) -> Document | None:
        """The repository's hold, waiting up to the patience for another merge to end,
        and finishing one that holds the profile for longer than a merge takes."""
        deadline = time.monotonic() + self.merge_patience_s
        finished: set[str] = set()  # abandoned merges finished here, by their marks
        while True:
            try:
                return await self.repository.hold(merge, customer_id)
            except MergeBusy as busy:
                held_s = held_for_s(busy, epoch_ms(utcnow()))
                if held_s >= self.merge_abandoned_after_s and busy.mark not in finished:
                    finished.add(busy.mark)
                    await self.finish_abandoned(Merge.of(busy.mark))
                    continue
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(MERGE_POLL_S)

    async def finish_abandoned(self, merge: Merge) -> None:
        """Finish a merge that a crash interrupted, as repeating it would: each step is
        safe to repeat, even alongside the merge itself if it is only slow."""
        log.warning(
            "finishing an abandoned merge", customer_id=merge.survivor, merge_id=merge.other
        )
        # A profile of it gone meanwhile: its marks are let go, which is all we need.
        with contextlib.suppress(MergeHindered):
            await self.merge_profiles(merge)

    async def gone(self, customer_id: str) -> str:
        survivor = await self.repository.alias_of(customer_id)
        return f"was merged into {survivor}" if survivor else "was erased"

    async def add_late_history(self, merge: Merge, late: Document) -> None:
        """Add what the other gained after it was read (a post counted by a batch under
        way), once it is gone. Done once, not on a repeat: it never counts twice."""
        if late:
            await self.repository.move_keys(merge)  # an identity it claimed meanwhile
            await self.repository.update_customer(
                merge.survivor, {**late, "$set": {"updated_at": now_iso()}}
            )

    async def erase_customer(self, customer_id: str) -> bool:
        customer = await self.repository.find_customer(customer_id)
        if customer is None:
            return False
        erased = await self.repository.erase(customer["_id"])
        log.info("customer erased", customer_id=customer["_id"])
        return erased

    # -- identities stored under an earlier rule -----------------------------------

    async def rekey_identities(self) -> None:
        """Re-key the identities whose stored key today's rule reads otherwise (a profile
        URL read before each network had its own rule), run at startup. A key whose new
        form another customer holds stays as it is: the two may be different people, so
        each start logs both until an operator merges them or unlinks one."""
        moved = 0
        for stored in await self.repository.url_identities():
            old, owner = str(stored["_id"]), str(stored["customer_id"])
            new = read_again(old)
            if new is None or new == old:
                continue
            holder = await self.repository.rekey_identity(old, new, owner)
            if holder == owner:
                moved += 1
            else:
                log.warning(
                    "identity left in its earlier form: its new form is another customer's",
                    customer_id=owner,
                    holder_id=holder,
                )
        if moved:
            log.info("identities re-keyed to today's form", identities=moved)
        await self.report_collapsed()

    async def report_collapsed(self) -> None:
        """Log the identities that name no one any more (``youtube:channel``): the id their
        URL gave was never stored, so only linking the profile URL again finds the person."""
        owners = await self.repository.owners_of(collapsed_identities())
        if owners:
            log.warning(
                "identities that name no one since profile URLs are read per network: "
                "link each profile's URL again, and unlink these",
                identities=owners,
            )

    # -- CRM import ---------------------------------------------------------------

    async def import_customers(self, rows: AsyncIterable[ParsedRow]) -> ImportReport:
        """Upsert rows by CRM id in batches, so memory stays bounded whatever the size."""
        report = ImportReport()
        batch: dict[str, tuple[int, ImportRow]] = {}
        async for line, row in rows:
            if isinstance(row, RowProblem):
                report.reject(row)
            elif row.tier not in self.tiers:
                report.reject(RowProblem(line, f"tier: {UnknownTier(row.tier, self.tiers)}"))
            else:
                if row.crm_id in batch or len(batch) >= self.import_batch:
                    await self.import_batch_of(list(batch.values()), report)
                    batch = {}
                batch[row.crm_id] = (line, row)
        await self.import_batch_of(list(batch.values()), report)
        return report

    async def import_batch_of(
        self, rows: list[tuple[int, ImportRow]], report: ImportReport
    ) -> None:
        if not rows:
            return
        existing = await self.repository.find_by_crm_ids([row.crm_id for _, row in rows])
        held = await self.repository.owners_of(
            [i for _, row in rows for i in row.normalised_identities]
        )
        claimable = await self.claimable_rows(rows, existing, held, report)
        new = [self.imported_profile(row) for _, row in claimable if row.crm_id not in existing]
        updated = [
            (existing[row.crm_id]["_id"], row) for _, row in claimable if row.crm_id in existing
        ]
        failed = await self.repository.claim_crm_ids([(doc["crm_id"], doc["_id"]) for doc in new])
        for line, row in claimable:  # another import inserted the same CRM id meanwhile
            if row.crm_id in failed:
                report.reject(RowProblem(line, "crm_id: imported concurrently, try again"))
        new = [doc for doc in new if doc["crm_id"] not in failed]
        claimable = [(line, row) for line, row in claimable if row.crm_id not in failed]
        await self.repository.insert_many(new)
        await self.repository.update_many([(cid, imported_update(row)) for cid, row in updated])
        await self.remember_emails(new, updated)
        report.imported += len(new)
        report.updated += len(updated)
        owners = {doc["crm_id"]: doc["_id"] for doc in new} | {
            crm_id: doc["_id"] for crm_id, doc in existing.items()
        }
        await self.claim_imported(claimable, owners, held, report)

    async def remember_emails(
        self, new: list[Document], updated: list[tuple[str, ImportRow]]
    ) -> None:
        """Index new profiles' emails; replace those of updated ones whose row sent some
        (the last such row of a profile, as its update left it)."""
        replaced = {cid: row for cid, row in updated if "emails" in row.model_fields_set}
        await self.repository.reindex_emails(
            [(email, doc["_id"]) for doc in new for email in doc.get("emails", [])]
            + [(email, cid) for cid, row in replaced.items() for email in row.emails],
            list(replaced),
        )

    async def claimable_rows(
        self,
        rows: list[tuple[int, ImportRow]],
        existing: dict[str, Document],
        owners: dict[str, str],
        report: ImportReport,
    ) -> list[tuple[int, ImportRow]]:
        """Rows whose identities are free, prospects', or already theirs (first row wins)."""
        prospects = await self.repository.prospects_among(sorted(set(owners.values())))
        claimed_here: set[str] = set()
        accepted = []
        for line, row in rows:
            own_id = existing[row.crm_id]["_id"] if row.crm_id in existing else None
            conflicts = [
                identity
                for identity in row.normalised_identities
                if identity in claimed_here
                or owners.get(identity, own_id) not in (own_id, *prospects)
            ]
            if conflicts:
                report.reject(
                    RowProblem(
                        line, f"identities: {', '.join(conflicts)} belong to another customer"
                    )
                )
                continue
            claimed_here.update(row.normalised_identities)
            accepted.append((line, row))
        return accepted

    def imported_profile(self, row: ImportRow) -> Document:
        return {
            "_id": str(uuid.uuid4()),
            **row.model_dump(mode="json", exclude={"identities"}, exclude_none=True),
            "identities": row.normalised_identities,
            "created_at": now_iso(),
        }

    async def claim_imported(
        self,
        rows: list[tuple[int, ImportRow]],
        owners: dict[str, str],
        held: dict[str, str],
        report: ImportReport,
    ) -> None:
        """Link the rows' identities in one write, absorbing prospects that held some."""
        links: dict[str, str] = {}
        for _, row in rows:
            customer_id = owners[row.crm_id]
            prospects = {held[i] for i in row.normalised_identities if i in held} - {customer_id}
            await self.absorb(customer_id, sorted(prospects))
            links.update({i: customer_id for i in row.normalised_identities if i not in held})
        lost = await self.repository.link_many(links)
        for line, row in rows:  # claimed by the stream between our look and our write
            missing = [i for i in row.normalised_identities if i in lost]
            if missing:
                await self.repository.update_customer(
                    owners[row.crm_id], {"$pull": {"identities": {"$in": missing}}}
                )
                report.problems.append(
                    RowProblem(
                        line,
                        f"identities: {', '.join(missing)} were claimed by another customer "
                        "during the import; the profile was stored without them",
                    )
                )

    # -- the stream ---------------------------------------------------------------

    async def enrich_batch(self, received: Sequence[CloudEvent[Interaction]]) -> None:
        """Enrich a consumed batch: authors resolved together, post counts stored in one
        bulk write, the enriched events sent straight to the broker (``shared.emit``).
        A post delivered again (a retried batch, a restart, a rebalance, a topic read
        again) is enriched again and sent again under the same event id, which the router
        drops; its author's history counts it once while it is among the author's latest
        counted posts (``RECENT_POSTS_KEPT``)."""
        profiles = await self.resolve_batch([event.data for event in received])
        posts_seen: collections.Counter[str] = (
            collections.Counter()
        )  # this batch's earlier posts by each customer
        new_posts: dict[str, str] = {}  # interaction id -> author, of posts not counted yet
        entries = []
        for event, profile in zip(received, profiles, strict=True):
            with (
                handling(event.id, event.data.id, trace_id=trace_id(event.traceparent)),
                self.spans.span("enrich", event.traceparent, interaction_id=event.data.id),
            ):
                started = time.perf_counter()
                posts = int(profile.get("posts", 0)) + posts_seen[profile["_id"]]
                if event.data.id not in new_posts:
                    new_posts[event.data.id] = profile["_id"]
                    posts_seen[profile["_id"]] += 1
                enriched = self.enrich(event.data, profile, posts)
                self.metrics.seconds.observe(time.perf_counter() - started)
                log.info(
                    "enriched",
                    customer_id=enriched.customer.id,
                    tier=enriched.customer.tier,
                    sentiment=enriched.sentiment.label,
                )
            entries.append(
                (self.topics.enriched, enriched.customer.id, enriched_event(event, enriched))
            )
        await self.repository.count_posts(new_posts, self.prospect_followers(received, profiles))
        await self.emitter.emit(entries)

    def enrich(
        self, interaction: Interaction, customer: Document, posts: int
    ) -> EnrichedInteraction:
        """What the interaction says and who said it; ``posts``: the author's posts before."""
        text = interaction.text
        # Given as a locale or told by the detector, it goes on as rules compare it: ISO 639-1.
        given = interaction.language and primary_language(interaction.language)
        language = given or self.detector.detect(text)
        sentiment = self.sentiment_of(text, language)
        intents = self.intents.detect(text)
        author = interaction.author
        reach = influence(author.followers, author.verified, posts)
        ref = customer_ref(customer)
        self.metrics.sentiment.labels(sentiment.label, str(sentiment.scored).lower()).inc()
        self.metrics.tiers.labels(ref.tier).inc()
        return EnrichedInteraction(
            interaction=interaction,
            customer=ref,
            sentiment=sentiment,
            language=language,
            intents=intents,
            urgency=urgency(sentiment, intents, reach),
            influence=reach,
        )

    @staticmethod
    def prospect_followers(
        received: Sequence[CloudEvent[Interaction]], profiles: Sequence[Document]
    ) -> dict[str, int]:
        """A prospect's follower count, as its latest post in the batch gives it."""
        return {
            profile["_id"]: event.data.author.followers
            for event, profile in zip(received, profiles, strict=True)
            if profile.get("tier") == PROSPECT
        }

    async def resolve_batch(self, interactions: Sequence[Interaction]) -> list[Document]:
        """Each author's profile, as ``resolve`` finds it, in a few round trips per batch:
        known authors and new ones without an email are resolved together; the rest (an
        email to look up, a profile gone) one at a time, in order."""
        identities = [identity_of(interaction) for interaction in interactions]
        owners = await self.repository.owners_of(sorted(set(identities)))
        profiles = await self.repository.find_customers(sorted(set(owners.values())))
        alone = self.resolved_alone(interactions, identities, owners, profiles)
        known = {i: profiles[owners[i]] for i in identities if i in owners and i not in alone}
        new = {
            identity: interaction
            for identity, interaction in zip(identities, interactions, strict=True)
            if identity not in owners and identity not in alone
        }
        claimed, lost = await self.new_prospects(new)
        alone |= lost
        resolved = []
        for identity, interaction in zip(identities, interactions, strict=True):
            if identity in alone:
                resolved.append(await self.resolve(interaction))
                continue
            if identity in claimed:
                known[identity] = claimed.pop(identity)
                how = "unknown"
            else:
                how = "prospect" if known[identity].get("tier") == PROSPECT else "identity"
            self.metrics.resolutions.labels(how).inc()
            resolved.append(known[identity])
        return resolved

    @staticmethod
    def resolved_alone(
        interactions: Sequence[Interaction],
        identities: Sequence[str],
        owners: dict[str, str],
        profiles: dict[str, Document],
    ) -> set[str]:
        """The identities ``resolve`` must handle one post at a time: an owner whose
        profile is gone (erased or merged meanwhile), or a prospect or new author whose
        post gives an email that may name a customer."""
        alone = set()
        for identity, interaction in zip(identities, interactions, strict=True):
            profile = profiles.get(owners.get(identity, ""))
            gone = identity in owners and profile is None
            unsure = profile is None or profile.get("tier") == PROSPECT
            if gone or (interaction.author.email and unsure):
                alone.add(identity)
        return alone

    async def new_prospects(
        self, new: dict[str, Interaction]
    ) -> tuple[dict[str, Document], set[str]]:
        """Claim each new identity for a new prospect, and store the prospects. Returns
        the prospects by identity, and the identities claimed by someone else meanwhile."""
        if not new:
            return {}, set()
        prospects = {identity: new_prospect(identity, post) for identity, post in new.items()}
        lost = await self.repository.link_many(
            {identity: prospect["_id"] for identity, prospect in prospects.items()}
        )
        claimed = {i: prospect for i, prospect in prospects.items() if i not in lost}
        await self.repository.insert_many(list(claimed.values()))
        return claimed, lost

    def sentiment_of(self, text: str, language: str | None) -> Sentiment:
        """Scored when the language is one the analyzer knows, or could not be told."""
        if language is not None and language not in self.analyzer.languages:
            return unscored(self.analyzer)
        return self.analyzer.analyze(text)

    async def resolve(self, interaction: Interaction) -> Document:
        """The author's profile: by identity, then by email; an unknown author becomes a
        prospect, known from its next post on."""
        author = interaction.author
        identity = normalise_identity(interaction.channel, author.handle)
        customer_id = await self.repository.customer_id_for(identity)
        how = "identity" if customer_id else "unknown"
        customer = await self.repository.find_customer(customer_id) if customer_id else None
        if (customer is None or customer.get("tier") == PROSPECT) and author.email:
            by_email = await self.repository.find_by_email(author.email)
            if by_email is not None and by_email.get("tier") != PROSPECT:
                customer, how = await self.link_by_email(identity, by_email, customer), "email"
        if customer is None or customer.get("tier") == PROSPECT:
            customer_id = customer_id or await self.repository.claim_identity(
                identity, str(uuid.uuid4())
            )
            how = "prospect" if customer is not None else "unknown"
            customer = await self.repository.upsert_prospect(
                {**new_prospect(identity, interaction), "_id": customer_id}, author.followers
            )
        if customer is None:  # erased between the two writes: treat the author as new
            return await self.resolve(interaction)
        self.metrics.resolutions.labels(how).inc()
        return customer

    async def link_by_email(
        self, identity: str, customer: Document, prospect: Document | None
    ) -> Document:
        """Give the identity to the customer the email names, absorbing its prospect."""
        if prospect is not None:
            # Held by another merge for long, or gone: the next post tries again.
            with contextlib.suppress(MergeHindered):
                await self.merge_profiles(Merge(customer["_id"], prospect["_id"]))
        else:
            await self.repository.claim_identity(identity, customer["_id"])
            await self.repository.update_customer(
                customer["_id"], {"$addToSet": {"identities": identity}}
            )
        return await self.repository.find_customer(customer["_id"]) or customer


def held_form(identity: str, held: Sequence[str]) -> str:
    """The identity as the profile holds it: normalised, or exactly as given (a form an
    earlier normalisation stored); IdentityNotHeld if neither."""
    channel, handle = parse_identity(identity)
    normalised = normalise_identity(channel, handle)
    for form in (normalised, identity):
        if form in held:
            return form
    raise IdentityNotHeld(normalised)


def read_again(identity: str) -> str | None:
    """The stored identity as today's rule makes it (itself if stored in today's form);
    None for a key that is no identity any more."""
    try:
        return normalise_identity(*parse_identity(identity))
    except ValueError:  # a channel no longer known
        return None


def identity_of(interaction: Interaction) -> str:
    return normalise_identity(interaction.channel, interaction.author.handle)


def new_prospect(identity: str, interaction: Interaction) -> Document:
    """A profile for an author nobody knows yet, known from its next post on."""
    author = interaction.author
    return {
        "_id": str(uuid.uuid4()),
        "name": author.display_name or author.handle,
        "tier": PROSPECT,
        "value": 0.0,
        "identities": [identity],
        "followers": author.followers,
        "posts": 0,
        "created_at": now_iso(),
    }


def imported_update(row: ImportRow) -> Document:
    """The CRM is the source of truth for the fields it sends; identities only add up."""
    fields = row.model_dump(mode="json", exclude={"identities", "crm_id"}, exclude_unset=True)
    update: Document = {"$set": {**fields, "updated_at": now_iso()}}
    if row.normalised_identities:
        update["$addToSet"] = {"identities": {"$each": row.normalised_identities}}
    return update


def enriched_event_id(received: CloudEvent[Interaction]) -> str:
    return derived_event_id(received.id, INTERACTION_ENRICHED)


def enriched_event(
    received: CloudEvent[Interaction], enriched: EnrichedInteraction
) -> CloudEvent[EnrichedInteraction]:
    event_id = enriched_event_id(received)
    return CloudEvent[EnrichedInteraction](
        id=event_id,
        source=SOURCE,
        type=INTERACTION_ENRICHED,
        subject=enriched.interaction.id,
        traceparent=child_of(received.traceparent, event_id),
        data=enriched,
    )
