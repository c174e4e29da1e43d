"""Rules that need the GPU catalog or the model's shape: VM sizes, MIG, GPUs per VM, heads, context, memory."""

from __future__ import annotations

from tokenplane_operator.api.v1alpha1 import AcceleratorKind, InferenceDeployment, parse_source
from tokenplane_operator.api.validation import Problem
from tokenplane_operator.plan.catalog import GIB, GpuSku, all_skus, find_sku
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_operator.plan.modelinfo import ModelInfo, resolve_model
from tokenplane_operator.plan.sizing import plan_for_sku
from tokenplane_operator.plan.spec import workload_from_spec

__all__ = ["check_deployment"]


def check_deployment(deployment: InferenceDeployment) -> list[Problem]:
    """Check a parsed InferenceDeployment against the GPU catalog and, when it is known offline, the model.

    Models outside the built-in table (and not a local path) are checked by the operator once it read their
    config.json; the same rules apply there through the planner.

    Args:
        deployment: a spec that already passed the model's own rules.

    Returns:
        The problems found, each with its field path; empty when the spec is valid.
    """
    hardware = deployment.spec.hardware
    if hardware.accelerator is AcceleratorKind.CPU:
        return []
    model = _known_model(deployment)
    problems = _model_problems(deployment, model)
    if hardware.vm_size == "auto":
        return problems
    sku = find_sku(hardware.vm_size)
    if sku is None:
        known = ", ".join(s.vm_size for s in all_skus())
        return [
            Problem(
                "spec.hardware.vmSize",
                f"{hardware.vm_size} is not a GPU VM size tokenplane knows; use auto or one of: {known}",
            )
        ]
    problems += _sku_problems(deployment, sku)
    if problems or model is None:
        return problems
    return _fit_problems(deployment, model, sku)


def _fit_problems(deployment: InferenceDeployment, model: ModelInfo, sku: GpuSku) -> list[Problem]:
    # vLLM refuses to start when one maxModelLen sequence does not fit beside the weights: the pods would load
    # and crash on the cluster. The planner's memory model, on this VM size with the CR's fixed fields, decides.
    if deployment.spec.hardware.gpu_fraction is not None:
        return []  # a share of a GPU is packing the planner does not model: the operator's check at load time
    workload = workload_from_spec(deployment.spec, model=model)
    try:
        plan = plan_for_sku(workload, sku.vm_size)
    except PlanError as err:
        return [Problem("spec.hardware", f"{err.message}; `tokenplane plan` on this file shows the sizes that fit")]
    if plan.fits:
        return []
    mig = deployment.spec.hardware.mig_profile
    devices, larger = (
        (f"a {mig.value} slice", ("spec.hardware.migProfile", "a larger migProfile"))
        if mig is not None
        else (f"{plan.gpus_per_replica} GPU(s)", ("spec.hardware.vmSize", "a larger vmSize or more gpusPerReplica"))
    )
    return [
        Problem(
            larger[0],
            f"{model.name} needs {plan.total_bytes_per_replica / GIB:.1f} GiB a replica on {sku.vm_size} as specified "
            f"({devices}, weights {plan.quantization}, maxModelLen {workload.context:,}), which holds "
            f"{plan.capacity_bytes_per_replica / GIB:.1f} GiB: choose {larger[1]}, quantize (spec.model.quantization: "
            "fp8), lower maxModelLen, or set vmSize: auto (`tokenplane plan` on this file shows the sizes that fit)",
        )
    ]


def _known_model(deployment: InferenceDeployment) -> ModelInfo | None:
    try:
        return resolve_model(parse_source(deployment.spec.model.source)[1])
    except (PlanError, ValueError, OSError):
        return None


def _model_problems(deployment: InferenceDeployment, model: ModelInfo | None) -> list[Problem]:
    engine = deployment.spec.engine
    tp, pp = engine.tensor_parallel_size, engine.pipeline_parallel_size
    if model is None:
        return []
    problems = []
    try:
        workload_from_spec(deployment.spec, model=model)  # the planner's own rules on the model's shape
    except PlanError as err:
        if err.reason is PlanErrorReason.CONTEXT_TOO_LONG:
            problems.append(Problem("spec.model.maxModelLen", f"{err.message}; lower it, or leave it unset"))
        else:
            problems.append(Problem("spec", err.message))
    if model.num_attention_heads % tp:
        divisors = [n for n in range(1, model.num_attention_heads + 1) if model.num_attention_heads % n == 0 and n <= 8]
        problems.append(
            Problem(
                "spec.engine.tensorParallelSize",
                f"tensorParallelSize {tp} does not divide the {model.num_attention_heads} attention heads of "
                f"{model.name} (vLLM splits heads evenly); use one of {', '.join(map(str, divisors))}",
            )
        )
    if pp > model.num_layers:
        problems.append(
            Problem(
                "spec.engine.pipelineParallelSize",
                f"pipelineParallelSize {pp} exceeds the {model.num_layers} layers of {model.name}; use at most "
                f"{model.num_layers}",
            )
        )
    return problems


def _sku_problems(deployment: InferenceDeployment, sku: GpuSku) -> list[Problem]:
    hardware, engine = deployment.spec.hardware, deployment.spec.engine
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
    gpus = hardware.gpus_per_replica
    if hardware.mig_profile is None and hardware.gpu_fraction is None and gpus > sku.gpu_count and gpus % sku.gpu_count:
        problems.append(
            Problem(
                "spec.hardware.gpusPerReplica",
                f"gpusPerReplica {gpus} spans VMs of {sku.gpu_count} GPUs ({sku.vm_size}) but is not a multiple of "
                f"{sku.gpu_count}; use a multiple so each pipeline stage fills whole VMs",
            )
        )
    return problems
