"""`tokenplane validate` accepts every example and rejects mistakes with field-path messages."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.unit.api.cases import BASE, GOOD, MISTAKES, Case, with_
from tokenplane_cli import app
from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))


def _run(tmp_path: Path, body: dict[str, Any]) -> tuple[int, str]:
    path = tmp_path / "cr.yaml"
    path.write_text(yaml.safe_dump(body, allow_unicode=True))
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


# What a person cannot act on: Python class names, pydantic's own wording, bare regexes.
UNREADABLE = re.compile(r"instance of|[A-Z][a-z]+(Spec|Args)\b|\[type=|errors\.pydantic|\^\[|\]\*\$|\)\?\$")


@pytest.mark.parametrize("case", MISTAKES, ids=lambda c: c.id)
def test_mistakes_are_reported_with_their_field_path(tmp_path: Path, case: Case) -> None:
    code, output = _run(tmp_path, case.body)
    assert code == 1, output
    lines = [line.strip() for line in output.splitlines()]
    assert any(line.startswith(f"{case.path}: ") and case.fragment in line for line in lines), output
    assert "Traceback" not in output and "internal error" not in output
    assert not UNREADABLE.search(output), output


@pytest.mark.parametrize("name", GOOD)
def test_good_documents_are_valid(tmp_path: Path, name: str) -> None:
    code, output = _run(tmp_path, GOOD[name])
    assert code == 0, output


def test_all_problems_are_reported_at_once() -> None:
    body = with_("spec.model", {"source": "ftp://x", "maxModelLen": 0})
    body["spec"]["bogus"] = 1
    with pytest.raises(InvalidSpecError) as caught:
        parse_inference_deployment(body)
    assert {p.path for p in caught.value.problems} >= {"spec.model.maxModelLen", "spec.bogus"}


def test_multi_document_file_and_broken_yaml(tmp_path: Path) -> None:
    multi = tmp_path / "multi.yaml"
    multi.write_text(yaml.safe_dump(BASE) + "---\n" + yaml.safe_dump(with_("spec.scaling.maxReplicas", 0)))
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec:\n  model: [unclosed\n")
    result = CliRunner().invoke(app, ["validate", str(multi), str(broken), str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1
    assert "multi.yaml#0: m is valid" in result.output
    assert "multi.yaml#1" in result.output and "spec.scaling.maxReplicas" in result.output
    assert "broken.yaml:3:1: invalid YAML" in result.output or "broken.yaml:" in result.output
    assert "missing.yaml: cannot read" in result.output
    assert "Traceback" not in result.output


_LLAMA_8B_CONFIG = {
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
}


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_awq_gptq_need_a_local_checkpoint_quantized_that_way(tmp_path: Path, method: str) -> None:
    # vLLM reads the AWQ/GPTQ scales from the checkpoint: "Cannot find the config file for awq" on a plain one.
    plain, quantized = tmp_path / "plain", tmp_path / "quantized"
    for directory, config in (
        (plain, _LLAMA_8B_CONFIG),
        (quantized, {**_LLAMA_8B_CONFIG, "quantization_config": {"quant_method": method, "bits": 4}}),
    ):
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps(config))
    body = with_("spec.model.quantization", method, with_("spec.model.source", str(plain)))
    code, output = _run(tmp_path, body)
    assert code == 1 and f"spec.model.quantization: {method} loads weights already quantized" in output, output
    code, output = _run(tmp_path, with_("spec.model.source", str(quantized), body))
    assert code == 0, output
