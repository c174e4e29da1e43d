"""Desired state of one InferenceDeployment: agent pool, RayService, Service and NetworkPolicy, as one bundle."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tokenplane_operator.api.v1alpha1 import AcceleratorKind, InferenceDeployment, PlanStatus, Quantization
from tokenplane_operator.desired.agentpool import (
    OS_DISK_TIERS_GIB,
    DesiredAgentPool,
    MigProfile,
    hardware_class_key,
    os_disk_tier,
    pool_name_for,
)
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_operator.desired.objects import build_network_policy, build_service, endpoint_url
from tokenplane_operator.desired.rayservice import (
    WorkerShape,
    build_rayservice,
    compute_worker_shape,
    weights_disk_bytes,
)
from tokenplane_operator.desired.resolve import resolve_plan
from tokenplane_operator.desired.serveconfig import build_serving_args
from tokenplane_operator.plan.catalog import GIB, GpuSku, all_skus, find_sku
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_serving.args import ServingArgs

__all__ = ["DesiredState", "build_desired_state", "desired_agent_pool"]


class DesiredState(BaseModel):
    """Everything one InferenceDeployment should own, computed without I/O."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployment: InferenceDeployment = Field(description="The deployment with its placement resolved (no auto).")
    plan: PlanStatus = Field(description="status.plan: the resolved placement everything here was built from.")
    agent_pool: DesiredAgentPool | None = Field(description="Managed AKS pool; None for bring-your-own and CPU.")
    vm_size: str | None = Field(description="VM size the workers run on; None for CPU.")
    rayservice: dict[str, Any]
    service: dict[str, Any]
    network_policy: dict[str, Any]
    serving_args: ServingArgs
    endpoint_url: str

    def kubernetes_objects(self) -> list[dict[str, Any]]:
        """Return the Kubernetes objects in apply order (the NetworkPolicy before pods exist)."""
        return [self.network_policy, self.rayservice, self.service]


