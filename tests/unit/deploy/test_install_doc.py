"""docs/install-aks.md stays true: its InferenceDeployment validates, its names are the ones the operator and the
chart use, its script flags exist, its --set keys are chart values."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.support.aks_script import dry_run
from tests.support.chart import render
from tokenplane_operator.api.validation import parse_inference_deployment
from tokenplane_operator.desired.naming import service_name

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "install-aks.md").read_text()


def test_the_first_deployment_validates_and_its_service_is_the_one_named() -> None:
    block = re.search(r"```yaml\n# first.yaml\n(.*?)```", DOC, re.S)
    assert block is not None
    deployment = parse_inference_deployment(yaml.safe_load(block[1]))
    assert f"svc/{service_name(deployment.name)} {deployment.spec.endpoint.port}:" in DOC
    assert f"{deployment.name}-api-keys" in DOC  # the Secret the apiKey mode reads by default


def test_the_script_lines_run_as_written() -> None:
    _, output = dry_run("--namespace", "tokenplane", "--vm-size", "Standard_NC24ads_A100_v4", "--nodes", "1")
    assert "system:serviceaccount:tokenplane:tokenplane-operator" in output


def test_every_set_in_the_doc_is_a_chart_value() -> None:
    defaults = yaml.safe_load((ROOT / "charts" / "tokenplane" / "values.yaml").read_text())
    for key in set(re.findall(r"--set ([a-zA-Z.]+)=", DOC)):
        node = defaults
        for part in key.split("."):
            assert part in node, f"--set {key}: not a chart value"
            node = node[part]
    assert render({"monitoring": {"podMonitor": {"enabled": True}, "alerts": {"enabled": True}}})
    assert "tokenplane-operator" in {o["metadata"]["name"] for o in render({}) if o["kind"] == "Deployment"}
