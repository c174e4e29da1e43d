"""CR lifecycles a platform engineer plausibly goes through, beyond the happy paths of the lifecycle tests."""

from collections.abc import AsyncIterator

import kmock
import pytest

from tests.operator.conftest import CLUSTER, RESOURCE_GROUP, SUBSCRIPTION
from tests.support.arm_emulator import ArmEmulator
from tests.support.kopf_harness import OperatorHarness, cr_body, declare_resources
from tests.support.kube_emulator import ApiServerEmulator
from tests.support.kuberay_peer import KubeRayPeer
from tokenplane_operator.reconcile import pool_demand

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)


@pytest.fixture
async def op(
    kmock: kmock.KubernetesEmulator, arm_emulator: ArmEmulator, kuberay: KubeRayPeer
) -> AsyncIterator[OperatorHarness]:
    declare_resources(kmock)
    harness = OperatorHarness(kmock, arm_emulator)
    await harness.start()
    yield harness
    await harness.stop(kill=True)


async def test_a_pool_of_our_name_that_we_did_not_make_is_neither_taken_over_nor_deleted(
    op: OperatorHarness,
) -> None:
    body = cr_body("m1")
    demand = pool_demand(body, op.config)
    assert demand is not None
    name = demand.pool.name
    props = {"vmSize": demand.pool.vm_size, "count": 2, "mode": "User", "tags": {"team": "ml"}}
    op.arm.seed(SUBSCRIPTION, RESOURCE_GROUP, CLUSTER, name, props)
    await op.create(body)
    await op.wait_for(lambda: op.condition("m1", "Stalled").get("status") == "True", message="Stalled")
    pool_cond = op.condition("m1", "NodePoolReady")
    assert pool_cond["status"] == "False"
    assert f"agent pool {name} exists but tokenplane did not create it" in pool_cond["message"], pool_cond
    assert not op.arm.calls("PUT", f"/agentPools/{name}$"), "someone else's pool must not be rewritten"
    await op.delete("m1")
    await op.wait_for(lambda: op.get("m1") is None, message="m1 deleted")
    assert not op.arm.calls("DELETE"), "someone else's pool must not be deleted"
    assert op.arm.pool(name)["properties"]["tags"] == {"team": "ml"}  # type: ignore[index]
