"""A service's relays act together when one of them sees the broker lose data."""

from __future__ import annotations

from pymongo import AsyncMongoClient

from shared.app import broker_lost
from shared.metrics import service_metrics
from shared.mongo import Document
from shared.outbox import Outbox, OutboxRelay
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
