"""kopf + kmock + the ARM emulator: create to Ready, updates, sharing, deletion, restarts."""

import asyncio
import time

import kmock
import pytest

from tests.operator.conftest import CLUSTER, RESOURCE_GROUP, SUBSCRIPTION
from tests.support.arm_emulator import ArmEmulator
from tests.support.kopf_harness import A100, RS_RESOURCE, OperatorHarness, cr_body
from tests.support.kube_emulator import ApiServerEmulator
from tests.support.kuberay_peer import KubeRayPeer
from tokenplane_operator.desired.agentpool import DesiredAgentPool, to_arm_body

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)


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
        "QuotaInsufficient",
        "Scaled",
    }
    assert op.condition("m1", "Scaled")["reason"] == "NotReported"  # no Serve controller has exported a decision
    assert body["metadata"]["finalizers"] == ["tokenplane.io/finalizer"]
    rs = op.get("m1", resource=RS_RESOURCE)
    assert rs is not None and rs["metadata"]["ownerReferences"][0]["uid"] == "uid-default-m1"
    assert op.get("m1-openai", resource="v1/services") is not None


def pool_puts(op: OperatorHarness, name: str) -> int:
    return len(op.arm.calls("PUT", f"/agentPools/{name}$"))


async def test_update_engine_args_changes_rayservice_not_pool(op: OperatorHarness) -> None:
    await op.create(cr_body("m1"))
    body = await op.wait_ready("m1")
    pool = body["status"]["nodePool"]["name"]
    puts = pool_puts(op, pool)
    rs_before = op.get("m1", resource=RS_RESOURCE)
    assert rs_before is not None
    await op.patch("m1", {"spec": {"engine": {"maxNumSeqs": 32, "extraArgs": {"max_num_batched_tokens": 4096}}}})

    def rayservice_changed() -> bool:
        rs = op.get("m1", resource=RS_RESOURCE) or {}
        return rs["metadata"]["annotations"] != rs_before["metadata"]["annotations"]

    await op.wait_for(rayservice_changed, message="RayService spec hash to change")
    rs_after = op.get("m1", resource=RS_RESOURCE)
    assert rs_after is not None and rs_after["spec"]["serveConfigV2"] != rs_before["spec"]["serveConfigV2"]
    await op.wait_ready("m1")

    def ready_for_generation_2() -> bool:
        ready = op.condition("m1", "Ready")
        return ready.get("status") == "True" and ready.get("observedGeneration") == 2

    # What kstatus (Flux, Argo CD) and `kubectl wait` check: Ready speaks of the new spec, not the old one.
    await op.wait_for(ready_for_generation_2, message="Ready for generation 2")
    body = op.get("m1") or {}
    assert body["metadata"]["generation"] == 2
    assert body["status"]["observedGeneration"] == 2
    assert {c["observedGeneration"] for c in body["status"]["conditions"]} == {2}
    assert pool_puts(op, pool) == puts, "the agent pool must not be touched by an engine change"
    assert op.arm.pool_names() == [pool]


async def test_update_vm_size_moves_to_new_pool_and_releases_old(op: OperatorHarness) -> None:
    await op.create(cr_body("m1"))
    old = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]
    await op.patch("m1", {"spec": {"hardware": {"vmSize": "Standard_NC40ads_H100_v5"}}})
    await op.wait_for(lambda: op.condition("m1", "NodePoolReady").get("reason") == "Replacing", message="Replacing")
    assert "vmSize cannot change in place" in op.condition("m1", "NodePoolReady")["message"]
    await op.wait_for(lambda: len(op.arm.pool_names()) == 2, message="the new pool next to the old one")

    def moved() -> bool:
        body = op.get("m1") or {}
        return (body.get("status") or {}).get("nodePool", {}).get("name") not in (None, old)

    # The KubeRay peer runs whichever RayService exists: the operator replaces it for the new pool's nodeSelector.
    await op.wait_for(moved, message="status to name the new pool")
    new = op.get("m1")["status"]["nodePool"]["name"]  # type: ignore[index]
    # The release is a started DELETE (Azure finishes it on its own; the emulator needs polls to finish).
    await op.wait_for(lambda: op.arm.calls("DELETE", f"/agentPools/{old}$"), message="the old pool DELETE")
    assert op.arm.pool(old) is None or op.arm.pool(old)["properties"]["provisioningState"] == "Deleting"  # type: ignore[index]
    assert not op.arm.calls("DELETE", f"/agentPools/{new}$")
    assert op.arm.pool(new)["properties"]["vmSize"] == "Standard_NC40ads_H100_v5"  # type: ignore[index]
    await op.wait_ready("m1")


