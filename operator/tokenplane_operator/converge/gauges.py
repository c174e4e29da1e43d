"""What a platform engineer graphs and alerts on per InferenceDeployment, read from the status the operator writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tokenplane_operator.api.conditions import ConditionType, Reason
from tokenplane_operator.api.v1alpha1 import InferenceDeployment, InferenceDeploymentStatus

__all__ = ["DeploymentGauges", "deployment_gauges"]


@dataclass(frozen=True)
class DeploymentGauges:
    """One deployment's gauge values; None means "not known" and exports no series.

    Attributes:
        ready: The Ready condition is True (the endpoint serves at the current generation).
        stalled: The Stalled condition is True (a human must act: quota, SKU, invalid spec).
        quota_insufficient: QuotaInsufficient is True; None while it is Unknown (quota unreadable, spec invalid).
        replicas_ready: Ray worker replicas ready, as KubeRay reports them.
        replicas_desired: Replicas the autoscaler wants (spec.scaling.minReplicas until KubeRay says).
        min_replicas: spec.scaling.minReplicas; None when the spec does not parse.
        max_replicas: spec.scaling.maxReplicas; None when the spec does not parse.
        node_pool: The managed AKS agent pool's name, None for CPU and bring-your-own nodes.
        node_pool_state: Its Azure provisioningState (or Replacing during a move); None before Azure reported one.
        scaled: The Scaled condition is True (the replicas the autoscaling policy wants run); None while Unknown.
        waiting_for_capacity: Scaled is False because wanted replicas found no node; None while Scaled is Unknown.
        latency_target_seconds: spec.scaling.latencyTarget's P95 in seconds, the latency alert's threshold; None
            without a target (or a spec that does not parse).
        latency_target_metric: Which latency that target is on: `ttft` or `e2e`.
        created_timestamp_seconds: metadata.creationTimestamp as Unix seconds: the token-spike alert leaves
            deployments younger than its one-day baseline alone. None when the spec does not parse.
    """

    ready: bool
    stalled: bool
    quota_insufficient: bool | None
    replicas_ready: int | None
    replicas_desired: int | None
    min_replicas: int | None
    max_replicas: int | None
    node_pool: str | None
    node_pool_state: str | None
    scaled: bool | None
    waiting_for_capacity: bool | None
    latency_target_seconds: float | None = None
    latency_target_metric: str | None = None
    created_timestamp_seconds: float | None = None


def deployment_gauges(
    status: InferenceDeploymentStatus, deployment: InferenceDeployment | None = None
) -> DeploymentGauges:
    """Turn a computed status (and the parsed spec, for the replica bounds) into gauge values.

    Args:
        status: The status the operator writes for the deployment this round.
        deployment: The parsed deployment, or None when its spec did not parse.

    Returns:
        The values; the same status always gives the same values.
    """
    conditions = {c.type: c.status for c in status.conditions}
    scaled = next((c for c in status.conditions if c.type is ConditionType.SCALED and c.status != "Unknown"), None)
    quota = conditions.get(ConditionType.QUOTA_INSUFFICIENT)
    pool = status.node_pool if status.node_pool is not None and status.node_pool.managed else None
    scaling = deployment.spec.scaling if deployment is not None else None
    replicas = status.replicas
    target = scaling.latency_target if scaling is not None else None
    return DeploymentGauges(
        ready=conditions.get(ConditionType.READY) == "True",
        stalled=conditions.get(ConditionType.STALLED) == "True",
        quota_insufficient=None if quota in (None, "Unknown") else quota == "True",
        replicas_ready=replicas.ready if replicas is not None else None,
        replicas_desired=replicas.desired if replicas is not None else None,
        min_replicas=scaling.min_replicas if scaling is not None else None,
        max_replicas=scaling.max_replicas if scaling is not None else None,
        node_pool=pool.name if pool is not None else None,
        node_pool_state=pool.provisioning_state if pool is not None else None,
        scaled=scaled.status == "True" if scaled is not None else None,
        waiting_for_capacity=scaled.reason is Reason.WAITING_FOR_CAPACITY if scaled is not None else None,
        latency_target_seconds=target.p95_milliseconds / 1000 if target is not None else None,
        latency_target_metric=target.metric.value if target is not None else None,
        created_timestamp_seconds=_created(deployment),
    )


def _created(deployment: InferenceDeployment | None) -> float | None:
    """metadata.creationTimestamp (RFC 3339, as the API server writes it) in Unix seconds, if there is one."""
    stamp = deployment.metadata.get("creationTimestamp") if deployment is not None else None
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None
