"""The alerts and the Grafana dashboard name only metrics the services really export.

The exported names come from the code, not from a list: the test builds every service's
metrics (``shared.metrics.service_metrics`` and each service module's metric factories)
and reads what prometheus_client's default registry, the one ``/metrics`` serves, holds.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Iterable
from functools import cache
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

from shared.metrics import service_metrics
from tests.deploy.manifests import ROOT, render

SERVICES = ("ingest", "enrich", "router", "notify")
# Series that exist without Switchboard exporting them: Prometheus writes `up` for every
# target it scrapes.
FROM_PROMETHEUS = frozenset({"up"})
# Strimzi's Kafka Exporter, where the overlay's Kafka resource runs one (kafkaExporter):
# the consumer groups' lag as the broker sees it, replicas that stopped answering included.
FROM_KAFKA_EXPORTER = frozenset(
    {
        "kafka_consumergroup_lag",
        "kafka_consumergroup_current_offset",
        "kafka_topic_partition_current_offset",
    }
)
_METRIC_FACTORY = re.compile(r"Metrics|Gauges|Counter|Gauge|Histogram|Summary")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
}


def series_names(family: Metric) -> set[str]:
    """The series names a metric family appears under in the exposition format."""
    names = {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    return names | {sample.name for sample in family.samples}


@cache
def exported_metrics() -> frozenset[str]:
    """Every series name the services' /metrics can show."""
    for service in SERVICES:
        service_metrics(service)
        module = importlib.import_module(f"services.{service}.service")
        for _, function in inspect.getmembers(module, callable):
            wrapped = getattr(function, "__wrapped__", None)  # @cache'd factories
            if (
                wrapped is not None
                and getattr(function, "__module__", None) == module.__name__
                and not inspect.signature(wrapped).parameters
                and _METRIC_FACTORY.search(str(inspect.signature(wrapped).return_annotation))
            ):
                function()
    return frozenset(name for family in REGISTRY.collect() for name in series_names(family))


def _without_grafana_variables(expr: str) -> str:
    expr = re.sub(r"\$__(rate_)?interval|\$\{__(rate_)?interval\}", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (ValueError if it does not parse)."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name is None:
                raise ValueError(f"select metrics by name, not by a __name__ matcher: {expr}")
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(_without_grafana_variables(expr)), visit)
    return names


def alert_rules(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        rule
        for doc in docs
        if doc["kind"] == "PrometheusRule"
        for group in doc["spec"]["groups"]
        for rule in group["rules"]
    ]


