"""Enrich's collections: customers, and lookups keyed by what they look up: identities
(``channel:handle`` -> customer id), crm_ids, emails (address -> its first customer) and
aliases (merged-away id -> survivor).

Keyed collections rather than secondary indexes on the profile: a key is unique by
construction, and the embedded store answers ``_id`` lookups in constant time while its
secondary indexes scan for ``$in`` and miss equality matches on array fields.

Identities live in their own collection keyed by the normalised identity, so that one
identity belongs to one customer by construction (the primary key). A merged-away
profile leaves an alias (old id -> survivor) so that its id keeps resolving.

Identities stored under an earlier rule's form are re-keyed at startup (``rekey_identity``):
each step is safe to repeat and to run on two replicas at once, so an interrupted
re-keying is finished by the next start.

A post counts once in its author's history however often it is delivered: the profile's
update carries the post's id, conditioned on its absence among the latest ids the profile
keeps (one atomic write, whatever else runs). A redelivery that comes after more than that
many later posts of its author counts again (see docs/limits.md).

The store has no multi-document transactions, so a merge marks both profiles (field
``merging``, and when in ``merging_since``) before it writes, and each of its writes is
conditioned on that mark: two merges sharing a profile take turns, and an interrupted one
is finished by repeating it, or by the next merge of its profiles once its mark is old.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.enrich.customers import PROSPECT
from shared.events import utcnow
from shared.mongo import Document, epoch_ms, insert_new, only_duplicates


class IdentityTaken(Exception):
    """An identity already belongs to another customer."""

    def __init__(self, identities: Sequence[str]) -> None:
        super().__init__(", ".join(identities))
        self.identities = list(identities)


MERGING = "merging"  # on a profile a merge holds: the merge's mark
MERGING_SINCE = "merging_since"  # and when it was made, in epoch milliseconds
# On a profile: its latest counted posts' ids, so that a post delivered again while the
# first delivery's batch is unfinished (failed, or run by another replica) adds nothing.
RECENT_POSTS = "recent_posts"
RECENT_POSTS_KEPT = 32
# A stored identity whose handle is a URL: the only kind an earlier rule read otherwise.
URL_IDENTITY = "^[a-z]+:https?://"


@dataclass(frozen=True)
class Merge:
    """One profile merging into another, and the marks it leaves on both while it runs."""

    survivor: str
    other: str

    @classmethod
    def of(cls, mark: str) -> Merge:
        """The merge that left the mark."""
        other, _, survivor = mark.removesuffix(" applied").partition(">")
        return cls(survivor, other)

    @property
    def mark(self) -> str:
        return f"{self.other}>{self.survivor}"

    @property
    def applied(self) -> str:
        """The survivor's mark once the other's history is added: never added twice."""
        return f"{self.mark} applied"

    def holds(self, profile: Document) -> bool:
        return profile.get(MERGING) in (self.mark, self.applied)


def merge_of(mark: str) -> str:
    """A mark as words, for the answer to a merge that has to wait for it."""
    merge = Merge.of(mark)
    return f"a merge of {merge.other} into {merge.survivor}"


class MergeBusy(Exception):
    """Another merge holds the profile: since ``since_ms`` (None: a mark made before marks
    were timed)."""

    def __init__(self, customer_id: str, mark: str, since_ms: int | None) -> None:
        super().__init__(f"{merge_of(mark)} holds {customer_id}")
        self.customer_id = customer_id
        self.mark = mark
        self.since_ms = since_ms


class EnrichRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.customers = db["customers"]
        self.identities = db["identities"]
        self.aliases = db["aliases"]
        self.emails = db["emails"]
        self.crm_ids = db["crm_ids"]

    async def ensure_indexes(self) -> None:
        await self.identities.create_index("customer_id")
        await self.aliases.create_index("customer_id")
        await self.emails.create_index("customer_id")
        await self.crm_ids.create_index("customer_id")
        await self.customers.create_index("tier")

    # -- identities ---------------------------------------------------------------

    async def claim_identities(self, customer_id: str, identities: Sequence[str]) -> None:
        """Give the identities to the customer. If one belongs to someone else, none of
        those new to the customer is kept, and IdentityTaken names the others'."""
        owners = await self.owners_of(identities)
        taken = [i for i in identities if owners.get(i, customer_id) != customer_id]
        new = [i for i in identities if i not in owners]
        if taken or not new:
            if taken:
                raise IdentityTaken(taken)
            return
        try:
            await self.identities.insert_many(
                [{"_id": identity, "customer_id": customer_id} for identity in new],
                ordered=False,
            )
        except BulkWriteError as error:  # claimed by someone else since we looked
            if not only_duplicates(error):
                raise
            owners = await self.owners_of(new)
            taken = [i for i in new if owners.get(i, customer_id) != customer_id]
            if taken:
                await self.release_identities(customer_id, new)
                raise IdentityTaken(taken) from error

    async def release_identities(self, customer_id: str, identities: Sequence[str]) -> None:
        """Unlink identities from the customer (those another customer owns are untouched)."""
        await self.identities.delete_many(
            {"_id": {"$in": list(identities)}, "customer_id": customer_id}
        )

    async def owners_of(self, identities: Sequence[str]) -> dict[str, str]:
        if not identities:  # an empty $in makes the embedded store scan the collection
            return {}
        cursor = self.identities.find({"_id": {"$in": list(identities)}})
        return {doc["_id"]: str(doc["customer_id"]) async for doc in cursor}

    async def url_identities(self) -> list[Document]:
        """The identities whose handle is a URL, in key order."""
        cursor = self.identities.find({"_id": {"$regex": URL_IDENTITY}}).sort("_id", 1)
        return [doc async for doc in cursor]

    async def rekey_identity(self, old: str, new: str, customer_id: str) -> str:
        """Move the customer's identity from its ``old`` key to ``new``, unless another
        customer holds ``new``; returns who holds ``new`` now. Claimed first and released
        last, so that the customer is found by one key or the other at every step."""
        holder = await self.claim_identity(new, customer_id)
        if holder == customer_id:
            profile = {"_id": customer_id}
            await self.customers.update_one(profile, {"$addToSet": {"identities": new}})
            await self.customers.update_one(profile, {"$pull": {"identities": old}})
            await self.identities.delete_one({"_id": old, "customer_id": customer_id})
        return holder

    async def customer_id_for(self, identity: str) -> str | None:
        doc = await self.identities.find_one({"_id": identity})
        return str(doc["customer_id"]) if doc else None

    async def claim_identity(self, identity: str, customer_id: str) -> str:
        """The identity's customer, claiming it for ``customer_id`` if nobody has it."""
        try:
            await self.identities.insert_one({"_id": identity, "customer_id": customer_id})
        except DuplicateKeyError:
            owner = await self.customer_id_for(identity)
            if owner is None:  # released since the insert failed: claim it again
                return await self.claim_identity(identity, customer_id)
            return owner
        return customer_id

    # -- customers ----------------------------------------------------------------

    async def find_customer(self, customer_id: str) -> Document | None:
        """The customer, following the alias a merge left behind."""
        customer = await self.customers.find_one({"_id": customer_id})
        if customer is None:
            alias = await self.aliases.find_one({"_id": customer_id})
            if alias is not None:
                customer = await self.customers.find_one({"_id": alias["customer_id"]})
        return customer

    async def find_by_email(self, email: str) -> Document | None:
        entry = await self.emails.find_one({"_id": email.strip().lower()})
        return await self.find_customer(entry["customer_id"]) if entry else None

    async def index_emails(self, owners: Sequence[tuple[str, str]]) -> None:
        """Remember (email, customer id) pairs; an address keeps its first customer."""
        await insert_new(self.emails, [{"_id": e, "customer_id": owner} for e, owner in owners])

    async def reindex_emails(self, owners: Sequence[tuple[str, str]], customers: list[str]) -> None:
        """Replace the customers' remembered emails with ``owners``."""
        if customers:
            await self.emails.delete_many({"customer_id": {"$in": customers}})
        await self.index_emails(owners)

    async def find_by_crm_ids(self, crm_ids: Sequence[str]) -> dict[str, Document]:
        """The profiles holding these CRM ids, by CRM id: a merged profile holds several,
        so it is found under each."""
        keyed = self.crm_ids.find({"_id": {"$in": list(crm_ids)}})
        owners = {doc["_id"]: doc["customer_id"] async for doc in keyed}
        profiles = await self.find_customers(sorted(set(owners.values())))
        return {crm_id: profiles[owner] for crm_id, owner in owners.items() if owner in profiles}

    async def claim_crm_ids(self, owners: Sequence[tuple[str, str]]) -> set[str]:
        """Give each CRM id to its customer; the CRM ids another customer holds."""
        if not owners:
            return set()
        try:
            await self.crm_ids.insert_many(
                [{"_id": crm_id, "customer_id": owner} for crm_id, owner in owners],
                ordered=False,
            )
        except BulkWriteError as error:
            if not only_duplicates(error):
                raise
            held = self.crm_ids.find({"_id": {"$in": [crm_id for crm_id, _ in owners]}})
            holders = {doc["_id"]: doc["customer_id"] async for doc in held}
            return {crm_id for crm_id, owner in owners if holders.get(crm_id) != owner}
        return set()

    async def release_crm_ids(self, customer_id: str, keep: str | None) -> None:
        await self.crm_ids.delete_many({"customer_id": customer_id, "_id": {"$ne": keep}})

    async def prospects_among(self, customer_ids: Sequence[str]) -> set[str]:
        if not customer_ids:
            return set()
        cursor = self.customers.find({"_id": {"$in": list(customer_ids)}, "tier": PROSPECT})
        return {doc["_id"] async for doc in cursor}

    async def search(self, query: Document, limit: int, skip: int) -> list[Document]:
        cursor = self.customers.find(query).sort("_id", 1).skip(skip).limit(limit)
        return [doc async for doc in cursor]

    @staticmethod
    def name_query(name: str) -> Document:
        return {"name": {"$regex": re.escape(name), "$options": "i"}}

    async def update_customer(self, customer_id: str, update: Document) -> Document | None:
        return await self.customers.find_one_and_update(
            {"_id": customer_id}, update, return_document=ReturnDocument.AFTER
        )

    async def insert_many(self, customers: Sequence[Document]) -> None:
        if customers:
            await self.customers.insert_many(customers, ordered=False)

    async def link_many(self, links: dict[str, str]) -> set[str]:
        """Link identities to customers in one write; those someone else holds by now."""
        if not links:
            return set()
        try:
            await self.identities.insert_many(
                [{"_id": identity, "customer_id": owner} for identity, owner in links.items()],
                ordered=False,
            )
        except BulkWriteError as error:
            if not only_duplicates(error):
                raise
            owners = await self.owners_of(list(links))
            return {i for i, owner in links.items() if owners.get(i) != owner}
        return set()

    async def update_many(self, updates: Sequence[tuple[str, Document]]) -> None:
        """Apply the updates in order: two may be for one profile (a merged customer's CRM
        ids in one import), and the later must win."""
        if updates:
            await self.customers.bulk_write(
                [UpdateOne({"_id": customer_id}, update) for customer_id, update in updates]
            )

    async def find_customers(self, customer_ids: Sequence[str]) -> dict[str, Document]:
        """The profiles stored under these ids (aliases not followed), by id."""
        if not customer_ids:
            return {}
        cursor = self.customers.find({"_id": {"$in": list(customer_ids)}})
        return {doc["_id"]: doc async for doc in cursor}

    async def count_posts(self, posts: dict[str, str], followers: dict[str, int]) -> None:
        """Add each post (interaction id -> its author's customer id) to the author's post
        count unless the profile counted it already, and keep prospects' follower counts
        current (with the author's first post here, or on its own)."""
        follow = dict(followers)
        updates = []
        for interaction_id, customer_id in posts.items():
            update: Document = {
                "$inc": {"posts": 1},
                "$push": {RECENT_POSTS: {"$each": [interaction_id], "$slice": -RECENT_POSTS_KEPT}},
            }
            if customer_id in follow:
                update["$set"] = {"followers": follow.pop(customer_id)}
            # $nin, not $ne: the embedded store misreads $ne on a list, or on none.
            updates.append(
                UpdateOne({"_id": customer_id, RECENT_POSTS: {"$nin": [interaction_id]}}, update)
            )
        updates += [
            UpdateOne({"_id": customer_id}, {"$set": {"followers": count}})
            for customer_id, count in follow.items()
        ]
        if updates:
            await self.customers.bulk_write(updates, ordered=False)

    async def upsert_prospect(self, prospect: Document, followers: int) -> Document | None:
        """Store a prospect once, keeping its follower count current; returns it.

        Insert-then-update rather than one upsert with $setOnInsert: the embedded store
        drops $setOnInsert when an upsert also has $set.
        """
        with contextlib.suppress(DuplicateKeyError):
            await self.customers.insert_one(prospect)
        return await self.customers.find_one_and_update(
            {"_id": prospect["_id"]},
            {"$set": {"followers": followers}},
            return_document=ReturnDocument.AFTER,
        )

    async def alias_of(self, customer_id: str) -> str | None:
        """The profile a merged-away id resolves to, if it is one."""
        alias = await self.aliases.find_one({"_id": customer_id})
        return str(alias["customer_id"]) if alias else None

    async def hold(self, merge: Merge, customer_id: str) -> Document | None:
        """Mark the profile as the merge's (an earlier attempt of it may have): the
        profile, None if gone. Raises MergeBusy when another merge holds it."""
        held = await self.customers.find_one_and_update(
            {"_id": customer_id, MERGING: {"$in": [None]}},
            {"$set": {MERGING: merge.mark, MERGING_SINCE: epoch_ms(utcnow())}},
            return_document=ReturnDocument.AFTER,
        )
        if held is not None:
            return held
        current = await self.customers.find_one({"_id": customer_id})
        if current is None or merge.holds(current):
            return current
        if current.get(MERGING) is None:  # let go since we tried
            return await self.hold(merge, customer_id)
        since = current.get(MERGING_SINCE)
        raise MergeBusy(
            customer_id, str(current[MERGING]), int(since) if since is not None else None
        )

    async def let_go(self, merge: Merge, customer_id: str, *, applied: bool = True) -> None:
        """Remove the merge's mark (``applied=False``: only if the history is not in yet)."""
        marks = [merge.mark, merge.applied] if applied else [merge.mark]
        await self.customers.update_one(
            {"_id": customer_id, MERGING: {"$in": marks}},
            {"$unset": {MERGING: "", MERGING_SINCE: ""}},
        )

    async def merge(self, merge: Merge, missing: Document, history: Document) -> None:
        """Move the other's identities, emails, CRM ids and aliases to the survivor, give
        the survivor the fields it lacks, and add the other's history to it once.

        Only updates of the survivor, so what it gained since it was read stays. Ordered
        so that repeating it finishes the job: the alias first (the old id resolves at
        every step), the history last, under the survivor's mark, which it then marks
        applied.
        """
        await self.move_keys(merge)
        for key, value in missing.items():  # one write each: only if still missing
            await self.customers.update_one(
                {"_id": merge.survivor, key: {"$exists": False}}, {"$set": {key: value}}
            )
        await self.customers.update_one(
            {"_id": merge.survivor, MERGING: merge.mark},
            {**history, "$set": {**history.get("$set", {}), MERGING: merge.applied}},
        )

    async def move_keys(self, merge: Merge) -> None:
        """Point the other's alias, aliases and keyed lookups at the survivor."""
        await self.aliases.replace_one(
            {"_id": merge.other}, {"_id": merge.other, "customer_id": merge.survivor}, True
        )
        for keyed in (self.aliases, self.identities, self.emails, self.crm_ids):
            await keyed.update_many(
                {"customer_id": merge.other}, {"$set": {"customer_id": merge.survivor}}
            )

    async def drop_merged(self, merge: Merge) -> Document | None:
        """Remove the merged-away profile; it as it was at the end (None if gone)."""
        return await self.customers.find_one_and_delete({"_id": merge.other, MERGING: merge.mark})

    async def erase(self, customer_id: str) -> bool:
        """Remove the profile, its identities, emails and aliases; True if it existed."""
        for keyed in (self.identities, self.emails, self.crm_ids, self.aliases):
            await keyed.delete_many({"customer_id": customer_id})
        deleted = await self.customers.delete_one({"_id": customer_id})
        return deleted.deleted_count > 0


def without_id(doc: Document) -> dict[str, Any]:
    return {key: value for key, value in doc.items() if key != "_id"}
