"""Each injected Azure fault shows up as its condition and converges once it clears."""

import asyncio

import pytest

from tests.support.kopf_harness import (
    RS_RESOURCE,
    OperatorHarness,
    cr_body,
)
from tests.support.kube_emulator import ApiServerEmulator

POOL_PUT = "/agentPools/tp[0-9a-f]+$"
pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)


def reason_seen(op: OperatorHarness, reason: str) -> bool:
    return op.condition("m1", "NodePoolReady").get("reason") == reason


async def test_throttled_honours_retry_after(op: OperatorHarness) -> None:
    op.arm.throttle("GET", "/agentPools/", retry_after_s=2, times=1)
    await op.create(cr_body("m1"))
    await op.wait_for(lambda: reason_seen(op, "Throttled"), message="Throttled")
    throttled_at = len(op.arm.requests)
    message = op.condition("m1", "NodePoolReady")["message"]
    assert "throttled" in message and "retrying in" in message
    assert op.condition("m1", "Reconciling")["status"] == "True"
    assert op.condition("m1", "Stalled")["status"] == "False"
    # Honour Retry-After: nothing is sent to ARM for ~2 s although the timer runs every 0.3 s.
    await asyncio.sleep(1.5)
    assert len(op.arm.requests) == throttled_at
    await op.wait_ready("m1")


@pytest.mark.parametrize("status", [500, 503])
async def test_server_error_backs_off_and_recovers(op: OperatorHarness, status: int) -> None:
    op.arm.server_error("PUT", POOL_PUT, status=status, times=2)
    await op.create(cr_body("m1"))
    await op.wait_for(lambda: reason_seen(op, "CloudError"), message="CloudError")
    await op.wait_ready("m1")
    assert len(op.arm.calls("PUT", POOL_PUT)) == 3


async def test_quota_exceeded_names_quota_and_region_then_recovers(op: OperatorHarness) -> None:
    op.arm.quota_exceeded("PUT", POOL_PUT, family="standardNCADSA100v4Family", times=2)
    await op.create(cr_body("m1"))
    await op.wait_for(lambda: reason_seen(op, "QuotaExceeded"), message="QuotaExceeded")
    message = op.condition("m1", "NodePoolReady")["message"]
    assert "standardNCADSA100v4Family Cores quota" in message and "eastus" in message
    assert op.condition("m1", "Stalled")["status"] == "True"
    assert op.condition("m1", "Ready")["reason"] == "QuotaExceeded"
    assert (op.get("m1") or {})["status"]["phase"] == "Failed"
    await op.wait_ready("m1")  # quota granted: the slow retry succeeds
    assert op.condition("m1", "Stalled")["status"] == "False"


async def test_sku_not_available_then_recovers(op: OperatorHarness) -> None:
    op.arm.sku_not_available("PUT", POOL_PUT, vm_size="Standard_NC24ads_A100_v4", times=1)
    await op.create(cr_body("m1"))
    await op.wait_for(lambda: reason_seen(op, "SkuNotAvailable"), message="SkuNotAvailable")
    assert "eastus" in op.condition("m1", "NodePoolReady")["message"]
    assert op.condition("m1", "Stalled")["status"] == "True"
    await op.wait_ready("m1")


async def test_failed_lro_reports_provisioning_failed_then_retries(op: OperatorHarness) -> None:
    op.arm.fail_operation(POOL_PUT, times=1)
    await op.create(cr_body("m1"))
    await op.wait_for(lambda: reason_seen(op, "ProvisioningFailed"), message="ProvisioningFailed")
    assert "AllocationFailed" in op.condition("m1", "NodePoolReady")["message"]
    await op.wait_ready("m1")
    assert len(op.arm.calls("PUT", POOL_PUT)) == 2, "one retry after the failure, no more"


async def test_kubernetes_conflicts_are_retried(op: OperatorHarness) -> None:
    await op.create(cr_body("m1"))
    await op.wait_ready("m1")
    before = (op.get("m1", resource=RS_RESOURCE) or {})["spec"]["serveConfigV2"]
    assert isinstance(op.k, ApiServerEmulator)
    conflicts = op.k.refuse("PATCH", "rayservices", times=2)
    await op.patch("m1", {"spec": {"engine": {"maxNumSeqs": 32}}})
    await op.wait_for(lambda: len(conflicts) == 2, message="two conflicting writes")
    await op.wait_for(
        lambda: (op.get("m1", resource=RS_RESOURCE) or {})["spec"]["serveConfigV2"] != before,
        message="the RayService to change after the conflicts",
    )
    assert all(path.endswith("/rayservices/m1") for path in conflicts), conflicts
    await op.wait_ready("m1")
