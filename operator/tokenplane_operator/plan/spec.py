"""Adapter from an InferenceDeployment spec to a planner Workload."""

from __future__ import annotations

import math
from dataclasses import replace

from tokenplane_operator.api.v1alpha1 import InferenceDeployment, InferenceDeploymentSpec, Quantization, parse_source
from tokenplane_operator.plan.catalog import GpuSku, all_skus
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_operator.plan.modelinfo import ModelInfo, resolve_model
from tokenplane_operator.plan.precision import Precision
from tokenplane_operator.plan.sizing import QuantizationChoice, Workload
from tokenplane_serving.mapping import lora_engine_kwargs

__all__ = ["engine_gpu_memory_utilization", "replicas_per_gpu", "workload_as_rendered", "workload_from_spec"]

# What the engines packed onto one GPU by gpuFraction may use together. The other 10% holds each engine's CUDA
# context and NCCL buffers, which vLLM's budget does not count (its memory snapshot is taken after they are
# created: vllm/v1/worker/gpu_worker.py, `init_device`).
_SHARED_GPU_BUDGET = 0.9

_QUANTIZATION: dict[Quantization, QuantizationChoice] = {
    Quantization.NONE: "native",
    Quantization.FP8: Precision.FP8,
    Quantization.AWQ: Precision.INT4,
    Quantization.GPTQ: Precision.INT4,
    Quantization.INT8: Precision.INT8,
    Quantization.BITSANDBYTES: Precision.INT4,
}


def workload_from_spec(
    spec: InferenceDeploymentSpec, *, model: ModelInfo | None = None, concurrency: int = 1
) -> Workload:
    """Build the planner's Workload from a CR spec.

    Placement fields the user left at their defaults (vmSize auto, gpusPerReplica, TP, PP) are left to the
    planner; fields set explicitly are honoured.

    Args:
        spec: The InferenceDeployment spec.
        model: The model, when the caller already fetched its config.json; otherwise it is resolved from
            `spec.model.source` (a built-in name, or a local path).
        concurrency: Concurrent max_model_len sequences the deployment must hold.

    Returns:
        The Workload.

    Raises:
        PlanError: UnknownModel when the source is neither built in nor local; InvalidWorkload or
            ContextTooLong for impossible settings.
    """
    if model is None:
        try:
            _, location = parse_source(spec.model.source)
        except ValueError as err:
            raise PlanError(PlanErrorReason.UNKNOWN_MODEL, str(err)) from None
        model = resolve_model(location)
    hardware, engine = spec.hardware, spec.engine
    explicit_hw, explicit_engine = hardware.model_fields_set, engine.model_fields_set
    # The engine's own LoRA settings (the rule the serving mapping renders): their slots take GPU memory.
    lora = lora_engine_kwargs(
        adapters=len(spec.lora.adapters),
        max_adapters_per_replica=spec.lora.max_adapters_per_replica,
        max_rank=spec.lora.max_rank,
        max_num_seqs=spec.engine.max_num_seqs,
    )
    step = engine.extra_args.get("max_num_batched_tokens")
    return Workload(
        model=model,
        max_model_len=spec.model.max_model_len,
        concurrency=concurrency,
        quantization=_QUANTIZATION[spec.model.quantization],
        gpu_memory_utilization=engine.gpu_memory_utilization,
        vm_size=None if hardware.vm_size == "auto" else hardware.vm_size,
        gpus_per_replica=hardware.gpus_per_replica if "gpus_per_replica" in explicit_hw else None,
        mig_profile=hardware.mig_profile.value if hardware.mig_profile else None,
        tensor_parallel_size=engine.tensor_parallel_size if "tensor_parallel_size" in explicit_engine else None,
        pipeline_parallel_size=engine.pipeline_parallel_size if "pipeline_parallel_size" in explicit_engine else None,
        max_replicas=spec.scaling.max_replicas,
        max_num_seqs=engine.max_num_seqs,
        max_num_batched_tokens=step if isinstance(step, int) else None,
        enforce_eager=engine.enforce_eager,
        dtype=spec.model.dtype.value,
        max_loras=lora.get("max_loras", 0),
        max_lora_rank=lora.get("max_lora_rank", 0),
    )


def replicas_per_gpu(gpu_fraction: float) -> int:
    """Replicas Ray packs onto one GPU at a `gpuFraction`: `floor(1 / gpuFraction)`, at least 1."""
    return max(1, math.floor(1 / gpu_fraction))


def engine_gpu_memory_utilization(deployment: InferenceDeployment) -> float:
    """Return the `gpu_memory_utilization` each vLLM engine of a GPU deployment is started with.

    vLLM's value is per engine ("a per-instance limit": vllm/config/cache.py), and each engine checks at
    startup that the GPU's free memory is at least its `gpu_memory_utilization x total`
    (vllm/v1/worker/utils.py, `request_memory`: "Free memory on device ... is less than desired GPU memory
    utilization"). A `gpuFraction` packs `n = floor(1 / gpuFraction)` engines onto one GPU: with 0.9 each, the
    first takes 90% and the others fail that check and restart forever. So each engine gets at most its share
    of `_SHARED_GPU_BUDGET`, `0.9 / n` (rounded down to 1e-4); a smaller value the spec gives (already sized
    per engine, as vLLM's docs suggest: 0.45 for two) is kept. A fraction above 0.5 packs one engine: it keeps
    the spec's value.
    """
    configured = deployment.spec.engine.gpu_memory_utilization
    fraction = deployment.spec.hardware.gpu_fraction
    engines = 1 if fraction is None else replicas_per_gpu(fraction)
    if engines == 1:
        return configured
    share = math.floor(_SHARED_GPU_BUDGET / engines * 10_000 + 1e-9) / 10_000
    return min(configured, share)


def workload_as_rendered(
    deployment: InferenceDeployment, *, model: ModelInfo | None = None, concurrency: int = 1
) -> tuple[Workload, tuple[GpuSku, ...]]:
    """Return the Workload and catalog that size a deployment with a set vmSize as the operator renders it.

    The operator renders a set vmSize as written: gpusPerReplica, TP and PP left unset are one whole GPU,
    unsharded, with no MIG slice unless migProfile names one, not whatever the planner would pick (which put
    Llama-3.1-70B on TP 2 while the pods got one GPU each, and an 8B model on a MIG slice of a whole A100). A
    gpuFraction engine gets its share of the GPU's memory (`engine_gpu_memory_utilization`).

    Args:
        deployment: The InferenceDeployment (its vmSize set, not auto).
        model: The model, when the caller already has its shape; otherwise resolved from the source.
        concurrency: Concurrent max_model_len sequences the deployment must hold.

    Returns:
        The pinned Workload, and the catalog to size it in (MIG slices removed unless migProfile is set).

    Raises:
        PlanError: As `workload_from_spec`.
    """
    hardware, engine = deployment.spec.hardware, deployment.spec.engine
    workload = replace(
        workload_from_spec(deployment.spec, model=model, concurrency=concurrency),
        gpus_per_replica=hardware.gpus_per_replica,
        tensor_parallel_size=engine.tensor_parallel_size,
        pipeline_parallel_size=engine.pipeline_parallel_size,
        gpu_memory_utilization=engine_gpu_memory_utilization(deployment),
    )
    catalog = all_skus()
    if hardware.mig_profile is None:
        catalog = tuple(replace(sku, mig_profiles={}) for sku in catalog)
    return workload, catalog
