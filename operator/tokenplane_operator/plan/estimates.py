"""Roofline estimates: decode tokens/s from memory bandwidth, prefill from compute, and cost per token.

These are estimates, not measurements: a decode step reads the (active) weights once and every running
sequence's KV cache once, so its time is bytes / bandwidth unless the batch's FLOPs take longer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokenplane_operator.plan.catalog import GpuSku, MigProfile
from tokenplane_operator.plan.memory import kv_bytes_per_sequence, weights_bytes
from tokenplane_operator.plan.modelinfo import ModelInfo
from tokenplane_operator.plan.precision import Precision

__all__ = [
    "COMPUTE_EFFICIENCY",
    "MEMORY_BANDWIDTH_EFFICIENCY",
    "DecodePoint",
    "Placement",
    "decode_point",
    "prefill_seconds",
    "usd_per_replica_hour",
]

# Fractions of the datasheet peaks a well-tuned vLLM reaches (assumptions, not measured here).
MEMORY_BANDWIDTH_EFFICIENCY = 0.8
COMPUTE_EFFICIENCY = 0.5
_SECONDS_PER_HOUR = 3600


@dataclass(frozen=True)
class Placement:
    """Where one replica runs.

    Attributes:
        sku: The VM size.
        mig: The MIG slice per replica, or None for whole GPUs.
        tp: Tensor-parallel size.
        pp: Pipeline-parallel size (one stage per node when > 1).
        precision: Weight precision.
    """

    sku: GpuSku
    mig: MigProfile | None
    tp: int
    pp: int
    precision: Precision

    @property
    def devices(self) -> int:
        """GPUs or slices per replica."""
        return self.tp * self.pp

    @property
    def gpu_equivalents(self) -> float:
        """Physical GPUs per replica (a slice counts as its share of a GPU)."""
        return self.devices / self.mig.slices_per_gpu if self.mig else float(self.devices)

    @property
    def devices_per_node(self) -> int:
        """GPUs or slices one VM offers."""
        return self.sku.gpu_count * (self.mig.slices_per_gpu if self.mig else 1)

    @property
    def nodes_per_replica(self) -> int:
        """VMs one replica spans."""
        return max(1, math.ceil(self.devices / self.devices_per_node))

    @property
    def device_memory_bytes(self) -> int:
        """Memory of one GPU or slice."""
        return int(self.mig.memory_gib * (1 << 30)) if self.mig else self.sku.gpu_memory_bytes

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """Peak memory bandwidth of one GPU or slice."""
        fraction = self.mig.bandwidth_fraction if self.mig else 1.0
        return self.sku.memory_bandwidth_gbps * 1e9 * fraction

    @property
    def flops(self) -> float:
        """Peak dense FLOP/s of one GPU or slice at the precision's compute path."""
        fraction = self.mig.compute_fraction if self.mig else 1.0
        # FP8/INT8 run on 8-bit tensor cores where the GPU has them; int4 (Marlin) and Ampere FP8 compute in 16 bit.
        eight_bit = self.precision in (Precision.FP8, Precision.INT8) and self.sku.fp8_tflops
        tflops = self.sku.fp8_tflops if eight_bit and self.sku.fp8_tflops else self.sku.bf16_tflops
        return tflops * 1e12 * fraction


def usd_per_replica_hour(placement: Placement) -> float | None:
    """Price one replica's share of its VMs (assumes replicas pack the VMs).

    Args:
        placement: The placement.

    Returns:
        USD per replica hour, or None without a list price.
    """
    if placement.sku.hourly_usd is None:
        return None
    return placement.sku.hourly_usd * placement.gpu_equivalents / placement.sku.gpu_count


def _weight_bytes_read(model: ModelInfo, precision: Precision, batch: int) -> float:
    total = weights_bytes(model, precision)
    if not model.is_moe:
        return total
    # A batch touches each expert with probability 1 - (1 - k/E)^batch; untouched experts are not read.
    expert_bytes = model.expert_params * precision.bytes_per_param * model.moe_layers
    touched = 1 - (1 - model.experts_per_token / model.num_experts) ** batch
    return total - expert_bytes * model.num_experts * (1 - touched)


@dataclass(frozen=True)
class DecodePoint:
    """Decode throughput of one replica at one batch size.

    Attributes:
        batch_size: Running sequences.
        step_seconds: Time of one decode step (= inter-token latency).
        tokens_per_second: Output tokens/s of the replica.
        memory_bound: Whether bandwidth, not compute, set the step time.
        usd_per_million_output_tokens: At the replica's share of the list price, or None.
    """

    batch_size: int
    step_seconds: float
    tokens_per_second: float
    memory_bound: bool
    usd_per_million_output_tokens: float | None


def decode_point(
    model: ModelInfo, placement: Placement, *, batch: int, context_tokens: int, kv_dtype_bytes: int
) -> DecodePoint:
    """Estimate decode speed for a batch.

    `step = max(bytes_read / (bandwidth x devices x eff_mem), 2 x active_params x batch / (flops x devices x
    eff_compute))`, with bytes_read = weights read (touched experts only) + batch x KV bytes of a
    `context_tokens` sequence.

    Args:
        model: The model.
        placement: Where the replica runs.
        batch: Running sequences.
        context_tokens: Average tokens in each sequence's context during decode.
        kv_dtype_bytes: Bytes per cached KV element.

    Returns:
        The decode point.
    """
    kv_read = batch * kv_bytes_per_sequence(model, context_tokens, kv_dtype_bytes, placement.tp, placement.pp)
    bytes_read = _weight_bytes_read(model, placement.precision, batch) + kv_read * placement.devices
    t_mem = bytes_read / (placement.bandwidth_bytes_per_s * placement.devices * MEMORY_BANDWIDTH_EFFICIENCY)
    t_compute = 2 * model.params_active * batch / (placement.flops * placement.devices * COMPUTE_EFFICIENCY)
    step = max(t_mem, t_compute)
    rate = batch / step
    price = usd_per_replica_hour(placement)
    usd = price / (rate * _SECONDS_PER_HOUR) * 1e6 if price is not None else None
    return DecodePoint(batch, step, rate, t_mem >= t_compute, usd)


def prefill_seconds(model: ModelInfo, placement: Placement, prompt_tokens: int) -> float:
    """Estimate the time to prefill one prompt (compute-bound; never faster than one weight read).

    Args:
        model: The model.
        placement: Where the replica runs.
        prompt_tokens: Prompt length.

    Returns:
        Seconds (a time-to-first-token floor on an idle replica).
    """
    compute = 2 * model.params_active * prompt_tokens / (placement.flops * placement.devices * COMPUTE_EFFICIENCY)
    read = _weight_bytes_read(model, placement.precision, prompt_tokens) / (
        placement.bandwidth_bytes_per_s * placement.devices * MEMORY_BANDWIDTH_EFFICIENCY
    )
    return max(compute, read)
