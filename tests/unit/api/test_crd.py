"""The CRD is generated from the API models, is structural, and matches the chart's copy."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tokenplane_cli import app
from tokenplane_operator.api.crd import build_crd, crd_yaml

ROOT = Path(__file__).resolve().parents[3]
CHART_CRD = ROOT / "charts" / "tokenplane" / "crds" / "inferencedeployments.tokenplane.io.yaml"


def _nodes(node: dict[str, Any], path: str = ""):
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[]")


def _schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_chart_crd_matches_the_models() -> None:
    assert CHART_CRD.read_text() == crd_yaml(), "run `make crd` and commit the result"


def test_cli_prints_the_same_crd() -> None:
    result = CliRunner().invoke(app, ["crd"])
    assert result.exit_code == 0
    assert result.output == crd_yaml()


def test_names_and_subresources() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "inferencedeployments.tokenplane.io"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "InferenceDeployment",
        "inferencedeployments",
        ["infd"],
    )
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"VMSize", "Replicas", "Ready", "Age"} <= columns


def test_schema_is_structural() -> None:
    text = crd_yaml()
    assert "$ref" not in text and "anyOf" not in text and "allOf" not in text and "title:" not in text
    for path, node in _nodes(_schema()):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"untyped node {path}"
        assert node.get("type") != "null", path
        if node.get("type") == "object" and "properties" not in node and path != ".metadata":
            assert node.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in node, path


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    for path, node in _nodes(_schema()["properties"]["spec"], "spec"):
        if not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "spec.properties.engine.properties.extraArgs",
            {"type": "object", "additionalProperties": {"x-kubernetes-preserve-unknown-fields": True}},
        ),
        (
            "spec.properties.hardware.properties.migProfile",
            {"enum": ["MIG1g", "MIG2g", "MIG3g", "MIG4g", "MIG7g"]},
        ),
        ("spec.properties.model.properties.quantization", {"default": "none"}),
        (
            "spec.properties.engine.properties.gpuMemoryUtilization",
            {"exclusiveMinimum": True, "minimum": 0.0},
        ),
    ],
)
def test_schema_details(path: str, expected: dict[str, Any]) -> None:
    node = _schema()["properties"]
    for part in path.split("."):
        node = node[part]
    assert expected.items() <= node.items()


def test_status_keeps_kopf_bookkeeping() -> None:
    assert _schema()["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


def test_crd_validates_as_a_kubernetes_object() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(yaml.safe_load(crd_yaml()), "1.33", strict=True)
