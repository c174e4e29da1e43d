"""compute_status: conditions, kstatus polarity, transition times, phase, endpoint and pool fields."""

from datetime import UTC, datetime, timedelta

import pytest

from tokenplane_operator.api.conditions import ConditionType, Phase, Reason
from tokenplane_operator.api.v1alpha1 import InferenceDeployment, ScalingStatus
from tokenplane_operator.converge.status import (
    CloudFault,
    NodeSource,
    ObservedState,
    RayServiceObservation,
    compute_status,
)
from tokenplane_operator.desired.agentpool import ObservedAgentPool

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
URL = "http://m1-openai.team.svc.cluster.local:8000/v1"


def deployment() -> InferenceDeployment:
    return InferenceDeployment.model_validate(
        {
            "metadata": {"name": "m1", "namespace": "team", "generation": 3},
            "spec": {"model": {"source": "org/model"}, "hardware": {"vmSize": "Standard_NC24ads_A100_v4"}},
        }
    )


def pool(state: str = "Succeeded", **kw: object) -> ObservedAgentPool:
    base: dict[str, object] = {
        "name": "tpabc",
        "vm_size": "Standard_NC24ads_A100_v4",
        "provisioning_state": state,
        "min_count": 0,
        "max_count": 2,
    }
    return ObservedAgentPool.model_validate(base | kw)


READY_RS = RayServiceObservation(current=True, ready=True, ready_replicas=1, desired_replicas=1)


def conds(status) -> dict[str, tuple[str, str]]:
    return {c.type.value: (c.status, c.reason.value) for c in status.conditions}


def test_ready_when_pool_and_serving_ready() -> None:
    observed = ObservedState(pool_name="tpabc", pool=pool(), rayservice=READY_RS, endpoint_url=URL)
    status = compute_status(deployment(), observed, generation=3, now=T0)
    assert conds(status) == {
        "Validated": ("True", "Valid"),
        "NodePoolReady": ("True", "Reconciled"),
        "ServingReady": ("True", "Serving"),
        "Ready": ("True", "Serving"),
        "Reconciling": ("False", "Reconciled"),
        "Stalled": ("False", "Reconciled"),
        "QuotaInsufficient": ("Unknown", "QuotaUnknown"),  # no quota reading in this snapshot
        "Scaled": ("Unknown", "NotReported"),  # no autoscaling decision scraped yet
    }
    assert status.phase is Phase.READY
    assert status.observed_generation == 3
    assert all(c.observed_generation == 3 for c in status.conditions)
    assert status.endpoint is not None and status.endpoint.url == URL and status.endpoint.model == "m1"
    assert status.replicas is not None and status.replicas.ready == 1
    assert status.node_pool is not None and status.node_pool.name == "tpabc" and status.node_pool.managed


def test_invalid_spec_is_stalled_with_field_path() -> None:
    observed = ObservedState(problems=("spec.scaling.minReplicas: exceeds maxReplicas",))
    status = compute_status(None, observed, generation=1, now=T0)
    c = conds(status)
    assert c["Validated"] == ("False", "InvalidSpec")
    assert c["Ready"] == ("False", "InvalidSpec")
    assert c["Stalled"] == ("True", "InvalidSpec")
    assert c["Reconciling"][0] == "False"
    assert c["NodePoolReady"][0] == "Unknown"
    assert status.phase is Phase.FAILED
    ready = next(x for x in status.conditions if x.type is ConditionType.READY)
    assert "spec.scaling.minReplicas" in ready.message
    assert status.endpoint is None and status.node_pool is None


