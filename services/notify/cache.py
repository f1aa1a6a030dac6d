"""What notify keeps in memory to spare the store a query per batch: the subscriptions as
last read, and the deliveries it has just stored, leased to itself, for its dispatcher."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection

from pymongo.errors import PyMongoError

from services.notify.repository import NotifyRepository
from shared.logging import get_logger
from shared.mongo import Document

log = get_logger(__name__)


class Subscriptions:
    """Every subscription as this process last read it, read again once the read is older
    than ``max_age_s`` or this process has changed one. A change made through another
    replica takes effect here within ``max_age_s``; a subscription this process has not
    seen yet is looked up at once."""

    def __init__(self, repository: NotifyRepository, max_age_s: float) -> None:
        self._repository = repository
        self._max_age_s = max_age_s
        self._read: dict[str, Document] | None = None
        self._read_at = 0.0
        # This process's own changes: a read begun before one is used once, not kept.
        self._changes = 0
        self._read_changes = -1

    def changed(self) -> None:
        self._changes += 1

    async def current(self) -> dict[str, Document]:
        """Raises PyMongoError when the store cannot be read and nothing was read before."""
        changes, started = self._changes, time.monotonic()
        if self._read is not None and changes == self._read_changes and not self._old(started):
            return self._read
        try:
            read = await self._repository.all_subscriptions()
        except PyMongoError as exc:
            if self._read is None:
                raise
            log.warning("could not read subscriptions; using the last read", error=repr(exc))
            return self._read
        if changes == self._changes:
            self._read, self._read_at, self._read_changes = read, started, changes
        return read

    async def enabled(self) -> list[Document]:
        return [s for s in (await self.current()).values() if s.get("enabled")]

    async def of(self, ids: Collection[str]) -> dict[str, Document]:
        """The subscriptions with these ids, read again if one is missing (it may have been
        created through another replica since the last read)."""
        subscriptions = await self.current()
        if not set(ids) <= subscriptions.keys():
            self.changed()
            subscriptions = await self.current()
        return subscriptions

    def _old(self, now: float) -> bool:
        return now - self._read_at >= self._max_age_s


class FreshDeliveries:
    """Deliveries this process has just stored, leased to itself as they were stored, on
    their way to its dispatcher in memory: no query looks for them and no second write
    leases them. At most ``room`` wait here; when it is full, new deliveries are stored due
    and claimed from the store like retries. One that waited so long that its lease would
    not cover an attempt is given back: the dispatcher releases it in the store, where the
    next claim takes it (left to its lease, it would wait for that to run out, 30 s and
    more, behind a backlog that had long gone)."""

    def __init__(self, room: int, lease: str) -> None:
        self.lease = lease
        self._room = room
        self._waiting: deque[Document] = deque()

    def room(self) -> int:
        return max(0, self._room - len(self._waiting))

    def add(self, deliveries: Collection[Document]) -> None:
        self._waiting.extend(deliveries)

    def take(self, limit: int, now_ms: int, needed_ms: int) -> tuple[list[Document], list[str]]:
        """Up to ``limit`` deliveries, oldest first, each leased for ``needed_ms`` more; and
        the ids of those passed over on the way, whose leases are too short, to release."""
        taken: list[Document] = []
        stale: list[str] = []
        while self._waiting and len(taken) < limit:
            delivery = self._waiting.popleft()
            if delivery["next_attempt_ms"] - now_ms >= needed_ms:
                taken.append(delivery)
            else:
                stale.append(delivery["_id"])
        if stale:
            log.info("fresh deliveries given back to the store", count=len(stale))
        return taken, stale

    def drain(self) -> list[str]:
        """The ids of every delivery still waiting, which no longer wait."""
        ids = [delivery["_id"] for delivery in self._waiting]
        self._waiting.clear()
        return ids
