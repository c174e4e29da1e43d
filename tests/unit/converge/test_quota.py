"""Quota against what a pool can reach: which quotas count, how many nodes fit, what the policy applies."""

from datetime import UTC, datetime

import pytest

from tokenplane_operator.api.conditions import Reason
from tokenplane_operator.api.v1alpha1 import InferenceDeployment
from tokenplane_operator.converge.quota import (
    PoolClaim,
    QuotaPolicy,
    QuotaReading,
    QuotaUsage,
    bound_pool,
    check_quota,
    pending_claim,
)
from tokenplane_operator.converge.status import CloudFault, ObservedState, compute_status
from tokenplane_operator.desired.agentpool import DesiredAgentPool, ObservedAgentPool

FAMILY = "StandardNCadsH100v5Family"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def reading(family_limit: int, family_used: int = 0, cores: int = 1000, spot: int = 1000) -> QuotaReading:
    rows = [
        QuotaUsage(FAMILY, family_used, family_limit),
        QuotaUsage("cores", family_used, cores),
        QuotaUsage("lowPriorityCores", 0, spot),
    ]
    return QuotaReading("eastus", "Standard_NC40ads_H100_v5", FAMILY, 40, {r.name.lower(): r for r in rows})


def pool(low: int = 1, high: int = 4, spot: bool = False) -> DesiredAgentPool:
    return DesiredAgentPool(name="tpabc", vm_size="Standard_NC40ads_H100_v5", min_count=low, max_count=high, spot=spot)


def observed(count: int, low: int = 1, high: int = 2) -> ObservedAgentPool:
    return ObservedAgentPool(
        name="tpabc",
        vm_size="Standard_NC40ads_H100_v5",
        provisioning_state="Succeeded",
        count=count,
        min_count=low,
        max_count=high,
    )


def test_other_pools_headroom_is_not_free_for_this_one() -> None:
    # Each pool was checked against the whole free quota: two pools of one family both read "sufficient".
    sizes = {"standard_nc40ads_h100_v5": (FAMILY, 40), "standard_nc24ads_a100_v4": ("StandardNCADSA100v4Family", 24)}
    base = reading(family_limit=200, cores=1000)
    read = QuotaReading(base.region, base.vm_size, base.family, base.vcpus_per_node, base.usages, sizes)
    claims = [
        PoolClaim("tpother1", "Standard_NC40ads_H100_v5", False, 2),  # same family: 80 vCPUs it may still add
        PoolClaim("tpspot", "Standard_NC40ads_H100_v5", True, 5),  # spot: only the spot quota
        PoolClaim("tpa100", "Standard_NC24ads_A100_v4", False, 10),  # another family: only regional cores
        PoolClaim("tpabc", "Standard_NC40ads_H100_v5", False, 9),  # the pool itself: never its own claim
    ]
    check = check_quota(pool(high=4), 0, read, claims)
    assert check is not None and not check.sufficient
    assert (check.limiting.name, check.available_vcpus, check.reachable_nodes) == (FAMILY, 120, 3)
    assert check.claimed == {FAMILY.lower(): 80, "cores": 320} and check.claimed_by == ("tpother1",)
    assert "in use 0, 80 claimed by other tokenplane pools (tpother1); 3 nodes fit" in check.describe()
    assert f"{FAMILY} to 240 vCPUs" in check.remedy()  # its use, the claims and this pool's need
    spot = check_quota(pool(high=4, spot=True), 0, read, claims)
    assert spot is not None and spot.sufficient and spot.available_vcpus == 800  # 1000 - 5 x 40