def _node_weights_disk_gib(
    deployment: InferenceDeployment, pods_per_node: int, download_bytes: int | None, config: RenderConfig
) -> int:
    """Ephemeral storage the workers of one node want when they download the weights (0 when they do not).

    Each pod wants its weights plus the base share (`worker_ephemeral_storage_gib`), capped at what the largest
    OS disk offers; the renderer shrinks the base share (to at least 1 GiB) to fit the disk it gets. The
    weights are the checkpoint's bytes as stored (`download_bytes`): fp8 or int8 on a 16-bit checkpoint is
    applied while loading, after the 16-bit download.

    Raises:
        PlanError: DoesNotFit when no AKS OS disk holds the weights with 1 GiB beside each.
    """
    weights_gib = -(-weights_disk_bytes(deployment, download_bytes) // GIB)
    if not weights_gib:
        return 0
    largest = 0.9 * max(OS_DISK_TIERS_GIB[-1], config.node_os_disk_gib)  # the kubelet keeps 10%
    if pods_per_node * (weights_gib + 1) > largest:
        quantization = deployment.spec.model.quantization
        online = (
            f" (quantization {quantization.value} is applied while loading: the checkpoint is downloaded as "
            "stored; a checkpoint already quantized to it downloads less)"
            if quantization is not Quantization.NONE
            else ""
        )
        raise PlanError(
            PlanErrorReason.DOES_NOT_FIT,
            f"the {pods_per_node} worker pod(s) of one node download "
            f"{pods_per_node * weights_gib} GiB of weights{online}, more than the largest OS disk holds "
            f"({largest:.0f} GiB allocatable); serve the weights from a PVC (pvc://) or use fewer, larger worker "
            "pods per node",
            field="spec.model.source",
        )
    return min(pods_per_node * (weights_gib + config.worker_ephemeral_storage_gib), math.floor(largest))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _check_pinned_nodes(deployment: InferenceDeployment, shape: WorkerShape, vm_size: str) -> None:
    """Refuse `nodePool.managed` bounds that disagree with the replicas: too few nodes, or a floor left idle.

    A `maxNodes` below what `maxReplicas` (or `minReplicas`) needs leaves the autoscaler's extra replicas
    Pending forever; a pinned `minNodes` above what `maxReplicas` can ever use bills GPU nodes that never run a
    worker. Replicas per node come from the worker shape the renderer sizes the group with (MIG slices,
    fractions, replicas spanning several VMs).

    Raises:
        PlanError: InvalidWorkload, naming the field to change, the numbers, and the ways out.
    """
    managed = deployment.spec.hardware.node_pool.managed
    if managed is None:
        return
    fixed = deployment.spec.disaggregation.enabled  # prefill + decode replicas: one fixed count
    needed = shape.nodes_for(shape.max_replicas)
    per_node = shape.replicas_on(1)
    density = (
        f"{_count(per_node, 'replica')} per node" if per_node else f"{_count(shape.nodes_for(1), 'node')} per replica"
    )
    if managed.max_nodes is not None and needed > managed.max_nodes:
        below_min = shape.nodes_for(shape.min_replicas) > managed.max_nodes  # it could never reach its minimum
        if fixed:
            field, lower = "spec.disaggregation", "prefillReplicas + decodeReplicas"
        elif below_min:
            field, lower = "spec.scaling.minReplicas", "minReplicas and maxReplicas"
        else:
            field, lower = "spec.scaling.maxReplicas", "maxReplicas"
        replicas = shape.min_replicas if below_min else shape.max_replicas
        held = shape.replicas_on(managed.max_nodes)
        fix = f"lower {lower} to {held} or raise maxNodes to {needed}" if held else f"raise maxNodes to {needed}"
        effect = "it could never reach its minimum" if below_min else f"replicas beyond {held} would stay Pending"
        raise PlanError(
            PlanErrorReason.INVALID_WORKLOAD,
            f"{_count(replicas, 'replica')} {'needs' if replicas == 1 else 'need'} "
            f"{_count(shape.nodes_for(replicas), 'node')} of {vm_size} ({density}); nodePool.managed.maxNodes is "
            f"{managed.max_nodes}, which holds {_count(held, 'replica') if held else 'no replica'}, so {effect}; "
            f"{fix}",
            field=field,
        )
    if "min_nodes" in managed.model_fields_set and managed.min_nodes > needed:
        users = (
            f"the {shape.max_replicas} prefill + decode replicas use"
            if fixed
            else f"maxReplicas {shape.max_replicas} uses"
        )
        more = "" if fixed else f" or raise maxReplicas to {shape.replicas_on(managed.min_nodes)}"
        raise PlanError(
            PlanErrorReason.INVALID_WORKLOAD,
            f"{_count(managed.min_nodes, 'node')} of {vm_size} stay up, but {users} at most "
            f"{_count(needed, 'node')} ({density}), so {_count(managed.min_nodes - needed, 'GPU node')} would be "
            f"billed with nothing to run; lower minNodes to {needed}{more}",
            field="spec.hardware.nodePool.managed.minNodes",
        )


def desired_agent_pool(
    deployment: InferenceDeployment,
    sku: GpuSku,
    *,
    default_os_sku: Literal["AzureLinux", "Ubuntu"] = "AzureLinux",
    download_bytes: int | None = None,
    config: RenderConfig | None = None,
) -> DesiredAgentPool:
    """Build the managed agent pool for a deployment's hardware class.

    Without `nodePool.managed.maxNodes`/`minNodes`, the autoscaler bounds are derived from the worker group's:
    `ceil(max (min) worker pods x GPUs (or MIG slices) per pod / GPUs (or slices) per VM)`; the minimum is 0 with
    scale-to-zero (the worker group's minimum is 0 then).

    Args:
        deployment: A validated GPU InferenceDeployment without `nodePool.existing`.
        sku: The VM size (resolved from `auto` by the planner when needed).
        default_os_sku: Node OS when the CR has no `nodePool.managed` block (the CR's own osSku wins).
        download_bytes: The checkpoint's bytes as stored (`resolve.checkpoint_bytes`). When the workers of one
            node download more than the default OS disk holds, the pool gets the smallest larger
            `osDiskSizeGB` tier (and its own name).
        config: Render settings (default OS disk, a worker's base ephemeral storage); the defaults when None.

    Returns:
        The pool; its name is shared by every deployment of the same hardware class.

    Raises:
        PlanError: InvalidWorkload when the hardware cannot be expressed as worker pods on this VM size, or the
            pinned node bounds disagree with the replicas; DoesNotFit when the weights the workers of one node
            download exceed the largest OS disk.
    """
    hardware = deployment.spec.hardware
    managed = hardware.node_pool.managed
    shape = compute_worker_shape(deployment, sku)
    _check_pinned_nodes(deployment, shape, sku.vm_size)
    mig: MigProfile | None = hardware.mig_profile.value if hardware.mig_profile is not None else None
    # Unless the CR pins it, the pool's floor is what the worker group's floor needs: 0 with scale-to-zero,
    # so an idle deployment holds no GPU node.
    pinned = managed is not None and "min_nodes" in managed.model_fields_set
    min_nodes = managed.min_nodes if managed is not None and pinned else shape.min_nodes
    max_nodes = managed.max_nodes if managed is not None and managed.max_nodes is not None else shape.max_nodes
    spot = hardware.spot.enabled
    config = config or RenderConfig()
    disk = os_disk_tier(
        _node_weights_disk_gib(deployment, shape.pods_per_node, download_bytes, config), config.node_os_disk_gib
    )
    return DesiredAgentPool(
        name=pool_name_for(hardware_class_key(sku.vm_size, mig, spot, hardware.zones, disk)),
        vm_size=sku.vm_size,
        mig_profile=mig,
        min_count=min_nodes,
        max_count=max(max_nodes, min_nodes, 1),
        spot=spot,
        spot_max_price=hardware.spot.max_price if spot else None,
        zones=tuple(hardware.zones),
        os_sku=managed.os_sku if managed is not None else default_os_sku,
        os_disk_size_gb=disk,
    )


def build_desired_state(deployment: InferenceDeployment, config: RenderConfig) -> DesiredState:
    """Compute every object a deployment should own, from one resolved plan.

    `vmSize: auto` is resolved here, by the capacity planner (`resolve_plan`); the VM size, GPUs per replica,
    MIG profile and TP/PP it chose are what the agent pool, the worker group, the engine arguments and
    `plan` (status.plan) all say. `tokenplane render` and the operator both call this.

    Args:
        deployment: A validated InferenceDeployment.
        config: Operator-wide rendering settings.

    Returns:
        The desired state bundle.

    Raises:
        PlanError: InvalidWorkload for hardware that cannot become a worker group;
            UnknownVmSize for a size the catalog lacks; UnknownModel / DoesNotFit when `auto` cannot be planned.
    """
    resolved = resolve_plan(deployment)
    deployment = resolved.deployment
    hardware = deployment.spec.hardware
    sku: GpuSku | None = None
    pool: DesiredAgentPool | None = None
    if hardware.accelerator is AcceleratorKind.GPU:
        sku = _resolve_sku(hardware.vm_size)
        # Refuse, with the fix, weights no node disk holds (bring-your-own nodes too; the checker reports
        # weights larger than the configured disk).
        _node_weights_disk_gib(
            deployment, compute_worker_shape(deployment, sku).pods_per_node, resolved.download_bytes, config
        )
        if hardware.node_pool.existing is None:
            pool = desired_agent_pool(
                deployment,
                sku,
                default_os_sku=config.os_sku,
                download_bytes=resolved.download_bytes,
                config=config,
            )
    serving_args = build_serving_args(deployment)
    return DesiredState(
        deployment=deployment,
        plan=resolved.status,
        agent_pool=pool,
        vm_size=sku.vm_size if sku else None,
        rayservice=build_rayservice(
            deployment,
            serving_args=serving_args,
            pool=pool,
            config=config,
            sku=sku,
            download_bytes=resolved.download_bytes,
        ),
        service=build_service(deployment),
        network_policy=build_network_policy(
            deployment,
            kuberay_namespace=config.kuberay_namespace,
            operator_namespace=config.operator_namespace,
            metrics_namespaces=config.metrics_namespaces,
            private_source_ranges=config.private_source_ranges,
        ),
        serving_args=serving_args,
        endpoint_url=endpoint_url(deployment, cluster_domain=config.cluster_domain),
    )


def _resolve_sku(vm_size: str) -> GpuSku:
    sku = find_sku(vm_size)
    if sku is None:
        known = ", ".join(s.vm_size for s in all_skus())
        raise PlanError(PlanErrorReason.UNKNOWN_VM_SIZE, f"{vm_size} is not in the GPU catalog; known: {known}")
    return sku
