"""CR -> ServingArgs: the mapping `tokenplane up` and the operator share."""

from pathlib import Path

import pytest
import yaml

from tokenplane_operator.api.validation import parse_inference_deployment
from tokenplane_operator.desired.serveconfig import (
    API_KEYS_DIR,
    BLOB_DOWNLOAD_DIR,
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
    ("uri", "path", "claim"),
    [
        ("hf://meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B", None),
        ("Qwen/Qwen3-8B", "Qwen/Qwen3-8B", None),
        ("pvc://models/llama/8b", "/models/pvc-models/llama/8b", "models"),
        # Azure Blob sources stay URIs: the replica downloads them (no CSI mount, no node identity).
        ("az://acct/weights/llama", "az://acct/weights/llama", None),
        ("https://acct.blob.core.windows.net/weights/x", "https://acct.blob.core.windows.net/weights/x", None),
        ("abfss://weights@acct.dfs.core.windows.net/x", "abfss://weights@acct.dfs.core.windows.net/x", None),
        ("/models/local", "/models/local", None),
    ],
)
def test_sources_resolve_to_what_serving_reads(uri: str, path: str, claim: str | None) -> None:
    resolved, needed = resolve_source(uri)
    assert resolved == path
    assert (needed.claim if needed else None) == claim


def test_lora_sources_mount_claims_once_and_download_blobs() -> None:
    deployment = _example("department-lora")
    assert [v.mount_path for v in source_volumes(deployment)] == ["/models/pvc-adapters"]
    args = build_serving_args(deployment)
    assert [(a.name, a.source) for a in args.lora.adapters] == [
        ("finance", "az://tokenplanemodels/adapters/finance"),
        ("legal", "az://tokenplanemodels/adapters/legal"),
        ("hr", "/models/pvc-adapters/hr"),
    ]
    assert args.model.source == "az://tokenplanemodels/base/llama-3.1-8b-instruct"
    assert args.download_dir == BLOB_DOWNLOAD_DIR
    assert args.auth.mode == "api_key" and args.auth.api_keys_dir == API_KEYS_DIR
    # Locally (`tokenplane up`) blobs go to the user's cache, not the pod's volume.
    assert build_serving_args(deployment, local=True).download_dir is None
    assert build_serving_args(_example("internal-copilot-mig")).download_dir is None


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


def _fraction(fraction: float, utilization: float | None = None):
    body = {
        "apiVersion": "tokenplane.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": "shared", "namespace": "ns"},
        "spec": {
            "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 4096},
            "hardware": {"vmSize": "Standard_NC24ads_A100_v4", "gpuFraction": fraction},
            "engine": {} if utilization is None else {"gpuMemoryUtilization": utilization},
        },
    }
    return parse_inference_deployment(body)


def _all_engines_start(engines: int, utilization: float, total_gib: float = 80.0, context_gib: float = 0.5) -> bool:
    """vLLM's startup check, engine after engine on one GPU (vllm/v1/worker/utils.py, `request_memory`).

    Each engine needs free memory >= utilization x total after its own CUDA context exists, then holds its
    budget plus that context (the budget is measured after the context, so does not count it).
    """
    used = 0.0
    for _ in range(engines):
        used += context_gib
        if total_gib - used < utilization * total_gib:
            return False
        used += utilization * total_gib
    return True


@pytest.mark.parametrize(
    ("fraction", "configured", "rendered"),
    [
        (0.3, None, 0.3),  # 3 engines: was 0.9 each, so the 2nd and 3rd failed vLLM's free-memory check
        (0.5, None, 0.45),
        (0.25, None, 0.225),
        (0.1, None, 0.09),  # 10 engines
        (0.5, 0.45, 0.45),  # already sized per engine, as vLLM's docs suggest: kept
        (0.3, 0.2, 0.2),
        (0.5, 0.95, 0.45),
        (0.6, None, 0.9),  # one engine per GPU: alone, it keeps the value
        (0.6, 0.95, 0.95),
    ],
)
def test_engines_sharing_a_gpu_split_its_memory_so_all_of_them_start(
    fraction: float, configured: float | None, rendered: float
) -> None:
    args = build_serving_args(_fraction(fraction, configured))
    assert args.accelerator.gpus_per_replica == fraction
    assert args.engine.gpu_memory_utilization == rendered
    engines = max(1, int(1 / fraction + 1e-9))
    assert _all_engines_start(engines, rendered)
    if engines > 1:
        assert not _all_engines_start(engines, configured or 0.9) or configured == rendered


def test_whole_gpus_keep_the_configured_utilization() -> None:
    assert build_serving_args(_example("customer-assistant-70b-fp8")).engine.gpu_memory_utilization == 0.92