async def test_two_deployments_share_one_pool_deleted_after_the_last(op: OperatorHarness) -> None:
    await op.create(cr_body("a", scaling={"maxReplicas": 2}))
    await op.create(cr_body("b", namespace="team", scaling={"maxReplicas": 3}))
    pool_a = (await op.wait_ready("a"))["status"]["nodePool"]["name"]
    pool_b = (await op.wait_ready("b", namespace="team"))["status"]["nodePool"]["name"]
    assert pool_a == pool_b and op.arm.pool_names() == [pool_a]
    # Bounds add up: 2 + 3 replicas of one GPU each on a one-GPU VM.
    await op.wait_for(lambda: op.arm.pool(pool_a)["properties"]["maxCount"] == 5, message="maxCount 5")  # type: ignore[index]

    await op.delete("a")
    await op.wait_for(lambda: op.get("a") is None, message="a deleted")
    assert op.arm.pool_names() == [pool_a], "b still uses the pool"
    assert not op.arm.calls("DELETE")
    await op.delete("b", namespace="team")
    await op.wait_for(lambda: op.get("b", namespace="team") is None, message="b deleted")
    assert op.arm.pool_names() == []


async def test_deleted_promptly_while_its_poll_is_mid_reconcile(op: OperatorHarness) -> None:
    """kopf keeps the finalizer until the CR's timers exit; one caught mid-reconcile must not hold it for a minute.

    Sharing the pool makes the deletion handler finish at once, so only the timer's exit holds the finalizer.
    """
    await op.create(cr_body("a"))
    await op.create(cr_body("b"))
    name = (await op.wait_ready("a"))["status"]["nodePool"]["name"]
    await op.wait_ready("b")
    pool_path = f"/agentPools/{name}$"
    before = len(op.arm.calls("GET", pool_path))
    op.arm.stall("GET", pool_path, seconds=4, times=2)
    # Once Ready, only the poll timers read the pool, one read at a time: a's poll is within this read or
    # waits for it (the timers tick every 0.3 s), and stays mid-reconcile until the stall ends.
    await op.wait_for(lambda: len(op.arm.calls("GET", pool_path)) > before, message="a poll's pool read")
    await asyncio.sleep(1)
    await op.delete("a")
    # a's poll may wait out both stalls (8 s) and its deletion handler waits for that poll, then kopf rechecks the
    # timer after 1 s. 25 s leaves a loaded machine room (8 s failed in CI) and still fails on kopf's 60-s default.
    await op.wait_for(lambda: op.get("a") is None, within=25, message="a gone (kopf rechecks its timers every 60 s)")
    assert op.arm.pool_names() == [name], "b still uses the pool"


async def test_delete_while_provisioning(op: OperatorHarness) -> None:
    op.arm.provisioning_polls = 10_000  # the pool stays Creating
    await op.create(cr_body("m1"))
    await op.wait_for(op.arm.pool_names, message="the pool PUT")
    name = op.arm.pool_names()[0]
    assert op.arm.pool(name)["properties"]["provisioningState"] == "Creating"  # type: ignore[index]
    await op.delete("m1")
    await op.wait_for(lambda: op.arm.calls("DELETE", f"/agentPools/{name}$"), message="the pool DELETE")
    assert op.get("m1") is not None, "the finalizer holds the CR until the pool is gone"
    op.arm.provisioning_polls = 2
    await op.wait_for(lambda: op.get("m1") is None, message="the CR gone")
    assert op.arm.pool_names() == []


