"""kopf + kmock + the ARM emulator: create to Ready, updates, sharing, deletion, restarts."""

from collections.abc import AsyncIterator

import kmock
import pytest

from tests.support.arm_emulator import ArmEmulator
from tests.support.kopf_harness import A100, RS_RESOURCE, OperatorHarness, cr_body, declare_resources


@pytest.fixture
async def op(kmock: kmock.KubernetesEmulator, arm_emulator: ArmEmulator) -> AsyncIterator[OperatorHarness]:
    declare_resources(kmock)
    harness = OperatorHarness(kmock, arm_emulator)
    await harness.start()
    yield harness
    await harness.stop()


async def test_create_to_ready(op: OperatorHarness) -> None:
    await op.create(cr_body("m1"))
    body = await op.wait_ready("m1")
    status = body["status"]
    assert status["phase"] == "Ready"
    pool = status["nodePool"]
    assert pool["provisioningState"] == "Succeeded" and pool["managed"] is True
    assert op.arm.pool_names() == [pool["name"]]
    assert status["endpoint"]["url"].startswith("http://m1-openai.default.svc")
    assert {c["type"] for c in status["conditions"]} == {
        "Validated",
        "NodePoolReady",
        "ServingReady",
        "Ready",
        "Reconciling",
        "Stalled",
    }
    assert body["metadata"]["finalizers"] == ["tokenplane.io/finalizer"]
    rs = op.get("m1", resource=RS_RESOURCE)
    assert rs is not None and rs["metadata"]["ownerReferences"][0]["uid"] == "uid-default-m1"
    assert op.get("m1-openai", resource="v1/services") is not None
