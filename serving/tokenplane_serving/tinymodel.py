"""Deterministic tiny Llama model and LoRA adapter, made offline for local runs and tests."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["TINY_CORPUS", "write_tiny_lora", "write_tiny_model"]

# Marker written next to the weights: idempotency compares it, and it tells us a directory is ours to replace.
_MARKER = "tokenplane_tiny.json"
_LORA_MARKER = "tokenplane_tiny_lora.json"
# Bumped when the recipe changes, so an old directory is rebuilt instead of silently reused.
_RECIPE_VERSION = 1

_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, in Llama's order
_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Shipped with the package so the tokenizer trains offline and identically everywhere.
TINY_CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Language models read text as tokens. A tokenizer splits words into pieces that it has seen often, and the
model learns which piece is likely to come next. Small models are fast and cheap; large models know more.
The weather today is mild, with a light breeze from the west and a few clouds over the hills. Tomorrow
it may rain in the morning, and the afternoon should be bright and warm. Farmers watch the sky, sailors
watch the wind, and children watch the clock until school is over for the day.
Once upon a time there was a small village by a river. The people of the village baked bread, mended
nets and told stories in the evening. One winter the river froze, and the children skated from one bank
to the other while their parents built a fire on the shore and sang old songs about the sea.
A computer is a machine that follows instructions. A program is a list of those instructions, written
in a language that people can read and that the machine can translate. Good programs are clear, tested
and small enough to understand. When a program fails, the error message should say what went wrong and
what to do next, in one line, without a wall of text.
Cloud platforms rent computers by the hour. A cluster groups many machines together, and a scheduler
decides where each piece of work should run. Graphics processors are good at the arithmetic that neural
networks need, so they are in high demand and cost more than ordinary processors. Engineers try to keep
them busy, because an idle accelerator still costs money.
How are you today? I am well, thank you. What would you like to do this afternoon? We could walk in the
park, visit the library, or cook a meal together. Let us meet at noon near the old bridge, and bring a
coat in case it turns cold. Please remember to close the door and water the plants before you leave.
Questions and answers: What is the capital of France? Paris is the capital of France. How many days are
in a week? There are seven days in a week. What colour is the sky on a clear day? It is blue. Why do
leaves fall in autumn? The days grow shorter, the trees stop making food, and the leaves dry and drop.
Mathematics is the study of numbers, shapes and patterns. One plus one is two. Two times three is six.
Ten divided by two is five. The square of four is sixteen, and the square root of nine is three. A
circle has no corners, a triangle has three, and a square has four equal sides and four right angles.
The library opens at nine in the morning and closes at six in the evening. Books may be borrowed for
three weeks and renewed twice. Quiet rooms on the second floor are reserved for reading and study, and
the cafe on the ground floor serves tea, coffee, soup and sandwiches until half past five.
Music can be loud or soft, fast or slow. A song has a melody that you can hum and a rhythm that you can
tap with your foot. Some people play the piano, others play the guitar, the violin or the drums, and
many simply enjoy listening to the radio while they cook, clean or drive to work in the morning.
Good habits make long lives: sleep enough, eat vegetables, drink water, walk every day and call your
friends. Write things down, finish what you start, and ask for help when you need it. Be kind to
strangers, patient with yourself and honest with others, and the rest will usually follow in time.
"""


def _lazy_imports() -> Any:
    # transformers/torch take seconds to import; keep `import tokenplane_serving.tinymodel` cheap.
    import torch
    import transformers

    return torch, transformers


def _prepare_target(path: Path, marker: str, params: dict[str, Any]) -> bool:
    """Return True if `path` already holds exactly these params; raise if it holds something else."""
    marker_file = path / marker
    complete = (path / "config.json").exists() or (path / "adapter_config.json").exists()
    if marker_file.exists() and complete and json.loads(marker_file.read_text()) == params:
        return True
    if path.exists() and any(path.iterdir()) and not marker_file.exists():
        # Never delete a directory we did not make (it could be a real model).
        raise FileExistsError(f"{path} exists, is not empty and was not made by tokenplane; refusing to overwrite")
    return False


def _publish(tmp: Path, path: Path) -> None:
    # Build in a sibling temp dir and rename, so a crash never leaves a half-written model behind.
    # mkdtemp/safetensors create owner-only modes; Ray workers or a container user may differ.
    tmp.chmod(0o755)
    for f in tmp.iterdir():
        f.chmod(0o644)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def _train_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    _, transformers = _lazy_imports()

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS.splitlines(keepends=True), trainer=trainer)
    # Completions start with BOS like Llama; the chat template adds its own BOS, so vLLM's chat path
    # (which tokenises the rendered template without special tokens) gets exactly one.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=_CHAT_TEMPLATE,
        model_max_length=1 << 30,
    )