async def test_restart_mid_provisioning_makes_no_duplicate(op: OperatorHarness) -> None:
    op.arm.provisioning_polls = 10_000
    await op.create(cr_body("m1"))
    await op.wait_for(lambda: op.condition("m1", "NodePoolReady").get("reason") == "Provisioning", message="prov")
    name = op.arm.pool_names()[0]
    await op.stop(kill=True)
    await op.start()
    await op.wait_for(lambda: len(op.arm.calls("GET", f"/agentPools/{name}$")) > 3, message="re-observed")
    op.arm.provisioning_polls = 2
    await op.wait_ready("m1")
    assert op.arm.pool_names() == [name]
    assert pool_puts(op, name) == 1, "observed first after the restart: no second create"


async def test_invalid_spec_sets_condition_and_makes_no_azure_call(op: OperatorHarness) -> None:
    op.arm.clear_requests()
    await op.create(cr_body("bad", scaling={"minReplicas": 3, "maxReplicas": 1}))
    await op.wait_for(lambda: op.condition("bad", "Validated").get("reason") == "InvalidSpec", message="InvalidSpec")
    body = op.get("bad")
    assert body is not None
    assert "spec.scaling.minReplicas" in op.condition("bad", "Validated")["message"]
    assert op.condition("bad", "Stalled")["status"] == "True"
    assert op.condition("bad", "Ready")["status"] == "False"
    assert body["status"]["phase"] == "Failed"
    await op.delete("bad")
    await op.wait_for(lambda: op.get("bad") is None, message="deleted")
    assert op.arm.requests == []


async def test_replicas_beyond_pinned_max_nodes_are_refused_before_any_azure_call(op: OperatorHarness) -> None:
    # The rule `tokenplane validate` applies (tests/unit/api/cases.py), seen through the operator: 3 one-GPU
    # replicas on one-GPU VMs need 3 nodes, the CR caps the pool at 1.
    op.arm.clear_requests()
    hardware = {"vmSize": "Standard_NC24ads_A100_v4", "nodePool": {"managed": {"maxNodes": 1}}}
    await op.create(cr_body("capped", hardware=hardware, scaling={"minReplicas": 1, "maxReplicas": 3}))
    await op.wait_for(lambda: op.condition("capped", "Validated").get("reason") == "InvalidSpec", message="refused")
    message = op.condition("capped", "Validated")["message"]
    assert message.startswith("spec.scaling.maxReplicas: 3 replicas need 3 nodes of Standard_NC24ads_A100_v4"), message
    assert "lower maxReplicas to 1 or raise maxNodes to 3" in message
    assert op.condition("capped", "Stalled")["status"] == "True"
    await op.delete("capped")
    await op.wait_for(lambda: op.get("capped") is None, message="deleted")
    assert op.arm.requests == []


async def test_a_tagged_pool_no_deployment_uses_is_released_after_the_grace(
    kmock: kmock.KubernetesEmulator, arm_emulator: ArmEmulator, kuberay: KubeRayPeer
) -> None:
    """A pool created, then the operator killed before status named it and its CR deleted: a billed orphan.

    The operator, restarted, releases it once unused for the grace period; the pool a CR is being created for, and
    an untagged pool (the system pool, BYO), are never touched.
    """
    orphan = DesiredAgentPool(name="orphan", vm_size=A100, min_count=0, max_count=1)
    arm_emulator.seed(SUBSCRIPTION, RESOURCE_GROUP, CLUSTER, "orphan", to_arm_body(orphan)["properties"])
    arm_emulator.seed(SUBSCRIPTION, RESOURCE_GROUP, CLUSTER, "system", {"mode": "System", "vmSize": "Standard_D2s_v3"})
    op = OperatorHarness(kmock, arm_emulator, orphan_sweep_interval_s=0.1, orphan_grace_s=0.8)
    await op.create(cr_body("m1"))  # its pool is created while the sweeps run
    started = time.monotonic()
    await op.start()
    try:
        await op.wait_for(lambda: arm_emulator.calls("DELETE"), message="a DELETE")
        assert time.monotonic() - started >= 0.8  # not before the grace period
        used = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]
        assert [c.path.rsplit("/", 1)[-1] for c in arm_emulator.calls("DELETE")] == ["orphan"]
        assert {used, "system"} <= set(arm_emulator.pool_names())
    finally:
        await op.stop(kill=True)
