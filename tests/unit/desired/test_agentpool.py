"""The desired agent pool, its ARM body, replacement rules and deterministic names."""

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tokenplane_operator.desired.agentpool import (
    GPU_TAINT,
    MANAGED_BY_TAG,
    POOL_LABEL,
    SPOT_TAINT,
    DesiredAgentPool,
    ObservedAgentPool,
    hardware_class_key,
    needs_replacement,
    operation_failure,
    pool_name_for,
    to_arm_body,
)
from tokenplane_operator.errors import OperationFailedError

AKS_LINUX_POOL_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
A100 = "Standard_NC24ads_A100_v4"


def desired(**overrides: Any) -> DesiredAgentPool:
    fields: dict[str, Any] = {"name": "tpa1b2c3d4", "vm_size": A100, "min_count": 0, "max_count": 3}
    return DesiredAgentPool(**(fields | overrides))


def observed_from(pool: DesiredAgentPool, state: str = "Succeeded") -> ObservedAgentPool:
    body = to_arm_body(pool)
    body["properties"]["provisioningState"] = state
    return ObservedAgentPool.from_arm({"name": pool.name, **body})


def test_regular_pool_body() -> None:
    body = to_arm_body(desired(zones=("2", "1", "2"), node_labels={"team": "a"}, tags={"cost": "llm"}))
    assert body == {
        "properties": {
            "vmSize": A100,
            "mode": "User",
            "type": "VirtualMachineScaleSets",
            "osType": "Linux",
            "osSKU": "AzureLinux",
            "enableAutoScaling": True,
            "minCount": 0,
            "maxCount": 3,
            "count": 0,
            "gpuProfile": {"driver": "Install"},
            "nodeLabels": {"team": "a", POOL_LABEL: "tpa1b2c3d4"},
            "nodeTaints": [GPU_TAINT],
            "tags": {"cost": "llm", MANAGED_BY_TAG: "tokenplane"},
            "availabilityZones": ["1", "2"],
            "scaleSetPriority": "Regular",
            "upgradeSettings": {"maxSurge": "1", "maxUnavailable": "0"},
        }
    }


def test_spot_pool_body_has_spot_taint_and_no_upgrade_settings() -> None:
    props = to_arm_body(desired(spot=True, node_taints=("team=a:NoSchedule",)))["properties"]
    assert props["scaleSetPriority"] == "Spot"
    assert props["scaleSetEvictionPolicy"] == "Delete"
    assert props["spotMaxPrice"] == -1
    assert props["nodeTaints"] == [GPU_TAINT, SPOT_TAINT, "team=a:NoSchedule"]
    assert "upgradeSettings" not in props
    assert to_arm_body(desired(spot=True, spot_max_price=1.25))["properties"]["spotMaxPrice"] == 1.25


def test_mig_profile_and_os_sku() -> None:
    props = to_arm_body(desired(mig_profile="MIG1g", os_sku="Ubuntu"))["properties"]
    assert props["gpuInstanceProfile"] == "MIG1g"
    assert props["osSKU"] == "Ubuntu"
    assert "gpuInstanceProfile" not in to_arm_body(desired())["properties"]


def test_our_label_and_tag_win_over_user_values() -> None:
    pool = desired(node_labels={POOL_LABEL: "other"}, tags={MANAGED_BY_TAG: "someone"})
    props = to_arm_body(pool)["properties"]
    assert props["nodeLabels"][POOL_LABEL] == pool.name
    assert props["tags"][MANAGED_BY_TAG] == "tokenplane"


@pytest.mark.parametrize(("current", "expected"), [(None, 1), (0, 1), (3, 3), (9, 4)])
def test_update_keeps_the_autoscaled_count_within_bounds(current: int | None, expected: int) -> None:
    assert to_arm_body(desired(min_count=1, max_count=4), current_count=current)["properties"]["count"] == expected


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": "TP1"},
        {"name": "1pool"},
        {"name": "poolnameistoolong"},
        {"min_count": 3, "max_count": 2},
        {"spot_max_price": -1.0},
        {"spot": True, "spot_max_price": 0.0},
        {"node_taints": ("no-effect",)},
        {"zones": ("eastus-1",)},
        {"mig_profile": "MIG5g"},
    ],
)
def test_invalid_pools_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        desired(**overrides)


