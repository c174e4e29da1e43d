"""Model introspection: a Hugging Face config.json (or a built-in entry) -> layout, parameters, KV shape."""

from __future__ import annotations

import difflib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_operator.plan.precision import Precision

__all__ = [
    "FLOAT16_REFUSED_MODEL_TYPES",
    "NO_MTP_MODEL_TYPES",
    "ModelInfo",
    "builtin_model_names",
    "find_builtin_model",
    "model_info_from_config",
    "read_model_dir",
    "resolve_model",
]

_INVALID = PlanErrorReason.INVALID_MODEL_CONFIG
# Model types vLLM 0.32 refuses to run in float16 ("numerical instability"; vllm/config/model.py
# `_FLOAT16_NOT_SUPPORTED_MODELS`). With dtype auto on a GPU without bfloat16 it runs them in float32
# (`_resolve_auto_dtype`: the platform's first supported dtype that is valid for the model).
FLOAT16_REFUSED_MODEL_TYPES = frozenset({"gemma2", "gemma3", "gemma3_text", "glm4"})
# Model types vLLM 0.32 has no multi-token-prediction draft for (`SpeculativeConfig.hf_config_override` maps none
# of them to an `MTPModelTypes` draft): speculative method mtp on them fails at engine start. The families of the
# built-in catalog and their kin; a model type not listed is left to vLLM (a test checks the list against it).
NO_MTP_MODEL_TYPES = frozenset(
    {
        "llama", "llama4", "llama4_text", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3",
        "gemma", "gemma2", "gemma3", "gemma3_text",
    }
)  # fmt: skip
_SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024  # a real header is kilobytes; refuse garbage lengths


@dataclass(frozen=True)
class ModelInfo:
    """What the planner needs to know about a model, derived from its config.

    Attributes:
        name: Model id or path it came from.
        model_type: The config's model_type (of the text model for multimodal configs).
        num_layers: Decoder layers.
        hidden_size: Residual width.
        intermediate_size: Dense MLP width (of the dense layers in a MoE model).
        vocab_size: Vocabulary size.
        num_attention_heads: Query heads.
        num_kv_heads: Key/value heads (== heads for MHA, 1 for MQA, in between for GQA).
        head_dim: Width of one attention head.
        max_position_embeddings: Longest context the model supports.
        params_total: Parameters the weights hold (all experts).
        params_active: Parameters used per token (routed top-k experts only).
        params_embedding: Embedding plus untied LM-head parameters (kept at 16 bits when quantized).
        num_experts: Routed experts per MoE layer; 0 for a dense model.
        experts_per_token: Routed experts each token uses.
        moe_layers: Layers with a MoE block.
        expert_params: Parameters of one routed expert.
        kv_lora_rank: MLA latent width (DeepSeek-style); 0 when the model uses ordinary attention.
        qk_rope_head_dim: MLA decoupled RoPE key width, cached next to the latent.
        sliding_window: Window of the sliding-window (or chunked local) layers, or None.
        sliding_layers: How many layers use that window; the rest attend to the whole context.
        native_precision: Precision the checkpoint is stored in.
        checkpoint_bytes: Exact weight bytes from safetensors metadata, when known.
    """

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    params_total: int
    params_active: int
    params_embedding: int
    num_experts: int = 0
    experts_per_token: int = 0
    moe_layers: int = 0
    expert_params: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    sliding_window: int | None = None
    sliding_layers: int = 0
    native_precision: Precision = Precision.BF16
    checkpoint_bytes: int | None = None

    @property
    def is_moe(self) -> bool:
        """Whether the model routes tokens to experts."""
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        """Whether the model caches a compressed latent (multi-head latent attention) instead of K and V."""
        return self.kv_lora_rank > 0

    @property
    def attention_kind(self) -> str:
        """MHA, GQA, MQA or MLA, for humans."""
        if self.is_mla:
            return "MLA"
        if self.num_kv_heads == self.num_attention_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else "GQA"


