"""`tokenplane validate` accepts every example and rejects mistakes with field-path messages."""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tokenplane_cli import app
from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))

BASE: dict[str, Any] = {
    "apiVersion": "tokenplane.io/v1alpha1",
    "kind": "InferenceDeployment",
    "metadata": {"name": "m"},
    "spec": {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192},
        "hardware": {"vmSize": "Standard_NC40ads_H100_v5"},
        "scaling": {"minReplicas": 1, "maxReplicas": 2},
    },
}


def _with(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    node = body
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return body


def _run(tmp_path: Path, body: dict[str, Any]) -> tuple[int, str]:
    path = tmp_path / "cr.yaml"
    path.write_text(yaml.safe_dump(body))
    result = CliRunner().invoke(app, ["validate", str(path)])
    return result.exit_code, result.output


def test_examples_cover_the_seed_workloads() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {
        "local-tiny",
        "internal-copilot-mig",
        "customer-assistant-70b-fp8",
        "frontier-moe-qwen3-235b",
        "code-completion-speculative",
        "department-lora",
        "pd-disaggregation",
    } <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_validates(example: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(example)])
    assert result.exit_code == 0, result.output
    assert "is valid" in result.output


def test_base_is_valid(tmp_path: Path) -> None:
    assert _run(tmp_path, BASE)[0] == 0


MISTAKES = [
    (
        "min > max replicas",
        _with("spec.scaling", {"minReplicas": 3, "maxReplicas": 2}),
        "spec.scaling.minReplicas",
        "exceeds maxReplicas",
    ),
    (
        "MIG on a SKU without MIG",
        _with("spec.hardware", {"vmSize": "Standard_NV36ads_A10_v5", "migProfile": "MIG1g"}),
        "spec.hardware.migProfile",
        "does not support MIG",
    ),
    (
        "TP x PP != GPUs",
        _with("spec.engine", {"tensorParallelSize": 2, "pipelineParallelSize": 2}),
        "spec.hardware.gpusPerReplica",
        "must equal tensorParallelSize x pipelineParallelSize",
    ),
    ("unknown quantization", _with("spec.model.quantization", "int3"), "spec.model.quantization", "'int3'"),
    (
        "bad source URI",
        _with("spec.model.source", "ftp://models/llama"),
        "spec.model.source",
        "unsupported source",
    ),
    ("negative context", _with("spec.model.maxModelLen", -8), "spec.model.maxModelLen", "greater than 0"),
    (
        "unknown field with a hint",
        _with("spec.scaling.maxReplica", 3),
        "spec.scaling.maxReplica",
        "did you mean 'maxReplicas'",
    ),
    ("unknown top-level spec field", _with("spec.replicas", 3), "spec.replicas", "unknown field"),
    ("missing model", {**BASE, "spec": {"hardware": {"accelerator": "cpu"}}}, "spec.model", "required"),
    (
        "unknown VM size",
        _with("spec.hardware.vmSize", "Standard_D4s_v5"),
        "spec.hardware.vmSize",
        "not a GPU VM size",
    ),
    (
        "TP beyond one node",
        _with(
            "spec",
            {
                **BASE["spec"],
                "engine": {"tensorParallelSize": 2},
                "hardware": {"vmSize": "Standard_NC40ads_H100_v5", "gpusPerReplica": 2},
            },
        ),
        "spec.engine.tensorParallelSize",
        "exceeds the 1 GPU(s)",
    ),
    (
        "scale to zero not enabled",
        _with("spec.scaling", {"minReplicas": 0, "maxReplicas": 2}),
        "spec.scaling.minReplicas",
        "scaleToZero.enabled",
    ),
    (
        "MIG with several GPUs",
        _with(
            "spec.hardware",
            {"vmSize": "Standard_ND96isr_H100_v5", "migProfile": "MIG3g", "gpusPerReplica": 2},
        ),
        "spec.hardware.gpusPerReplica",
        "exactly one slice",
    ),
    (
        "CPU run with a VM size",
        _with("spec.hardware", {"accelerator": "cpu", "vmSize": "Standard_NC40ads_H100_v5"}),
        "spec.hardware.vmSize",
        "provisions no VM",
    ),
    ("wrong type", _with("spec.engine.maxNumSeqs", "many"), "spec.engine.maxNumSeqs", "valid integer"),
    (
        "draft model missing",
        _with("spec.engine.speculativeDecoding", {"method": "draftModel"}),
        "spec.engine.speculativeDecoding.draftModel",
        "needs a draftModel",
    ),
    (
        "duplicate LoRA names",
        _with("spec.lora.adapters", [{"name": "a", "source": "/a"}, {"name": "a", "source": "/b"}]),
        "spec.lora.adapters[1].name",
        "used twice",
    ),
    (
        "entra without tenant",
        _with("spec.endpoint.auth", {"mode": "entraId", "entraAudience": "api://x"}),
        "spec.endpoint.auth.entraTenantId",
        "needs entraTenantId",
    ),
    ("wrong kind", {**BASE, "kind": "Deployment"}, "kind", "expected InferenceDeployment"),
    (
        "bad MIG profile name",
        _with("spec.hardware.migProfile", "MIG5g"),
        "spec.hardware.migProfile",
        "'MIG5g'",
    ),
]


@pytest.mark.parametrize(("body", "path", "fragment"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_mistakes_are_reported_with_their_field_path(tmp_path: Path, body: dict, path: str, fragment: str) -> None:
    code, output = _run(tmp_path, body)
    assert code == 1
    lines = [line.strip() for line in output.splitlines()]
    assert any(line.startswith(f"{path}: ") and fragment in line for line in lines), output
    assert "Traceback" not in output


def test_all_problems_are_reported_at_once() -> None:
    body = _with("spec.model", {"source": "ftp://x", "maxModelLen": 0})
    body["spec"]["bogus"] = 1
    with pytest.raises(InvalidSpecError) as caught:
        parse_inference_deployment(body)
    assert {p.path for p in caught.value.problems} >= {"spec.model.maxModelLen", "spec.bogus"}


def test_multi_document_file_and_broken_yaml(tmp_path: Path) -> None:
    multi = tmp_path / "multi.yaml"
    multi.write_text(yaml.safe_dump(BASE) + "---\n" + yaml.safe_dump(_with("spec.scaling.maxReplicas", 0)))
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec:\n  model: [unclosed\n")
    result = CliRunner().invoke(app, ["validate", str(multi), str(broken), str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1
    assert "multi.yaml#0: m is valid" in result.output
    assert "multi.yaml#1" in result.output and "spec.scaling.maxReplicas" in result.output
    assert "broken.yaml:3:1: invalid YAML" in result.output or "broken.yaml:" in result.output
    assert "missing.yaml: cannot read" in result.output
    assert "Traceback" not in result.output