def test_a_pending_pool_claims_what_its_own_check_lets_it_have() -> None:
    # A pool not created yet claimed its whole maxCount: one the quota holds back (under `block`) held back every
    # pool after it, though none of its nodes would ever exist.
    sizes = {"standard_nc40ads_h100_v5": (FAMILY, 40)}
    base = reading(family_limit=200)  # five nodes
    read = QuotaReading(base.region, "Standard_NC24ads_A100_v4", "other", 24, base.usages, sizes)
    wants_eight = pool(low=0, high=8)
    assert pending_claim(wants_eight, read, [], QuotaPolicy.BLOCK) is None
    assert pending_claim(wants_eight, read, [], QuotaPolicy.BOUND) == PoolClaim("tpabc", wants_eight.vm_size, False, 5)
    before = [PoolClaim("tpaaa", "Standard_NC40ads_H100_v5", False, 2)]
    assert pending_claim(wants_eight, read, before, QuotaPolicy.BOUND) == PoolClaim(
        "tpabc", wants_eight.vm_size, False, 3
    )
    two = pool(low=0, high=2)
    assert pending_claim(two, read, [], QuotaPolicy.BLOCK) == PoolClaim("tpabc", two.vm_size, False, 2)


def test_enough_quota_leaves_the_pool_alone() -> None:
    check = check_quota(pool(high=4), 0, reading(family_limit=160))
    assert check is not None and check.sufficient
    assert (check.needed_vcpus, check.available_vcpus, check.reachable_nodes) == (160, 160, 4)
    assert bound_pool(pool(high=4), check, QuotaPolicy.BOUND, None) == pool(high=4)


def test_too_little_quota_bounds_the_pool_to_what_fits() -> None:
    check = check_quota(pool(low=3, high=4), 0, reading(family_limit=100))
    assert check is not None and not check.sufficient
    assert (check.needed_vcpus, check.available_vcpus, check.reachable_nodes) == (160, 100, 2)
    bounded = bound_pool(pool(low=3, high=4), check, QuotaPolicy.BOUND, None)
    assert bounded is not None and (bounded.min_count, bounded.max_count) == (2, 2)
    message = check.describe()
    for part in (FAMILY, "eastus", "160 more vCPUs", "100 available"):
        assert part in message
    # What to do: the quota to raise and to what (in use + needed), or the field to lower.
    remedy = check.remedy()
    for part in (f"{FAMILY} to 160 vCPUs", "spec.scaling.maxReplicas", "at most 2 nodes"):
        assert part in remedy, remedy


def test_a_floor_the_quota_cannot_hold_is_said_and_min_replicas_named_in_the_remedy() -> None:
    check = check_quota(pool(low=3, high=4), 0, reading(family_limit=100))
    assert check is not None and check.floor_below
    assert "not even the pool's floor of 3 nodes (spec.scaling.minReplicas)" in check.describe(), check.describe()
    assert "lower spec.scaling.maxReplicas and spec.scaling.minReplicas" in check.remedy(), check.remedy()
    fits = check_quota(pool(low=2, high=4), 0, reading(family_limit=100))
    assert fits is not None and not fits.floor_below
    assert "floor" not in fits.describe() and "minReplicas" not in fits.remedy()


def test_the_remedy_names_every_quota_that_falls_short_and_spot_says_spot() -> None:
    both = check_quota(pool(high=4), 1, reading(family_limit=100, family_used=40, cores=60))
    assert both is not None and both.limiting.name == "cores"
    assert "cores to 160 and StandardNCadsH100v5Family to 160 vCPUs" in both.remedy()
    spot = check_quota(pool(high=4, spot=True), 0, reading(family_limit=0, cores=0, spot=80))
    assert spot is not None and "160 more spot vCPUs" in spot.describe() and FAMILY not in spot.describe()
    assert "lowPriorityCores to 160 vCPUs" in spot.remedy()


def test_existing_nodes_are_already_in_the_usage() -> None:
    # Two nodes run (80 vCPUs in use of 120): one more fits, so the pool reaches 3, not 1.
    check = check_quota(pool(high=4), 2, reading(family_limit=120, family_used=80))
    assert check is not None and (check.reachable_nodes, check.needed_vcpus, check.available_vcpus) == (3, 80, 40)


def test_the_regional_total_can_be_the_limit() -> None:
    check = check_quota(pool(high=4), 0, reading(family_limit=1000, cores=50))
    assert check is not None and check.limiting.name == "cores" and check.reachable_nodes == 1
    assert "limited by the cores quota" in check.describe()


