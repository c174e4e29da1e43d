"""deployment_gauges: the operator's per-deployment metrics are a pure reading of the status it writes."""

from tests.unit.converge.test_status import READY_RS, T0, URL, deployment, pool
from tokenplane_operator.api.conditions import ConditionType
from tokenplane_operator.api.v1alpha1 import InferenceDeployment, ScalingStatus
from tokenplane_operator.converge.gauges import deployment_gauges
from tokenplane_operator.converge.status import NodeSource, ObservedState, RayServiceObservation, compute_status


def scaled(low: int, high: int) -> InferenceDeployment:
    spec = deployment().model_dump(by_alias=True, exclude_none=True)
    spec["spec"]["scaling"] = {"minReplicas": low, "maxReplicas": high}
    return InferenceDeployment.model_validate(spec)


def test_a_ready_deployment_reads_ready_with_its_bounds_and_pool() -> None:
    observed = ObservedState(pool_name="tpabc", pool=pool(), rayservice=READY_RS, endpoint_url=URL)
    gauges = deployment_gauges(compute_status(scaled(1, 4), observed, generation=3, now=T0), scaled(1, 4))
    assert (gauges.ready, gauges.stalled) == (True, False)
    assert (gauges.replicas_ready, gauges.replicas_desired) == (1, 1)
    assert (gauges.min_replicas, gauges.max_replicas) == (1, 4)
    assert (gauges.node_pool, gauges.node_pool_state) == ("tpabc", "Succeeded")
    assert gauges.quota_insufficient is None, "no quota reading: Unknown exports no series"


def test_a_provisioning_pool_is_not_ready_and_wants_min_replicas() -> None:
    observed = ObservedState(pool_name="tpabc", pool=pool("Creating"))
    gauges = deployment_gauges(compute_status(scaled(2, 4), observed, generation=1, now=T0), scaled(2, 4))
    assert not gauges.ready and not gauges.stalled
    assert (gauges.replicas_ready, gauges.replicas_desired) == (0, 2)
    assert gauges.node_pool_state == "Creating"


def test_kuberay_desired_replicas_win_over_min_replicas() -> None:
    scaling = RayServiceObservation(current=True, ready=True, ready_replicas=3, desired_replicas=4)
    observed = ObservedState(pool_name="tpabc", pool=pool(), rayservice=scaling, endpoint_url=URL)
    gauges = deployment_gauges(compute_status(scaled(1, 4), observed, generation=1, now=T0), scaled(1, 4))
    assert (gauges.replicas_ready, gauges.replicas_desired, gauges.max_replicas) == (3, 4, 4)


def test_an_invalid_spec_is_stalled_without_bounds() -> None:
    observed = ObservedState(problems=("spec.scaling.minReplicas: exceeds maxReplicas",))
    gauges = deployment_gauges(compute_status(None, observed, generation=1, now=T0), None)
    assert (gauges.ready, gauges.stalled) == (False, True)
    assert gauges.min_replicas is gauges.max_replicas is gauges.replicas_ready is gauges.quota_insufficient is None


def test_cpu_deployments_have_no_pool_and_no_quota_problem() -> None:
    observed = ObservedState(node_source=NodeSource.LOCAL, rayservice=READY_RS, endpoint_url=URL)
    gauges = deployment_gauges(compute_status(deployment(), observed, generation=1, now=T0), deployment())
    assert gauges.ready and gauges.node_pool is None and gauges.node_pool_state is None
    assert gauges.quota_insufficient is False


def test_quota_insufficient_follows_its_condition() -> None:
    observed = ObservedState(pool_name="tpabc", pool=pool(), rayservice=READY_RS, endpoint_url=URL)
    status = compute_status(deployment(), observed, generation=1, now=T0)
    conditions = [
        c.model_copy(update={"status": "True"}) if c.type is ConditionType.QUOTA_INSUFFICIENT else c
        for c in status.conditions
    ]
    gauges = deployment_gauges(status.model_copy(update={"conditions": conditions}), deployment())
    assert gauges.quota_insufficient is True and gauges.ready


def test_scaled_and_waiting_for_capacity_follow_the_scaled_condition() -> None:
    observed = ObservedState(pool_name="tpabc", pool=pool(), rayservice=READY_RS, endpoint_url=URL)
    unreported = deployment_gauges(compute_status(deployment(), observed, generation=1, now=T0), deployment())
    assert unreported.scaled is unreported.waiting_for_capacity is None, "Unknown until the policy reported"
    waiting = ScalingStatus(current=1, desired=3, reason="WaitingForCapacity")
    status = compute_status(deployment(), observed, generation=1, now=T0, scaling=waiting)
    gauges = deployment_gauges(status, deployment())
    assert (gauges.scaled, gauges.waiting_for_capacity) == (False, True)
    steady = ScalingStatus(current=2, desired=2, reason="Steady")
    gauges = deployment_gauges(compute_status(deployment(), observed, generation=1, now=T0, scaling=steady))
    assert (gauges.scaled, gauges.waiting_for_capacity) == (True, False)


def test_the_latency_target_is_exported_in_seconds_with_its_metric() -> None:
    """The latency alert holds each deployment to spec.scaling.latencyTarget: the gauges carry it."""
    observed = ObservedState(pool_name="tpabc", pool=pool(), rayservice=READY_RS, endpoint_url=URL)
    spec = deployment().model_dump(by_alias=True, exclude_none=True)
    spec["spec"]["scaling"] = {"latencyTarget": {"metric": "e2e", "p95Milliseconds": 1500}}
    targeted = InferenceDeployment.model_validate(spec)
    gauges = deployment_gauges(compute_status(targeted, observed, generation=1, now=T0), targeted)
    assert (gauges.latency_target_seconds, gauges.latency_target_metric) == (1.5, "e2e")
    untargeted = deployment_gauges(compute_status(deployment(), observed, generation=1, now=T0), deployment())
    assert untargeted.latency_target_seconds is untargeted.latency_target_metric is None


def test_the_creation_time_is_exported_in_unix_seconds() -> None:
    """The token-spike alert leaves deployments younger than its one-day baseline alone: it needs their age."""
    observed = ObservedState(pool_name="tpabc", pool=pool(), rayservice=READY_RS, endpoint_url=URL)
    spec = deployment().model_dump(by_alias=True, exclude_none=True)
    spec["metadata"]["creationTimestamp"] = "2026-11-28T10:00:00Z"
    created = InferenceDeployment.model_validate(spec)
    gauges = deployment_gauges(compute_status(created, observed, generation=1, now=T0), created)
    assert gauges.created_timestamp_seconds == 1_795_860_000.0
    unparsed = deployment_gauges(compute_status(None, ObservedState(problems=("x",)), generation=1, now=T0), None)
    assert unparsed.created_timestamp_seconds is None