@pytest.mark.parametrize(
    ("fault", "stalled"),
    [
        (CloudFault(Reason.THROTTLED, "throttled", 7), False),
        (CloudFault(Reason.CLOUD_ERROR, "500", 15), False),
        (CloudFault(Reason.PROVISIONING_FAILED, "AllocationFailed", 15), False),
        (CloudFault(Reason.QUOTA_EXCEEDED, "standardNCADSH100v5Family Cores quota in eastus", 900, True), True),
        (CloudFault(Reason.SKU_NOT_AVAILABLE, "not available in eastus", 900, True), True),
    ],
)
def test_cloud_faults(fault: CloudFault, stalled: bool) -> None:
    observed = ObservedState(pool_name="tpabc", pool=None, cloud_fault=fault)
    status = compute_status(deployment(), observed, generation=1, now=T0)
    c = conds(status)
    assert c["NodePoolReady"] == ("False", fault.reason.value)
    assert c["Ready"] == ("False", fault.reason.value)
    assert c["Stalled"][0] == ("True" if stalled else "False")
    assert c["Reconciling"][0] == ("False" if stalled else "True")
    assert c["ServingReady"] == ("False", "WaitingForNodePool")
    message = next(x for x in status.conditions if x.type is ConditionType.NODE_POOL_READY).message
    assert fault.message in message and "retrying in" in message
    assert status.phase is (Phase.FAILED if stalled else Phase.PROVISIONING)


def test_provisioning_then_deploying() -> None:
    status = compute_status(deployment(), ObservedState(pool_name="tpabc", pool=pool("Creating")), generation=1, now=T0)
    assert conds(status)["NodePoolReady"] == ("False", "Provisioning")
    assert conds(status)["Reconciling"] == ("True", "Provisioning")
    assert status.phase is Phase.PROVISIONING
    deploying = ObservedState(pool_name="tpabc", pool=pool(), rayservice=RayServiceObservation(message="x"))
    status = compute_status(deployment(), deploying, generation=1, now=T0)
    assert conds(status)["ServingReady"] == ("False", "Deploying")
    assert status.phase is Phase.DEPLOYING


def test_failed_lro_reported_as_provisioning_failed() -> None:
    observed = ObservedState(pool_name="tpabc", pool=pool("Failed", error_code="Boom", error_message="no capacity"))
    status = compute_status(deployment(), observed, generation=1, now=T0)
    assert conds(status)["NodePoolReady"] == ("False", "ProvisioningFailed")
    assert "Boom: no capacity" in status.conditions[1].message


def test_in_place_update_keeps_ready_but_reconciling() -> None:
    observed = ObservedState(pool_name="tpabc", pool=pool("Updating"), rayservice=READY_RS)
    c = conds(compute_status(deployment(), observed, generation=1, now=T0))
    assert c["Ready"] == ("True", "Serving")
    assert c["Reconciling"] == ("True", "Provisioning")


def test_replacement_keeps_naming_the_old_pool() -> None:
    observed = ObservedState(
        pool_name="tpnew",
        pool=pool("Creating", name="tpnew"),
        previous_pool="tpold",
        replace_reason="vmSize cannot change in place",
        rayservice=RayServiceObservation(current=False, ready=True),
    )
    status = compute_status(deployment(), observed, generation=2, now=T0)
    assert conds(status)["NodePoolReady"] == ("False", "Replacing")
    assert conds(status)["ServingReady"] == ("False", "WaitingForNodePool")
    assert status.node_pool is not None and status.node_pool.name == "tpold"
    assert "vmSize cannot change in place" in status.conditions[1].message


def test_serving_failure_and_degraded() -> None:
    failed = RayServiceObservation(current=True, failure="Serve application app is DEPLOY_FAILED: oom")
    observed = ObservedState(pool_name="tpabc", pool=pool(), rayservice=failed)
    status = compute_status(deployment(), observed, generation=1, now=T0)
    assert conds(status)["ServingReady"] == ("False", "ServingFailed")
    assert status.phase is Phase.DEGRADED


def test_transition_time_kept_while_status_unchanged() -> None:
    first = compute_status(deployment(), ObservedState(pool_name="p", pool=pool("Creating")), generation=1, now=T0)
    # Reason changes (Provisioning -> Throttled) but status stays False: keep the time.
    throttled = ObservedState(pool_name="p", cloud_fault=CloudFault(Reason.THROTTLED, "429", 5))
    second = compute_status(deployment(), throttled, generation=1, now=T1, previous_conditions=first.conditions)
    np1 = next(c for c in first.conditions if c.type is ConditionType.NODE_POOL_READY)
    np2 = next(c for c in second.conditions if c.type is ConditionType.NODE_POOL_READY)
    assert np2.reason is Reason.THROTTLED and np2.last_transition_time == np1.last_transition_time == T0
    ready = ObservedState(pool_name="p", pool=pool(), rayservice=READY_RS)
    third = compute_status(deployment(), ready, generation=1, now=T1, previous_conditions=second.conditions)
    np3 = next(c for c in third.conditions if c.type is ConditionType.NODE_POOL_READY)
    assert np3.status == "True" and np3.last_transition_time == T1


