"""Group commit: many callers' small writes made as one.

Each store round trip costs CPU on both sides whatever it carries, so callers that
arrive while a write is under way wait for the next write and go in it together; each
is answered with its own result once that write is done. Alone, a caller is written at
once: nothing waits for a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
In = TypeVar("In")
Out = TypeVar("Out")


class GroupWriter(Generic[Key, In, Out]):
    """Writes what is submitted under one key together, one write at a time per key.

    ``write(key, items)`` returns one result per item, in order; if it raises, every
    caller in that write gets the exception.
    """

    def __init__(self, write: Callable[[Key, list[In]], Awaitable[Sequence[Out]]]) -> None:
        self._write = write
        self._waiting: dict[Key, list[tuple[In, asyncio.Future[Out]]]] = {}
        self._writers: dict[Key, asyncio.Task[None]] = {}

    async def submit(self, key: Key, item: In) -> Out:
        answer: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append((item, answer))
        if key not in self._writers:
            self._writers[key] = asyncio.create_task(self._write_waiting(key))
        return await answer

    async def _write_waiting(self, key: Key) -> None:
        try:
            while batch := self._waiting.pop(key, []):
                try:
                    results = await self._write(key, [item for item, _ in batch])
                except Exception as exc:
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for (_, answer), result in zip(batch, results, strict=True):
                    if not answer.done():  # its caller may have been cancelled meanwhile
                        answer.set_result(result)
        finally:
            del self._writers[key]
