"""The prod overlay's Kafka and MongoDB: a topic for every topic the code uses, users
allowed only their own topics and group, MongoDB as a replica set with a user per service."""

from __future__ import annotations

from typing import Any

import pytest

from shared import topics
from shared.settings import KafkaSettings, MongoSettings
from tests.deploy.manifests import render

SERVICES = ("ingest", "enrich", "router", "notify")
T = topics.Topics()

# What each service consumes (runtime.consume in services/*/main.py and shared/app.py)
# and produces (its outbox: services/*/service.py, shared/access.py).
# Every service's relay and consumers may put dead letters on the two dead-letter topics.
EVERY_SERVICE = {T.access_keys}
DEAD_LETTERS = {T.outbox_dead, T.consumed_dead}
CONSUMES = {
    "ingest": {T.submitted, T.enriched, T.assignments, T.deliveries} | EVERY_SERVICE,
    "enrich": {T.received} | EVERY_SERVICE,
    "router": {T.enriched} | EVERY_SERVICE,
    "notify": {T.assignments, T.escalations} | EVERY_SERVICE,
}
PRODUCES = {
    "ingest": {T.received, T.rejected} | EVERY_SERVICE | DEAD_LETTERS,
    "enrich": {T.enriched} | EVERY_SERVICE | DEAD_LETTERS,
    "router": {T.assignments, T.escalations} | EVERY_SERVICE | DEAD_LETTERS,
    "notify": {T.deliveries, T.deliveries_dead} | EVERY_SERVICE | DEAD_LETTERS,
}


@pytest.fixture(scope="module")
def prod() -> list[dict[str, Any]]:
    return render("prod")


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def leader_topic(service: str) -> str:
    """Faust's leader-election topic for the service's consumer group."""
    return f"{KafkaSettings().group_id(service)}-__assignor-__leader"


def test_every_topic_the_code_uses_is_declared_with_partitions_and_retention(
    prod: list[dict[str, Any]],
) -> None:
    declared = {t["spec"]["topicName"]: t["spec"] for t in of_kind(prod, "KafkaTopic").values()}
    compacted = getattr(topics, "COMPACTED", frozenset({topics.ACCESS_KEYS}))

    assert set(declared) == set(T.all()) | {leader_topic(s) for s in SERVICES}
    for name in T.all():
        spec = declared[name]
        assert spec["replicas"] >= 3
        assert spec["config"]["min.insync.replicas"] >= 2
        if name in compacted:
            assert spec["config"]["cleanup.policy"] == "compact"
        else:
            assert spec["config"]["retention.ms"] > 0


def test_no_consumer_has_more_replicas_than_its_topics_have_partitions(
    prod: list[dict[str, Any]],
) -> None:
    partitions = {
        t["spec"]["topicName"]: t["spec"]["partitions"]
        for t in of_kind(prod, "KafkaTopic").values()
    }
    autoscalers = of_kind(prod, "HorizontalPodAutoscaler")
    for service, deployment in of_kind(prod, "Deployment").items():
        most = autoscalers.get(service, {}).get("spec", {}).get("maxReplicas")
        most = most or deployment["spec"]["replicas"]
        assert deployment["spec"]["replicas"] > 1
        for topic in CONSUMES[service] - EVERY_SERVICE:
            assert most <= partitions[topic], f"{service} may outnumber {topic}'s partitions"


def acl_table(user: dict[str, Any]) -> dict[tuple[str, str, str], set[str]]:
    return {
        (acl["resource"]["type"], acl["resource"]["name"], acl["resource"]["patternType"]): set(
            acl["operations"]
        )
        for acl in user["spec"]["authorization"]["acls"]
    }


def test_each_service_may_use_only_its_own_topics_and_group(prod: list[dict[str, Any]]) -> None:
    users = of_kind(prod, "KafkaUser")
    for service in SERVICES:
        user = users[f"switchboard-{service}"]
        expected: dict[tuple[str, str, str], set[str]] = {}
        for topic in CONSUMES[service]:
            expected.setdefault(("topic", topic, "literal"), set()).update({"Describe", "Read"})
        for topic in PRODUCES[service]:
            expected.setdefault(("topic", topic, "literal"), set()).update({"Describe", "Write"})
        expected[("topic", leader_topic(service), "literal")] = {"Describe", "Read"}
        expected[("group", KafkaSettings().group_id(service), "literal")] = {"Read"}

        assert user["spec"]["authentication"]["type"] in {"tls", "scram-sha-512"}
        assert acl_table(user) == expected, service


def test_nobody_may_create_or_change_topics(prod: list[dict[str, Any]]) -> None:
    for name, user in of_kind(prod, "KafkaUser").items():
        for acl in user["spec"]["authorization"]["acls"]:
            assert set(acl["operations"]) <= {"Describe", "Read", "Write"}, name
            assert acl["resource"]["type"] in {"topic", "group"}, name
            assert acl.get("type", "allow") == "allow", name


def test_kafka_is_kraft_with_authentication_and_authorization(prod: list[dict[str, Any]]) -> None:
    [kafka] = of_kind(prod, "Kafka").values()
    pools = of_kind(prod, "KafkaNodePool").values()
    settings = of_kind(prod, "ConfigMap")["switchboard-settings"]["data"]
    cluster = kafka["metadata"]["name"]

    assert {role for pool in pools for role in pool["spec"]["roles"]} == {"controller", "broker"}
    assert all(pool["spec"]["replicas"] >= 3 for pool in pools)
    assert all(listener.get("authentication") for listener in kafka["spec"]["kafka"]["listeners"])
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False
    for kind in ("KafkaNodePool", "KafkaTopic", "KafkaUser"):
        for resource in of_kind(prod, kind).values():
            assert resource["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    assert settings["SWITCHBOARD_KAFKA_IDEMPOTENCE"] == "true"
    assert settings["SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS"].startswith(f"{cluster}-kafka-bootstrap:")


def test_mongodb_is_a_replica_set_with_a_user_per_service(prod: list[dict[str, Any]]) -> None:
    [mongodb] = of_kind(prod, "MongoDBCommunity").values()
    users = {user["name"]: user for user in mongodb["spec"]["users"]}
    deployments = of_kind(prod, "Deployment")

    assert mongodb["spec"]["type"] == "ReplicaSet"
    assert mongodb["spec"]["members"] >= 3
    for service in SERVICES:
        user = users[f"switchboard-{service}"]
        assert user["roles"] == [{"name": "readWrite", "db": MongoSettings().database(service)}]
        [container] = deployments[service]["spec"]["template"]["spec"]["containers"]
        [url] = [env for env in container["env"] if env["name"] == "SWITCHBOARD_MONGO_URL"]
        assert url["valueFrom"]["secretKeyRef"]["name"] == user["connectionStringSecretName"]
