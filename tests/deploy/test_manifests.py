"""The Kubernetes manifests: every overlay renders, validates against the Kubernetes
schemas (built-in kinds) and the vendored CRD schemas (custom resources), every
Deployment has probes, limits and a hardened securityContext, and every SWITCHBOARD_*
variable the manifests set is one the services read."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from services.enrich.config import EnrichSettings
from services.ingest.config import IngestSettings
from services.notify.config import NotifySettings
from services.router.config import RouterSettings
from tests.deploy.manifests import BIN, ROOT, custom_resource_errors, is_custom, render

OVERLAYS = sorted(path.name for path in (ROOT / "deploy" / "overlays").iterdir())
SERVICES = ("ingest", "enrich", "router", "notify")


def deployment_problems(deployment: dict[str, Any]) -> list[str]:
    """What a reviewer would send back: missing probes, limits or hardening."""
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    problems = []
    pod_security = pod.get("securityContext", {})
    if pod_security.get("runAsNonRoot") is not True:
        problems.append(f"{name}: pod may run as root")
    if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: no RuntimeDefault seccomp profile")
    for container in pod["containers"]:
        where = f"{name}/{container['name']}"
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            if container.get(probe, {}).get("httpGet", {}).get("path") != path:
                problems.append(f"{where}: {probe} is not GET {path}")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                problems.append(f"{where}: {kind} lack cpu or memory")
        security = container.get("securityContext", {})
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem is writable")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: privilege escalation allowed")
        if security.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities not all dropped")
    return problems


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_every_overlay_validates_against_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    overlay, docs = rendered
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all([d for d in docs if not is_custom(d)]), encoding="utf-8")

    result = subprocess.run(  # noqa: S603
        [BIN / "kubernetes-validate", "--strict", "--quiet", "--no-warn", path],
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_is_deployed_hardened_with_probes_and_limits(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    deployments = [doc for doc in docs if doc["kind"] == "Deployment"]

    assert {d["metadata"]["name"] for d in deployments} == {"ingest", "enrich", "router", "notify"}
    assert [p for d in deployments for p in deployment_problems(d)] == []


def test_traffic_is_denied_unless_a_policy_allows_it(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}

    assert policies["default-deny"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
    }


def test_dev_lets_the_services_reach_the_kafka_and_mongodb_in_its_namespace() -> None:
    """The base's default deny takes in dev's own Kafka and MongoDB pods too: without a
    policy letting them take connections, no service there would ever be ready."""
    policies = [d for d in render("dev") if d["kind"] == "NetworkPolicy"]
    [theirs] = [p for p in policies if p["metadata"]["name"] == "dev-dependencies"]

    assert theirs["spec"]["podSelector"] == {
        "matchExpressions": [
            {"key": "app.kubernetes.io/part-of", "operator": "NotIn", "values": ["switchboard"]}
        ]
    }
    assert {"from": [{"podSelector": {}}]} in theirs["spec"]["ingress"]


def test_the_check_catches_a_deployment_without_probes_or_hardening() -> None:
    [deployment] = [
        d
        for d in render(OVERLAYS[0])
        if (d["kind"], d["metadata"]["name"]) == ("Deployment", "ingest")
    ]
    broken = copy.deepcopy(deployment)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    del container["livenessProbe"]
    del container["resources"]["limits"]
    container["securityContext"]["readOnlyRootFilesystem"] = False

    assert deployment_problems(broken) == [
        "ingest/ingest: livenessProbe is not GET /healthz",
        "ingest/ingest: limits lack cpu or memory",
        "ingest/ingest: root filesystem is writable",
    ]


def test_every_custom_resource_matches_its_crd_schema(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered

    assert [e for d in docs if is_custom(d) for e in custom_resource_errors(d)] == []


def test_the_crd_check_catches_unknown_fields_and_wrong_values() -> None:
    [kafka] = [d for d in render("prod") if d["kind"] == "Kafka"]
    broken = copy.deepcopy(kafka)
    broken["spec"]["kafka"]["listeners"][0]["authentication"]["type"] = "scram"
    broken["spec"]["kafka"]["replicas"] = 3
    unknown = {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaBridge",
        "metadata": {"name": "b"},
    }

    assert custom_resource_errors(broken) == [
        "Kafka/switchboard: spec.kafka: Additional properties are not allowed "
        "('replicas' was unexpected)",
        "Kafka/switchboard: spec.kafka.listeners.0.authentication.type: "
        "'scram' is not one of ['tls', 'scram-sha-512', 'custom']",
    ]
    assert custom_resource_errors(unknown) == [
        "KafkaBridge/b: no schema for kafka.strimzi.io/v1 under deploy/schemas/"
    ]


def settings_variables() -> set[str]:
    """Every SWITCHBOARD_* variable some service's Settings read."""
    names: set[str] = set()

    def add(settings: type[BaseSettings]) -> None:
        prefix = settings.model_config.get("env_prefix", "")
        for field, info in settings.model_fields.items():
            kind = info.annotation
            if isinstance(kind, type) and issubclass(kind, BaseSettings):
                add(kind)  # nested settings read their own prefix
            else:
                names.add(f"{prefix}{field}".upper())

    for settings in (IngestSettings, EnrichSettings, RouterSettings, NotifySettings):
        add(settings)
    return names


def test_every_switchboard_variable_set_is_one_the_services_read(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, docs = rendered
    env_files = (ROOT / "deploy" / "overlays" / overlay).glob("*.env")
    set_here = {
        line.split("=", 1)[0]
        for path in env_files
        for line in path.read_text(encoding="utf-8").splitlines()
        if "=" in line and not line.startswith("#")
    }
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "switchboard-settings":
            set_here |= set(doc["data"])
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                set_here |= {env["name"] for env in container.get("env", [])}

    switchboard = {name for name in set_here if name.startswith("SWITCHBOARD_")}
    assert switchboard, "no settings found"
    assert switchboard - settings_variables() == set()
