"""A service's relays act together when one of them sees the broker lose data; a relay
marks the batches it sent meanwhile together."""

from __future__ import annotations

from pymongo import AsyncMongoClient

from shared.app import broker_lost
from shared.metrics import service_metrics
from shared.mongo import Document
from shared.outbox import Advance, Batch, Outbox, OutboxRelay, joined
from shared.settings import KafkaSettings


async def test_a_loss_one_relay_saw_makes_the_others_publish_their_windows_again() -> None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(connect=False)  # never used here
    db = client["relays"]
    relays = [
        OutboxRelay(Outbox(db, collection=name), KafkaSettings(), service_metrics("relays"))
        for name in ("outbox", "interactions", "third")
    ]
    rewinds: list[str] = []

    async def rewind() -> None:
        rewinds.append("rewound")

    await broker_lost(relays[1], relays, rewind)

    # The one that saw it has published its window already; the others are woken to.
    assert [relay.outbox.wakeup.is_set() for relay in relays] == [True, False, True]
    assert rewinds == ["rewound"]
    await client.close()


def test_batches_joined_make_one_advance_per_writer_and_epoch() -> None:
    batches = [
        Batch([{"_id": "a"}], [Advance("w1", 0, 0, 5), Advance("w2", 1, 10, 12)]),
        Batch([{"_id": "b"}], [Advance("w1", 0, 3, 9)]),
        Batch([], [Advance("w1", 1, 0, 2)]),  # after a replay: another epoch
    ]

    one = joined(batches)

    assert [entry["_id"] for entry in one.entries] == ["a", "b"]
    assert one.advances == [
        Advance("w1", 0, 0, 9),
        Advance("w2", 1, 10, 12),
        Advance("w1", 1, 0, 2),
    ]
    assert batches[0].advances[0] == Advance("w1", 0, 0, 5)  # left as they were