def write_tiny_model(
    path: str | os.PathLike[str],
    *,
    num_hidden_layers: int = 4,
    hidden_size: int = 256,
    intermediate_size: int = 688,
    num_attention_heads: int = 8,
    num_key_value_heads: int = 4,
    max_position_embeddings: int = 4096,
    vocab_size: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a deterministic tiny Llama-architecture model (about 8 MB with the defaults).

    The tokenizer is a byte-level BPE trained on `TINY_CORPUS`; the weights are seeded random bf16.
    The same arguments always produce byte-identical weight files. The shape overrides exist so the
    capacity planner can build MHA (`num_key_value_heads == num_attention_heads`) or MQA (`1`)
    variants and compare its KV-cache arithmetic with what vLLM allocates.

    Args:
        path: Target directory. Created if missing; replaced only if an earlier call made it.
        num_hidden_layers: Transformer layers.
        hidden_size: Model width; must be divisible by `num_attention_heads`.
        intermediate_size: MLP width.
        num_attention_heads: Query heads.
        num_key_value_heads: KV heads; must divide `num_attention_heads`.
        max_position_embeddings: Longest context the config admits.
        vocab_size: Embedding rows and the tokenizer's vocabulary cap.
        seed: Seed for the weights.

    Returns:
        The model directory, usable as a vLLM `model` / Ray `model_source`.

    Raises:
        ValueError: If the head counts do not divide evenly.
        FileExistsError: If `path` is a non-empty directory not made by this function.
    """
    if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
        raise ValueError(
            "hidden_size must be divisible by num_attention_heads, and num_attention_heads by "
            f"num_key_value_heads (got {hidden_size}, {num_attention_heads}, {num_key_value_heads})"
        )
    target = Path(path).expanduser().resolve()
    params: dict[str, Any] = {
        "recipe": _RECIPE_VERSION,
        "num_hidden_layers": num_hidden_layers,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": max_position_embeddings,
        "vocab_size": vocab_size,
        "seed": seed,
    }
    if _prepare_target(target, _MARKER, params):
        return target

    torch, transformers = _lazy_imports()
    tokenizer = _train_tokenizer(vocab_size)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    # A local generator would be cleaner, but HF's init draws from the global RNG; restore it afterwards.
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    finally:
        torch.random.set_rng_state(rng_state)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_tiny_lora(
    path: str | os.PathLike[str],
    base_dir: str | os.PathLike[str],
    *,
    rank: int = 8,
    alpha: int = 16,
    seed: int = 1,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
) -> Path:
    """Write a PEFT-format LoRA adapter for a model made by `write_tiny_model`.

    Unlike a freshly initialised PEFT adapter (whose B matrices are zero), both A and B are random
    and non-zero, so greedy output with the adapter differs from the base model.

    Args:
        path: Adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
        base_dir: The base model directory; its `config.json` gives the shapes.
        rank: LoRA rank `r`; vLLM needs `max_lora_rank >= rank`.
        alpha: `lora_alpha`; the update is scaled by `alpha / rank`.
        seed: Seed for the adapter weights.
        target_modules: Attention projections to adapt (`q_proj`, `k_proj`, `v_proj`, `o_proj`).

    Returns:
        The adapter directory.

    Raises:
        FileNotFoundError: If `base_dir` has no `config.json`.
        ValueError: If a target module is not an attention projection.
        FileExistsError: If `path` is a non-empty directory not made by this function.
    """
    base = Path(base_dir).expanduser().resolve()
    config_file = base / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"no config.json in {base}; make the base model first (write_tiny_model)")
    cfg = json.loads(config_file.read_text())
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // int(cfg["num_attention_heads"]))
    kv_out = int(cfg["num_key_value_heads"]) * head_dim
    out_features = {"q_proj": hidden, "k_proj": kv_out, "v_proj": kv_out, "o_proj": hidden}
    in_features = {"q_proj": hidden, "k_proj": hidden, "v_proj": hidden, "o_proj": hidden}
    unknown = sorted(set(target_modules) - set(out_features))
    if unknown:
        raise ValueError(f"unsupported target modules {unknown}; use {sorted(out_features)}")

    target = Path(path).expanduser().resolve()
    params: dict[str, Any] = {
        "recipe": _RECIPE_VERSION,
        "base_config": cfg,
        "rank": rank,
        "alpha": alpha,
        "seed": seed,
        "target_modules": list(target_modules),
    }
    if _prepare_target(target, _LORA_MARKER, params):
        return target

    torch, _ = _lazy_imports()
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, Any] = {}
    for layer in range(int(cfg["num_hidden_layers"])):
        for module in target_modules:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            # Std 0.1 on both factors: with alpha/r = 2 the update is a few times the base weights'
            # 0.02 init, enough to change greedy tokens without turning the output into NaNs.
            a = torch.randn(rank, in_features[module], generator=gen) * 0.1
            b = torch.randn(out_features[module], rank, generator=gen) * 0.1
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16).contiguous()
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16).contiguous()
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": list(target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
    }

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
        (tmp / _LORA_MARKER).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
