"""Numeric precisions for weights and KV cache, and what one parameter or element costs in bytes."""

from __future__ import annotations

from enum import StrEnum

from tokenplane_operator.plan.errors import PlanError, PlanErrorReason

__all__ = ["INT4_GROUP_SIZE", "Precision", "parse_precision"]

# AWQ/GPTQ checkpoints quantize in groups of 128 weights, each with an fp16 scale and a packed 4-bit zero point.
INT4_GROUP_SIZE = 128


class Precision(StrEnum):
    """Weight precision, widest first; the order is the planner's quantization order.

    FP32 is no quantization: a 16-bit checkpoint served in float32 (dtype float32, or auto for a model vLLM
    refuses float16 on a GPU without bfloat16), twice the 16-bit bytes.
    """

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"

    @property
    def bytes_per_param(self) -> float:
        """Bytes one quantized linear-layer weight costs, including group scales for int4."""
        return _BYTES[self]

    @property
    def bits(self) -> int:
        """Nominal bits per weight."""
        return {
            Precision.FP32: 32,
            Precision.BF16: 16,
            Precision.FP16: 16,
            Precision.FP8: 8,
            Precision.INT8: 8,
            Precision.INT4: 4,
        }[self]

    @property
    def is_quantized(self) -> bool:
        """Whether this is narrower than 16 bits."""
        return self.bits < 16


_BYTES = {
    Precision.FP32: 4.0,
    Precision.BF16: 2.0,
    Precision.FP16: 2.0,
    # Per-channel or 128x128-block scales add < 0.1 %; left out.
    Precision.FP8: 1.0,
    Precision.INT8: 1.0,
    Precision.INT4: 0.5 + (2 + 0.5) / INT4_GROUP_SIZE,
}

_ALIASES = {
    "fp32": Precision.FP32,
    "float32": Precision.FP32,
    "bf16": Precision.BF16,
    "bfloat16": Precision.BF16,
    "fp16": Precision.FP16,
    "float16": Precision.FP16,
    "half": Precision.FP16,
    "fp8": Precision.FP8,
    "float8": Precision.FP8,
    "int8": Precision.INT8,
    "w8a8": Precision.INT8,
    "int4": Precision.INT4,
    "4bit": Precision.INT4,
    "w4a16": Precision.INT4,
    "awq": Precision.INT4,
    "gptq": Precision.INT4,
    "bitsandbytes": Precision.INT4,
}


def parse_precision(value: str) -> Precision:
    """Turn a user's precision or quantization method name into a Precision.

    Args:
        value: e.g. "bf16", "fp8", "int8", "int4", "awq", "gptq" (case-insensitive).

    Returns:
        The precision.

    Raises:
        PlanError: InvalidWorkload when the name is not known.
    """
    try:
        return _ALIASES[value.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(_ALIASES))
        raise PlanError(PlanErrorReason.INVALID_WORKLOAD, f"unknown precision {value!r}; use one of {known}") from None
