"""Resolve `vmSize: auto` once, into a deployment whose hardware and engine say exactly what the planner chose.

Everything rendered (agent pool, worker group, engine TP/PP, status.plan) reads the resolved deployment, so the
status can never describe a placement other than the one deployed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tokenplane_operator.api.v1alpha1 import AcceleratorKind, InferenceDeployment, MigProfile, PlanStatus
from tokenplane_operator.plan.catalog import all_skus
from tokenplane_operator.plan.errors import PlanError
from tokenplane_operator.plan.memory import weights_bytes
from tokenplane_operator.plan.modelinfo import ModelInfo
from tokenplane_operator.plan.precision import Precision
from tokenplane_operator.plan.sizing import Plan, recommend
from tokenplane_operator.plan.spec import workload_from_spec

__all__ = ["ResolvedPlan", "checkpoint_bytes", "download_bytes", "resolve_plan"]


@dataclass(frozen=True)
class ResolvedPlan:
    """A deployment with its placement fixed, and the plan status that describes it.

    Attributes:
        deployment: The deployment with `vmSize`, `gpusPerReplica`, `migProfile` and TP/PP as resolved.
        status: What `status.plan` reports: read from `deployment`, so the two cannot disagree. Its
            `weightsBytes` are at the serving precision (what the GPUs hold).
        download_bytes: Bytes of the checkpoint as stored (what a worker downloads; see `checkpoint_bytes`),
            or None when the model is unknown or the replicas run on CPU.
    """

    deployment: InferenceDeployment
    status: PlanStatus
    download_bytes: int | None = None


def resolve_plan(deployment: InferenceDeployment) -> ResolvedPlan:
    """Resolve a deployment's placement: `vmSize: auto` through the capacity planner, an explicit size as written.

    For `auto`, the planner's VM size, GPUs per replica, MIG profile and TP/PP replace the spec's (fields the
    user set explicitly narrowed the planner's search, so they are kept). A `gpuFraction` replica is planned
    on one whole GPU without MIG profiles (a fraction and a MIG slice exclude each other).

    Args:
        deployment: A validated InferenceDeployment.

    Returns:
        The resolved deployment and its plan status.

    Raises:
        PlanError: UnknownModel, DoesNotFit or InvalidWorkload from the planner.
    """
    hardware = deployment.spec.hardware
    if hardware.accelerator is AcceleratorKind.CPU:
        return ResolvedPlan(deployment, PlanStatus(reasons=["CPU replicas"]))
    if hardware.vm_size != "auto":
        status = _status(deployment, reasons=["vmSize set in the spec"], weights=_known_weights_bytes(deployment))
        return ResolvedPlan(deployment, status, checkpoint_bytes(deployment))
    catalog = all_skus()
    workload = workload_from_spec(deployment.spec)
    if hardware.gpu_fraction is not None:
        # A fraction is a share of one whole GPU: no MIG slice, no sharding.
        catalog = tuple(replace(sku, mig_profiles={}) for sku in catalog)
        workload = replace(workload, gpus_per_replica=1, tensor_parallel_size=1, pipeline_parallel_size=1)
    plan = recommend(workload, catalog=catalog)
    resolved = _apply(deployment, plan)
    return ResolvedPlan(resolved, _status(resolved, plan=plan, reasons=plan.reasons), download_bytes(workload.model))


def _known_weights_bytes(deployment: InferenceDeployment) -> int | None:
    """Weight bytes of a deployment with an explicit VM size, or None when the model is not one the planner knows.

    The worker's disk request counts the weights it downloads, so they are needed without `auto` too.
    """
    try:
        workload = workload_from_spec(deployment.spec)
    except PlanError:
        return None  # a model the planner does not know: nothing to count
    choice = workload.quantization
    precision = choice if isinstance(choice, Precision) else workload.model.native_precision
    return weights_bytes(workload.model, precision)


def checkpoint_bytes(deployment: InferenceDeployment) -> int | None:
    """Bytes a worker downloads for the model: its checkpoint in the precision it is stored in.

    Not the serving precision's bytes: `quantization: fp8` (or int8) on a 16-bit checkpoint is applied online,
    while vLLM loads the full checkpoint (vllm/model_executor/model_loader/weight_utils.py,
    `get_quant_config`: with no quantization config in the repo, fp8 becomes online `fp8_per_tensor`), so
    Llama-3.1-70B served in fp8 still downloads ~141 GB of bf16 safetensors, not ~71 GB. A pre-quantized
    checkpoint (AWQ, GPTQ, FP8 repos) is stored at its own precision, which `native_precision` says.

    Args:
        deployment: A validated InferenceDeployment.

    Returns:
        The checkpoint's bytes, or None when the planner does not know the model.
    """
    try:
        model = workload_from_spec(deployment.spec).model
    except PlanError:
        return None  # a model the planner does not know: nothing to count
    return download_bytes(model)


def download_bytes(model: ModelInfo) -> int:
    """Bytes of a model's checkpoint as stored (see `checkpoint_bytes`): what a worker downloads and loads."""
    return weights_bytes(model, model.native_precision)


def _apply(deployment: InferenceDeployment, plan: Plan) -> InferenceDeployment:
    spec = deployment.spec
    mig = MigProfile(plan.mig_profile) if plan.mig_profile else None
    hardware = spec.hardware.model_copy(
        update={
            "vm_size": plan.vm_size,
            "mig_profile": mig,
            # A MIG replica is one slice; the planner counts slices in gpus_per_replica.
            "gpus_per_replica": 1 if mig else plan.gpus_per_replica,
        }
    )
    engine = spec.engine.model_copy(
        update={
            "tensor_parallel_size": plan.tensor_parallel_size,
            "pipeline_parallel_size": plan.pipeline_parallel_size,
        }
    )
    return deployment.model_copy(update={"spec": spec.model_copy(update={"hardware": hardware, "engine": engine})})


def _status(
    deployment: InferenceDeployment, *, reasons: list[str], plan: Plan | None = None, weights: int | None = None
) -> PlanStatus:
    hardware, engine = deployment.spec.hardware, deployment.spec.engine
    return PlanStatus(
        vm_size=hardware.vm_size,
        gpus_per_replica=hardware.gpu_fraction or hardware.gpus_per_replica,
        mig_profile=hardware.mig_profile.value if hardware.mig_profile else None,
        tensor_parallel_size=engine.tensor_parallel_size,
        pipeline_parallel_size=engine.pipeline_parallel_size,
        weights_bytes=plan.weights_bytes if plan else weights,
        kv_bytes_per_token=plan.kv_bytes_per_token if plan else None,
        fits=plan.fits if plan else None,
        usd_per_million_output_tokens=plan.estimates.usd_per_million_output_tokens if plan and plan.estimates else None,
        reasons=list(reasons),
    )
