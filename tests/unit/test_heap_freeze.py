"""A service process leaves its start-up heap out of later collections, and still
collects what it makes afterwards."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI

from shared.app import freeze_heap_after_startup


class Node:
    """Something that can sit in a reference cycle, which only the collector frees."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


async def test_the_heap_is_frozen_once_start_up_is_done(unfrozen: None) -> None:
    seen: list[str] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        seen.append(f"started, frozen {gc.get_freeze_count()}")
        yield
        seen.append("stopped")

    app = freeze_heap_after_startup(FastAPI(lifespan=lifespan))
    async with app.router.lifespan_context(app):
        assert seen == ["started, frozen 0"]
        assert gc.get_freeze_count() > 0
    assert seen[-1] == "stopped"


async def test_what_is_made_after_start_up_is_still_collected(unfrozen: None) -> None:
    app = freeze_heap_after_startup(FastAPI())
    async with app.router.lifespan_context(app):
        first, second = Node(), Node()
        first.other, second.other = second, first
        gone = weakref.ref(first)
        del first, second
        gc.collect()
        assert gone() is None