def test_byo_and_local() -> None:
    byo = ObservedState(node_source=NodeSource.EXISTING, existing_selector={"agentpool": "gpu"}, rayservice=READY_RS)
    status = compute_status(deployment(), byo, generation=1, now=T0)
    assert conds(status)["NodePoolReady"] == ("True", "BringYourOwn")
    assert status.node_pool is not None and status.node_pool.managed is False
    local = ObservedState(node_source=NodeSource.LOCAL, rayservice=READY_RS)
    status = compute_status(deployment(), local, generation=1, now=T0)
    assert conds(status)["NodePoolReady"] == ("True", "Local") and status.node_pool is None


def test_deleting() -> None:
    status = compute_status(deployment(), ObservedState(pool_name="p", deleting=True), generation=1, now=T0)
    assert status.phase is Phase.DELETING
    assert conds(status)["Ready"] == ("False", "Deleting")


def test_status_always_lists_every_condition_once() -> None:
    status = compute_status(deployment(), ObservedState(), generation=1, now=T0)
    assert [c.type for c in status.conditions] == list(ConditionType)


@pytest.mark.parametrize(
    ("kuberay", "ready", "upgrading", "failure"),
    [
        ({"conditions": [{"type": "Ready", "status": "True"}]}, True, False, None),
        (
            {"conditions": [{"type": "Ready", "status": "True"}, {"type": "UpgradeInProgress", "status": "True"}]},
            False,
            True,
            None,
        ),
        ({"serviceStatus": "Running"}, True, False, None),
        (
            {"activeServiceStatus": {"applicationStatuses": {"app": {"status": "DEPLOY_FAILED", "message": "m"}}}},
            False,
            False,
            "Serve application app is DEPLOY_FAILED: m",
        ),
        (
            {"conditions": [{"type": "Ready", "status": "False", "reason": "ValidationFailed", "message": "bad"}]},
            False,
            False,
            "KubeRay refused the RayService: bad",
        ),
        (
            {"conditions": [{"type": "Ready", "status": "False", "reason": "InitializingTimeout", "message": "5m"}]},
            False,
            False,
            "KubeRay gave up starting the RayService (delete it: the operator creates it again): 5m",
        ),
        ({"conditions": [{"type": "Ready", "status": "False", "reason": "Initializing"}]}, False, False, None),
        (None, False, False, None),
    ],
)
def test_rayservice_observation(kuberay, ready, upgrading, failure) -> None:
    obs = RayServiceObservation.from_status(kuberay, current=True)
    assert (obs.ready, obs.upgrading, obs.failure) == (ready, upgrading, failure)


def test_rayservice_replicas_from_active_cluster() -> None:
    kuberay = {"activeServiceStatus": {"rayClusterStatus": {"readyWorkerReplicas": 2, "desiredWorkerReplicas": 3}}}
    obs = RayServiceObservation.from_status(kuberay, current=True)
    assert (obs.ready_replicas, obs.desired_replicas) == (2, 3)


def test_serving_below_min_replicas_for_want_of_nodes_is_ready_but_degraded() -> None:
    body = deployment().model_dump(by_alias=True, exclude_none=True)
    body["spec"]["scaling"] = {"minReplicas": 3, "maxReplicas": 3}
    observed = ObservedState(pool_name="tpabc", pool=pool(), rayservice=READY_RS, endpoint_url=URL)
    waiting = ScalingStatus(current=1, desired=3, reason="WaitingForCapacity", updated_at=T0)
    status = compute_status(InferenceDeployment.model_validate(body), observed, generation=3, now=T0, scaling=waiting)
    ready = next(c for c in status.conditions if c.type is ConditionType.READY)
    assert (ready.status, ready.reason) == ("True", Reason.WAITING_FOR_CAPACITY)
    assert "1 of 3 replicas run" in ready.message and status.phase is Phase.DEGRADED
