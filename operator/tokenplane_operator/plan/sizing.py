"""Sizing: the cheapest placement that fits a workload, following the seeds' priority, with its reasons.

Priority (seed 001), applied as rules plus a tie-break:
- quantize before sharding: with quantization "auto", fp8 is considered only when the checkpoint's precision
  fits on no single GPU or MIG slice of the catalog;
- pipeline parallelism across VMs only when no single VM holds a replica;
- otherwise the cheapest billed VM-hours for the whole concurrency win, and on equal cost a MIG slice or one
  GPU beats tensor parallelism, the checkpoint's precision beats quantization, and fewer devices win.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from tokenplane_operator.plan.catalog import GIB, SERVING_ARCH, GpuSku, all_skus, find_sku, with_prices
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_operator.plan.estimates import (
    COMPUTE_EFFICIENCY,
    MEMORY_BANDWIDTH_EFFICIENCY,
    Placement,
    decode_point,
    prefill_seconds,
    usd_per_replica_hour,
)
from tokenplane_operator.plan.memory import (
    MemoryBreakdown,
    compute_memory,
    kv_bytes_per_sequence,
    kv_bytes_per_token,
    max_model_len_for,
    weights_bytes,
)
from tokenplane_operator.plan.modelinfo import FLOAT16_REFUSED_MODEL_TYPES, ModelInfo
from tokenplane_operator.plan.precision import Precision

__all__ = [
    "Alternative",
    "BatchPoint",
    "Estimates",
    "Plan",
    "Workload",
    "default_step_tokens",
    "plan_for_sku",
    "recommend",
    "step_tokens",
]

_MAX_PIPELINE_STAGES = 16
_TP_SIZES = (1, 2, 4, 8)
QuantizationChoice = Precision | Literal["auto", "native"]
DtypeChoice = Literal["auto", "bfloat16", "float16", "float32"]


@dataclass(frozen=True)
class Workload:
    """What to serve and how hard; every placement field left None is the planner's to choose.

    Attributes:
        model: The model (see modelinfo).
        max_model_len: Context per sequence (prompt + output); None means the model's maximum.
        concurrency: Concurrent max_model_len sequences the whole deployment must hold.
        quantization: A Precision, "native" (the checkpoint's), or "auto" (native, else fp8 before sharding).
        kv_cache_dtype: "auto" (16-bit) or "fp8".
        gpu_memory_utilization: vLLM's budget fraction.
        vm_size: Fixed VM size, or None.
        gpus_per_replica: Fixed whole GPUs per replica (TP x PP), or None.
        mig_profile: Fixed AKS MIG profile (MIG1g..MIG7g), or None.
        tensor_parallel_size: Fixed TP, or None.
        pipeline_parallel_size: Fixed PP, or None.
        max_replicas: Most replicas allowed, or None for no limit.
        max_num_seqs: vLLM's per-replica running-sequence cap.
        max_num_batched_tokens: vLLM's per-step token budget when set (extraArgs); None: vLLM's default for the
            placement (`step_tokens`).
        avg_context_tokens: Average context during decode for estimates; None means half of max_model_len.
        enforce_eager: Whether CUDA graphs are off.
        dtype: vLLM's activation dtype; "bfloat16" rules out GPUs without BF16 when the planner chooses the size.
        max_loras: vLLM's LoRA GPU slots per replica (0: LoRA off); each preallocates max_lora_rank buffers.
        max_lora_rank: vLLM's max_lora_rank.
    """

    model: ModelInfo
    max_model_len: int | None = None
    concurrency: int = 1
    quantization: QuantizationChoice = "auto"
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    gpu_memory_utilization: float = 0.9
    vm_size: str | None = None
    gpus_per_replica: int | None = None
    mig_profile: str | None = None
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    max_replicas: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    avg_context_tokens: int | None = None
    enforce_eager: bool = False
    dtype: DtypeChoice = "auto"
    max_loras: int = 0
    max_lora_rank: int = 0

    def __post_init__(self) -> None:
        bad = PlanErrorReason.INVALID_WORKLOAD
        if self.concurrency < 1:
            raise PlanError(bad, f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise PlanError(bad, f"max_model_len must be at least 1, got {self.max_model_len}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise PlanError(bad, f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for name in ("gpus_per_replica", "tensor_parallel_size", "pipeline_parallel_size", "max_replicas"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PlanError(bad, f"{name} must be at least 1, got {value}")
        if self.max_model_len and self.max_model_len > self.model.max_position_embeddings:
            raise PlanError(
                PlanErrorReason.CONTEXT_TOO_LONG,
                f"max_model_len {self.max_model_len} exceeds what {self.model.name} supports "
                f"({self.model.max_position_embeddings} tokens, max_position_embeddings)",
            )

    @property
    def context(self) -> int:
        """The context per sequence the plan sizes for."""
        return self.max_model_len or self.model.max_position_embeddings

    def kv_dtype_bytes(self, precision: Precision) -> int:
        """Bytes per cached KV element with weights at `precision` (vLLM's auto KV cache follows the dtype)."""
        if self.kv_cache_dtype == "fp8":
            return 1
        return 4 if precision is Precision.FP32 else 2

    def served_precision(self, sku: GpuSku, precision: Precision) -> Precision:
        """Return the weights' precision on a VM size: a 16-bit one is FP32 where vLLM serves the model in float32.

        That is dtype float32, or dtype auto for a model vLLM refuses float16 on a GPU without bfloat16.
        """
        if precision.is_quantized:
            return precision
        refused = self.model.model_type in FLOAT16_REFUSED_MODEL_TYPES
        if self.dtype == "float32" or (self.dtype == "auto" and refused and not sku.bf16):
            return Precision.FP32
        return precision


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class BatchPoint(_Camel):
    """Decode estimate at one batch size."""

    batch_size: int
    decode_tokens_per_second_per_replica: float
    inter_token_latency_ms: float
    memory_bound: bool
    usd_per_million_output_tokens: float | None


class Estimates(_Camel):
    """Roofline estimates (not measurements) for the plan's placement."""

    batch_size: int = Field(description="Running sequences per replica the headline figures assume.")
    avg_context_tokens: int = Field(description="Average context per sequence during decode.")
    decode_tokens_per_second_per_replica: float
    inter_token_latency_ms: float
    prefill_seconds_at_max_model_len: float
    tokens_per_gpu_hour: float
    usd_per_million_output_tokens: float | None
    memory_bandwidth_efficiency: float = MEMORY_BANDWIDTH_EFFICIENCY
    compute_efficiency: float = COMPUTE_EFFICIENCY
    by_batch_size: list[BatchPoint]


class Alternative(_Camel):
    """A placement that also fits, ranked behind the chosen one."""

    vm_size: str
    mig_profile: str | None
    quantization: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    replicas: int
    usd_per_hour: float | None


class Plan(_Camel):
    """The planner's answer; `model_dump(by_alias=True)` is the stable camelCase JSON contract."""

    model: str
    architecture: str
    params_total: int
    params_active: int
    quantization: str
    kv_cache_dtype: str
    max_model_len: int
    concurrency: int
    weights_bytes: int
    weights_bytes_per_gpu: int
    kv_bytes_per_token: int = Field(description="Whole model, one token, no TP (the seeds' formula).")
    kv_bytes_per_token_per_gpu: int
    kv_bytes_per_sequence: int = Field(description="One max_model_len sequence, whole replica.")
    kv_bytes_per_replica: int
    overhead_bytes_per_replica: int
    total_bytes_per_replica: int
    capacity_bytes_per_replica: int = Field(description="gpuMemoryUtilization x memory of the replica's devices.")
    gpu_memory_utilization: float
    fits: bool
    vm_size: str
    gpu_model: str
    gpus_per_replica: int = Field(description="GPUs, or MIG slices when migProfile is set.")
    mig_profile: str | None
    resource_name: str = Field(description="Kubernetes extended resource a replica requests.")
    tensor_parallel_size: int
    pipeline_parallel_size: int
    nodes_per_replica: int
    replicas: int
    nodes: int
    sequences_per_replica: int
    max_sequences_per_replica: int = Field(description="Most max_model_len sequences one replica holds.")
    max_model_len_at_concurrency: int = Field(description="Longest context sequencesPerReplica sequences can hold.")
    usd_per_hour: float | None = Field(description="Billed VM-hours for all replicas at list price.")
    reasons: list[str]
    estimates: Estimates | None
    alternatives: list[Alternative] = Field(default_factory=list)


@dataclass(frozen=True)
class _Candidate:
    placement: Placement
    memory: MemoryBreakdown
    tier: int
    precision_rank: int
    replicas: int
    nodes: int
    usd_per_hour: float | None

    @property
    def sort_key(self) -> tuple[bool, float, int, int, float, int, int]:
        share = usd_per_replica_hour(self.placement) or 0.0
        return (
            self.tier == 2,
            round(self.usd_per_hour or 0.0, 2),
            self.tier,
            self.precision_rank,
            round(share * self.replicas, 4),  # smaller slices leave the rest of the VM to others
            -self.memory.max_sequences,  # then more headroom (a whole GPU beats a 7g slice)
            self.placement.devices,
        )


def _precisions(workload: Workload) -> list[Precision]:
    native = workload.model.native_precision
    choice = workload.quantization
    if choice == "native":
        return [native]
    if choice == "auto":
        return [native] if native.is_quantized else [native, Precision.FP8]
    if native.is_quantized and choice.bits > native.bits:
        raise PlanError(
            PlanErrorReason.INVALID_WORKLOAD,
            f"{workload.model.name} is stored in {native}; vLLM cannot serve it at {choice}. "
            f"Use {native} or a {choice} checkpoint",
        )
    return [choice]


def _placements(workload: Workload, sku: GpuSku, precision: Precision) -> Iterator[tuple[Placement, int]]:
    """Yield (placement, tier) for one VM size: MIG slices and single GPUs, TP in the VM, then PP across VMs."""
    model = workload.model
    fixed_tp, fixed_pp = workload.tensor_parallel_size, workload.pipeline_parallel_size
    if workload.mig_profile is not None or (workload.gpus_per_replica in (None, 1) and fixed_tp in (None, 1)):
        for aks_name, mig in sorted(sku.mig_profiles.items()):
            if workload.mig_profile in (None, aks_name) and fixed_pp in (None, 1):
                yield Placement(sku, mig, 1, 1, precision), 0
    if workload.mig_profile is not None:
        return
    for tp in _TP_SIZES:
        if tp > sku.gpu_count or model.num_attention_heads % tp or fixed_tp not in (None, tp):
            continue
        if fixed_pp in (None, 1) and workload.gpus_per_replica in (None, tp):
            yield Placement(sku, None, tp, 1, precision), 0 if tp == 1 else 1
    tp = max(t for t in _TP_SIZES if t <= sku.gpu_count and model.num_attention_heads % t == 0)
    if fixed_tp not in (None, tp) or not sku.nvlink:  # stages span VMs only on ND sizes (NVLink + InfiniBand)
        return
    for pp in range(2, min(_MAX_PIPELINE_STAGES, model.num_layers) + 1):
        if fixed_pp not in (None, pp) or workload.gpus_per_replica not in (None, tp * pp):
            continue
        yield Placement(sku, None, tp, pp, precision), 2


def _evaluate(workload: Workload, placement: Placement, tier: int, precision_rank: int) -> _Candidate:
    probe = compute_memory(
        workload.model,
        precision=placement.precision,
        kv_dtype_bytes=workload.kv_dtype_bytes(placement.precision),
        max_model_len=workload.context,
        sequences=1,
        device_memory_bytes=placement.device_memory_bytes,
        gpu_memory_utilization=workload.gpu_memory_utilization,
        tp=placement.tp,
        pp=placement.pp,
        # Unset, activations are sized for an 8,192-token step: vLLM's default on most GPUs, 4x the A100's.
        max_num_batched_tokens=workload.max_num_batched_tokens or 8192,
        max_num_seqs=workload.max_num_seqs,
        enforce_eager=workload.enforce_eager,
        max_loras=workload.max_loras,
        max_lora_rank=workload.max_lora_rank,
        lora_dtype_bytes=4 if placement.precision is Precision.FP32 else 2,
    )
    per_replica = min(probe.max_sequences, workload.max_num_seqs, workload.concurrency)
    replicas = math.ceil(workload.concurrency / per_replica) if per_replica else 0
    per_replica = math.ceil(workload.concurrency / replicas) if replicas else 0  # spread evenly
    memory = replace(probe, sequences=per_replica)
    nodes = math.ceil(replicas * placement.devices / placement.devices_per_node) if replicas else 0
    nodes = max(nodes, replicas * placement.nodes_per_replica) if placement.pp > 1 else nodes
    price = placement.sku.hourly_usd
    return _Candidate(placement, memory, tier, precision_rank, replicas, nodes, nodes * price if price else None)


def _candidates(workload: Workload, catalog: tuple[GpuSku, ...]) -> list[_Candidate]:
    out: list[_Candidate] = []
    for rank, precision in enumerate(_precisions(workload)):
        if rank and any(c.tier == 0 and _feasible(workload, c) for c in out):
            break  # the checkpoint's precision fits one GPU or slice: no reason to quantize
        for sku in catalog:
            served = workload.served_precision(sku, precision)
            out.extend(
                _evaluate(workload, placement, tier, rank) for placement, tier in _placements(workload, sku, served)
            )
    return out


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def _reasons(workload: Workload, chosen: _Candidate, ranked: list[_Candidate]) -> list[str]:
    model, p, mem = workload.model, chosen.placement, chosen.memory
    reasons = [
        f"{model.name}: {model.params_total / 1e9:.1f}B parameters"
        + (
            f" ({model.params_active / 1e9:.1f}B active, {model.num_experts} experts, top-{model.experts_per_token})"
            if model.is_moe
            else ""
        )
        + f", {model.attention_kind} attention, {model.num_layers} layers.",
    ]
    if workload.max_model_len is None:
        reasons.append(f"No max_model_len given: sized for the model's full {workload.context}-token context.")
    native = model.native_precision
    if p.precision is Precision.FP32:
        why = (
            "dtype float32"
            if workload.dtype == "float32"
            else f"{p.sku.gpu_model} has no bfloat16 and vLLM refuses float16 for {model.model_type} models"
        )
        reasons.append(
            f"Weights and KV cache in float32 ({why}): {_gib(weights_bytes(model, p.precision))} instead of "
            f"{_gib(weights_bytes(model, native))}."
        )
    elif p.precision is not native:
        why = (
            "requested"
            if workload.quantization not in ("auto", "native")
            else (f"at {native} no single GPU or MIG slice holds it; quantize before sharding")
        )
        reasons.append(
            f"Weights in {p.precision} ({why}): {_gib(weights_bytes(model, p.precision))} "
            f"instead of {_gib(weights_bytes(model, native))}."
        )
        if p.precision is Precision.INT4 and not native.is_quantized:
            reasons.append("int4 needs an AWQ/GPTQ checkpoint of this model; sized with 128-weight groups.")
        if p.precision is Precision.FP8 and not p.sku.fp8_tflops:
            reasons.append(f"{p.sku.gpu_model} has no FP8 tensor cores: vLLM runs FP8 weight-only (Marlin).")
    else:
        reasons.append(f"Weights at the checkpoint's {native}: {_gib(weights_bytes(model, native))}.")
    where = (
        f"a {p.mig.profile} MIG slice ({p.mig.aks_name})"
        if p.mig
        else ("one GPU" if p.devices == 1 else f"{p.tp} GPUs" + (f" x {p.pp} VMs" if p.pp > 1 else ""))
    )
    reasons.append(
        f"Per {'slice' if p.mig else 'GPU'}: {_gib(mem.weights_per_gpu)} weights + {_gib(mem.kv_per_gpu)} KV "
        f"({mem.sequences} x {workload.context} tokens) + {_gib(mem.overhead_per_gpu)} runtime = "
        f"{_gib(mem.required_per_gpu)} of {_gib(mem.capacity_per_gpu)} "
        f"({workload.gpu_memory_utilization:.0%} of {_gib(p.device_memory_bytes)})."
    )
    if mem.lora_per_gpu:
        reasons.append(
            f"Runtime includes {_gib(mem.lora_per_gpu)} of LoRA slots vLLM preallocates: {workload.max_loras} "
            f"adapters x rank {workload.max_lora_rank} on every wrapped layer."
        )
    if chosen.tier == 0:
        reasons.append(f"Fits on {where} of {p.sku.vm_size} ({p.sku.gpu_model}); no sharding needed.")
    elif p.pp == 1:
        link = "NVLink" if p.sku.nvlink else "PCIe (no NVLink: expect slower all-reduce)"
        single = any(c.tier == 0 for c in ranked)
        why = "cheaper than one-GPU replicas" if single else "no single GPU or slice holds it"
        reasons.append(f"Tensor parallel over {p.tp} GPUs in one VM ({why}), over {link}.")
    else:
        reasons.append(f"No single VM holds it: TP {p.tp} inside each VM, pipeline parallel over {p.pp} VMs.")
    if chosen.replicas > 1:
        reasons.append(
            f"One replica holds {mem.max_sequences} such sequences"
            + (
                f" (capped by max_num_seqs {workload.max_num_seqs})"
                if mem.max_sequences > workload.max_num_seqs
                else ""
            )
            + f"; {workload.concurrency} concurrent sequences need {chosen.replicas} replicas."
        )
    if chosen.usd_per_hour is not None:
        reasons.append(
            f"{chosen.nodes} x {p.sku.vm_size} at ${p.sku.hourly_usd:.2f}/h list = ${chosen.usd_per_hour:.2f}/h; "
            "the cheapest that fits."
        )
    others = [c for c in ranked if c is not chosen and c.usd_per_hour is not None][:1]
    for other in others:
        o = other.placement
        reasons.append(
            f"Runner-up: {o.sku.vm_size}{' ' + o.mig.aks_name if o.mig else ''} TP{o.tp} PP{o.pp} {o.precision}, "
            f"{other.replicas} replica(s), ${other.usd_per_hour:.2f}/h."
        )
    return reasons


def _build_plan(workload: Workload, chosen: _Candidate, ranked: list[_Candidate], reasons: list[str]) -> Plan:
    model, p, mem = workload.model, chosen.placement, chosen.memory
    kv_bytes = workload.kv_dtype_bytes(p.precision)
    fits = _feasible(workload, chosen) and mem.fits
    estimates = None
    if fits:
        ctx = workload.avg_context_tokens or max(1, workload.context // 2)
        batches = sorted(
            {
                1,
                *(2**i for i in range(1, 12) if 2**i < mem.max_sequences),
                mem.sequences,
                min(mem.max_sequences, workload.max_num_seqs),
            }
        )
        points = [decode_point(model, p, batch=b, context_tokens=ctx, kv_dtype_bytes=kv_bytes) for b in batches]
        head = next(pt for pt in points if pt.batch_size == mem.sequences)
        estimates = Estimates(
            batch_size=mem.sequences,
            avg_context_tokens=ctx,
            decode_tokens_per_second_per_replica=round(head.tokens_per_second, 1),
            inter_token_latency_ms=round(head.step_seconds * 1000, 2),
            prefill_seconds_at_max_model_len=round(prefill_seconds(model, p, workload.context), 3),
            tokens_per_gpu_hour=round(head.tokens_per_second * 3600 / p.gpu_equivalents),
            usd_per_million_output_tokens=_round(head.usd_per_million_output_tokens),
            by_batch_size=[
                BatchPoint(
                    batch_size=pt.batch_size,
                    decode_tokens_per_second_per_replica=round(pt.tokens_per_second, 1),
                    inter_token_latency_ms=round(pt.step_seconds * 1000, 2),
                    memory_bound=pt.memory_bound,
                    usd_per_million_output_tokens=_round(pt.usd_per_million_output_tokens),
                )
                for pt in points
            ],
        )
    kv_seq = kv_bytes_per_sequence(model, workload.context, kv_bytes, p.tp, p.pp) * p.devices
    return Plan(
        model=model.name,
        architecture=model.attention_kind + (" MoE" if model.is_moe else " dense"),
        params_total=model.params_total,
        params_active=model.params_active,
        quantization=str(p.precision),
        kv_cache_dtype="fp8" if kv_bytes == 1 else "auto",
        max_model_len=workload.context,
        concurrency=workload.concurrency,
        weights_bytes=weights_bytes(model, p.precision),
        weights_bytes_per_gpu=mem.weights_per_gpu,
        kv_bytes_per_token=kv_bytes_per_token(model, kv_bytes),
        kv_bytes_per_token_per_gpu=mem.kv_per_token_per_gpu,
        kv_bytes_per_sequence=kv_seq,
        kv_bytes_per_replica=mem.kv_per_gpu * p.devices,
        overhead_bytes_per_replica=mem.overhead_per_gpu * p.devices,
        total_bytes_per_replica=mem.required_per_gpu * p.devices,
        capacity_bytes_per_replica=mem.capacity_per_gpu * p.devices,
        gpu_memory_utilization=workload.gpu_memory_utilization,
        fits=fits,
        vm_size=p.sku.vm_size,
        gpu_model=p.sku.gpu_model,
        gpus_per_replica=p.devices,
        mig_profile=p.mig.aks_name if p.mig else None,
        resource_name=p.mig.resource_name if p.mig else "nvidia.com/gpu",
        tensor_parallel_size=p.tp,
        pipeline_parallel_size=p.pp,
        nodes_per_replica=p.nodes_per_replica,
        replicas=chosen.replicas,
        nodes=chosen.nodes,
        sequences_per_replica=mem.sequences,
        max_sequences_per_replica=min(mem.max_sequences, workload.max_num_seqs),
        max_model_len_at_concurrency=max_model_len_for(
            model, mem, sequences=max(1, mem.sequences), kv_dtype_bytes=kv_bytes, tp=p.tp, pp=p.pp
        ),
        usd_per_hour=_round(chosen.usd_per_hour),
        reasons=reasons,
        estimates=estimates,
        alternatives=[
            Alternative(
                vm_size=c.placement.sku.vm_size,
                mig_profile=c.placement.mig.aks_name if c.placement.mig else None,
                quantization=str(c.placement.precision),
                tensor_parallel_size=c.placement.tp,
                pipeline_parallel_size=c.placement.pp,
                replicas=c.replicas,
                usd_per_hour=_round(c.usd_per_hour),
            )
            for c in ranked
            if c is not chosen
        ][:3],
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# AKS holds at most 1,000 nodes in a node pool (the agent pool's maxCount): a plan needing more cannot be created.
MAX_POOL_NODES = 1000


def default_step_tokens(device_memory_bytes: int | None, gpu_model: str | None) -> int:
    """Return vLLM's default tokens per engine step for its OpenAI server (Ray Serve LLM's usage context).

    vLLM 0.32 goes by the memory torch reports (a MIG slice's own) and the GPU's name, and on CPUs gives 2,048
    per rank (vllm/engine/arg_utils.py `get_batch_defaults`). vLLM refuses to start with max_num_seqs above the
    step (vllm/config/scheduler.py: one step holds a token of every sequence), and tokenplane always sets
    max_num_seqs, so vLLM never lowers it to fit.

    Args:
        device_memory_bytes: Memory of one GPU or MIG slice; None for a CPU rank.
        gpu_model: The GPU's name (A100s keep the small default whatever their memory); None for a CPU rank.
    """
    if device_memory_bytes is None or gpu_model is None:
        return 2048
    if device_memory_bytes >= 160 * GIB:
        return 16384
    return 8192 if device_memory_bytes >= 70 * GIB and "A100" not in gpu_model else 2048


def step_tokens(workload: Workload, placement: Placement) -> int:
    """Return the tokens one engine step of a replica schedules: max_num_batched_tokens if set, else vLLM's default."""
    if workload.max_num_batched_tokens is not None:
        return workload.max_num_batched_tokens
    return default_step_tokens(placement.device_memory_bytes, placement.sku.gpu_model)


def _feasible(workload: Workload, c: _Candidate) -> bool:
    within = workload.max_replicas is None or c.replicas <= workload.max_replicas
    steps = workload.max_num_seqs <= step_tokens(workload, c.placement)
    return c.replicas > 0 and within and steps and c.nodes <= MAX_POOL_NODES


def _fixed_miss(workload: Workload) -> str:
    """Say which fixed placement field the one VM size of `workload` cannot honour, and what to change."""
    sku = find_sku(workload.vm_size or "")
    if sku is None:
        return "no VM size given"
    if workload.mig_profile is not None:
        offered = ", ".join(sorted(sku.mig_profiles)) or "no MIG slices"
        return f"migProfile {workload.mig_profile}: {sku.vm_size} offers {offered}; pick another size or profile"
    fixed = [
        f"{name} {value}"
        for name, value in (
            ("gpusPerReplica", workload.gpus_per_replica),
            ("tensorParallelSize", workload.tensor_parallel_size),
            ("pipelineParallelSize", workload.pipeline_parallel_size),
        )
        if value is not None
    ]
    pipeline = "; pipeline stages span VMs only on ND sizes" if not sku.nvlink else ""
    return (
        f"{', '.join(fixed) or 'the fixed fields'} do not fit {sku.vm_size}'s {sku.gpu_count} GPU(s) and the "
        f"{workload.model.num_attention_heads} attention heads of {workload.model.name}{pipeline}; "
        "pick a larger size or change those fields"
    )


def _closest_miss(workload: Workload, candidates: list[_Candidate]) -> str:
    if not candidates:
        return "no catalog VM size matches the fixed placement fields"
    best = max(candidates, key=lambda c: c.memory.free_for_kv_per_gpu - c.memory.kv_per_sequence_per_gpu)
    p, mem = best.placement, best.memory
    where = f"{p.sku.vm_size}" + (f" {p.mig.aks_name}" if p.mig else f" TP{p.tp} PP{p.pp}") + f" {p.precision}"
    if best.replicas and workload.max_num_seqs > (step := step_tokens(workload, p)):
        return (
            f"closest: {where} holds the sequences, but maxNumSeqs {workload.max_num_seqs:,} exceeds the {step:,} "
            "tokens one engine step schedules there and vLLM would not start; lower maxNumSeqs or set "
            "spec.engine.extraArgs.max_num_batched_tokens"
        )
    if best.replicas and workload.max_replicas:
        return f"closest: {where} needs {best.replicas} replicas, above maxReplicas {workload.max_replicas}"
    if best.nodes > MAX_POOL_NODES:
        return f"closest: {where} needs {best.nodes:,} VMs, above the {MAX_POOL_NODES:,} an AKS node pool holds"
    need = mem.weights_per_gpu + mem.overhead_per_gpu + mem.kv_per_sequence_per_gpu
    lora = f" (of which {_gib(mem.lora_per_gpu)} LoRA slots)" if mem.lora_per_gpu else ""
    return (
        f"closest: {where} needs {_gib(need)} per GPU for weights + runtime{lora} + one {workload.context}-token "
        f"sequence, but has {_gib(mem.capacity_per_gpu)}"
    )


def recommend(
    workload: Workload, *, catalog: tuple[GpuSku, ...] | None = None, prices: Mapping[str, float] | None = None
) -> Plan:
    """Choose the cheapest placement that fits, in the seeds' priority order, and explain it.

    Args:
        workload: The model and load; fixed placement fields narrow the search.
        catalog: VM sizes to choose from; the built-in catalog by default.
        prices: USD per VM hour overrides keyed by VM size.

    Returns:
        A Plan with fits=True.

    Raises:
        PlanError: DoesNotFit when nothing fits, UnknownVmSize for a fixed size the catalog lacks,
            InvalidWorkload for an impossible precision.
    """
    skus = with_prices(prices or {}, catalog) if prices else (catalog or all_skus())
    if workload.vm_size is not None:
        sku = find_sku(workload.vm_size, skus)
        if sku is None:
            raise PlanError(
                PlanErrorReason.UNKNOWN_VM_SIZE,
                f"{workload.vm_size} is not in the GPU catalog; known: {', '.join(s.vm_size for s in skus)}",
            )
        skus = (sku,)
    unpriced = [s.vm_size for s in skus if s.hourly_usd is None] if workload.vm_size is None else []
    # A size the replica cannot run on at all is never chosen; one given explicitly is validation's to refuse.
    unservable = {s.vm_size: why for s in skus if (why := _unservable(workload, s))} if workload.vm_size is None else {}
    eligible = tuple(s for s in skus if s.vm_size not in unpriced and s.vm_size not in unservable)
    candidates = _candidates(workload, eligible)
    priced = [c for c in candidates if _feasible(workload, c)]
    if any(c.tier < 2 for c in priced):
        priced = [c for c in priced if c.tier < 2]  # pipeline across VMs only when no single VM holds a replica
    ranked = sorted(priced, key=lambda c: c.sort_key)
    if not ranked:
        raise PlanError(
            PlanErrorReason.DOES_NOT_FIT,
            f"{workload.model.name} with {workload.concurrency} x {workload.context}-token sequences fits on no "
            f"{'catalog VM size' if workload.vm_size is None else workload.vm_size}; "
            f"{_closest_miss(workload, candidates)}. Lower max_model_len or concurrency, quantize, or pick a "
            "larger VM size.",
        )
    chosen = ranked[0]
    reasons = _reasons(workload, chosen, ranked)
    if unpriced:
        reasons.append(f"Not considered (no list price; set one in a values file): {', '.join(unpriced)}.")
    for why in dict.fromkeys(unservable.values()):
        sizes = [size for size, reason in unservable.items() if reason == why and size not in unpriced]
        if sizes:
            reasons.append(f"Not considered ({why}): {', '.join(sizes)}.")
    return _build_plan(workload, chosen, ranked, reasons)


def _unservable(workload: Workload, sku: GpuSku) -> str | None:
    """Why no replica of the workload can run on a VM size whatever its memory, or None when one can."""
    if sku.arch != SERVING_ARCH:
        return f"{sku.arch} host; the serving image is {SERVING_ARCH}-only"
    if workload.dtype == "bfloat16" and not sku.bf16:
        return f"{sku.gpu_model} has no bfloat16; vLLM refuses dtype bfloat16 there"
    return None


def plan_for_sku(
    workload: Workload,
    vm_size: str,
    *,
    prices: Mapping[str, float] | None = None,
    catalog: tuple[GpuSku, ...] | None = None,
) -> Plan:
    """Size a workload on one VM size: the best placement there, or the closest miss with fits=False.

    Args:
        workload: The model and load.
        vm_size: The VM size to use.
        prices: USD per VM hour overrides keyed by VM size.
        catalog: VM sizes to find it in (e.g. without MIG slices); the built-in catalog by default.

    Returns:
        A Plan; `fits` says whether the workload fits, `maxSequencesPerReplica` and
        `maxModelLenAtConcurrency` say how much does.

    Raises:
        PlanError: UnknownVmSize when the catalog lacks the size; InvalidWorkload for an impossible precision.
    """
    fixed = replace(workload, vm_size=vm_size)
    try:
        return recommend(fixed, catalog=catalog, prices=prices)
    except PlanError as err:
        if err.reason is not PlanErrorReason.DOES_NOT_FIT:
            raise
    skus = with_prices(prices, catalog) if prices else (catalog or all_skus())
    candidates = _candidates(fixed, (find_sku(vm_size, skus) or skus[0],))
    if not candidates:
        raise PlanError(
            PlanErrorReason.DOES_NOT_FIT, f"no placement on {vm_size} matches the fixed fields: {_fixed_miss(fixed)}"
        )
    best = max(
        candidates, key=lambda c: (c.replicas > 0, c.memory.free_for_kv_per_gpu - c.memory.kv_per_sequence_per_gpu)
    )
    return _build_plan(fixed, best, [], [f"Does not fit on {vm_size}: {_closest_miss(fixed, candidates)}."])
