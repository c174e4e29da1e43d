"""Rules that need the GPU catalog: VM sizes, MIG support, and how many GPUs a node has."""

from __future__ import annotations

from tokenplane_operator.api.v1alpha1 import AcceleratorKind, InferenceDeployment
from tokenplane_operator.api.validation import Problem
from tokenplane_operator.plan.catalog import all_skus, find_sku

__all__ = ["check_deployment"]


def check_deployment(deployment: InferenceDeployment) -> list[Problem]:
    """Check a parsed InferenceDeployment against the GPU catalog.

    Args:
        deployment: a spec that already passed the model's own rules.

    Returns:
        The problems found, each with its field path; empty when the spec is valid.
    """
    hardware, engine = deployment.spec.hardware, deployment.spec.engine
    if hardware.accelerator is AcceleratorKind.CPU or hardware.vm_size == "auto":
        return []
    sku = find_sku(hardware.vm_size)
    if sku is None:
        known = ", ".join(s.vm_size for s in all_skus())
        return [
            Problem(
                "spec.hardware.vmSize",
                f"{hardware.vm_size} is not a GPU VM size tokenplane knows; use auto or one of: {known}",
            )
        ]
    problems = []
    if hardware.mig_profile is not None and hardware.mig_profile.value not in sku.mig_profiles:
        supported = ", ".join(sorted(sku.mig_profiles)) or "none"
        problems.append(
            Problem(
                "spec.hardware.migProfile",
                f"{sku.vm_size} ({sku.gpu_model}) does not support MIG profile {hardware.mig_profile.value} "
                f"(supported: {supported}); remove migProfile or pick an A100/H100 size",
            )
        )
    if engine.tensor_parallel_size > sku.gpu_count:
        problems.append(
            Problem(
                "spec.engine.tensorParallelSize",
                f"tensorParallelSize {engine.tensor_parallel_size} exceeds the {sku.gpu_count} GPU(s) of one "
                f"{sku.vm_size}; keep TP within a node and use pipelineParallelSize across nodes",
            )
        )
    return problems
