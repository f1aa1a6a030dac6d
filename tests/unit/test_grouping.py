"""Group commit: callers arriving during a write share the next one."""

from __future__ import annotations

import asyncio

from shared.grouping import GroupWriter


async def test_callers_during_a_write_go_together_in_the_next_and_get_their_own_results() -> None:
    writes: list[tuple[str, list[int]]] = []
    release = asyncio.Event()

    async def write(key: str, items: list[int]) -> list[int]:
        writes.append((key, items))
        if len(writes) == 1:
            await release.wait()  # the first write is slow: the rest gather meanwhile
        return [item * 10 for item in items]

    writer: GroupWriter[str, int, int] = GroupWriter(write)
    first = asyncio.create_task(writer.submit("a", 1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(writer.submit("a", n)) for n in (2, 3, 4)]
    other_key = asyncio.create_task(writer.submit("b", 5))
    await asyncio.sleep(0)
    release.set()

    assert await first == 10
    assert [await task for task in rest] == [20, 30, 40]
    assert await other_key == 50
    assert writes == [("a", [1]), ("b", [5]), ("a", [2, 3, 4])]


async def test_a_failed_write_fails_each_of_its_callers_and_not_the_next_write() -> None:
    async def write(_: None, items: list[str]) -> list[str]:
        if "bad" in items:
            raise RuntimeError("store down")
        return items

    writer: GroupWriter[None, str, str] = GroupWriter(write)
    together = await asyncio.gather(
        writer.submit(None, "bad"), writer.submit(None, "ok"), return_exceptions=True
    )

    assert [type(r) for r in together] == [RuntimeError, RuntimeError]
    assert await writer.submit(None, "later") == "later"


async def test_a_cancelled_caller_leaves_the_others_answered() -> None:
    gate = asyncio.Event()
    writes: list[list[int]] = []

    async def write(_: None, items: list[int]) -> list[int]:
        writes.append(items)
        await gate.wait()
        return [item * 10 for item in items]

    writer: GroupWriter[None, int, int] = GroupWriter(write)
    # The cancelled caller is first in the write: its answer is the first one given out.
    dropped = asyncio.create_task(writer.submit(None, 1))
    kept = asyncio.create_task(writer.submit(None, 2))
    for _ in range(10):  # until the write has begun
        if writes:
            break
        await asyncio.sleep(0)
    dropped.cancel()
    gate.set()

    assert await asyncio.wait_for(kept, timeout=5) == 20
    assert dropped.cancelled()
    assert writes == [[1, 2]]  # begun before the cancel, the write carried both
    # The writer for the key is still sound: a later caller is written and answered.
    assert await asyncio.wait_for(writer.submit(None, 3), timeout=5) == 30
    assert writes == [[1, 2], [3]]
