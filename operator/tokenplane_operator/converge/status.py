"""Status from a snapshot: what was observed this round becomes the full, kstatus-compatible status."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from tokenplane_operator.api.conditions import ConditionType, Phase, Reason
from tokenplane_operator.api.v1alpha1 import (
    Condition,
    EndpointStatus,
    InferenceDeployment,
    InferenceDeploymentStatus,
    NodePoolStatus,
    PlanStatus,
    ReplicaStatus,
    ScalingStatus,
)
from tokenplane_operator.converge.quota import QuotaCheck
from tokenplane_operator.converge.scaling import scaled_condition
from tokenplane_operator.desired.agentpool import ObservedAgentPool
from tokenplane_operator.errors import is_quota_error

__all__ = [
    "CloudFault",
    "NodeSource",
    "ObservedState",
    "RayServiceObservation",
    "compute_status",
    "rayservice_fingerprint",
]

ConditionStatus = Literal["True", "False", "Unknown"]

# Reasons that need a human: kstatus Stalled=True, phase Failed, slow retry.
_STALLING = frozenset({Reason.INVALID_SPEC, Reason.DOES_NOT_FIT, Reason.QUOTA_EXCEEDED, Reason.SKU_NOT_AVAILABLE})
_FAILED_APP_STATES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})
# KubeRay's terminal Ready reasons (ray-operator/controllers/ray/rayservice_controller.go): it refused the spec
# (validateRayService; nothing runs until the spec changes), or gave up initializing (the ray.io/initializing-timeout
# annotation; it deletes the clusters and waits for the RayService to be deleted and created again).
_KUBERAY_FAILURES = {
    "ValidationFailed": "KubeRay refused the RayService",
    "InitializingTimeout": "KubeRay gave up starting the RayService (delete it: the operator creates it again)",
}
# An existing pool under an in-place operation still has its nodes: replicas keep running there.
_USABLE_POOL_STATES = frozenset({"Succeeded", "Updating", "Scaling", "Upgrading"})


class NodeSource(StrEnum):
    """Where a deployment's replicas run."""

    MANAGED = "managed"  # an AKS agent pool tokenplane manages, shared by hardware class
    EXISTING = "existing"  # a pool the user brought, selected by label
    LOCAL = "local"  # CPU, no Azure


@dataclass(frozen=True)
class CloudFault:
    """The last Azure failure for this deployment's pool, already classified.

    Attributes:
        reason: Throttled, CloudError, QuotaExceeded, SkuNotAvailable or ProvisioningFailed.
        message: Azure's message (naming the quota and region for QuotaExceeded).
        retry_after_s: When the operator tries again.
        stalled: Whether a human must act (quota, SKU, a request Azure will always refuse).
    """

    reason: Reason
    message: str
    retry_after_s: float
    stalled: bool = False


