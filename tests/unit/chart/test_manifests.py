"""Every scenario (default values and charts/tokenplane/ci/*.yaml) renders with the real Helm engine, and every
object it renders validates: Kubernetes kinds against the schemas of a current release (kubernetes-validate),
custom resources against their published CRDs (the chart's own crds/, and the Prometheus Operator's under
tests/data/prometheus-operator/, vendored with its license)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chart import CHART, render
from tests.support.crd_schema import crd_validator

kubernetes_validate = pytest.importorskip("kubernetes_validate")

DATA = CHART.parents[1] / "tests" / "data"
CRDS = {
    "kopf.dev": CHART / "crds" / "kopfpeerings.kopf.dev.yaml",
    "tokenplane.io": CHART / "crds" / "inferencedeployments.tokenplane.io.yaml",
    "monitoring.coreos.com/PodMonitor": DATA / "prometheus-operator" / "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com/PrometheusRule": DATA / "prometheus-operator" / "monitoring.coreos.com_prometheusrules.yaml",
    "azmonitoring.coreos.com/PodMonitor": DATA / "azure-monitor" / "azmonitoring.coreos.com_podmonitors.yaml",
}
SCENARIOS = {"default": {}} | {p.stem: yaml.safe_load(p.read_text()) for p in sorted((CHART / "ci").glob("*.yaml"))}


def crd_for(obj: dict[str, Any]) -> Path | None:
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    crd = CRDS.get(f"{group}/{obj['kind']}") or CRDS.get(group)
    assert crd is not None or "." not in group or group.endswith(".k8s.io"), f"no CRD defines {group} {obj['kind']}"
    return crd


def validate(obj: dict[str, Any]) -> None:
    """Validate one object against its kind's schema; raises on any error."""
    crd = crd_for(obj)
    if crd is None:
        kubernetes_validate.validate(obj, "1.33", strict=True)
        return
    version = obj["apiVersion"].split("/")[1]
    errors = list(crd_validator(crd, obj["kind"], version).iter_errors(obj))
    assert not errors, [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_renders_objects_that_validate(scenario: str) -> None:
    objects = render(SCENARIOS[scenario])
    assert any(o["kind"] == "Deployment" for o in objects)
    for obj in objects:
        validate(obj)


def test_scenarios_cover_every_template() -> None:
    rendered_kinds = {o["kind"] for values in SCENARIOS.values() for o in render(values)}
    assert rendered_kinds >= {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ClusterKopfPeering",
        "KopfPeering",
        "ConfigMap",
        "PodMonitor",
        "PrometheusRule",
    }


def test_crd_validation_rejects_a_misplaced_field() -> None:
    values = SCENARIOS["monitoring-values"]
    monitor = next(o for o in render(values) if o["kind"] == "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["portNumbr"] = 8080
    with pytest.raises(AssertionError, match="portNumbr"):
        validate(monitor)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_strict_reports_nothing(scenario: str) -> None:
    import helm_python

    result = helm_python.lint(str(CHART), SCENARIOS[scenario], strict=True)
    assert result["errors"] == [] and result["messages"] == [], result


AZURE_MONITOR = {"monitoring": {"podMonitor": {"enabled": True, "apiVersion": "azmonitoring.coreos.com/v1"},
                                "operatorMonitor": {"enabled": True}}}  # fmt: skip


def test_azure_managed_prometheus_monitors_validate_against_its_crd() -> None:
    monitors = [o for o in render(AZURE_MONITOR) if o["kind"] == "PodMonitor"]
    assert len(monitors) == 2 and {o["apiVersion"] for o in monitors} == {"azmonitoring.coreos.com/v1"}
    for monitor in monitors:
        validate(monitor)


def test_alerts_with_azure_managed_prometheus_fail_with_the_reason() -> None:
    """Azure's add-on installs no PrometheusRule CRD (tests/data/azure-monitor/README.md): `kind: PrometheusRule` in
    azmonitoring.coreos.com/v1 would fail the install with "no matches for kind", after the CRDs went in."""
    import helm_python

    values = {"monitoring": AZURE_MONITOR["monitoring"] | {"alerts": {"enabled": True}}}
    with pytest.raises(helm_python.HelmError, match="has no PrometheusRule"):
        render(values)


def test_the_prometheus_rule_is_a_prometheus_operator_kind() -> None:
    values = {"monitoring": {"alerts": {"enabled": True}}}
    (rule,) = [o for o in render(values) if o["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    validate(rule)
