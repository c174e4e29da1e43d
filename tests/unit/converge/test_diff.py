"""compute_actions / compute_release / merge_pool_demand: the ordered actions and their reasons."""

import pytest

from tokenplane_operator.api.conditions import Reason
from tokenplane_operator.converge.diff import (
    Action,
    ActionKind,
    compute_actions,
    compute_release,
    drifted,
    merge_pool_demand,
    pool_drift,
)
from tokenplane_operator.converge.status import CloudFault, NodeSource, ObservedState, RayServiceObservation
from tokenplane_operator.desired.agentpool import DesiredAgentPool, ObservedAgentPool, to_arm_body

DESIRED = DesiredAgentPool(name="tpnew", vm_size="Standard_NC24ads_A100_v4", min_count=0, max_count=2)
HASHES = {"Service/m1-openai": "s1", "NetworkPolicy/m1-ingress": "n1", "RayService/m1": "r1"}
READY_RS = RayServiceObservation(current=True, ready=True)


def observed_pool(desired: DesiredAgentPool = DESIRED, state: str = "Succeeded") -> ObservedAgentPool:
    body = to_arm_body(desired)
    body["name"] = desired.name
    body["properties"]["provisioningState"] = state
    return ObservedAgentPool.from_arm(body)


def kinds(actions: list[Action]) -> list[tuple[ActionKind, str]]:
    return [(a.kind, a.target) for a in actions]


def test_fresh_deployment_creates_pool_and_objects_but_not_rayservice() -> None:
    actions = compute_actions(
        desired_pool=DESIRED, desired_hashes=HASHES, observed_hashes={}, observed=ObservedState(pool_name="tpnew")
    )
    assert kinds(actions) == [
        (ActionKind.CREATE_POOL, "tpnew"),
        (ActionKind.APPLY_SERVICE, "Service/m1-openai"),
        (ActionKind.APPLY_NETWORK_POLICY, "NetworkPolicy/m1-ingress"),
    ]
    assert "standard_nc24ads_a100_v4" in actions[0].reason
    assert actions[1].reason == "it does not exist"


def test_wait_while_provisioning() -> None:
    observed = ObservedState(pool_name="tpnew", pool=observed_pool(state="Creating"))
    actions = compute_actions(desired_pool=DESIRED, desired_hashes=HASHES, observed_hashes=HASHES, observed=observed)
    assert kinds(actions) == [(ActionKind.WAIT, "tpnew")]
    assert not actions[0].changes_something


def test_ready_pool_applies_rayservice_and_nothing_when_converged() -> None:
    observed = ObservedState(pool_name="tpnew", pool=observed_pool())
    have = {**HASHES, "RayService/m1": "r0"}
    actions = compute_actions(desired_pool=DESIRED, desired_hashes=HASHES, observed_hashes=have, observed=observed)
    assert kinds(actions) == [(ActionKind.APPLY_RAYSERVICE, "RayService/m1")]
    assert actions[0].reason == "spec hash r0 -> r1"
    assert compute_actions(desired_pool=DESIRED, desired_hashes=HASHES, observed_hashes=HASHES, observed=observed) == []


def test_bounds_drift_updates_in_place() -> None:
    bigger = DESIRED.model_copy(update={"max_count": 4})
    observed = ObservedState(pool_name="tpnew", pool=observed_pool())
    actions = compute_actions(desired_pool=bigger, desired_hashes={}, observed_hashes={}, observed=observed)
    assert kinds(actions) == [(ActionKind.UPDATE_POOL, "tpnew")]
    assert actions[0].reason == "autoscaling 0..2 -> 0..4"


def test_failed_pool_is_retried_and_cloud_fault_waits() -> None:
    failed = ObservedState(pool_name="tpnew", pool=observed_pool(state="Failed"))
    assert kinds(compute_actions(desired_pool=DESIRED, desired_hashes={}, observed_hashes={}, observed=failed)) == [
        (ActionKind.UPDATE_POOL, "tpnew")
    ]
    gated = ObservedState(pool_name="tpnew", cloud_fault=CloudFault(Reason.THROTTLED, "429", 12))
    actions = compute_actions(desired_pool=DESIRED, desired_hashes={}, observed_hashes={}, observed=gated)
    assert kinds(actions) == [(ActionKind.WAIT, "tpnew")]
    assert "Throttled" in actions[0].reason and "12s" in actions[0].reason


