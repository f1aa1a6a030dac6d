"""MongoDB wiring with PyMongo's async API: one client per service, its own database."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from shared.settings import MongoSettings

Document = dict[str, Any]
DUPLICATE_KEY = 11000


def connect(
    settings: MongoSettings, listeners: Sequence[monitoring.CommandListener] = ()
) -> AsyncMongoClient[Document]:
    return AsyncMongoClient(
        settings.url.get_secret_value(),
        serverSelectionTimeoutMS=settings.timeout_ms,
        connectTimeoutMS=settings.timeout_ms,
        tz_aware=True,
        event_listeners=list(listeners),
    )


async def ping(db: AsyncDatabase[Document]) -> bool:
    try:
        await db.command("ping")
    except PyMongoError:
        return False
    return True


def epoch_ms(at: datetime) -> int:
    """A time as integer milliseconds, for fields that queries compare and updates ``$set``.

    The embedded store keeps a datetime written by a top-level ``$set`` as a string, which
    no longer compares as a time; an integer behaves the same in MongoDB and in it.
    """
    return int(at.timestamp() * 1000)


def as_utc(at: datetime) -> datetime:
    """A datetime read back from the store, aware: a client made without ``tz_aware``
    (the services' are made with it) reads naive UTC."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def only_duplicates(error: BulkWriteError) -> bool:
    """Whether a bulk insert failed only on documents that already exist."""
    return all(e.get("code") == DUPLICATE_KEY for e in error.details.get("writeErrors", []))


async def insert_new(collection: AsyncCollection[Document], docs: Sequence[Document]) -> set[Any]:
    """Insert the documents not stored yet (by ``_id`` or another unique key), in one
    round trip; returns the ``_id`` of those stored now."""
    refused = await insert_refusing_duplicates(collection, docs)
    return {doc.get("_id") for n, doc in enumerate(docs) if n not in refused}


async def insert_refusing_duplicates(
    collection: AsyncCollection[Document], docs: Sequence[Document]
) -> set[int]:
    """Insert the documents not stored yet, in one round trip; returns the positions of
    those refused as already stored (by ``_id`` or another unique key)."""
    if not docs:
        return set()
    try:
        await collection.insert_many(list(docs), ordered=False)
    except BulkWriteError as error:
        if not only_duplicates(error):
            raise
        return {e["index"] for e in error.details["writeErrors"]}
    return set()


__all__ = ["DUPLICATE_KEY", "AsyncDatabase", "Document", "DuplicateKeyError", "connect", "ping"]