def rayservice_fingerprint(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    """Return what KubeRay reported on a RayService that our status depends on; equal ones need no reconcile.

    Timestamps and fields we never read are left out, so KubeRay's periodic status refreshes do not count.

    Args:
        obj: A RayService as the API server has it.

    Returns:
        A hashable summary: the observation and KubeRay's observedGeneration (our own spec writes, which only
        bump metadata.generation, do not change it).
    """
    status = obj.get("status") or {}
    observation = RayServiceObservation.from_status(status, current=True)
    return (*dataclasses.astuple(observation), status.get("observedGeneration"))


@dataclass(frozen=True)
class RayServiceObservation:
    """What KubeRay reports about our RayService (§4.2 of the API notes).

    Attributes:
        current: The applied object carries the desired spec hash.
        ready: KubeRay's Ready condition is True (or serviceStatus Running) and no upgrade runs.
        upgrading: UpgradeInProgress is True (a new RayCluster is coming up).
        failure: The first failed Serve application or deployment, if any.
        message: KubeRay's Ready reason and message, for humans.
        ready_replicas: Ready worker replicas of the active RayCluster.
        desired_replicas: Worker replicas the Ray autoscaler wants.
    """

    current: bool = True
    ready: bool = False
    upgrading: bool = False
    failure: str | None = None
    message: str = ""
    ready_replicas: int | None = None
    desired_replicas: int | None = None

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None, *, current: bool) -> RayServiceObservation:
        """Read a RayService `status` (any KubeRay ≥ 1.0 shape; older serviceStatus included).

        Args:
            status: The object's status, or None when KubeRay has not written one yet.
            current: Whether the object carries the desired spec hash.

        Returns:
            The observation.
        """
        status = status or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, Mapping)}
        ready_cond = conditions.get("Ready") or {}
        upgrading = (conditions.get("UpgradeInProgress") or {}).get("status") == "True"
        ready = ready_cond.get("status") == "True" if ready_cond else status.get("serviceStatus") == "Running"
        active: Mapping[str, Any] = status.get("activeServiceStatus") or {}
        failure = None
        if not ready and ready_cond.get("reason") in _KUBERAY_FAILURES:
            failure = f"{_KUBERAY_FAILURES[ready_cond['reason']]}: {ready_cond.get('message') or ready_cond['reason']}"
        apps = active.get("applicationStatuses") or {}
        for app_name, app in apps.items():
            if failure is None and app.get("status") in _FAILED_APP_STATES:
                failure = f"Serve application {app_name} is {app['status']}: {app.get('message', '')}".strip()
                break
        cluster: Mapping[str, Any] = active.get("rayClusterStatus") or {}
        message = ": ".join(str(p) for p in (ready_cond.get("reason"), ready_cond.get("message")) if p)
        # KubeRay keeps Ready True while Serve redeploys an application in place (it counts serve endpoints,
        # calculateConditions in rayservice_controller.go): the new spec serves only once every app is RUNNING.
        deploying = [f"{n} is {a.get('status')}" for n, a in apps.items() if a.get("status") != "RUNNING"]
        if deploying and not failure:
            message = f"Serve application {', '.join(deploying)}"
        return cls(
            current=current,
            ready=ready and not upgrading and not deploying,
            upgrading=upgrading,
            failure=failure,
            message=message,
            ready_replicas=cluster.get("readyWorkerReplicas", cluster.get("availableWorkerReplicas")),
            desired_replicas=cluster.get("desiredWorkerReplicas"),
        )


@dataclass(frozen=True)
class ObservedState:
    """Everything one reconcile round learned; `compute_status` needs nothing else.

    Attributes:
        problems: Field-path problems when the spec is invalid (then nothing else was looked at).
        plan_error: (reason, message) when the spec is valid but cannot be planned (DoesNotFit...).
        node_source: Managed pool, existing pool, or local CPU.
        pool_name: The pool this deployment should run on (managed), or None.
        pool: The pool as Azure reported it, None when absent (or not looked at).
        pool_bounds: Autoscaler (min, max) of the desired pool, summed over the deployments sharing it.
        previous_pool: The pool still serving while the deployment moves to `pool_name`.
        replace_reason: Why the move is needed (a field AKS cannot change in place).
        existing_selector: Node labels of a bring-your-own pool.
        cloud_fault: The last Azure failure, while it has not been retried successfully.
        rayservice: The RayService observation, None when it does not exist yet.
        endpoint_url: The URL clients call, once its Service exists.
        plan: The resolved placement (what vmSize auto became).
        quota: The region's vCPU quota against the pool's maxCount, when it was read.
        quota_error: Why the quota could not be read, when it could not.
        deleting: The deployment is being deleted.
        rollout: A rollout in progress the operator drives (why, and how far), for the ServingReady message.
        previous_pool_pods: Pods of the deployment still on `previous_pool` (it is released only at 0).
        turned_away_pool: A pool a move headed to before an edit turned away from it, whose release failed this
            round: status keeps naming it so the next round releases it.
    """

    problems: tuple[str, ...] = ()
    plan_error: tuple[Reason, str] | None = None
    node_source: NodeSource = NodeSource.MANAGED
    pool_name: str | None = None
    pool: ObservedAgentPool | None = None
    pool_bounds: tuple[int, int] | None = None
    previous_pool: str | None = None
    replace_reason: str | None = None
    existing_selector: Mapping[str, str] = field(default_factory=dict)
    cloud_fault: CloudFault | None = None
    rayservice: RayServiceObservation | None = None
    endpoint_url: str | None = None
    plan: PlanStatus | None = None
    quota: QuotaCheck | None = None
    quota_error: str | None = None
    deleting: bool = False
    rollout: str | None = None
    previous_pool_pods: int = 0
    turned_away_pool: str | None = None

    @property
    def pool_ready(self) -> bool:
        """Whether replicas can be scheduled: a Succeeded managed pool, or a pool tokenplane does not manage."""
        if self.node_source is not NodeSource.MANAGED:
            return True
        return self.pool is not None and self.pool.provisioning_state in _USABLE_POOL_STATES