def _int(cfg: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise PlanError(_INVALID, f"config.json has no {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PlanError(_INVALID, f"config.json {key!r} must be a non-negative integer, got {value!r}")
    return value


def _native_precision(cfg: Mapping[str, Any]) -> Precision:
    quant = cfg.get("quantization_config")
    if isinstance(quant, Mapping):
        method = str(quant.get("quant_method", "")).lower()
        bits = quant.get("bits") or quant.get("w_bit")
        if method in ("fp8", "fbgemm_fp8"):
            return Precision.FP8
        if method in ("awq", "gptq", "marlin", "gptq_marlin", "awq_marlin"):
            return Precision.INT8 if bits == 8 else Precision.INT4
        if method == "bitsandbytes":
            return Precision.INT8 if quant.get("load_in_8bit") else Precision.INT4
        if method == "compressed-tensors":
            for group in (quant.get("config_groups") or {}).values():
                weights = group.get("weights") or {}
                if weights.get("num_bits") == 8:
                    return Precision.FP8 if weights.get("type") == "float" else Precision.INT8
                if weights.get("num_bits") == 4:
                    return Precision.INT4
        if method:
            return Precision.INT4 if bits == 4 else Precision.FP8
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").lower()
    return Precision.FP16 if dtype in ("float16", "fp16", "half") else Precision.BF16


def _sliding(cfg: Mapping[str, Any], model_type: str, layers: int) -> tuple[int | None, int]:
    """Return (window, number of windowed layers); chunked local attention counts as a window."""
    if model_type.startswith("llama4") and cfg.get("attention_chunk_size"):
        # Llama 4: three of every four layers use chunked local attention, every fourth is global (NoPE).
        return _int(cfg, "attention_chunk_size"), layers - layers // 4
    window = cfg.get("sliding_window")
    if not window or cfg.get("use_sliding_window") is False:
        return None, 0
    types = cfg.get("layer_types")
    if isinstance(types, list) and types:
        return int(window), sum(1 for t in types if t == "sliding_attention")
    if model_type == "gemma2":
        return int(window), (layers + 1) // 2  # even layers are local
    pattern = cfg.get("sliding_window_pattern")
    if model_type.startswith("gemma3") or pattern:
        every = int(pattern or 6)  # every `pattern`-th layer is global
        return int(window), layers - layers // every
    return int(window), layers


def model_info_from_config(config: Mapping[str, Any], *, name: str, checkpoint_bytes: int | None = None) -> ModelInfo:
    """Derive a model's layout and parameter counts from its Hugging Face config.

    Handles dense, GQA/MQA, MoE (Mixtral, Qwen-MoE, DeepSeek, Llama 4), MLA (DeepSeek V2/V3) and
    sliding-window/chunked attention. Biases and norms are left out of the parameter count (< 0.1 %).

    Args:
        config: The parsed config.json.
        name: Where the config came from, for messages.
        checkpoint_bytes: Exact weight bytes, when the safetensors metadata gave them.

    Returns:
        The model's ModelInfo.

    Raises:
        PlanError: InvalidModelConfig when a required field is missing or malformed.
    """
    if not isinstance(config, Mapping):
        raise PlanError(_INVALID, f"{name}: config.json must be a JSON object")
    text = config.get("text_config")
    # Multimodal configs (Llama 4, Gemma 3) nest the language model; outer keys fill what it leaves out.
    cfg: Mapping[str, Any] = {**config, **text} if isinstance(text, Mapping) else config
    model_type = str(cfg.get("model_type") or "unknown")
    hidden = _int(cfg, "hidden_size")
    layers = _int(cfg, "num_hidden_layers")
    heads = _int(cfg, "num_attention_heads")
    vocab = _int(cfg, "vocab_size")
    if min(hidden, layers, heads, vocab) == 0:
        raise PlanError(
            _INVALID, f"{name}: hidden_size, num_hidden_layers, num_attention_heads, vocab_size must be > 0"
        )
    kv_heads = _int(cfg, "num_key_value_heads", heads)
    if kv_heads == 0 or heads % kv_heads:
        raise PlanError(_INVALID, f"{name}: num_key_value_heads ({kv_heads}) must divide num_attention_heads ({heads})")
    head_dim = _int(cfg, "head_dim", hidden // heads)
    max_pos = _int(cfg, "max_position_embeddings", 2048)
    if head_dim == 0 or max_pos == 0:  # both divide the KV and context sizing later
        raise PlanError(_INVALID, f"{name}: head_dim and max_position_embeddings must be > 0 when given")
    intermediate = _int(cfg, "intermediate_size_mlp", cfg.get("intermediate_size") or 4 * hidden)

    kv_lora_rank = int(cfg.get("kv_lora_rank") or 0)
    rope_dim = int(cfg.get("qk_rope_head_dim") or 0)
    if kv_lora_rank:
        nope, v_dim = _int(cfg, "qk_nope_head_dim"), _int(cfg, "v_head_dim")
        q_rank = int(cfg.get("q_lora_rank") or 0)
        q_params = (
            hidden * q_rank + q_rank * heads * (nope + rope_dim) if q_rank else hidden * heads * (nope + rope_dim)
        )
        kv_params = hidden * (kv_lora_rank + rope_dim) + kv_lora_rank * heads * (nope + v_dim)
        attention = q_params + kv_params + heads * v_dim * hidden
    else:
        attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim

    experts = int(cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    top_k = int(cfg.get("num_experts_per_tok") or 0) if experts else 0
    if experts and not 0 < top_k <= experts:
        raise PlanError(_INVALID, f"{name}: num_experts_per_tok must be between 1 and {experts}")
    expert_width = int(cfg.get("moe_intermediate_size") or cfg.get("intermediate_size") or 0)
    expert = 3 * hidden * expert_width  # gated MLP: gate, up, down
    shared = 0
    if experts:
        if cfg.get("n_shared_experts"):
            shared = 3 * hidden * expert_width * int(cfg["n_shared_experts"])
        elif cfg.get("shared_expert_intermediate_size"):
            shared = 3 * hidden * int(cfg["shared_expert_intermediate_size"])
        elif model_type.startswith("llama4"):
            shared = 3 * hidden * int(cfg.get("intermediate_size") or 0)

    moe_layers = 0
    if experts:
        first_dense = int(cfg.get("first_k_dense_replace") or 0)
        freq = int(
            cfg.get("moe_layer_freq") or cfg.get("decoder_sparse_step") or cfg.get("interleave_moe_layer_step") or 1
        )
        dense_only = set(cfg.get("mlp_only_layers") or [])
        for i in range(layers):
            if model_type.startswith("deepseek"):
                moe_layers += i >= first_dense and i % freq == 0
            else:
                moe_layers += i not in dense_only and (i + 1) % freq == 0
    dense_layers = layers - moe_layers
    dense_mlp = 3 * hidden * intermediate
    router = hidden * experts

    embedding = vocab * hidden * (1 if cfg.get("tie_word_embeddings", False) else 2)
    body_common = layers * attention + dense_layers * dense_mlp + moe_layers * (shared + router)
    total = embedding + body_common + moe_layers * experts * expert
    active = embedding + body_common + moe_layers * top_k * expert

    window, sliding_layers = _sliding(cfg, model_type, layers)
    return ModelInfo(
        name=name,
        model_type=model_type,
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=intermediate if not experts else max(intermediate, expert_width),
        vocab_size=vocab,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        params_total=total,
        params_active=active,
        params_embedding=embedding,
        num_experts=experts,
        experts_per_token=top_k,
        moe_layers=moe_layers,
        expert_params=expert,
        kv_lora_rank=kv_lora_rank,
        qk_rope_head_dim=rope_dim if kv_lora_rank else 0,
        sliding_window=window,
        sliding_layers=sliding_layers,
        native_precision=_native_precision(cfg),
        checkpoint_bytes=checkpoint_bytes,
    )


def _safetensors_bytes(directory: Path) -> int | None:
    """Exact weight bytes: the sharded index's metadata.total_size, or the single file's tensor extents."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            total = json.loads(index.read_text(encoding="utf-8")).get("metadata", {}).get("total_size")
        except (OSError, ValueError, AttributeError):
            return None
        return int(total) if isinstance(total, int | float) and total > 0 else None
    single = directory / "model.safetensors"
    if not single.is_file():
        return None
    try:
        with single.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _SAFETENSORS_HEADER_LIMIT:
                return None
            header = json.loads(f.read(length))
        return (
            sum(t["data_offsets"][1] - t["data_offsets"][0] for k, t in header.items() if k != "__metadata__") or None
        )
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def read_model_dir(path: Path) -> ModelInfo:
    """Read a model from a local directory (config.json + safetensors metadata) or a config.json file.

    Args:
        path: A model directory, or the config.json file itself.

    Returns:
        The model's ModelInfo, with exact weight bytes when the directory has safetensors metadata.

    Raises:
        PlanError: InvalidModelConfig when the file is missing, not JSON, or lacks required fields.
    """
    config_file = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(_INVALID, f"{config_file}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PlanError(_INVALID, f"{config_file}: cannot read it ({err})") from None
    except ValueError as err:
        raise PlanError(_INVALID, f"{config_file}: not valid JSON ({err})") from None
    return model_info_from_config(config, name=str(path), checkpoint_bytes=_safetensors_bytes(config_file.parent))


@cache
def _builtin() -> dict[str, tuple[str, Mapping[str, Any]]]:
    text = resources.files(__package__).joinpath("models.yaml").read_text(encoding="utf-8")
    entries: dict[str, Any] = yaml.safe_load(text)
    index: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for model_id, entry in entries.items():
        for alias in [model_id, *entry.get("aliases", [])]:
            index[alias.lower()] = (model_id, entry["config"])
            index.setdefault(alias.lower().rsplit("/", 1)[-1], (model_id, entry["config"]))
    return index


def builtin_model_names() -> list[str]:
    """List the models `plan` knows offline by name.

    Returns:
        Their Hugging Face ids, sorted.
    """
    return sorted({model_id for model_id, _ in _builtin().values()})


def find_builtin_model(name: str) -> ModelInfo | None:
    """Look up a well-known model by Hugging Face id or short alias.

    Args:
        name: e.g. "meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b" or "hf://Qwen/Qwen3-235B-A22B".

    Returns:
        Its ModelInfo, or None when the name is not in the built-in table.
    """
    key = name.strip().removeprefix("hf://").lower()
    hit = _builtin().get(key) or _builtin().get(key.rsplit("/", 1)[-1])
    return model_info_from_config(hit[1], name=hit[0]) if hit else None


def resolve_model(name_or_path: str) -> ModelInfo:
    """Find a model by built-in name, or read it from a local directory or config.json.

    Args:
        name_or_path: A model name, or a path to a model directory or config.json.

    Returns:
        The model's ModelInfo.

    Raises:
        PlanError: UnknownModel when the name is neither built in nor a local path; InvalidModelConfig
            when a local config is malformed.
    """
    local = Path(name_or_path.removeprefix("file://"))
    if local.exists():
        return read_model_dir(local)
    info = find_builtin_model(name_or_path)
    if info is not None:
        return info
    close = difflib.get_close_matches(name_or_path.lower(), list(_builtin()), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise PlanError(
        PlanErrorReason.UNKNOWN_MODEL,
        f"{name_or_path!r} is not a built-in model and not a local path.{hint} "
        f"Pass its config.json with --model-config; built-in names: {', '.join(builtin_model_names())}.",
    )