def test_replacement_creates_new_pool_then_releases_old_once_serving() -> None:
    start = ObservedState(pool_name="tpnew", previous_pool="tpold", replace_reason="vmSize cannot change in place")
    actions = compute_actions(desired_pool=DESIRED, desired_hashes=HASHES, observed_hashes=HASHES, observed=start)
    assert kinds(actions) == [(ActionKind.REPLACE_POOL, "tpnew")]
    assert actions[0].reason == "replaces tpold: vmSize cannot change in place"
    moved = ObservedState(pool_name="tpnew", pool=observed_pool(), previous_pool="tpold", rayservice=READY_RS)
    actions = compute_actions(desired_pool=DESIRED, desired_hashes=HASHES, observed_hashes=HASHES, observed=moved)
    assert kinds(actions) == [(ActionKind.RELEASE_POOL, "tpold")]
    shared = compute_actions(
        desired_pool=DESIRED, desired_hashes=HASHES, observed_hashes=HASHES, observed=moved, previous_pool_claimed=True
    )
    assert kinds(shared) == [(ActionKind.DETACH_POOL, "tpold")]


def test_old_pool_kept_until_new_spec_serves() -> None:
    not_yet = ObservedState(
        pool_name="tpnew", pool=observed_pool(), previous_pool="tpold", rayservice=RayServiceObservation(ready=False)
    )
    actions = compute_actions(desired_pool=DESIRED, desired_hashes=HASHES, observed_hashes=HASHES, observed=not_yet)
    assert actions == []


def test_byo_has_no_pool_actions() -> None:
    observed = ObservedState(node_source=NodeSource.EXISTING)
    actions = compute_actions(desired_pool=None, desired_hashes=HASHES, observed_hashes={}, observed=observed)
    assert [a.kind for a in actions] == [
        ActionKind.APPLY_SERVICE,
        ActionKind.APPLY_NETWORK_POLICY,
        ActionKind.APPLY_RAYSERVICE,
    ]


def test_merge_pool_demand_sums_bounds_with_cap() -> None:
    a = DESIRED.model_copy(update={"min_count": 1, "max_count": 3})
    b = DESIRED.model_copy(update={"min_count": 0, "max_count": 4})
    merged = merge_pool_demand([a, b])
    assert (merged.min_count, merged.max_count) == (1, 7)
    assert merge_pool_demand([a, b], max_nodes=5).max_count == 5


def test_pool_drift_ignores_node_count() -> None:
    pool = observed_pool().model_copy(update={"count": 2})
    assert pool_drift(DESIRED, pool) == []


def test_release() -> None:
    pool = observed_pool()
    assert compute_release("tpnew", pool, ["team/other"]) == Action(
        ActionKind.DETACH_POOL, "tpnew", "still used by team/other"
    )
    release = compute_release("tpnew", observed_pool(state="Creating"), [])
    assert release is not None and release.kind is ActionKind.RELEASE_POOL and "Creating" in release.reason
    waiting = compute_release("tpnew", observed_pool(state="Deleting"), [])
    assert waiting is not None and waiting.kind is ActionKind.WAIT
    assert compute_release("tpnew", None, []) is None


@pytest.mark.parametrize(
    ("desired", "observed", "expected"),
    [
        ({"a": 1, "b": {"c": "x"}}, {"a": 1, "b": {"c": "x", "d": 2}, "e": 3}, False),  # defaults and extra fields
        ({"ports": [{"port": 80}]}, {"ports": [{"port": 80, "protocol": "TCP"}]}, False),  # defaulted in a list item
        ({"x": None, "y": {}, "z": [], "f": False, "n": 0, "s": ""}, {}, False),  # what the API server drops
        ({"f": False}, {"f": True}, True),
        ({"a": 1}, {"a": 2}, True),
        ({"a": 1}, {"a": "1"}, True),
        ({"a": True}, {"a": 1}, True),
        ({"b": {"c": "x"}}, {}, True),
        ({"ports": [{"port": 80}]}, {"ports": [{"port": 80}, {"port": 81}]}, True),
        ({"z": []}, {"z": [1]}, True),
        # Quantities by value, as apimachinery's resource.Quantity canonicalises them: 0.5 -> 500m, 1024Mi -> 1Gi.
        ({"limits": {"cpu": "0.5", "memory": "1024Mi"}}, {"limits": {"cpu": "500m", "memory": "1Gi"}}, False),
        ({"requests": {"cpu": "2.0"}, "sizeLimit": "1024Gi"}, {"requests": {"cpu": 2}, "sizeLimit": "1Ti"}, False),
        ({"requests": {"cpu": "0.5"}}, {"requests": {"cpu": "600m"}}, True),
        ({"requests": {"cpu": "1"}}, {"requests": {}}, True),
        ({"env": [{"name": "X", "value": "0.5"}]}, {"env": [{"name": "X", "value": "500m"}]}, True),  # not a quantity
    ],
)
def test_drifted_compares_only_the_fields_the_operator_sets(desired: object, observed: object, expected: bool) -> None:
    assert drifted(desired, observed) is expected
