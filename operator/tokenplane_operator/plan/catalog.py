"""The Azure GPU VM catalog: sizes, GPUs, MIG profiles and list prices, loaded from catalog.yaml."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "GIB",
    "SERVING_ARCH",
    "GpuSku",
    "MigProfile",
    "all_skus",
    "find_sku",
    "host_size",
    "load_prices",
    "with_prices",
]

GIB = 1 << 30
_GB = 10**9
_MEMORY_SLICES_PER_GPU = 8  # MIG splits memory (and its bandwidth) in eighths, compute in sevenths
# The one CPU architecture the serving image is built for (serving/Dockerfile: a single-platform build FROM an amd64
# ray-llm image); a VM size whose host is another architecture cannot run its pods (exec format error).
SERVING_ARCH = "amd64"


@dataclass(frozen=True)
class MigProfile:
    """One MIG slice size of one GPU model, under the name AKS uses for it.

    Attributes:
        aks_name: The AKS `gpuInstanceProfile` value (MIG1g..MIG7g).
        profile: NVIDIA's profile name, e.g. "1g.10gb".
        memory_gib: Memory of one slice.
        slices_per_gpu: How many such slices one GPU holds (AKS pools use one profile per pool).
        compute_slices: Compute sevenths the slice owns.
        memory_slices: Memory eighths the slice owns; its share of the GPU's bandwidth.
    """

    aks_name: str
    profile: str
    memory_gib: float
    slices_per_gpu: int
    compute_slices: int
    memory_slices: int

    @property
    def resource_name(self) -> str:
        """The extended resource the NVIDIA device plugin advertises under `migStrategy=mixed`."""
        return f"nvidia.com/mig-{self.profile}"

    @property
    def bandwidth_fraction(self) -> float:
        """Share of the whole GPU's memory bandwidth this slice gets."""
        return self.memory_slices / _MEMORY_SLICES_PER_GPU

    @property
    def compute_fraction(self) -> float:
        """Share of the whole GPU's compute this slice gets."""
        return self.compute_slices / 7


@dataclass(frozen=True)
class GpuSku:
    """An Azure GPU VM size and the GPUs in it.

    Attributes:
        vm_size: Azure VM size, e.g. "Standard_NC40ads_H100_v5".
        family: VM family, e.g. "NCads_H100_v5".
        gpu_model: GPU model key, e.g. "H100-NVL-94GB".
        gpu_count: GPUs in one VM.
        gpu_memory_gib: Memory per GPU.
        memory_bandwidth_gbps: HBM bandwidth per GPU, GB/s.
        bf16_tflops: Dense BF16 (FP16 where the GPU lacks BF16) peak per GPU.
        fp8_tflops: Dense FP8 peak per GPU, or None when the GPU has no FP8 tensor cores.
        nvlink: Whether the GPUs in one VM talk over NVLink/NVSwitch rather than PCIe.
        mig_profiles: MIG profiles keyed by AKS name; empty when AKS offers no MIG on this size.
        hourly_usd: List price per VM hour, or None when no price is known.
        vcpus: Host vCPUs of one VM.
        memory_gib: Host RAM of one VM, GiB (before AKS reservations; see `allocatable.node_allocatable`).
        bf16: Whether the GPU computes in bfloat16 (compute capability 8.0 or later); vLLM refuses dtype bfloat16
            without it.
        arch: The host's CPU architecture as Kubernetes names it (`kubernetes.io/arch`): amd64 or arm64.
    """

    vm_size: str
    family: str
    gpu_model: str
    gpu_count: int
    gpu_memory_gib: float
    memory_bandwidth_gbps: float
    bf16_tflops: float
    fp8_tflops: float | None
    nvlink: bool
    mig_profiles: Mapping[str, MigProfile] = field(default_factory=dict)
    hourly_usd: float | None = None
    vcpus: int = 0
    memory_gib: float = 0.0
    bf16: bool = True
    arch: str = SERVING_ARCH

    @property
    def gpu_memory_bytes(self) -> int:
        """Memory per GPU in bytes."""
        return int(self.gpu_memory_gib * GIB)


