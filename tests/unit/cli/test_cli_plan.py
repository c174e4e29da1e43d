"""`tokenplane plan`: table and JSON output, exit codes, plain messages for impossible requests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.unit.api.cases import GOOD, MISTAKES, Case
from tokenplane_cli.plan import plan_command

REPO = Path(__file__).resolve().parents[3]


def run(capsys: pytest.CaptureFixture[str], **kwargs: object) -> tuple[int, str]:
    args: dict[str, object] = {
        "file": None,
        "model_config": None,
        "model": None,
        "max_model_len": None,
        "concurrency": 1,
        "quantization": None,
        "vm_size": None,
        "output": "table",
        "explain": False,
    }
    args.update(kwargs)
    code = plan_command(**args)  # type: ignore[arg-type]
    return code, capsys.readouterr().out


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, model="llama-3.1-8b", max_model_len=8192, concurrency=8, output="json")
    assert code == 0
    data = json.loads(out)
    assert data["fits"] is True and data["kvBytesPerToken"] == 131072
    assert data["estimates"]["usdPerMillionOutputTokens"] > 0


def test_table_output_with_explain(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(
        capsys,
        model="llama-3.1-8b",
        max_model_len=8192,
        concurrency=8,
        vm_size="Standard_NC40ads_H100_v5",
        explain=True,
    )
    assert code == 0
    assert "MIG" in out and "formulas" in out and "roofline" in out


LLAMA_8B_CONFIG = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
}


def test_model_config_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_8B_CONFIG))
    code, out = run(capsys, model_config=tmp_path, max_model_len=8192, output="json")
    assert code == 0 and json.loads(out)["kvBytesPerSequence"] == 1 << 30


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"model": "acme/nonexistent"}, "UnknownModel"),
        ({"model": "llama-3-8b", "max_model_len": 65536}, "ContextTooLong"),
        (
            {
                "model": "llama-3.1-405b",
                "quantization": "bf16",
                "max_model_len": 8192,
                "vm_size": "Standard_NC4as_T4_v3",
            },
            None,
        ),
        ({"model": "llama-3.1-8b", "quantization": "fp3"}, "InvalidWorkload"),
    ],
)
def test_impossible_requests_exit_1_without_traceback(
    capsys: pytest.CaptureFixture[str], kwargs: dict[str, object], reason: str | None
) -> None:
    code, out = run(capsys, **kwargs)
    assert code == 1
    assert "Traceback" not in out
    if reason:
        assert reason in out


@pytest.mark.parametrize("vm_size", [None, "Standard_NC24ads_A100_v4"])
def test_a_load_beyond_one_node_pool_does_not_fit(capsys: pytest.CaptureFixture[str], vm_size: str | None) -> None:
    # 10^8 concurrent sequences need millions of VMs: a pydantic error from the agent pool's maxCount before.
    code, out = run(capsys, model="llama-3.1-8b", concurrency=100_000_000, vm_size=vm_size, output="json")
    doc = json.loads(out)
    message = doc["error"]["message"] if vm_size is None else doc["reasons"][-1]
    assert code == 1 and "above the 1,000 an AKS node pool holds" in message, out
    assert vm_size is None or doc["fits"] is False


def test_malformed_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{oops")
    code, out = run(capsys, model_config=tmp_path, output="json")
    assert code == 1 and json.loads(out)["error"]["reason"] == "InvalidModelConfig"


def test_cr_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cr = tmp_path / "cr.yaml"
    cr.write_text(
        "apiVersion: tokenplane.io/v1alpha1\nkind: InferenceDeployment\nmetadata: {name: copilot}\n"
        "spec:\n  model: {source: 'hf://meta-llama/Llama-3.1-8B-Instruct', maxModelLen: 8192}\n"
        "  hardware: {vmSize: Standard_NC40ads_H100_v5, migProfile: MIG3g}\n"
    )
    code, out = run(capsys, file=cr, concurrency=8, output="json")
    data = json.loads(out)
    assert code == 0, out
    assert data["migProfile"] == "MIG3g" and data["vmSize"] == "Standard_NC40ads_H100_v5"


def test_cr_file_with_a_set_vm_size_is_planned_as_rendered(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The operator renders a set vmSize as written: one whole GPU a replica. The plan showed a MIG 3g slice of the
    # A100 (33.5 GiB, 47 tok/s) for the first, and TP 2 for the second, which would not fit its one GPU.
    cr = tmp_path / "cr.yaml"
    body = yaml.safe_load(
        "apiVersion: tokenplane.io/v1alpha1\nkind: InferenceDeployment\nmetadata: {name: a}\nspec:\n"
        "  model: {source: 'hf://meta-llama/Llama-3.1-8B-Instruct', maxModelLen: 8192}\n"
        "  hardware: {vmSize: Standard_NC24ads_A100_v4}\n"
    )
    cr.write_text(yaml.safe_dump(body))
    code, out = run(capsys, file=cr, output="json")
    data = json.loads(out)
    assert code == 0, out
    assert data["migProfile"] is None and data["gpusPerReplica"] == 1 and data["capacityBytesPerReplica"] > 70 * 2**30
    body["spec"]["model"]["source"] = "hf://meta-llama/Llama-3.1-70B-Instruct"
    body["spec"]["hardware"]["vmSize"] = "Standard_NC96ads_A100_v4"
    cr.write_text(yaml.safe_dump(body))
    code, out = run(capsys, file=cr, output="json")
    data = json.loads(out)
    assert code == 1 and data["fits"] is False and data["tensorParallelSize"] == 1, out


def test_cr_file_for_a_model_plan_cannot_know(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cr = tmp_path / "cr.yaml"
    cr.write_text(
        "apiVersion: tokenplane.io/v1alpha1\nkind: InferenceDeployment\nmetadata: {name: x}\n"
        "spec:\n  model: {source: 'hf://acme/secret-model'}\n"
    )
    code, out = run(capsys, file=cr)
    assert code == 1 and "UnknownModel" in out


def test_cr_file_on_a_pvc_plans_with_its_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The planner cannot open a PVC from here: the model's config.json stands in for it, as the error suggests.
    cr = Path(__file__).parents[3] / "deploy" / "examples" / "byo-nodes.yaml"
    code, out = run(capsys, file=cr, output="json")
    assert code == 1 and "UnknownModel" in out and "--model-config" in out
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_8B_CONFIG))
    code, out = run(capsys, file=cr, model_config=tmp_path, output="json")
    assert code == 0, out
    assert json.loads(out)["kvBytesPerToken"] == 131072  # the config's model, not a guess from the name
    code, out = run(capsys, file=cr, model="llama-3.1-8b", model_config=tmp_path, output="json")
    assert code == 1 and "not both" in out


def test_flags_a_cr_file_sets_itself_are_refused_not_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    cr = Path(__file__).parents[3] / "deploy" / "examples" / "local-tiny.yaml"
    code, out = run(capsys, file=cr, max_model_len=4096, quantization="fp8", output="json")
    message = json.loads(out)["error"]["message"]
    assert code == 1 and "--max-model-len and --quantization" in message and "spec.model.maxModelLen" in message


# The pinned node bounds `tokenplane validate` refuses though the planner sizes them (it ignores nodePool).
PINNED = [case for case in MISTAKES if "maxNodes" in case.id or "minNodes" in case.id]


@pytest.mark.parametrize("case", PINNED, ids=lambda case: case.id)
def test_cr_file_validate_refuses_still_plans_but_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: Case
) -> None:
    cr = tmp_path / "cr.yaml"
    cr.write_text(yaml.safe_dump(case.body))
    code, out = run(capsys, file=cr)
    assert code == 1, out
    assert "fits" in out and "why" in out  # the sizing answer is still printed
    assert f"\n    {case.path}: " in out and case.fragment in out  # validate's problem line
    assert "`tokenplane validate` refuses it" in out
    code, out = run(capsys, file=cr, output="json")
    data = json.loads(out)
    assert code == 1
    assert data["fits"] is True and data["vmSize"] == case.body["spec"]["hardware"]["vmSize"]  # keys kept
    assert data["error"]["reason"] == "InvalidWorkload" and data["error"]["field"] == case.path
    assert case.fragment in data["error"]["message"]


def test_cr_file_the_schema_refuses_names_its_field_in_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Nothing to plan, but the error keeps the documented {reason, field, message} shape.
    case = next(case for case in MISTAKES if case.id == "min > max replicas")
    cr = tmp_path / "cr.yaml"
    cr.write_text(yaml.safe_dump(case.body))
    code, out = run(capsys, file=cr, output="json")
    assert code == 1
    error = json.loads(out)["error"]
    assert error["reason"] == "InvalidWorkload" and error["field"] == case.path
    assert case.fragment in error["message"]


def test_cr_file_refused_as_written_whatever_vm_size_plans(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The pool is rendered from the CR's own vmSize, as validate and the operator render it: the file is refused.
    case = next(case for case in MISTAKES if case.id == "MIG replicas beyond maxNodes")
    cr = tmp_path / "cr.yaml"
    cr.write_text(yaml.safe_dump(case.body))
    code, out = run(capsys, file=cr, vm_size="Standard_ND96isr_H100_v5")
    assert code == 1, out
    assert "on its own vmSize Standard_NC40ads_H100_v5, not --vm-size Standard_ND96isr_H100_v5" in out
    assert "spec.scaling.maxReplicas: 12 replicas need 6 nodes" in out
    # The fix the message names (maxReplicas 4) deploys: exit 0, no error.
    cr.write_text(yaml.safe_dump(GOOD["MIG replicas filling maxNodes exactly"]))
    code, out = run(capsys, file=cr, output="json")
    assert code == 0 and "error" not in json.loads(out), out


def test_a_value_that_looks_like_markup_is_shown_as_written(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Rich read '[/b]' as a closing tag, and the field's error became "internal error (closing tag ...)".
    cr = yaml.safe_load((REPO / "deploy/examples/local-tiny.yaml").read_text())
    cr["spec"]["scaling"]["maxReplicas"] = "[/b]"
    (tmp_path / "cr.yaml").write_text(yaml.safe_dump(cr))
    code, out = run(capsys, file=tmp_path / "cr.yaml")
    assert code == 1
    assert "spec.scaling.maxReplicas: expected an integer, got the string '[/b]'" in out


# The tiny model `tokenplane model tiny` writes (tokenplane_serving.tinymodel defaults), as its config.json reads.
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "intermediate_size": 688,
    "vocab_size": 2048,
    "max_position_embeddings": 4096,
    "torch_dtype": "bfloat16",
}


@pytest.mark.parametrize("example", sorted((REPO / "deploy/examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_plans_or_says_in_one_line_what_to_pass(
    example: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # byo-nodes (a PVC) and local-tiny away from the repo said only "not a built-in model and not a local path".
    monkeypatch.chdir(tmp_path)  # away from the repo's models/, as an engineer with only the example would be
    code, out = run(capsys, file=example)
    if code == 0:
        return
    assert code == 1 and out.count("\n") == 1, out
    assert out.startswith("cannot plan (UnknownModel): spec.model.source ") and "--model-config" in out, out
    guess = re.search(r"did you mean --model (\S+)\?", out)
    if guess:
        code, out = run(capsys, file=example, model=guess[1])
    else:
        (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
        code, out = run(capsys, file=example, model_config=tmp_path)
    assert code == 0, out


@pytest.mark.parametrize("case", [case for case in MISTAKES if case.who == "CLI"], ids=lambda case: case.id)
def test_plan_file_exits_1_on_every_cr_validate_refuses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: Case
) -> None:
    # A T4 CR with dtype bfloat16 planned "fits" and exit 0 while validate refused it (the catalog checks ran only
    # in validate); a platform engineer scripting plan took it as deployable.
    cr = tmp_path / "cr.yaml"
    cr.write_text(yaml.safe_dump(case.body))
    code, out = run(capsys, file=cr, output="json")
    assert code == 1, out
    data = json.loads(out)
    if data.get("fits", False):  # sized, but not deployable as written: validate's own problem is the error
        assert data["error"]["field"] == case.path and case.fragment in data["error"]["message"], out


def test_a_cpu_cr_is_told_it_provisions_no_gpu_vm(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The plan of local-tiny recommended an A10 VM at $3.20/h with no word that the CR itself runs on CPU.
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    code, out = run(capsys, file=REPO / "deploy/examples/local-tiny.yaml", model_config=tmp_path, output="json")
    assert code == 0 and "accelerator is cpu: this CR runs on CPU and provisions no GPU VM" in json.loads(out)["note"]
    code, out = run(capsys, file=REPO / "deploy/examples/local-tiny.yaml", model_config=tmp_path)
    assert code == 0 and "\nnote: spec.hardware.accelerator is cpu" in out
    gpu = yaml.safe_load((REPO / "deploy/examples/local-tiny.yaml").read_text())
    gpu["spec"]["hardware"] = {"accelerator": "gpu"}
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(gpu))
    code, out = run(capsys, file=tmp_path / "gpu.yaml", model_config=tmp_path, output="json")
    assert code == 0 and "note" not in json.loads(out)
