"""Recommendations: the seeds' workload classes, the priority order, the JSON contract, impossible requests."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenplane_operator.api.validation import parse_inference_deployment
from tokenplane_operator.desired.serveconfig import build_serving_args
from tokenplane_operator.plan.catalog import find_sku
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_operator.plan.memory import compute_memory
from tokenplane_operator.plan.modelinfo import ModelInfo, find_builtin_model
from tokenplane_operator.plan.precision import Precision
from tokenplane_operator.plan.sizing import Plan, Workload, plan_for_sku, recommend
from tokenplane_operator.plan.spec import workload_from_spec
from tokenplane_serving.mapping import build_llm_config


def model(name: str) -> ModelInfo:
    info = find_builtin_model(name)
    assert info is not None
    return info


CONTRACT_KEYS = {
    "weightsBytes",
    "kvBytesPerToken",
    "kvBytesPerSequence",
    "totalBytesPerReplica",
    "fits",
    "vmSize",
    "gpusPerReplica",
    "migProfile",
    "tensorParallelSize",
    "pipelineParallelSize",
    "replicas",
    "reasons",
    "estimates",
}


def test_json_contract_keys() -> None:
    data = recommend(Workload(model("llama-3.1-8b"), max_model_len=8192, concurrency=8)).model_dump(by_alias=True)
    assert set(data) >= CONTRACT_KEYS
    assert {"decodeTokensPerSecondPerReplica", "tokensPerGpuHour", "usdPerMillionOutputTokens"} <= set(
        data["estimates"]
    )
    assert isinstance(data["reasons"], list) and all(isinstance(r, str) for r in data["reasons"])


def test_internal_copilot_8b_lands_on_a_mig_slice() -> None:
    plan = recommend(
        Workload(model("llama-3.1-8b"), max_model_len=8192, concurrency=8, vm_size="Standard_NC40ads_H100_v5")
    )
    assert plan.fits and plan.mig_profile is not None
    assert plan.tensor_parallel_size == 1 and plan.quantization == "bf16"
    assert plan.resource_name.startswith("nvidia.com/mig-")


def test_70b_fp8_single_user_fits_one_80gb_class_gpu() -> None:
    # Seed 001: FP8 "can make single-GPU deployment feasible on an 80GB GPU for low-concurrency" workloads.
    plan = recommend(Workload(model("llama-3.1-70b"), max_model_len=4096, concurrency=1, quantization=Precision.FP8))
    assert plan.fits and plan.gpus_per_replica == 1 and plan.tensor_parallel_size == 1


def test_quantize_before_sharding_in_auto_mode() -> None:
    plan = recommend(Workload(model("llama-3.1-70b"), max_model_len=4096, concurrency=1))
    assert plan.quantization == "fp8" and plan.tensor_parallel_size == 1
    assert any("quantize before sharding" in r for r in plan.reasons)


def test_native_precision_kept_when_it_fits() -> None:
    assert recommend(Workload(model("llama-3.1-8b"), max_model_len=8192)).quantization == "bf16"


def test_moe_235b_shards_within_one_vm() -> None:
    plan = recommend(Workload(model("qwen3-235b-a22b"), max_model_len=32768, concurrency=16))
    assert plan.fits and plan.tensor_parallel_size > 1 and plan.pipeline_parallel_size == 1


def test_pipeline_parallel_only_when_one_vm_is_not_enough() -> None:
    plan = recommend(Workload(model("llama-3.1-405b"), max_model_len=8192, concurrency=1, quantization="native"))
    assert plan.pipeline_parallel_size == 1  # bf16 405B fits 8 x H200 in one VM
    big = recommend(
        Workload(model("llama-3.1-405b"), max_model_len=8192, quantization="native", vm_size="Standard_ND96isr_H100_v5")
    )
    assert big.pipeline_parallel_size == 2 and big.tensor_parallel_size == 8 and big.nodes_per_replica == 2


def test_for_a_given_sku_the_largest_concurrency_and_context() -> None:
    plan = plan_for_sku(Workload(model("llama-3.1-8b"), max_model_len=8192, concurrency=1), "Standard_NC24ads_A100_v4")
    assert plan.max_sequences_per_replica >= 1
    assert plan.max_model_len_at_concurrency >= 8192


def test_plan_for_sku_that_cannot_hold_the_model_says_no() -> None:
    plan = plan_for_sku(Workload(model("llama-3.1-70b"), max_model_len=8192), "Standard_NC4as_T4_v3")
    assert not plan.fits and plan.estimates is None
    assert "Does not fit" in plan.reasons[0]


@pytest.mark.parametrize(
    ("fixed", "vm_size", "message"),
    [
        ({"mig_profile": "MIG3g"}, "Standard_NV36ads_A10_v5", "MIG3g: Standard_NV36ads_A10_v5 offers no MIG"),
        (
            {"gpus_per_replica": 4, "tensor_parallel_size": 4},
            "Standard_NC24ads_A100_v4",
            "gpusPerReplica 4, tensorParallelSize 4 do not fit Standard_NC24ads_A100_v4's 1 GPU(s)",
        ),
    ],
)
def test_fixed_fields_no_placement_on_a_size_honours_are_named(
    fixed: dict[str, object], vm_size: str, message: str
) -> None:
    # `simulate -f CR --vm-size` and `plan CR --vm-size` said only "matches the fixed fields" before.
    with pytest.raises(PlanError, match=re.escape(message)):
        plan_for_sku(Workload(model("llama-3.1-8b"), max_model_len=8192, **fixed), vm_size)  # type: ignore[arg-type]


def test_estimates_move_with_batch_size() -> None:
    plan = recommend(
        Workload(model("llama-3.1-8b"), max_model_len=8192, concurrency=32, vm_size="Standard_NC24ads_A100_v4")
    )
    assert plan.estimates is not None
    points = plan.estimates.by_batch_size
    rates = [p.decode_tokens_per_second_per_replica for p in points]
    latencies = [p.inter_token_latency_ms for p in points]
    assert rates == sorted(rates) and latencies == sorted(latencies)
    costs = [p.usd_per_million_output_tokens or 0.0 for p in points]
    assert costs == sorted(costs, reverse=True)  # batching makes tokens cheaper


@pytest.mark.parametrize(
    ("workload", "reason"),
    [
        (
            lambda: Workload(
                model("llama-3.1-405b"),
                max_model_len=131072,
                concurrency=1,
                max_replicas=1,
                quantization="native",
                vm_size="Standard_NC4as_T4_v3",
            ),
            PlanErrorReason.DOES_NOT_FIT,
        ),
        (lambda: Workload(model("llama-3-8b"), max_model_len=32768), PlanErrorReason.CONTEXT_TOO_LONG),
        (lambda: Workload(model("llama-3.1-8b"), concurrency=0), PlanErrorReason.INVALID_WORKLOAD),
        (lambda: Workload(model("llama-3.1-8b"), vm_size="Standard_D4s_v5"), PlanErrorReason.UNKNOWN_VM_SIZE),
        (lambda: Workload(model("deepseek-v3"), quantization=Precision.BF16), PlanErrorReason.INVALID_WORKLOAD),
    ],
)
def test_impossible_requests_raise_plan_error_with_reason(workload, reason: PlanErrorReason) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PlanError) as err:
        recommend(workload())
    assert err.value.reason is reason
    assert isinstance(err.value, ValueError) and err.value.message


def test_a_model_that_fits_no_catalog_sku() -> None:
    huge = model("deepseek-v3")
    with pytest.raises(PlanError) as err:
        recommend(Workload(huge, max_model_len=163840, concurrency=4096, max_replicas=1))
    assert err.value.reason is PlanErrorReason.DOES_NOT_FIT
    assert "closest" in err.value.message


def _replica_fits(plan: Plan, workload: Workload) -> bool:
    sku = find_sku(plan.vm_size)
    assert sku is not None
    device = sku.mig_profiles[plan.mig_profile].memory_gib * (1 << 30) if plan.mig_profile else sku.gpu_memory_bytes
    mem = compute_memory(
        workload.model,
        precision=Precision(plan.quantization),
        kv_dtype_bytes=workload.kv_dtype_bytes(Precision(plan.quantization)),
        max_model_len=plan.max_model_len,
        sequences=plan.sequences_per_replica,
        device_memory_bytes=int(device),
        gpu_memory_utilization=workload.gpu_memory_utilization,
        tp=plan.tensor_parallel_size,
        pp=plan.pipeline_parallel_size,
    )
    return mem.fits and plan.replicas * plan.sequences_per_replica >= workload.concurrency


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["llama-3.1-8b", "llama-3.1-70b", "qwen3-30b-a3b", "mixtral-8x22b", "gemma-2-9b", "phi-4"]),
    ctx=st.sampled_from([1024, 4096, 8192]),
    concurrency=st.integers(1, 128),
    quantization=st.sampled_from(["auto", "native", Precision.FP8, Precision.INT4]),
)
def test_a_recommendation_always_fits_by_the_planners_own_model(
    name: str, ctx: int, concurrency: int, quantization: Precision | str
) -> None:
    workload = Workload(model(name), max_model_len=ctx, concurrency=concurrency, quantization=quantization)  # type: ignore[arg-type]
    try:
        plan = recommend(workload)
    except PlanError as err:
        assert err.reason is PlanErrorReason.DOES_NOT_FIT
        return
    assert plan.fits and _replica_fits(plan, workload)
    assert plan.total_bytes_per_replica <= plan.capacity_bytes_per_replica


def test_auto_never_picks_a_gpu_without_bf16_for_an_explicit_bfloat16() -> None:
    # vLLM refuses dtype bfloat16 below compute capability 8.0; dtype auto serves gemma in float32 there.
    gemma = model("gemma-2-2b")
    assert find_sku(recommend(Workload(gemma, max_model_len=2048)).vm_size).gpu_model == "T4-16GB"  # type: ignore[union-attr]
    plan = recommend(Workload(gemma, max_model_len=2048, dtype="bfloat16"))
    assert find_sku(plan.vm_size).bf16  # type: ignore[union-attr]
    assert any("T4-16GB has no bfloat16" in r and "Standard_NC4as_T4_v3" in r for r in plan.reasons)


@pytest.mark.parametrize(
    ("name", "dtype", "vm_size", "served"),
    [
        # vLLM refuses float16 for gemma2 and no T4 has bfloat16: auto resolves to float32 there.
        ("gemma-2-2b", "auto", "Standard_NC4as_T4_v3", Precision.FP32),
        ("gemma-2-9b", "auto", "Standard_NC64as_T4_v3", Precision.FP32),
        ("gemma-2-2b", "auto", "Standard_NC24ads_A100_v4", Precision.BF16),
        ("gemma-2-2b", "float32", "Standard_NC24ads_A100_v4", Precision.FP32),
        ("llama-3.1-8b", "auto", "Standard_NC16as_T4_v3", Precision.BF16),  # served in float16: the same bytes
    ],
)
def test_weights_and_kv_are_sized_at_the_dtype_vllm_serves(name: str, dtype: str, vm_size: str, served: str) -> None:
    # Sized at 16 bits before: gemma-2-2b on a T4 planned 4.9 GiB of weights and 106 KB/token of KV where vLLM
    # loads 9.7 GiB and caches 213 KB/token.
    info = model(name)
    workload = Workload(info, max_model_len=2048, dtype=dtype, quantization="native")  # type: ignore[arg-type]
    plan = plan_for_sku(workload, vm_size)
    sixteen_bit = plan_for_sku(Workload(info, max_model_len=2048, dtype="bfloat16"), "Standard_NC24ads_A100_v4")
    assert plan.quantization == served
    ratio = 2 if served is Precision.FP32 else 1
    assert plan.weights_bytes == pytest.approx(ratio * info.params_total * 2, rel=0.01)
    assert plan.kv_bytes_per_token == ratio * sixteen_bit.kv_bytes_per_token
    if served is Precision.FP32:
        assert any("in float32" in reason for reason in plan.reasons), plan.reasons


def test_a_crs_dtype_reaches_the_planner() -> None:
    # The operator sizes vmSize auto from the CR: its bfloat16 must keep T4 sizes out there too.
    body = {
        "apiVersion": "tokenplane.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": "m"},
        "spec": {"model": {"source": "hf://google/gemma-2-2b-it", "maxModelLen": 2048, "dtype": "bfloat16"}},
    }
    workload = workload_from_spec(parse_inference_deployment(body).spec)
    assert workload.dtype == "bfloat16"
    assert find_sku(recommend(workload).vm_size).bf16  # type: ignore[union-attr]


def test_auto_never_picks_an_arm64_host_even_when_priced() -> None:
    # ND GB200 v6 runs on Grace (arm64); the serving image is amd64-only. A list price must not make it eligible.
    gb200 = "Standard_ND128isr_NDR_GB200_v6"
    plan = recommend(Workload(model("llama-3.1-70b"), max_model_len=4096), prices={gb200: 0.01})
    assert plan.vm_size != gb200
    assert gb200 not in {a.vm_size for a in plan.alternatives}
    assert any("arm64 host" in r and gb200 in r for r in plan.reasons)


def test_auto_never_picks_a_gpu_whose_engine_step_is_below_max_num_seqs() -> None:
    # vLLM refuses max_num_seqs above max_num_batched_tokens, whose default is 2,048 on A100s and small GPUs
    # and MIG slices, 8,192 on H100s. 4,096 sequences of a 2B model on A100s were the cheapest plan, and chosen.
    small = Workload(model("gemma-2-2b"), max_model_len=512, concurrency=4096, max_num_seqs=4096)
    plan = recommend(small)
    assert plan.fits and plan.mig_profile is None
    assert "A100" not in find_sku(plan.vm_size).gpu_model  # type: ignore[union-attr]
    assert find_sku(plan.vm_size).gpu_memory_gib >= 70  # type: ignore[union-attr]
    # The same load with the step raised to match may use the cheapest GPU again.
    raised = recommend(replace(small, max_num_batched_tokens=4096))
    assert raised.usd_per_hour < plan.usd_per_hour  # type: ignore[operator]
    # One fixed size that cannot take it says why.
    with pytest.raises(PlanError, match=r"maxNumSeqs 4,096 exceeds the 2,048 tokens one engine step"):
        recommend(replace(small, vm_size="Standard_NC24ads_A100_v4"))


def test_lora_slots_steer_auto_off_a_gpu_they_do_not_fit() -> None:
    # 64 adapters x rank 256 preallocate 88 GiB of LoRA buffers on an 8B model: auto chose a 24 GB A10 before.
    body = {
        "apiVersion": "tokenplane.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": "m"},
        "spec": {
            "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192},
            "lora": {"maxAdaptersPerReplica": 64, "maxRank": 256, "adapters": [{"name": "a", "source": "pvc://l/a"}]},
        },
    }
    workload = workload_from_spec(parse_inference_deployment(body).spec)
    assert (workload.max_loras, workload.max_lora_rank) == (64, 256)
    plan = recommend(workload)
    assert plan.fits and plan.gpus_per_replica * 80 * 2**30 > 88 * 2**30
    assert any("LoRA slots" in r for r in plan.reasons)
    # Without adapters vLLM runs without LoRA: the settings alone cost nothing.
    del body["spec"]["lora"]["adapters"]  # type: ignore[index]
    assert workload_from_spec(parse_inference_deployment(body).spec).max_loras == 0


def test_lora_gpu_slots_stop_at_the_batch_and_the_engine_gets_what_the_planner_sized() -> None:
    # vLLM's max_loras is the adapters one batch mixes; 16 sequences mix at most 16. 128 slots x rank 64 were
    # preallocated before (47.3 GB on an 8B model, 5.9 GB now), 112 never used; max_cpu_loras keeps 128 loaded.
    adapters = [{"name": "a", "source": "pvc://l/a"}]
    body = {
        "apiVersion": "tokenplane.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": "m"},
        "spec": {
            "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192},
            "engine": {"maxNumSeqs": 16},
            "lora": {"maxAdaptersPerReplica": 128, "maxRank": 64, "adapters": adapters},
            "hardware": {"vmSize": "Standard_NC24ads_A100_v4"},
        },
    }
    deployment = parse_inference_deployment(body)
    workload = workload_from_spec(deployment.spec)
    engine = build_llm_config(build_serving_args(deployment))["engine_kwargs"]
    assert workload.max_loras == engine["max_loras"] == 16
    assert engine["max_cpu_loras"] == 128