@dataclass(frozen=True)
class _Cond:
    status: ConditionStatus
    reason: Reason
    message: str


def compute_status(
    deployment: InferenceDeployment | None,
    observed: ObservedState,
    *,
    generation: int,
    now: datetime,
    previous_conditions: Sequence[Condition] = (),
    scaling: ScalingStatus | None = None,
) -> InferenceDeploymentStatus:
    """Compute the whole status from one snapshot.

    The condition list is always complete, because a merge patch replaces lists whole. A condition keeps
    its `lastTransitionTime` while its status stays the same (metav1 convention), even if the reason moves.

    Args:
        deployment: The parsed deployment, or None when the spec did not parse.
        observed: What this round observed.
        generation: metadata.generation the snapshot describes.
        now: The time to stamp on conditions that change.
        previous_conditions: The conditions currently in status.
        scaling: The autoscaling policy's last decision in status (the metrics timer reads it), for `Scaled`.

    Returns:
        The status to write.
    """
    validated = _validated(observed)
    if validated.status != "True":
        node_pool = serving = _Cond("Unknown", validated.reason, "the spec must be fixed first")
    else:
        node_pool = _node_pool(observed)
        serving = _serving(observed, node_pool)
    blocking = next((c for c in (validated, node_pool, serving) if c.status != "True"), None)
    stalled = blocking is not None and (
        blocking.reason in _STALLING or (observed.cloud_fault is not None and observed.cloud_fault.stalled)
    )
    short = _short_of_floor(deployment, observed, scaling)
    if blocking is None:
        ready = _Cond("True", Reason.SERVING, "the endpoint serves at the desired spec")
        if short is not None:
            # It serves, so Ready stays True (`kubectl wait`, Argo CD health), but with fewer replicas than
            # spec.scaling.minReplicas promises: the reason, the message and the Degraded phase say so.
            ready = _Cond("True", Reason.WAITING_FOR_CAPACITY, f"the endpoint serves, below minReplicas: {short}")
        reconciling = _Cond("False", Reason.RECONCILED, "")
        if observed.pool is not None and observed.pool.in_progress:
            # Serving, but an in-place pool update (e.g. a new deployment joined the pool) still runs.
            reconciling = _Cond("True", Reason.PROVISIONING, node_pool.message)
    else:
        ready = _Cond("False", blocking.reason, blocking.message)
        reconciling = (
            _Cond("False", blocking.reason, "waiting for a human to act")
            if stalled
            else _Cond("True", blocking.reason, blocking.message)
        )
    stalled_cond = _Cond("True", ready.reason, ready.message) if stalled else _Cond("False", Reason.RECONCILED, "")
    if observed.deleting:
        ready = _Cond("False", Reason.DELETING, "the deployment is being deleted")
        reconciling = _Cond("True", Reason.DELETING, "releasing what the deployment used")
    wanted = {
        ConditionType.VALIDATED: validated,
        ConditionType.NODE_POOL_READY: node_pool,
        ConditionType.SERVING_READY: serving,
        ConditionType.READY: ready,
        ConditionType.RECONCILING: reconciling,
        ConditionType.STALLED: stalled_cond,
        ConditionType.QUOTA_INSUFFICIENT: _quota(observed, validated),
        ConditionType.SCALED: _Cond(*scaled_condition(scaling)),
    }
    previous = {c.type: c for c in previous_conditions}
    conditions = [
        Condition(
            type=kind,
            status=cond.status,
            reason=cond.reason,
            message=cond.message,
            last_transition_time=_transition_time(previous.get(kind), cond.status, now),
            observed_generation=generation,
        )
        for kind, cond in wanted.items()
    ]
    return InferenceDeploymentStatus(
        observed_generation=generation,
        phase=_phase(observed, validated, node_pool, serving, stalled, previous.get(ConditionType.READY), short),
        conditions=conditions,
        plan=observed.plan,
        node_pool=_node_pool_status(observed),
        endpoint=_endpoint(deployment, observed),
        replicas=_replicas(deployment, observed),
        scaling=scaling,
    )


