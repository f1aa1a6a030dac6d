"""The Kubernetes manifests: every overlay renders, validates against the Kubernetes
schemas, and every Deployment has probes, limits and a hardened securityContext."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(path.name for path in (ROOT / "deploy" / "overlays").iterdir())
BIN = Path(sys.executable).parent  # kubectl and kubernetes-validate come with the venv


def render(overlay: str) -> list[dict[str, Any]]:
    rendered = subprocess.run(  # noqa: S603
        [BIN / "kubectl", "kustomize", ROOT / "deploy" / "overlays" / overlay],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


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
    path.write_text(yaml.safe_dump_all(docs), encoding="utf-8")

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
