"""Step logs' buckets: the same batch makes the same bucket, and each step is read once."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from shared.steplog import bucket, once_each

AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def steps(*ids: str) -> list[dict[str, Any]]:
    return [{"_id": i, "item_id": f"item-{i[-1]}", "step": "routed"} for i in ids]


def bucket_of(*ids: str) -> dict[str, Any]:
    return bucket(steps(*ids), "item_id", AT)


def test_a_batch_recorded_again_makes_the_same_bucket() -> None:
    assert bucket_of("s1", "s2")["_id"] == bucket_of("s1", "s2")["_id"]


def test_a_batch_cut_otherwise_makes_another_bucket() -> None:
    assert bucket_of("s1", "s2")["_id"] != bucket_of("s1")["_id"]
    assert bucket_of("s1", "s2")["_id"] != bucket_of("s2", "s1")["_id"]


def test_a_bucket_names_each_of_its_items_once_and_keeps_its_steps_in_order() -> None:
    made = bucket_of("a1", "b1", "c2")

    assert made["items"] == ["item-1", "item-2"]
    assert [s["_id"] for s in json.loads(made["steps"])] == ["a1", "b1", "c2"]
    assert made["written_ms"] == int(AT.timestamp() * 1000)


def test_each_step_is_kept_once_where_first_found() -> None:
    first, again, other = {"_id": "s1", "n": 1}, {"_id": "s1", "n": 2}, {"_id": "s2", "n": 3}

    assert once_each([first, other, again]) == [first, other]
