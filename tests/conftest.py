"""One embedded broker and store for the whole test session, on free ports.

Each test gets its own topics, consumer groups and databases (a fresh namespace),
so tests never see each other's data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from shared.embedded import EmbeddedStack, free_port
from shared.mongo import Document
from tests.support import unique


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    embedded = EmbeddedStack(
        data_dir=tmp_path_factory.mktemp("switchboard"),
        broker_port=free_port(),
        store_port=free_port(),
    )
    embedded.start()
    yield embedded
    embedded.stop()


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    """A broker and store of this test's own, for tests that stop the broker."""
    own = EmbeddedStack(tmp_path / "own", broker_port=free_port(), store_port=free_port())
    own.start()
    yield own
    own.stop()


@pytest.fixture
def namespace() -> str:
    return unique()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
async def client(stack: EmbeddedStack) -> AsyncIterator[AsyncMongoClient[Document]]:
    """A client of the embedded store, as the services make theirs (aware datetimes)."""
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(stack.mongo_url, tz_aware=True)
    yield mongo
    await mongo.close()
