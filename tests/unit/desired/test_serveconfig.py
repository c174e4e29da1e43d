"""CR -> ServingArgs: the mapping `tokenplane up` and the operator share."""

from pathlib import Path

import pytest
import yaml

from tokenplane_operator.api.validation import parse_inference_deployment
from tokenplane_operator.desired.serveconfig import (
    API_KEYS_DIR,
    build_serving_args,
    resolve_source,
    source_volumes,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "examples"


def _example(name: str):
    return parse_inference_deployment(yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()))


@pytest.mark.parametrize("example", sorted(p.stem for p in EXAMPLES.glob("*.yaml")))
def test_every_example_maps_to_valid_serving_args(example: str) -> None:
    args = build_serving_args(_example(example))
    assert args.model.id
    assert args.scaling.max_replicas >= 1


def test_local_tiny_runs_on_cpu_from_an_absolute_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    args = build_serving_args(_example("local-tiny"), local=True)
    assert args.accelerator.kind == "cpu" and args.accelerator.cpu_kv_cache_gib == 1
    assert args.model.source == str(tmp_path / "models" / "tiny")
    assert args.model.id == "tiny" and args.auth.mode == "none"
    assert args.engine.gpu_memory_utilization is None


@pytest.mark.parametrize(
    ("uri", "path", "volume"),
    [
        ("hf://meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B", None),
        ("Qwen/Qwen3-8B", "Qwen/Qwen3-8B", None),
        ("pvc://models/llama/8b", "/models/pvc-models/llama/8b", ("pvc", "models")),
        ("az://acct/weights/llama", "/models/blob-acct-weights/llama", ("blob", "acct/weights")),
        (
            "https://acct.blob.core.windows.net/weights/x",
            "/models/blob-acct-weights/x",
            ("blob", "acct/weights"),
        ),
        ("/models/local", "/models/local", None),
    ],
)
def test_sources_resolve_to_what_vllm_reads(uri: str, path: str, volume: tuple[str, str] | None) -> None:
    resolved, needed = resolve_source(uri)
    assert resolved == path
    assert (needed.kind, needed.name) == volume if volume else needed is None


def test_lora_sources_need_their_volumes_once() -> None:
    volumes = source_volumes(_example("department-lora"))
    assert [v.mount_path for v in volumes] == [
        "/models/blob-tokenplanemodels-base",
        "/models/blob-tokenplanemodels-adapters",
        "/models/pvc-adapters",
    ]
    args = build_serving_args(_example("department-lora"))
    assert [a.name for a in args.lora.adapters] == ["finance", "legal", "hr"]
    assert args.auth.mode == "api_key" and args.auth.api_keys_dir == API_KEYS_DIR


def test_scale_to_zero_and_parallelism() -> None:
    args = build_serving_args(_example("frontier-moe-qwen3-235b"))
    assert args.scaling.min_replicas == 0 and args.scaling.downscale_to_zero_delay_s == 1800
    assert args.engine.tensor_parallel_size == 8 and args.engine.quantization == "fp8"
    assert args.engine.extra_engine_args == {"enable_expert_parallel": True}


def test_routing_latency_and_speculation() -> None:
    copilot = build_serving_args(_example("internal-copilot-mig"))
    assert copilot.routing.policy == "prefix_affinity"
    assert copilot.scaling.latency_target is not None and copilot.scaling.latency_target.p95_ms == 800
    assert copilot.auth.mode == "entra_id" and copilot.accelerator.gpus_per_replica == 1
    code = build_serving_args(_example("code-completion-speculative"))
    assert code.engine.speculative is not None and code.engine.speculative.method == "ngram"
    assistant = build_serving_args(_example("customer-assistant-70b-fp8"))
    assert assistant.routing.policy == "session_affinity"
    assert assistant.routing.session_header == "x-conversation-id"