def test_spot_pools_count_against_the_spot_quota_only() -> None:
    check = check_quota(pool(high=4, spot=True), 0, reading(family_limit=0, cores=0, spot=80))
    assert check is not None and check.limiting.name == "lowPriorityCores" and check.reachable_nodes == 2


def test_nothing_fits_creates_nothing_and_block_never_grows() -> None:
    none_fit = check_quota(pool(), 0, reading(family_limit=30))
    assert bound_pool(pool(), none_fit, QuotaPolicy.BOUND, None) is None
    some_fit = check_quota(pool(high=4), 0, reading(family_limit=100))
    assert bound_pool(pool(high=4), some_fit, QuotaPolicy.BLOCK, None) is None
    grown = check_quota(pool(high=4), 2, reading(family_limit=100, family_used=80))
    kept = bound_pool(pool(high=4), grown, QuotaPolicy.BLOCK, observed(count=2, high=2))
    assert kept is not None and kept.max_count == 2


def test_unknown_quota_names_leave_the_pool_unchecked() -> None:
    empty = QuotaReading("eastus", "Standard_NC40ads_H100_v5", FAMILY, 40, {})
    assert check_quota(pool(), 0, empty) is None
    assert bound_pool(pool(), None, QuotaPolicy.BOUND, None) == pool()


def _status(observed_state: ObservedState) -> dict[str, tuple[str, str, str]]:
    spec = {"model": {"source": "org/model"}, "hardware": {"vmSize": "Standard_NC40ads_H100_v5"}}
    deployment = InferenceDeployment.model_validate({"metadata": {"name": "m1", "namespace": "t"}, "spec": spec})
    status = compute_status(deployment, observed_state, generation=1, now=T0)
    return {c.type.value: (c.status, c.reason.value, c.message) for c in status.conditions}


def test_condition_names_family_region_needed_and_available() -> None:
    check = check_quota(pool(high=4), 0, reading(family_limit=100))
    state = ObservedState(pool_name="tpabc", pool=observed(count=1), pool_bounds=(1, 2), quota=check)
    status, reason, message = _status(state)["QuotaInsufficient"]
    assert (status, reason) == ("True", "QuotaInsufficient")
    assert "bounded to 2 nodes" in message and "160 more vCPUs" in message and "100 available" in message
    assert f"{FAMILY} to 160 vCPUs" in message and "spec.scaling.maxReplicas" in message
    assert _status(state)["NodePoolReady"][0] == "True"  # bounded, not broken


def test_nothing_created_is_a_stalled_quota_failure() -> None:
    check = check_quota(pool(), 0, reading(family_limit=30))
    assert check is not None
    fault = CloudFault(Reason.QUOTA_EXCEEDED, check.describe(), 30, stalled=True)
    conds = _status(ObservedState(pool_name="tpabc", pool_bounds=(1, 4), quota=check, cloud_fault=fault))
    assert conds["QuotaInsufficient"][:2] == ("True", "QuotaInsufficient")
    assert "no agent pool is created" in conds["QuotaInsufficient"][2]
    assert conds["NodePoolReady"][:2] == ("False", "QuotaExceeded") and conds["Stalled"][0] == "True"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("QuotaExceeded", "Operation could not be completed as it results in exceeding approved quota."),
        (
            "ReconcileVMSSAgentPoolFailed",
            'Code="OperationNotAllowed" Message="Operation could not be completed as it results in exceeding '
            'approved StandardNCadsH100v5Family Cores quota."',
        ),
    ],
)
def test_a_pool_failed_for_quota_reports_quota(code: str, message: str) -> None:
    failed = observed(count=0).model_copy(
        update={"provisioning_state": "Failed", "error_code": code, "error_message": message}
    )
    assert _status(ObservedState(pool_name="tpabc", pool=failed))["NodePoolReady"][:2] == ("False", "QuotaExceeded")