def _transition_time(previous: Condition | None, status: ConditionStatus, now: datetime) -> datetime:
    if previous is not None and previous.status == status:
        return previous.last_transition_time
    return now


def _validated(observed: ObservedState) -> _Cond:
    if observed.problems:
        return _Cond("False", Reason.INVALID_SPEC, "; ".join(observed.problems))
    if observed.plan_error is not None:
        return _Cond("False", *observed.plan_error)
    return _Cond("True", Reason.VALID, "the spec passed every rule")


def _node_pool(observed: ObservedState) -> _Cond:
    if observed.node_source is NodeSource.LOCAL:
        return _Cond("True", Reason.LOCAL, "CPU replicas; no node pool")
    if observed.node_source is NodeSource.EXISTING:
        selector = ",".join(f"{k}={v}" for k, v in sorted(observed.existing_selector.items()))
        return _Cond("True", Reason.BRING_YOUR_OWN, f"replicas run on existing nodes selected by {selector}")
    fault, pool, name = observed.cloud_fault, observed.pool, observed.pool_name
    if fault is not None:
        return _Cond("False", fault.reason, f"{fault.message} (retrying in {fault.retry_after_s:.0f}s)")
    if pool is not None and pool.provisioning_state == "Failed":
        detail = ": ".join(p for p in (pool.error_code, pool.error_message) if p)
        reason = Reason.QUOTA_EXCEEDED if is_quota_error(pool.error_code, pool.error_message) else None
        return _Cond(
            "False", reason or Reason.PROVISIONING_FAILED, f"agent pool {name} failed: {detail or 'no detail'}"
        )
    if pool is None or pool.provisioning_state not in _USABLE_POOL_STATES:
        state = "does not exist yet" if pool is None else f"is {pool.provisioning_state}"
        if observed.previous_pool is not None:
            return _Cond(
                "False",
                Reason.REPLACING,
                f"moving from agent pool {observed.previous_pool} to {name}, which {state}: "
                f"{observed.replace_reason or 'the hardware class changed'}",
            )
        return _Cond("False", Reason.PROVISIONING, f"agent pool {name} {state}")
    bounds = f", autoscaling {pool.min_count}..{pool.max_count} nodes" if pool.max_count is not None else ""
    state = pool.provisioning_state
    return _Cond("True", Reason.RECONCILED, f"agent pool {name} ({pool.vm_size}) is {state}{bounds}")


def _quota(observed: ObservedState, validated: _Cond) -> _Cond:
    if validated.status != "True":
        return _Cond("Unknown", validated.reason, "the spec must be fixed first")
    if observed.node_source is NodeSource.LOCAL:
        return _Cond("False", Reason.LOCAL, "CPU replicas; no Azure quota involved")
    if observed.node_source is NodeSource.EXISTING:
        return _Cond("False", Reason.BRING_YOUR_OWN, "nodes come from a pool tokenplane does not size")
    check = observed.quota
    if check is None:
        why = observed.quota_error or "not read yet"
        return _Cond("Unknown", Reason.QUOTA_UNKNOWN, f"the region's vCPU quota could not be read: {why}")
    if check.sufficient:
        reading = check.reading
        return _Cond(
            "False",
            Reason.QUOTA_SUFFICIENT,
            f"{check.wanted_nodes} x {reading.vm_size} fit the {reading.family} quota in {reading.region}: "
            f"{check.needed_vcpus} more vCPUs needed, {check.available_vcpus} available",
        )
    fault = observed.cloud_fault
    if observed.pool is None and fault is not None and fault.reason is Reason.QUOTA_EXCEEDED:
        outcome = "no agent pool is created until the quota allows one node"
    elif observed.pool_bounds is not None and observed.pool_bounds[1] < check.wanted_nodes:
        outcome = f"the agent pool is bounded to {observed.pool_bounds[1]} nodes"
    else:
        outcome = "the agent pool is not grown"
    return _Cond("True", Reason.QUOTA_INSUFFICIENT, f"{check.describe()}; {outcome}. {check.remedy()}")


