"""ServingArgs validation: the contract the operator writes and build_app re-reads."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tokenplane_serving.args import ServingArgs


def make(**overrides: Any) -> ServingArgs:
    body: dict[str, Any] = {"model": {"id": "tiny", "source": "/models/tiny"}, "accelerator": {"kind": "cpu"}}
    body.update(overrides)
    return ServingArgs.model_validate(body)


def test_minimal_cpu_defaults() -> None:
    args = make()
    assert args.app_name == "llm"
    assert args.accelerator.cpu_kv_cache_gib == 1  # filled for cpu
    assert args.routing.session_header == "x-session-id"
    assert args.effective_max_ongoing_requests == args.engine.max_num_seqs


def test_round_trip_through_serve_yaml_args() -> None:
    args = make(
        engine={"quantization": "int8", "speculative": {"method": "ngram", "prompt_lookup_max": 4}},
        scaling={"min_replicas": 0, "max_replicas": 3, "downscale_to_zero_delay_s": 300},
        routing={"policy": "prefix_affinity"},
    )
    dumped = args.to_serve_yaml_args()
    assert "revision" not in dumped["model"]  # exclude_none
    assert ServingArgs.model_validate(dumped) == args


def test_azure_blob_sources_pass_through_unchanged() -> None:
    args = make(
        model={"id": "m", "source": "az://acct/models/llama/", "tokenizer_source": "az://acct/models/tok"},
        lora={"adapters": [{"name": "a", "source": "abfss://loras@acct.dfs.core.windows.net/a"}]},
        engine={"speculative": {"method": "eagle", "model": "https://acct.blob.core.windows.net/heads/e"}},
    )
    assert args.model.source == "az://acct/models/llama/"
    assert args.lora.adapters[0].source == "abfss://loras@acct.dfs.core.windows.net/a"
    assert ServingArgs.model_validate(args.to_serve_yaml_args()) == args


def test_hf_prefix_is_stripped() -> None:
    assert make(model={"id": "m", "source": "hf://org/name"}).model.source == "org/name"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"unknown": 1}, "Extra inputs are not permitted"),
        ({"model": {"id": "m", "source": "pvc://claim/path"}}, "is not resolved"),
        ({"model": {"id": "m", "source": "az://Acct/models/p"}}, "invalid Azure Blob source"),
        ({"model": {"id": "m", "source": "https://acct.blob.core.windows.net/c/p"}}, "invalid Azure Blob source"),
        ({"model": {"id": "m", "source": "az://acct/models/../secrets"}}, "may not contain '..'"),
        ({"engine": {"speculative": {"method": "eagle", "model": "abfss://x@acct.dfs.core.windows.net/e"}}}, "invalid"),
        ({"lora": {"adapters": [{"name": "a", "source": "s3://b/a"}]}}, "must be an absolute directory or an Azure"),
        ({"lora": {"adapters": [{"name": "a", "source": "adapters/a"}]}}, "must be an absolute directory"),
        ({"download_dir": "cache"}, "String should match pattern"),
        ({"scaling": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas (3) exceeds max_replicas (2)"),
        ({"scaling": {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 5}}, "initial_replicas (5)"),
        ({"scaling": {"downscale_to_zero_delay_s": 10}}, "needs min_replicas 0"),
        ({"engine": {"tensor_parallel_size": 2}}, "must be 1 on kind 'cpu'"),
        ({"engine": {"gpu_memory_utilization": 0.9}}, "gpu_memory_utilization is for GPUs"),
        ({"accelerator": {"kind": "cpu", "accelerator_type": "A100"}}, "accelerator_type is for GPUs"),
        ({"accelerator": {"kind": "gpu", "cpu_kv_cache_gib": 2}}, "applies only when kind is 'cpu'"),
        ({"disaggregation": {"enabled": True}}, "disaggregation needs GPUs"),
        ({"engine": {"extra_engine_args": {"max_num_seqs": 3}}}, "may not set ['max_num_seqs']"),
        (
            {"engine": {"extra_engine_args": {"max_num_batched_tokens": "lots"}}},
            "extra_engine_args.max_num_batched_tokens: expected an integer, got 'lots'",
        ),
        ({"engine": {"extra_engine_args": {"api_key": "k"}}}, "'api_key' configures vLLM's own HTTP server"),
        ({"engine": {"extra_engine_args": {"data_parallel_size": 2}}}, "raise spec.scaling.maxReplicas"),
        ({"engine": {"speculative": {"method": "eagle"}}}, "needs `model`"),
        ({"engine": {"speculative": {"method": "mtp", "prompt_lookup_max": 3}}}, "applies only to"),
        ({"engine": {"quantization": "nf4"}}, "Input should be"),
        ({"lora": {"max_lora_rank": 12}}, "Input should be"),
        (
            {"lora": {"adapters": [{"name": "a", "source": "/a"}, {"name": "a", "source": "/b"}]}},
            "duplicate LoRA adapter names",
        ),
        ({"backpressure": {"status_code": 500}}, "Input should be 429 or 503"),
        ({"auth": {"mode": "api_key"}}, "needs api_keys_dir"),
        ({"auth": {"mode": "entra_id", "entra_tenant_id": "t"}}, "needs entra_tenant_id and entra_audience"),
        ({"engine": {"max_num_seqs": 4}, "scaling": {"target_ongoing_requests": 8}}, "exceeds max_ongoing"),
        ({"app_name": "Bad_Name"}, "String should match pattern"),
    ],
)
def test_rejects(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        make(**overrides)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("gpu", "engine", "message"),
    [
        ({"gpus_per_replica": 0.5}, {"tensor_parallel_size": 2}, "fractional gpus_per_replica"),
        ({"gpus_per_replica": 4}, {"tensor_parallel_size": 2}, "must equal tensor_parallel_size"),
    ],
)
def test_gpu_count_rules(gpu: dict[str, Any], engine: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make(accelerator={"kind": "gpu", **gpu}, engine=engine)


def test_every_field_is_documented() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, info in model.model_fields.items():  # type: ignore[attr-defined]
            if not info.description:
                missing.append(f"{model.__name__}.{name}")
            for arg in (*getattr(info.annotation, "__args__", ()), info.annotation):
                if isinstance(arg, type) and hasattr(arg, "model_fields"):
                    missing += walk(arg)
        return missing

    assert walk(ServingArgs) == []
