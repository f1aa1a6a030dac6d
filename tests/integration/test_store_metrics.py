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

    def things_metric(metric: str, command: str) -> float:
        name = f"switchboard_store_probe_store_{metric}_total"
        return metric_value(name, collection="things", command=command)

    def counts() -> dict[str, tuple[float, float]]:
        return {
            name: (things_metric("commands", name), things_metric("documents", name))
            for name in ("insert", "update", "find")
        }

    before, seconds_before = counts(), things_metric("command_seconds", "find")
    try:
        await things.insert_many([{"_id": n} for n in range(3)])
        await things.update_many({}, {"$set": {"seen": True}})
        assert len(await things.find({}).to_list(None)) == 3
    finally:
        await client.close()

    after = counts()
    assert after["insert"] == (before["insert"][0] + 1, before["insert"][1] + 3)
    # An update counts the documents it matched; a read writes nothing.
    assert after["update"] == (before["update"][0] + 1, before["update"][1] + 3)
    assert after["find"] == (before["find"][0] + 1, before["find"][1])
    assert things_metric("command_seconds", "find") > seconds_before
