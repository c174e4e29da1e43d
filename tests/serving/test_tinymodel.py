"""The tiny model and LoRA recipes: deterministic, idempotent, shaped as asked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tokenplane_serving.tinymodel import write_tiny_lora, write_tiny_model


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    again = write_tiny_model(tmp_path / "again")
    assert sha256(again / "model.safetensors") == sha256(tiny_model_dir / "model.safetensors")
    assert (again / "tokenizer.json").read_text() == (tiny_model_dir / "tokenizer.json").read_text()


def test_idempotent_and_rebuilt_on_new_params(tmp_path: Path) -> None:
    target = write_tiny_model(
        tmp_path / "m",
        num_hidden_layers=1,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=1,
    )
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    write_tiny_model(
        target, num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1
    )
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime  # skipped
    write_tiny_model(
        target,
        num_hidden_layers=1,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=4,
        seed=7,
    )
    config = json.loads((target / "config.json").read_text())
    assert (config["num_key_value_heads"], config["num_attention_heads"]) == (4, 4)  # MHA variant


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not made by tokenplane"):
        write_tiny_model(tmp_path)


def test_bad_head_counts() -> None:
    with pytest.raises(ValueError, match="divisible"):
        write_tiny_model("/nonexistent", num_attention_heads=8, num_key_value_heads=3)


def test_tokenizer_and_config(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] == 4
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(tokenizer) <= config["vocab_size"]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) == (
        "<s>",
        "</s>",
        "<unk>",
        "<pad>",
    )
    ids = tokenizer("Hello world").input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Hello world"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<s><|user|>\nhi</s>\n<|assistant|>\n"


def test_lora_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file

    adapter = write_tiny_lora(tmp_path / "lora", tiny_model_dir, rank=8, alpha=16)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 8, 16)
    tensors = load_file(adapter / "adapter_model.safetensors")
    assert len(tensors) == 4 * 2 * 2  # layers x (q, v) x (A, B)
    a = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b_v = tensors["base_model.model.model.layers.3.self_attn.v_proj.lora_B.weight"]
    assert tuple(a.shape) == (8, 256)
    assert tuple(b_v.shape) == (4 * 32, 8)  # kv heads x head dim
    assert b_v.abs().sum() > 0  # unlike PEFT's init, B is non-zero so output changes
    again = write_tiny_lora(tmp_path / "lora2", tiny_model_dir, rank=8, alpha=16)
    assert sha256(again / "adapter_model.safetensors") == sha256(adapter / "adapter_model.safetensors")