def test_in_place_changes_need_no_replacement() -> None:
    pool = desired(zones=("1",), spot=True)
    current = observed_from(pool)
    assert needs_replacement(pool, current) is None
    bigger = desired(zones=("1",), spot=True, min_count=2, max_count=10, node_labels={"x": "y"}, tags={"a": "b"})
    assert needs_replacement(bigger, current) is None
    assert needs_replacement(desired(vm_size=A100.lower()), observed_from(desired())) is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"vm_size": "Standard_NC40ads_H100_v5"}, "vmSize"),
        ({"mig_profile": "MIG2g"}, "gpuInstanceProfile"),
        ({"spot": True}, "scaleSetPriority"),
        ({"zones": ("1", "2")}, "availabilityZones"),
        ({"os_sku": "Ubuntu"}, "osSKU"),
        ({"node_taints": ("team=a:NoSchedule",)}, "nodeTaints"),
    ],
)
def test_immutable_changes_need_replacement(change: dict[str, Any], field: str) -> None:
    reason = needs_replacement(desired(**change), observed_from(desired()))
    assert reason is not None and reason.startswith(field)


def test_mig_change_names_both_profiles() -> None:
    reason = needs_replacement(desired(mig_profile="MIG3g"), observed_from(desired(mig_profile="MIG1g")))
    assert reason == "gpuInstanceProfile cannot change in place (MIG1g -> MIG3g)"


def test_spot_price_change_needs_replacement() -> None:
    reason = needs_replacement(desired(spot=True, spot_max_price=2.0), observed_from(desired(spot=True)))
    assert reason == "spotMaxPrice cannot change in place (-1.0 -> 2.0)"


def test_observation_of_a_failed_operation() -> None:
    body = {
        "name": "tpa1b2c3d4",
        "properties": {
            "vmSize": A100,
            "provisioningState": "Failed",
            "status": {"provisioningError": {"code": "ReconcileVMSSAgentPoolFailed", "message": "no capacity"}},
        },
    }
    pool = ObservedAgentPool.from_arm(body)
    assert not pool.in_progress and not pool.succeeded and not pool.managed
    error = operation_failure(pool)
    assert isinstance(error, OperationFailedError)
    assert (error.code, error.message) == ("ReconcileVMSSAgentPoolFailed", "no capacity")
    assert operation_failure(observed_from(desired())) is None
    assert observed_from(desired(), state="Creating").in_progress


def test_hardware_class_ignores_zone_order_and_vm_size_case() -> None:
    key = hardware_class_key(A100, "MIG1g", True, ["2", "1"])
    assert key == "standard_nc24ads_a100_v4|MIG1g|spot|1,2"
    assert key == hardware_class_key(A100.upper(), "MIG1g", True, ("1", "2", "1"))
    assert desired(mig_profile="MIG1g", spot=True, zones=("2", "1")).hardware_class == key
    names = {
        pool_name_for(hardware_class_key(A100, None, False, ())),
        pool_name_for(hardware_class_key(A100, "MIG1g", False, ())),
        pool_name_for(hardware_class_key(A100, None, True, ())),
        pool_name_for(hardware_class_key(A100, None, False, ("1",))),
        pool_name_for(hardware_class_key("Standard_NC48ads_A100_v4", None, False, ())),
    }
    assert len(names) == 5


vm_sizes = st.from_regex(r"Standard_[A-Za-z0-9_]{1,30}", fullmatch=True)
mig_profiles = st.sampled_from([None, "MIG1g", "MIG2g", "MIG3g", "MIG4g", "MIG7g"])
zone_sets = st.lists(st.sampled_from(["1", "2", "3"]), max_size=3)


@given(vm_size=vm_sizes, mig=mig_profiles, spot=st.booleans(), zones=zone_sets)
def test_pool_names_are_deterministic_and_valid_for_aks(
    vm_size: str, mig: str | None, spot: bool, zones: list[str]
) -> None:
    name = pool_name_for(hardware_class_key(vm_size, mig, spot, zones))
    assert AKS_LINUX_POOL_NAME.match(name) and len(name) == 10
    assert name == pool_name_for(hardware_class_key(vm_size.lower(), mig, spot, list(reversed(zones))))


@given(
    vm_size=vm_sizes,
    mig=mig_profiles,
    spot=st.booleans(),
    zones=zone_sets,
    bounds=st.tuples(st.integers(0, 1000), st.integers(1, 1000)).filter(lambda b: b[0] <= b[1]),
)
def test_a_created_pool_observes_as_its_own_desired_state(
    vm_size: str, mig: str | None, spot: bool, zones: list[str], bounds: tuple[int, int]
) -> None:
    pool = DesiredAgentPool(
        name=pool_name_for(hardware_class_key(vm_size, mig, spot, zones)),
        vm_size=vm_size,
        mig_profile=mig,  # type: ignore[arg-type]
        spot=spot,
        zones=tuple(zones),
        min_count=bounds[0],
        max_count=bounds[1],
    )
    current = observed_from(pool)
    assert needs_replacement(pool, current) is None
    assert (current.min_count, current.max_count, current.managed) == (*bounds, True)