def dashboards(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        json.loads(body)
        for doc in docs
        if doc["kind"] == "ConfigMap"
        and doc["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
        for body in doc["data"].values()
    ]


def panel_expressions(dashboard: dict[str, Any]) -> list[str]:
    def panels(items: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    return [
        target["expr"]
        for panel in panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def expressions(docs: list[dict[str, Any]]) -> list[str]:
    rules = [rule["expr"] for rule in alert_rules(docs) if "expr" in rule]
    return rules + [expr for board in dashboards(docs) for expr in panel_expressions(board)]


def allowed_metrics(docs: list[dict[str, Any]]) -> frozenset[str]:
    allowed = exported_metrics() | FROM_PROMETHEUS
    if any(d["kind"] == "Kafka" and "kafkaExporter" in d["spec"] for d in docs):
        allowed |= FROM_KAFKA_EXPORTER
    return allowed


def unknown_metrics(exprs: Iterable[str], allowed: frozenset[str]) -> dict[str, set[str]]:
    found = {expr: metric_names(expr) - allowed for expr in exprs}
    return {expr: names for expr, names in found.items() if names}


def monitored(overlay: str) -> list[dict[str, Any]]:
    docs = render(overlay)
    return docs if any(d["kind"] == "PrometheusRule" for d in docs) else []


OVERLAYS = sorted(path.name for path in (ROOT / "deploy" / "overlays").iterdir())
MONITORING = "../../components/monitoring"


def uses_monitoring(overlay: str) -> bool:
    """Whether the overlay's kustomization takes in the monitoring component."""
    kustomization = ROOT / "deploy" / "overlays" / overlay / "kustomization.yaml"
    spec = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
    return MONITORING in spec.get("components", [])


# Only these have alerts and dashboards to check; the others render none.
MONITORED = [overlay for overlay in OVERLAYS if uses_monitoring(overlay)]


@pytest.fixture(scope="module", params=MONITORED)
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return monitored(request.param)


def test_the_prod_overlay_is_monitored() -> None:
    docs = monitored("prod")
    kinds = {d["kind"] for d in docs}

    assert "prod" in MONITORED
    assert {"ServiceMonitor", "PrometheusRule", "PodMonitor"} <= kinds
    assert len(dashboards(docs)) == 1


def test_the_overlays_with_alerts_are_those_taking_in_monitoring() -> None:
    with_alerts = [o for o in OVERLAYS if any(d["kind"] == "PrometheusRule" for d in render(o))]

    assert with_alerts == MONITORED


def test_alerts_and_dashboards_name_only_exported_metrics(docs: list[dict[str, Any]]) -> None:
    exprs = expressions(docs)
    boards = dashboards(docs)

    assert alert_rules(docs)
    assert boards
    assert all(panel_expressions(board) for board in boards)
    assert unknown_metrics(exprs, allowed_metrics(docs)) == {}


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section(
    docs: list[dict[str, Any]],
) -> None:
    readme = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    rules = alert_rules(docs)
    problems = []
    for rule in rules:
        name = rule["alert"]
        if rule.get("labels", {}).get("severity") not in {"warning", "critical"}:
            problems.append(f"{name}: severity is not warning or critical")
        if not rule.get("annotations", {}).get("summary"):
            problems.append(f"{name}: no summary")
        if rule["annotations"].get("runbook") != f"deploy/README.md#{name.lower()}":
            problems.append(f"{name}: runbook does not point at its README section")
        if f"\n### {name}\n" not in readme:
            problems.append(f"{name}: deploy/README.md has no '### {name}' section")
    assert rules
    assert problems == []


def test_the_alerts_cover_what_operators_asked_for() -> None:
    docs = monitored("prod")  # the overlay with Kafka's exporter, for consumer lag
    names = " ".join(metric for e in expressions(docs) for metric in metric_names(e))

    for wanted in (
        "kafka_consumergroup_lag",  # consumer lag
        "switchboard_notify_attempts_total",  # dead letters
        "switchboard_router_sla_breaches_total",  # SLA breaches
        "switchboard_ingest_outbox_backlog",  # outbox backlog
        "switchboard_ingest_http_requests_total",  # 5xx rate
    ):
        assert wanted in names


def test_the_check_catches_a_metric_the_code_does_not_export() -> None:
    exprs = [
        "sum(rate(switchboard_ingest_events_in_total[5m]))",
        "sum by (job) (rate(switchboard_ingest_http_errors_total[5m]))",
        "switchboard_router_queue_depth_total",
        "kafka_consumergroup_lag > 10",
    ]

    assert unknown_metrics(exprs, exported_metrics() | FROM_PROMETHEUS) == {
        exprs[1]: {"switchboard_ingest_http_errors_total"},
        exprs[2]: {"switchboard_router_queue_depth_total"},
        exprs[3]: {"kafka_consumergroup_lag"},
    }
    with pytest.raises(ValueError, match="unclosed"):
        metric_names("sum(rate(switchboard_ingest_events_in_total[5m])")


def test_the_exported_names_come_from_the_code() -> None:
    exported = exported_metrics()

    for service in SERVICES:
        assert f"switchboard_{service}_events_in_total" in exported
        assert f"switchboard_{service}_publish_lag_seconds_bucket" in exported
    assert {
        "switchboard_notify_open_breakers",
        "switchboard_router_oldest_wait_seconds",
        "switchboard_ingest_interactions_total",
        "switchboard_enrich_seconds_bucket",
    } <= exported
