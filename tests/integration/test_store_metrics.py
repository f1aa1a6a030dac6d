"""Every command a service sends to its database is counted and timed, and the documents
it wrote counted, by collection and command: what shows where store time goes."""

from __future__ import annotations

from prometheus_client import REGISTRY
from pydantic import SecretStr

from shared.embedded import EmbeddedStack
from shared.metrics import StoreCommandMetrics, service_metrics
from shared.mongo import connect
from shared.settings import MongoSettings


def metric_value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_commands_are_counted_and_timed_and_their_writes_counted(
    stack: EmbeddedStack, namespace: str
) -> None:
    metrics = service_metrics("store_probe")
    settings = MongoSettings(url=SecretStr(stack.mongo_url))
    client = connect(settings, [StoreCommandMetrics(metrics)])
    things = client[namespace]["things"]

    def commands(command: str) -> float:
        return metric_value(
            "switchboard_store_probe_store_commands_total",
            collection="things",
            command=command,
        )

    def documents(command: str) -> float:
        return metric_value(
            "switchboard_store_probe_store_documents_total",
            collection="things",
            command=command,
        )

    before = {name: (commands(name), documents(name)) for name in ("insert", "update", "find")}
    seconds_before = metric_value(
        "switchboard_store_probe_store_command_seconds_total", collection="things", command="find"
    )
    try:
        await things.insert_many([{"_id": n} for n in range(3)])
        await things.update_many({}, {"$set": {"seen": True}})
        assert len(await things.find({}).to_list(None)) == 3
    finally:
        await client.close()

    after = {name: (commands(name), documents(name)) for name in ("insert", "update", "find")}
    assert after["insert"] == (before["insert"][0] + 1, before["insert"][1] + 3)
    # An update counts the documents it matched; a read writes nothing.
    assert after["update"] == (before["update"][0] + 1, before["update"][1] + 3)
    assert after["find"] == (before["find"][0] + 1, before["find"][1])
    seconds_after = metric_value(
        "switchboard_store_probe_store_command_seconds_total", collection="things", command="find"
    )
    assert seconds_after > seconds_before