def _short_of_floor(
    deployment: InferenceDeployment | None, observed: ObservedState, scaling: ScalingStatus | None
) -> str | None:
    """Why replicas spec.scaling.minReplicas asks for cannot be placed, or None when nothing says they cannot."""
    if deployment is None:
        return None
    floor = deployment.spec.scaling.min_replicas
    check = observed.quota
    if check is not None and check.floor_below:
        return (
            f"the vCPU quota holds {check.reachable_nodes} of the {check.floor_nodes} nodes "
            "spec.scaling.minReplicas needs; the rest stay Pending (see QuotaInsufficient)"
        )
    if scaling is not None and scaling.reason == Reason.WAITING_FOR_CAPACITY and (scaling.current or 0) < floor:
        return f"{scaling.current or 0} of {floor} replicas run, the rest pending with no node for them (see Scaled)"
    return None


def _serving(observed: ObservedState, node_pool: _Cond) -> _Cond:
    rayservice = observed.rayservice
    waiting = _Cond("False", Reason.WAITING_FOR_NODE_POOL, "the RayService is applied once its node pool is ready")
    if observed.rollout is not None and not (rayservice is not None and rayservice.current and rayservice.ready):
        return _Cond("False", Reason.DEPLOYING, observed.rollout)
    if rayservice is None:
        return waiting if node_pool.status != "True" else _Cond("False", Reason.DEPLOYING, "creating the RayService")
    if rayservice.failure is not None:
        return _Cond("False", Reason.SERVING_FAILED, rayservice.failure)
    if not rayservice.current:
        return waiting if node_pool.status != "True" else _Cond("False", Reason.DEPLOYING, "applying the new spec")
    if not rayservice.ready:
        detail = "upgrading to a new RayCluster" if rayservice.upgrading else rayservice.message or "starting"
        return _Cond("False", Reason.DEPLOYING, f"KubeRay reports the RayService not ready: {detail}")
    return _Cond("True", Reason.SERVING, "KubeRay reports the Serve application ready")


def _phase(
    observed: ObservedState,
    validated: _Cond,
    node_pool: _Cond,
    serving: _Cond,
    stalled: bool,
    previous_ready: Condition | None,
    short: str | None,
) -> Phase:
    if observed.deleting:
        return Phase.DELETING
    if stalled or validated.status != "True":
        return Phase.FAILED
    if node_pool.status == "True" and serving.status == "True":
        return Phase.READY if short is None else Phase.DEGRADED
    was_ready = previous_ready is not None and previous_ready.status == "True"
    if serving.reason == Reason.SERVING_FAILED or (was_ready and observed.rayservice is not None):
        return Phase.DEGRADED
    if node_pool.status != "True":
        return Phase.PROVISIONING
    return Phase.DEPLOYING


def _node_pool_status(observed: ObservedState) -> NodePoolStatus | None:
    if observed.node_source is NodeSource.LOCAL or observed.problems:
        return None
    if observed.node_source is NodeSource.EXISTING:
        return NodePoolStatus(managed=False)
    pool = observed.pool
    # During a move the status keeps naming the old pool: it still serves, and it is how a restarted
    # operator remembers to release it.
    name = observed.previous_pool or observed.pool_name
    if observed.previous_pool is not None:
        # The pool moved to is named too: it may exist before the deployment runs on it, and an edit the operator
        # never saw as one (vmSize A -> B -> A merged into no change) must still find it to release it.
        return NodePoolStatus(name=name, managed=True, provisioning_state="Replacing", moving_to=observed.pool_name)
    low, high = observed.pool_bounds or (None, None)
    return NodePoolStatus(
        name=name,
        vm_size=pool.vm_size if pool else None,
        provisioning_state=pool.provisioning_state if pool else None,
        min_count=pool.min_count if pool and pool.min_count is not None else low,
        max_count=pool.max_count if pool and pool.max_count is not None else high,
        managed=True,
        moving_to=observed.turned_away_pool,
    )


def _endpoint(deployment: InferenceDeployment | None, observed: ObservedState) -> EndpointStatus | None:
    if deployment is None or observed.endpoint_url is None:
        return None
    return EndpointStatus(url=observed.endpoint_url, model=deployment.served_name)


def _replicas(deployment: InferenceDeployment | None, observed: ObservedState) -> ReplicaStatus | None:
    if deployment is None:
        return None
    rayservice = observed.rayservice
    desired = rayservice.desired_replicas if rayservice and rayservice.desired_replicas is not None else None
    ready = rayservice.ready_replicas if rayservice and rayservice.ready_replicas is not None else 0
    return ReplicaStatus(desired=desired if desired is not None else deployment.spec.scaling.min_replicas, ready=ready)
