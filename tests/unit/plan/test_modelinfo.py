"""Model introspection: config.json parsing, safetensors bytes, the built-in table, bad inputs."""

from __future__ import annotations

import json
import struct
import typing
from pathlib import Path

import pytest
import yaml

from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_operator.plan.modelinfo import (
    NO_MTP_MODEL_TYPES,
    builtin_model_names,
    find_builtin_model,
    model_info_from_config,
    read_model_dir,
    resolve_model,
)
from tokenplane_operator.plan.precision import Precision

MODELS_YAML = Path(__file__).parents[3] / "operator/tokenplane_operator/plan/models.yaml"


@pytest.mark.parametrize("name", builtin_model_names())
def test_builtin_parameter_counts_match_the_published_ones(name: str) -> None:
    published = float(yaml.safe_load(MODELS_YAML.read_text())[name]["params"])
    info = find_builtin_model(name)
    assert info is not None
    assert info.params_total == pytest.approx(published, rel=0.02)


@pytest.mark.parametrize(
    ("alias", "model_id"),
    [
        ("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct"),
        ("hf://Qwen/Qwen3-235B-A22B", "Qwen/Qwen3-235B-A22B"),
        ("DEEPSEEK-R1", "deepseek-ai/DeepSeek-V3"),
        ("Mixtral-8x22B-Instruct-v0.1", "mistralai/Mixtral-8x22B-Instruct-v0.1"),
    ],
)
def test_builtin_lookup_by_alias(alias: str, model_id: str) -> None:
    info = find_builtin_model(alias)
    assert info is not None and info.name == model_id


def test_attention_kinds() -> None:
    base = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 100}
    assert model_info_from_config({**base, "num_key_value_heads": 8}, name="x").attention_kind == "MHA"
    assert model_info_from_config({**base, "num_key_value_heads": 2}, name="x").attention_kind == "GQA"
    assert model_info_from_config({**base, "num_key_value_heads": 1}, name="x").attention_kind == "MQA"
    assert find_builtin_model("deepseek-v3").attention_kind == "MLA"  # type: ignore[union-attr]


def test_native_precision_from_quantization_config() -> None:
    assert find_builtin_model("deepseek-v3").native_precision is Precision.FP8  # type: ignore[union-attr]
    cfg = {
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "vocab_size": 10,
        "quantization_config": {"quant_method": "awq", "bits": 4},
    }
    assert model_info_from_config(cfg, name="x").native_precision is Precision.INT4


def test_safetensors_index_total_size_is_exact(tmp_path: Path) -> None:
    config = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 123456}}))
    assert read_model_dir(tmp_path).checkpoint_bytes == 123456


def test_single_safetensors_header_is_summed(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10})
    )
    header = json.dumps(
        {
            "a": {"dtype": "BF16", "shape": [10, 4], "data_offsets": [0, 80]},
            "b": {"dtype": "BF16", "shape": [4], "data_offsets": [80, 88]},
            "__metadata__": {"format": "pt"},
        }
    ).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 88)
    assert read_model_dir(tmp_path).checkpoint_bytes == 88


SMALL = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 9}


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"hidden_size": 64}),
        json.dumps(
            {
                "hidden_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "num_key_value_heads": 3,
                "vocab_size": 9,
            }
        ),
        json.dumps({"hidden_size": "big", "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 9}),
        # Divided by later: plan said "internal error (integer division or modulo by zero)" before.
        json.dumps({**SMALL, "head_dim": 0}),
        json.dumps({**SMALL, "max_position_embeddings": 0}),
    ],
)
def test_malformed_config_is_invalid_model_config(tmp_path: Path, content: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(PlanError) as err:
        read_model_dir(path)
    assert err.value.reason is PlanErrorReason.INVALID_MODEL_CONFIG


def test_missing_config_is_invalid_model_config(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as err:
        read_model_dir(tmp_path)
    assert err.value.reason is PlanErrorReason.INVALID_MODEL_CONFIG


def test_unknown_model_name() -> None:
    with pytest.raises(PlanError) as err:
        resolve_model("acme/does-not-exist-70b")
    assert err.value.reason is PlanErrorReason.UNKNOWN_MODEL
    assert "--model-config" in err.value.message


def test_model_types_refused_for_mtp_have_no_mtp_draft_in_the_installed_vllm() -> None:
    """Each type in NO_MTP_MODEL_TYPES is one vLLM maps to no MTP draft; DeepSeek-V3, which has one, is seen."""
    pytest.importorskip("vllm")
    from transformers import PretrainedConfig
    from vllm.config.speculative import MTPModelTypes, SpeculativeConfig

    def drafted(model_type: str, architecture: str) -> bool:
        config = PretrainedConfig(architectures=[architecture])
        config.model_type = model_type
        return SpeculativeConfig.hf_config_override(config).model_type in typing.get_args(MTPModelTypes)

    assert drafted("deepseek_v3", "DeepseekV3ForCausalLM")
    # vLLM also keys some drafts on the architecture (MiMo, GLM-4 MoE); a placeholder of the type's name stands in
    # for the listed families' own, which are none of those.
    assert not [t for t in sorted(NO_MTP_MODEL_TYPES) if drafted(t, f"{t.title().replace('_', '')}ForCausalLM")]
