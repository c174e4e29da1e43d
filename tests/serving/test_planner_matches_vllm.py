"""The planner's KV bytes per token agree exactly with what vLLM (CPU) allocates, for MHA, GQA and MQA."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tokenplane_operator.plan.memory import kv_bytes_per_token
from tokenplane_operator.plan.modelinfo import read_model_dir

pytestmark = pytest.mark.serving

GIB = 1 << 30
# name -> write_tiny_model overrides; head_dim = hidden_size / num_attention_heads
ARCHITECTURES = {
    "mha": {"num_attention_heads": 8, "num_key_value_heads": 8},  # head_dim 32
    "gqa": {"num_attention_heads": 4, "num_key_value_heads": 2},  # head_dim 64
    "mqa": {"num_attention_heads": 8, "num_key_value_heads": 1},  # head_dim 32
}

# One process loads the models one after the other: an engine start costs ~30 s here.
_SCRIPT = textwrap.dedent(
    """
    import json, re, sys, logging, io

    def main():
        from vllm import LLM
        for name, path in json.loads(sys.argv[1]).items():
            llm = LLM(model=path, dtype="bfloat16", max_model_len=256, enforce_eager=True)
            cache = llm.llm_engine.vllm_config.cache_config
            print("KVRESULT " + json.dumps({"name": name, "blocks": cache.num_gpu_blocks,
                                            "block_size": cache.block_size}), flush=True)
            del llm

    if __name__ == "__main__":
        main()
    """
)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tinymodel = pytest.importorskip("tokenplane_serving.tinymodel")
    root = tmp_path_factory.mktemp("kv-models")
    return {name: tinymodel.write_tiny_model(root / name, **shape) for name, shape in ARCHITECTURES.items()}


@pytest.fixture(scope="module")
def vllm_tokens(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    pytest.importorskip("vllm")
    script = tmp_path_factory.mktemp("kv-script") / "probe.py"
    script.write_text(_SCRIPT)
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB: becomes kv_cache_memory_bytes
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine in-process: its cache_config is the one we read
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    }
    run = subprocess.run(
        [sys.executable, str(script), json.dumps({k: str(v) for k, v in tiny_models.items()})],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
        check=False,
    )
    logged = {int(m.replace(",", "")) for m in re.findall(r"KV cache size: ([\d,]+) tokens", run.stderr + run.stdout)}
    results: dict[str, int] = {}
    for line in run.stdout.splitlines():
        if line.startswith("KVRESULT "):
            r = json.loads(line.removeprefix("KVRESULT "))
            results[r["name"]] = r["blocks"] * r["block_size"]
    assert run.returncode == 0 and len(results) == len(ARCHITECTURES), run.stderr[-3000:]
    assert set(results.values()) <= logged, f"engine config {results} disagrees with the log {logged}"
    return results


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_kv_bytes_per_token_times_vllm_tokens_is_one_gib(
    name: str, tiny_models: dict[str, Path], vllm_tokens: dict[str, int]
) -> None:
    model = read_model_dir(tiny_models[name])
    per_token = kv_bytes_per_token(model, kv_dtype_bytes=2)
    print(
        f"{name}: planner {per_token} B/token x vLLM {vllm_tokens[name]:,} tokens = {per_token * vllm_tokens[name]:,} B"
    )
    assert per_token * vllm_tokens[name] == GIB, (name, per_token, vllm_tokens[name])
