"""How many documents a write command's reply says it wrote."""

from __future__ import annotations

from typing import Any

import pytest

from shared.metrics import documents_written


@pytest.mark.parametrize(
    ("command", "reply", "written"),
    [
        ("insert", {"n": 3, "ok": 1}, 3),
        ("update", {"n": 5, "nModified": 2, "ok": 1}, 5),  # matched, changed or not
        ("delete", {"n": 1, "ok": 1}, 1),
        ("findAndModify", {"lastErrorObject": {"n": 1}, "value": {}, "ok": 1}, 1),
        ("findAndModify", {"lastErrorObject": {"n": 0}, "value": None, "ok": 1}, 0),
        ("find", {"cursor": {"firstBatch": [{}, {}]}, "ok": 1}, 0),
        ("insert", {"ok": 1}, 0),
    ],
)
def test_documents_written_are_read_from_the_reply(
    command: str, reply: dict[str, Any], written: int
) -> None:
    assert documents_written(command, reply) == written
