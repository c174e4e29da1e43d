"""Types and ranges of the vLLM engine arguments `extraArgs` most often passes, checked before the cluster sees them.

vLLM checks these only when a replica builds its engine, long after `kubectl apply`; a wrong type there is a crash
loop. The table mirrors vLLM's own argparse types and pydantic bounds, and a test compares them with the installed
vLLM (`tests/unit/api/test_engine_arg_rules.py`), so it cannot drift from the release the image pins. Arguments not
in the table are passed through as-is after the name check (`unknown_engine_args`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ENGINE_ARG_RULES", "EngineArgRule", "engine_arg_problems"]


@dataclass(frozen=True)
class EngineArgRule:
    """What one vLLM engine argument accepts: a kind, optional bounds or choices, and whether null is its default."""

    kind: type[bool] | type[int] | type[float] | type[str]
    ge: float | None = None
    gt: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False

    def problem(self, value: Any) -> str | None:
        """Say what is wrong with `value` for this argument and what to write instead; None when vLLM accepts it."""
        if value is None:
            return None if self.nullable else f"must not be null; {self._expected()}"
        # bool is an int in Python, and YAML reads `"4096"` as a string: neither is what vLLM's field takes.
        ok = isinstance(value, self.kind) and not (self.kind is not bool and isinstance(value, bool))
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            return f"{self._expected()}, got {value!r}" + ("; remove the quotes" if self._quoted(value) else "")
        if self.choices and value not in self.choices:
            return f"{value!r} is not one of vLLM's values: {', '.join(self.choices)}"
        if self.ge is not None and value < self.ge:
            return f"must be at least {self.ge:g}, got {value!r}"
        if self.gt is not None and value <= self.gt:
            return f"must be greater than {self.gt:g}, got {value!r}"
        return None

    def _quoted(self, value: Any) -> bool:
        """Whether `value` is the right kind written in quotes ("4096", "true"), not text such as 1e5 or "lots"."""
        if not isinstance(value, str) or self.kind is str:
            return False
        if self.kind is bool:
            return value.lower() in ("true", "false")
        if self.kind is int:
            return value.removeprefix("-").isdigit()
        try:
            float(value)
        except ValueError:
            return False
        return True

    def _expected(self) -> str:
        return {bool: "expected true or false", int: "expected an integer", float: "expected a number"}.get(
            self.kind, "expected a string"
        )


# vLLM 0.32: argparse type (vllm.engine.arg_utils) and pydantic bounds (vllm.config) of each argument.
_KV_CACHE_DTYPES = (
    "auto", "bfloat16", "float16", "fp8", "fp8_ds_mla", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_per_token_head",
    "int4_per_token_head", "int8_per_token_head", "nvfp4", "nvfp4_4over6", "nvfp4_ds_mla", "turboquant_3bit_nc",
    "turboquant_4bit_nc", "turboquant_k3v4_nc", "turboquant_k8v4", "ultraquant_4bit",
)  # fmt: skip
ENGINE_ARG_RULES: Mapping[str, EngineArgRule] = {
    "max_num_batched_tokens": EngineArgRule(int, ge=1, nullable=True),
    "block_size": EngineArgRule(int, gt=0, nullable=True),
    "seed": EngineArgRule(int),
    "max_logprobs": EngineArgRule(int, ge=-1),
    "long_prefill_token_threshold": EngineArgRule(int, ge=0),
    "stream_interval": EngineArgRule(int, ge=1),
    "data_parallel_size": EngineArgRule(int, ge=1),
    "max_parallel_loading_workers": EngineArgRule(int, ge=1, nullable=True),
    "num_gpu_blocks_override": EngineArgRule(int, nullable=True),
    "kv_cache_memory_bytes": EngineArgRule(int, nullable=True),
    "max_cudagraph_capture_size": EngineArgRule(int, nullable=True),
    "cpu_offload_gb": EngineArgRule(float, ge=0),
    "trust_remote_code": EngineArgRule(bool),
    "enable_expert_parallel": EngineArgRule(bool),
    "disable_custom_all_reduce": EngineArgRule(bool),
    "disable_sliding_window": EngineArgRule(bool),
    "enable_sleep_mode": EngineArgRule(bool),
    "async_scheduling": EngineArgRule(bool, nullable=True),
    "disable_log_stats": EngineArgRule(bool),
    "kv_cache_dtype": EngineArgRule(str, choices=_KV_CACHE_DTYPES),
    "scheduling_policy": EngineArgRule(str, choices=("fcfs", "priority")),
    "tokenizer_mode": EngineArgRule(str),
    "load_format": EngineArgRule(str),
}


def engine_arg_problems(extra_engine_args: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Return (argument, problem) for each pass-through value vLLM would refuse, sorted by argument; empty if none."""
    found = []
    for key in sorted(extra_engine_args):
        rule = ENGINE_ARG_RULES.get(key)
        problem = rule.problem(extra_engine_args[key]) if rule else None
        if problem:
            found.append((key, f"{problem} (vLLM --{key.replace('_', '-')})"))
    return found