def _build(data: Mapping[str, Any]) -> tuple[GpuSku, ...]:
    gpus: Mapping[str, Any] = data["gpus"]
    skus: list[GpuSku] = []
    for row in data["skus"]:
        gpu = gpus[row["gpu"]]
        migs = {
            aks_name: MigProfile(
                aks_name=aks_name,
                profile=m["profile"],
                memory_gib=round(m["memory_gb"] * _GB / GIB, 2),
                slices_per_gpu=m["slices_per_gpu"],
                compute_slices=m["compute_slices"],
                memory_slices=m["memory_slices"],
            )
            for aks_name, m in (gpu.get("mig") or {}).items()
        }
        skus.append(
            GpuSku(
                vm_size=row["vm_size"],
                family=row["family"],
                gpu_model=row["gpu"],
                gpu_count=row["gpu_count"],
                gpu_memory_gib=gpu["memory_gib"],
                memory_bandwidth_gbps=gpu["memory_bandwidth_gbps"],
                bf16_tflops=gpu["bf16_tflops"],
                fp8_tflops=gpu["fp8_tflops"],
                nvlink=row["nvlink"],
                mig_profiles=migs,
                hourly_usd=row["hourly_usd"],
                vcpus=row["vcpus"],
                memory_gib=float(row["memory_gib"]),
                bf16=bool(gpu.get("bf16", True)),
                arch=str(row.get("arch", SERVING_ARCH)),
            )
        )
    return tuple(skus)


@cache
def all_skus() -> tuple[GpuSku, ...]:
    """Return every VM size in the built-in catalog, at list prices.

    Returns:
        The catalog, smallest families first, in the order of catalog.yaml.
    """
    text = resources.files(__package__).joinpath("catalog.yaml").read_text(encoding="utf-8")
    return _build(yaml.safe_load(text))


def find_sku(vm_size: str, catalog: tuple[GpuSku, ...] | None = None) -> GpuSku | None:
    """Look up a VM size, ignoring case.

    Args:
        vm_size: An Azure VM size such as "Standard_NC24ads_A100_v4".
        catalog: The catalog to search; the built-in one by default.

    Returns:
        The size, or None when the catalog does not know it.
    """
    wanted = vm_size.lower()
    return next((s for s in catalog or all_skus() if s.vm_size.lower() == wanted), None)


@cache
def _host_sizes() -> dict[str, tuple[int, float]]:
    """Return every VM size the catalog knows the host of, lower-cased: the system sizes and the GPU sizes."""
    text = resources.files(__package__).joinpath("catalog.yaml").read_text(encoding="utf-8")
    rows = yaml.safe_load(text)["system_sizes"]
    sizes = {r["vm_size"].lower(): (int(r["vcpus"]), float(r["memory_gib"])) for r in rows}
    return sizes | {s.vm_size.lower(): (s.vcpus, s.memory_gib) for s in all_skus()}


def host_size(vm_size: str) -> tuple[int, float]:
    """Look up the host vCPUs and RAM (GiB) of a VM size, ignoring case; system pool sizes as well as GPU sizes.

    Args:
        vm_size: An Azure VM size such as "Standard_D2s_v3".

    Returns:
        (vCPUs, memory GiB).

    Raises:
        ValueError: The catalog does not know the size; the message names it.
    """
    found = _host_sizes().get(vm_size.lower())
    if found is None:
        raise ValueError(f"unknown VM size {vm_size!r}: the catalog (plan/catalog.yaml system_sizes) does not list it")
    return found


def with_prices(prices: Mapping[str, float], catalog: tuple[GpuSku, ...] | None = None) -> tuple[GpuSku, ...]:
    """Apply price overrides to a catalog.

    Args:
        prices: USD per VM hour keyed by VM size (case-insensitive); unknown sizes are ignored.
        catalog: The catalog to reprice; the built-in one by default.

    Returns:
        A new catalog with the overridden prices.
    """
    lowered = {k.lower(): float(v) for k, v in prices.items()}
    return tuple(replace(s, hourly_usd=lowered.get(s.vm_size.lower(), s.hourly_usd)) for s in catalog or all_skus())


def load_prices(path: Path) -> dict[str, float]:
    """Read price overrides from a values file.

    The file is YAML with a top-level `prices` map (or `planner.prices`), VM size to USD per hour.

    Args:
        path: The values file.

    Returns:
        The prices found, possibly none.

    Raises:
        ValueError: One line naming the file: unreadable, not UTF-8, not YAML (with its line), or a price that is
            not a positive number (with its VM size).
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (offset {exc.start}); save it as UTF-8 YAML") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.MarkedYAMLError as exc:
        where = f":{exc.problem_mark.line + 1}" if exc.problem_mark else ""
        raise ValueError(f"{path}{where}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML map with a `prices` key")
    section = data.get("planner", data) if isinstance(data.get("planner"), dict) else data
    raw = section.get("prices") or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: `prices` must map VM sizes to USD per hour")
    prices = {}
    for size, value in raw.items():
        # A boolean is an int to Python, and NaN, infinity, zero or a negative price would print as a cost.
        try:
            number = math.nan if isinstance(value, bool) else float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise ValueError(
                f"{path}: prices.{size} is {value!r}: every price must be a positive number (USD per VM hour)"
            )
        prices[str(size)] = number
    return prices
