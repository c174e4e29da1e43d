"""The Helm chart renders valid objects with the real Helm engine, and its schema is generated."""

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

helm_python = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from tokenplane_cli.chartschema import build_values_schema  # noqa: E402
from tokenplane_operator.main import operator_command  # noqa: E402
from tokenplane_operator.settings import OperatorSettings  # noqa: E402

CHART = Path(__file__).resolve().parents[3] / "charts" / "tokenplane"


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    rendered = helm_python.Chart.load(str(CHART)).render(values=values, name="tp", namespace="tokenplane")
    return [doc for path, text in rendered.items() if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]


def _kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind)


def test_values_schema_is_generated_from_values() -> None:
    committed = json.loads((CHART / "values.schema.json").read_text())
    assert committed == build_values_schema(CHART / "values.yaml"), "run `make chart-schema`"


def test_lint_has_no_errors() -> None:
    result = helm_python.lint(str(CHART), strict=True)
    assert result["errors"] == []
    assert all(m["severity"] <= 1 for m in result["messages"]), result["messages"]


def test_default_render_is_valid_kubernetes() -> None:
    objects = _render({})
    assert {o["kind"] for o in objects} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
    }
    for obj in objects:
        kubernetes_validate.validate(obj, "1.33", strict=True)
    container = _kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["operator", "--all-namespaces"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_workload_identity_and_namespaces() -> None:
    objects = _render(
        {
            "serviceAccount": {"azureClientId": "11111111-2222-3333-4444-555555555555"},
            "operator": {"watchNamespaces": ["ai", "support"]},
            "azure": {"subscriptionId": "sub", "resourceGroup": "rg", "clusterName": "aks"},
        }
    )
    account = _kind(objects, "ServiceAccount")
    assert account["metadata"]["annotations"]["azure.workload.identity/client-id"].startswith("1111")
    pod = _kind(objects, "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["spec"]["containers"][0]["args"] == ["operator", "--namespace=ai", "--namespace=support"]
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["TOKENPLANE_CLUSTER_NAME"] == "aks"


def test_rbac_covers_what_the_operator_touches() -> None:
    rules = _kind(_render({}), "ClusterRole")["rules"]
    granted = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert {
        ("tokenplane.io", "inferencedeployments/status"),
        ("ray.io", "rayservices"),
        ("networking.k8s.io", "networkpolicies"),
    } <= granted


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "additional properties 'replicaCount' not allowed"),
        ({"operator": {"pollIntervalSeconds": "often"}}, "pollIntervalSeconds"),
        ({"azure": {"subscriptionId": "sub"}}, "azure.resourceGroup is required"),
    ],
)
def test_bad_values_fail_the_install_early(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError) as caught:
        _render(values)
    assert message in str(caught.value)


def test_crd_ships_with_the_chart() -> None:
    assert (CHART / "crds" / "inferencedeployments.tokenplane.io.yaml").is_file()


def test_every_rendered_setting_is_one_the_operator_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = _render({"operator": {"pollIntervalSeconds": 45, "logLevel": "DEBUG", "healthPort": 9090}})
    container = _kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    fields = {f"TOKENPLANE_{name.upper()}" for name in OperatorSettings.model_fields}
    assert set(env) <= fields, f"the chart sets variables the operator ignores: {set(env) - fields}"
    for name in [n for n in os.environ if n.startswith("TOKENPLANE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    assert settings.poll_interval_s == 45 and settings.log_level == "DEBUG"
    assert settings.arm_endpoint is None, "an empty ARM endpoint must mean the public cloud"
    assert container["ports"][0]["containerPort"] == settings.health_port == 9090


def test_bad_operator_settings_fail_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENPLANE_POLL_INTERVAL_S", "-1")
    with pytest.raises(SystemExit) as exit_info:
        operator_command([], all_namespaces=True)
    assert "TOKENPLANE_POLL_INTERVAL_S: Input should be greater than 0" in str(exit_info.value)
