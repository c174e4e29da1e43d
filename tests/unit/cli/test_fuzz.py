# ruff: noqa: E501  (one mistake per line reads as a table)
"""Plausible mistakes a platform engineer types into YAML, through validate, render and plan: each is refused with
a field path and something to do, and none of the three commands prints a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenplane_cli import app

BASE = """\
apiVersion: tokenplane.io/v1alpha1
kind: InferenceDeployment
metadata:
  name: chat
  namespace: ai
spec:
  model:
    source: hf://meta-llama/Llama-3.1-8B-Instruct
    maxModelLen: 8192
  hardware:
    vmSize: Standard_NC40ads_H100_v5
  scaling:
    minReplicas: 1
    maxReplicas: 2
"""

# (what the engineer wrote: a replacement of one BASE line, or extra lines under spec), path, message fragment
MISTAKES = [
    ("    maxModelLen: 8k", "spec.model.maxModelLen", "expected an integer, got the string '8k'"),
    ("    maxModelLen: 8192.5", "spec.model.maxModelLen", "expected an integer"),
    ("    maxModelLen: '8192'", "spec.model.maxModelLen", "remove the quotes"),
    ("    maxModelLen: .inf", "spec.model.maxModelLen", "not a finite number"),
    ("    maxReplicas: 1e3", "spec.scaling.maxReplicas", "expected an integer"),
    ("    maxReplicas: ~", "spec.scaling.maxReplicas", "expected an integer, got null"),
    ("    source: https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct", "spec.model.source", "hf://ORG/NAME"),
    ("    source: s3://models/llama", "spec.model.source", "az://ACCOUNT/CONTAINER/PATH"),
    ("    source: meta-llama/Llama 3.1 8B", "spec.model.source", "hf://ORG/NAME"),
    ("    vmSize: NC40ads_H100_v5", "spec.hardware.vmSize", "an Azure VM size such as"),
    ("    vmSize: Standard_NC40ads_H100_v5 # 1 GPU", None, None),  # a YAML comment: valid
    ("    vmSize: Standard_NC6s_v3", "spec.hardware.vmSize", "not a GPU VM size tokenplane knows"),
    ("    vmSize: Standard_NC40ads_H100_v5\n    migProfile: 3g.47gb", "spec.hardware.migProfile", "'MIG1g'"),
    ("    vmSize: Standard_NC40ads_H100_v5\n    accelerator: GPU", "spec.hardware.accelerator", "'gpu' or 'cpu'"),
    ("    vmSize: Standard_NC40ads_H100_v5\n    gpuFraction: 50%", "spec.hardware.gpuFraction", "expected a number"),
    ("    vmSize: Standard_NC40ads_H100_v5\n    gpuFraction: 1.5", "spec.hardware.gpuFraction", "less than 1"),
    ("    vmSize: Standard_NC40ads_H100_v5\n    zones: [1, 2]", "spec.hardware.zones[0]", "'1', '2' or '3'"),
    ("    vmSize: Standard_NC40ads_H100_v5\n    spot: true", "spec.hardware.spot", "expected a mapping of fields"),
    ("    vmSize: Standard_NC40ads_H100_v5\n    gpus: 2", "spec.hardware.gpus", "did you mean 'gpusPerReplica'"),
    ("    maxModelLen: 8192\n    quantization: FP8", "spec.model.quantization", "'FP8' is not allowed"),
    ("    maxModelLen: 8192\n    dtype: bf16", "spec.model.dtype", "'bfloat16'"),
    ("    maxModelLen: 8192\n    servedName: My Chat Model", "spec.model.servedName", "no spaces"),
    ("    maxReplicas: 2\n    latencyTarget: {p95Milliseconds: 800ms}", "spec.scaling.latencyTarget.p95Milliseconds", "expected an integer"),
    ("    maxReplicas: 2\n    latencyTarget: {metric: p95, p95Milliseconds: 800}", "spec.scaling.latencyTarget.metric", "'ttft' or 'e2e'"),
    ("    maxReplicas: 2\n    schedule: [{start: '08:00', end: 18:00, minReplicas: 2}]", "spec.scaling.schedule[0].end", "YAML reads an unquoted 18:00 as 1080: write '18:00'"),
    ("    maxReplicas: 2\n    schedule: [{start: '8:00', end: '18:00', minReplicas: 2}]", "spec.scaling.schedule[0].start", "two-digit hours"),
    ("    maxReplicas: 2\n    schedule: [{days: Mon-Fri, start: '08:00', end: '18:00', minReplicas: 2}]", "spec.scaling.schedule[0].days", "a cron day-of-week field"),
    ("    maxReplicas: 2\n    scaleToZero: true", "spec.scaling.scaleToZero", "expected a mapping of fields"),
    ("    maxReplicas: 2\n  replicas: 3", "spec.replicas", "unknown field"),
    ("    maxReplicas: 2\n  routing: {policy: round-robin}", "spec.routing.policy", "'powerOfTwo'"),
    ("    maxReplicas: 2\n  endpoint: {visibility: public}", "spec.endpoint.visibility", "'cluster' or 'private'"),
    ("    maxReplicas: 2\n  endpoint: {auth: {mode: apikey}}", "spec.endpoint.auth.mode", "'apiKey'"),
    ("    maxReplicas: 2\n  endpoint: {auth: {mode: apiKey, apiKeySecretRef: my-keys}}", "spec.endpoint.auth.apiKeySecretRef", "expected a mapping of fields"),
    ("    maxReplicas: 2\n  endpoint: {allowedNamespaces: frontend}", "spec.endpoint.allowedNamespaces", "expected a list"),
    ("    maxReplicas: 2\n  engine: {tensorParallelSize: 2}", "spec.hardware.gpusPerReplica", "must equal tensorParallelSize x pipelineParallelSize"),
    ("    maxReplicas: 2\n  engine: {extraArgs: {max-model-len: 4096, max_model_len: 4096}}", "spec.engine.extraArgs", "spec.model.maxModelLen"),
    ("    maxReplicas: 2\n  engine: {extraArgs: [--enforce-eager]}", "spec.engine.extraArgs", "expected a mapping"),
    ("    maxReplicas: 2\n  engine: {gpuMemoryUtilization: 90}", "spec.engine.gpuMemoryUtilization", "less than or equal to 0.99"),
    ("    maxReplicas: 2\n  engine: {speculativeDecoding: {method: medusa}}", "spec.engine.speculativeDecoding.method", "'ngram'"),
    ("    maxReplicas: 2\n  lora: {adapters: [{name: sales}]}", "spec.lora.adapters[0].source", "required field is missing"),
    ("    maxReplicas: 2\n  lora: {adapters: {sales: /adapters/sales}}", "spec.lora.adapters", "expected a list"),
    ("  name: chat\n  labels: {team: ml platform}", "metadata.labels.team", "not a label value"),
    ("  name: Chat-Llama", "metadata.name", "lowercase letters"),
    ("  name: llama3.1-8b", "metadata.name", "DNS-1035"),
    ("  name: chat-llama-3-1-8b-instruct-for-the-customer-support-team", "metadata.name", "at most 47 fit"),
    ("  namespace: AI", "metadata.namespace", "not a namespace name"),
    ("kind: inferencedeployment", "kind", "expected InferenceDeployment"),
    ("apiVersion: tokenplane.io/v1", "apiVersion", "expected tokenplane.io/v1alpha1"),
    ("spec: {}", "spec.model", "required field is missing"),
]  # fmt: skip


def _write(tmp_path: Path, change: str) -> Path:
    first = change.split("\n", 1)[0]
    key = first.split(":", 1)[0] + ":"
    lines = BASE.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(key))
    if first.startswith("spec:"):
        lines = lines[:index]
    lines[index : index + 1] = change.split("\n")
    path = tmp_path / "cr.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("change", "where", "fragment"), MISTAKES, ids=[m[0].strip() for m in MISTAKES])
def test_plausible_mistakes(tmp_path: Path, change: str, where: str | None, fragment: str | None) -> None:
    path = _write(tmp_path, change)
    runner = CliRunner()
    validate = runner.invoke(app, ["validate", str(path)])
    outputs = [validate.output]
    for command in (["render", str(path), "--out", str(tmp_path / "out")], ["plan", str(path)]):
        result = runner.invoke(app, command)
        assert (result.exit_code in (0, 1) and result.exception is None) or isinstance(result.exception, SystemExit)
        outputs.append(result.output)
    for output in outputs:
        assert "Traceback" not in output and "internal error" not in output, output
    if where is None:
        assert validate.exit_code == 0, validate.output
        return
    assert validate.exit_code == 1
    lines = [line.strip() for line in validate.output.splitlines()]
    assert any(line.startswith(f"{where}: ") and fragment in line for line in lines), validate.output
