"""Memory model: weights + KV cache + runtime overhead against the engine's gpu_memory_utilization budget.

vLLM sizes its KV cache as `gpu_memory_utilization x device memory - weights - peak activations - non-torch
memory`, per GPU. This module computes the same terms per GPU (or MIG slice) for a placement, so the planner's
"fits" means "vLLM will start and hold that many sequences".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokenplane_operator.plan.catalog import GIB
from tokenplane_operator.plan.modelinfo import ModelInfo
from tokenplane_operator.plan.precision import Precision

__all__ = [
    "BLOCK_SIZE",
    "CUDA_CONTEXT_BYTES",
    "CUDA_GRAPH_BYTES",
    "MemoryBreakdown",
    "activation_bytes",
    "compute_memory",
    "kv_bytes_per_sequence",
    "kv_bytes_per_token",
    "lora_bytes_per_gpu",
    "max_model_len_for",
    "weights_bytes",
    "weights_bytes_per_gpu",
]

BLOCK_SIZE = 16  # vLLM's GPU KV block (tokens); a sequence holds whole blocks
# Non-torch memory vLLM subtracts from its budget: CUDA context, cuBLAS workspaces, NCCL buffers (rounded up).
CUDA_CONTEXT_BYTES = GIB * 3 // 4
CUDA_GRAPH_BYTES = GIB // 2  # captured decode graphs; zero with enforce_eager
_LOGIT_BYTES = 4  # vLLM computes sampling logits in float32


def weights_bytes(model: ModelInfo, precision: Precision) -> int:
    """Bytes of the model's weights at a precision.

    Quantized checkpoints keep the embedding and LM head at 16 bits (AWQ, GPTQ and FP8 recipes all do), so
    only the other parameters shrink; int8 applied online to a 16-bit checkpoint shrinks the MoE experts only.
    When the precision is the checkpoint's own and safetensors metadata gave exact bytes, those are returned.

    Args:
        model: The model.
        precision: Weight precision.

    Returns:
        Total weight bytes across all GPUs of one replica.
    """
    if precision is model.native_precision and model.checkpoint_bytes:
        return model.checkpoint_bytes
    if precision is Precision.INT8 and not model.native_precision.is_quantized:
        # Online int8 (vLLM 0.32's `int8_per_channel_weight_only`) quantizes the routed MoE experts only; every
        # linear layer stays 16-bit, so a dense model keeps all its bytes.
        experts = model.moe_layers * model.num_experts * model.expert_params
        return experts + (model.params_total - experts) * 2
    if not precision.is_quantized:
        return math.ceil(model.params_total * precision.bytes_per_param)
    body = model.params_total - model.params_embedding
    return math.ceil(body * precision.bytes_per_param) + model.params_embedding * 2


def weights_bytes_per_gpu(model: ModelInfo, precision: Precision, tp: int = 1, pp: int = 1) -> int:
    """Weight bytes on the fullest GPU of a replica.

    Tensor parallelism splits every matrix (the vocabulary too); pipeline parallelism splits layers, with
    the embedding on the first stage and the LM head on the last.

    Args:
        model: The model.
        precision: Weight precision.
        tp: Tensor-parallel size.
        pp: Pipeline-parallel size.

    Returns:
        Bytes on one GPU.
    """
    total = weights_bytes(model, precision)
    if pp == 1:
        return math.ceil(total / tp)
    embedding = model.params_embedding * 2
    per_end = embedding if model.params_embedding == model.vocab_size * model.hidden_size else embedding // 2
    body = total - embedding
    return math.ceil(body * math.ceil(model.num_layers / pp) / model.num_layers / tp + per_end / tp)


def _kv_heads_per_gpu(model: ModelInfo, tp: int) -> int:
    # vLLM replicates KV heads when there are fewer than TP ranks; MLA's latent is replicated on every rank.
    return 1 if model.is_mla else max(1, model.num_kv_heads // tp)


def _layer_token_bytes(model: ModelInfo, kv_dtype_bytes: int, tp: int) -> int:
    if model.is_mla:
        return (model.kv_lora_rank + model.qk_rope_head_dim) * kv_dtype_bytes
    return 2 * _kv_heads_per_gpu(model, tp) * model.head_dim * kv_dtype_bytes


def kv_bytes_per_token(model: ModelInfo, kv_dtype_bytes: int = 2, tp: int = 1, pp: int = 1) -> int:
    """KV cache bytes one token costs on one GPU, with every layer holding it (the seeds' formula).

    `2 x layers x KV heads x head dim x bytes` (K and V); for MLA `layers x (latent + rope dim) x bytes`.

    Args:
        model: The model.
        kv_dtype_bytes: Bytes per cached element (2 for bf16/fp16, 1 for an fp8 KV cache).
        tp: Tensor-parallel size (splits KV heads).
        pp: Pipeline-parallel size (splits layers; the fullest stage is counted).

    Returns:
        Bytes per token per GPU; with tp = pp = 1, for the whole model.
    """
    return math.ceil(model.num_layers / pp) * _layer_token_bytes(model, kv_dtype_bytes, tp)


def kv_bytes_per_sequence(model: ModelInfo, tokens: int, kv_dtype_bytes: int = 2, tp: int = 1, pp: int = 1) -> int:
    """KV cache bytes one sequence of `tokens` tokens holds on one GPU, in whole blocks.

    Sliding-window (and chunked local attention) layers hold at most their window.

    Args:
        model: The model.
        tokens: Sequence length (prompt + output).
        kv_dtype_bytes: Bytes per cached element.
        tp: Tensor-parallel size.
        pp: Pipeline-parallel size.

    Returns:
        Bytes per sequence per GPU.
    """
    blocks = math.ceil(tokens / BLOCK_SIZE) * BLOCK_SIZE
    full = model.num_layers - model.sliding_layers
    windowed = min(blocks, math.ceil((model.sliding_window or 0) / BLOCK_SIZE) * BLOCK_SIZE + BLOCK_SIZE)
    layer_tokens = full * blocks + model.sliding_layers * windowed
    stage_share = math.ceil(model.num_layers / pp) / model.num_layers
    return math.ceil(layer_tokens * stage_share) * _layer_token_bytes(model, kv_dtype_bytes, tp)


def activation_bytes(model: ModelInfo, max_num_batched_tokens: int, max_num_seqs: int, tp: int = 1) -> int:
    """Peak activation memory vLLM's profiling run reserves on one GPU.

    One forward pass of `max_num_batched_tokens` tokens keeps the residual stream, the MLP's gate and up
    outputs, and float32 logits for up to `max_num_seqs` sampled rows.

    Args:
        model: The model.
        max_num_batched_tokens: Tokens in the largest scheduled batch (chunked prefill budget).
        max_num_seqs: Sequences sampled per step.
        tp: Tensor-parallel size.

    Returns:
        Bytes per GPU.
    """
    width = model.intermediate_size * (max(1, model.experts_per_token) if model.is_moe else 1)
    hidden_states = max_num_batched_tokens * (4 * model.hidden_size + 2 * width // tp) * 2
    logits = min(max_num_seqs, max_num_batched_tokens) * math.ceil(model.vocab_size / tp) * _LOGIT_BYTES
    return hidden_states + logits


def _lora_layer_elements(model: ModelInfo, tp: int) -> int:
    """Elements per LoRA slot and unit of rank one decoder layer holds on one GPU.

    Each wrapped linear keeps `lora_a (rank, in)` and `lora_b (out, rank)` per slice; a column-parallel layer
    sees its whole input and its shard of outputs, a row-parallel one the reverse (vllm/lora/layers/
    base_linear.py, column_parallel_linear.py, row_parallel_linear.py). Llama's shape: qkv_proj (3 slices),
    o_proj, gate_up_proj (2 slices), down_proj; MoE experts each hold the gate_up/down pair (fused_moe.py).
    """
    hidden = model.hidden_size
    q = model.num_attention_heads * model.head_dim
    kv = _kv_heads_per_gpu(model, tp) * model.head_dim
    qkv = 3 * hidden + math.ceil(q / tp) + 2 * kv
    o_proj = math.ceil(q / tp) + hidden

    def mlp(width: int) -> int:  # gate_up (2 slices) + down
        return 2 * hidden + 2 * math.ceil(width / tp) + math.ceil(width / tp) + hidden

    dense = model.num_layers - model.moe_layers
    attention = model.num_layers * (qkv + o_proj)
    if not model.is_moe:
        return attention + dense * mlp(model.intermediate_size)
    expert_width = model.expert_params // (3 * hidden) if hidden else 0
    return attention + dense * mlp(model.intermediate_size) + model.moe_layers * model.num_experts * mlp(expert_width)


def lora_bytes_per_gpu(
    model: ModelInfo, *, max_loras: int, max_lora_rank: int, tp: int = 1, pp: int = 1, dtype_bytes: int = 2
) -> int:
    """GPU bytes vLLM preallocates for LoRA slots on the fullest GPU of a replica, before any adapter loads.

    `max_loras x max_lora_rank x (sum over wrapped layers of in + out) x dtype bytes`: every LoRA-wrapped
    linear layer allocates `lora_a_stacked (max_loras, 1, max_lora_rank, in)` and `lora_b_stacked (max_loras,
    1, out, max_lora_rank)` at engine start; the embedding (`vocab x rank` and `rank x hidden`) and the LM head's
    logits processor (`rank x hidden` and `vocab x rank`) are wrapped too, unsharded on every TP rank, on the
    first and last pipeline stage. Llama-3.1-8B: 2.89M elements per slot and rank, 5.8 MB in bf16.

    Args:
        model: The model.
        max_loras: vLLM's `max_loras` (GPU slots); 0 when LoRA is off.
        max_lora_rank: vLLM's `max_lora_rank`.
        tp: Tensor-parallel size.
        pp: Pipeline-parallel size (the fullest stage is counted).
        dtype_bytes: Bytes per element (vLLM's lora_dtype follows the model dtype).

    Returns:
        Bytes on one GPU.
    """
    if max_loras <= 0 or max_lora_rank <= 0:
        return 0
    layers = math.ceil(_lora_layer_elements(model, tp) * math.ceil(model.num_layers / pp) / model.num_layers)
    vocab_ends = 2 * (model.vocab_size + model.hidden_size) if pp == 1 else model.vocab_size + model.hidden_size
    return max_loras * max_lora_rank * (layers + vocab_ends) * dtype_bytes


@dataclass(frozen=True)
class MemoryBreakdown:
    """Memory of one replica placement, per GPU (or MIG slice) unless said otherwise.

    Attributes:
        weights_per_gpu: Weight bytes on the fullest GPU.
        kv_per_token_per_gpu: KV bytes per token per GPU.
        kv_per_sequence_per_gpu: KV bytes of one max_model_len sequence per GPU.
        overhead_per_gpu: Activations + CUDA context + CUDA graphs + LoRA slots per GPU.
        capacity_per_gpu: gpu_memory_utilization x device memory.
        sequences: Sequences per replica the check was made for.
        max_sequences: Most max_model_len sequences that fit (0: not even one).
        devices: GPUs (or slices) per replica.
        lora_per_gpu: LoRA slot buffers per GPU (part of overhead_per_gpu); 0 without LoRA.
    """

    weights_per_gpu: int
    kv_per_token_per_gpu: int
    kv_per_sequence_per_gpu: int
    overhead_per_gpu: int
    capacity_per_gpu: int
    sequences: int
    max_sequences: int
    devices: int
    lora_per_gpu: int = 0

    @property
    def kv_per_gpu(self) -> int:
        """KV bytes the requested sequences hold per GPU."""
        return self.sequences * self.kv_per_sequence_per_gpu

    @property
    def required_per_gpu(self) -> int:
        """Weights + KV + overhead per GPU."""
        return self.weights_per_gpu + self.kv_per_gpu + self.overhead_per_gpu

    @property
    def free_for_kv_per_gpu(self) -> int:
        """What the budget leaves for KV cache per GPU (negative: the weights alone do not fit)."""
        return self.capacity_per_gpu - self.weights_per_gpu - self.overhead_per_gpu

    @property
    def fits(self) -> bool:
        """Whether the requested sequences fit (and at least one)."""
        return self.sequences >= 1 and self.required_per_gpu <= self.capacity_per_gpu


def compute_memory(
    model: ModelInfo,
    *,
    precision: Precision,
    kv_dtype_bytes: int,
    max_model_len: int,
    sequences: int,
    device_memory_bytes: int,
    gpu_memory_utilization: float,
    tp: int = 1,
    pp: int = 1,
    max_num_batched_tokens: int = 8192,
    max_num_seqs: int = 256,
    enforce_eager: bool = False,
    max_loras: int = 0,
    max_lora_rank: int = 0,
    lora_dtype_bytes: int = 2,
) -> MemoryBreakdown:
    """Check a replica placement against vLLM's memory budget.

    Args:
        model: The model.
        precision: Weight precision.
        kv_dtype_bytes: Bytes per cached KV element.
        max_model_len: Context per sequence the KV cache must hold.
        sequences: Concurrent max_model_len sequences per replica.
        device_memory_bytes: Memory of one GPU or MIG slice.
        gpu_memory_utilization: vLLM's budget fraction.
        tp: Tensor-parallel size.
        pp: Pipeline-parallel size.
        max_num_batched_tokens: vLLM's per-step token budget (sizes activations).
        max_num_seqs: vLLM's running-sequence cap (sizes logits).
        enforce_eager: Whether CUDA graphs are off.
        max_loras: vLLM's LoRA GPU slots (0: LoRA off).
        max_lora_rank: vLLM's max_lora_rank.
        lora_dtype_bytes: Bytes per LoRA element.

    Returns:
        The per-GPU breakdown.
    """
    weights = weights_bytes_per_gpu(model, precision, tp, pp)
    lora = lora_bytes_per_gpu(
        model, max_loras=max_loras, max_lora_rank=max_lora_rank, tp=tp, pp=pp, dtype_bytes=lora_dtype_bytes
    )
    overhead = (
        activation_bytes(model, max_num_batched_tokens, max_num_seqs, tp)
        + CUDA_CONTEXT_BYTES
        + (0 if enforce_eager else CUDA_GRAPH_BYTES)
        + lora
    )
    capacity = int(device_memory_bytes * gpu_memory_utilization)
    per_seq = kv_bytes_per_sequence(model, max_model_len, kv_dtype_bytes, tp, pp)
    free = capacity - weights - overhead
    return MemoryBreakdown(
        weights_per_gpu=weights,
        kv_per_token_per_gpu=kv_bytes_per_token(model, kv_dtype_bytes, tp, pp),
        kv_per_sequence_per_gpu=per_seq,
        overhead_per_gpu=overhead,
        capacity_per_gpu=capacity,
        sequences=sequences,
        max_sequences=max(0, free // per_seq),
        devices=tp * pp,
        lora_per_gpu=lora,
    )


def max_model_len_for(
    model: ModelInfo, breakdown: MemoryBreakdown, *, sequences: int, kv_dtype_bytes: int, tp: int, pp: int
) -> int:
    """Longest context `sequences` concurrent sequences can each hold in a placement (0 if none).

    Args:
        model: The model.
        breakdown: The placement's memory breakdown.
        sequences: Concurrent sequences per replica.
        kv_dtype_bytes: Bytes per cached KV element.
        tp: Tensor-parallel size.
        pp: Pipeline-parallel size.

    Returns:
        Tokens, capped at the model's max_position_embeddings.
    """
    free = breakdown.free_for_kv_per_gpu
    low, high = 0, model.max_position_embeddings
    while low < high:  # KV bytes grow monotonically with tokens (piecewise linear with windows)
        mid = (low + high + 1) // 2
        if sequences * kv_bytes_per_sequence(model, mid, kv_dtype_bytes, tp, pp) <= free:
            low = mid
        else:
            high = mid - 1
    return low
