"""The operator as a pod runs it: its own process, kubeconfig, workload identity, /healthz, SIGTERM."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest

from tests.operator.conftest import WORKLOAD_IDENTITY
from tests.support.arm_emulator import ArmEmulator
from tests.support.kopf_harness import RS_RESOURCE, cr_body, declare_resources
from tests.support.kube_emulator import ApiServerEmulator
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

FAST = {
    "TOKENPLANE_POLL_INTERVAL_S": "0.5",
    "TOKENPLANE_POOL_CACHE_TTL_S": "0",
    "TOKENPLANE_BACKOFF_BASE_S": "0.5",
    "TOKENPLANE_BACKOFF_MAX_S": "2",
}


@pytest.fixture
async def op(kmock: kmock.KubernetesEmulator, wi_arm: ArmEmulator, tmp_path: Path) -> AsyncIterator[OperatorProcess]:
    declare_resources(kmock)
    process = OperatorProcess(kmock, wi_arm, tmp_path, FAST)
    await process.start()
    yield process
    await process.stop(kill=True)


async def test_operator_process_reaches_ready_through_workload_identity(op: OperatorProcess) -> None:
    await op.create(cr_body("m1"))
    body = await op.wait_ready("m1", within=60)
    assert op.arm.issued_tokens, "the operator never traded its federated token for an access token"
    assert op.arm.pool_names() == [body["status"]["nodePool"]["name"]]
    assert op.get("m1", resource=RS_RESOURCE) is not None
    reasons = {event["reason"] for event in op.events("m1")}
    assert {"CreatePool", "ApplyRayService", "ApplyService", "ApplyNetworkPolicy"} <= reasons, reasons
    assert await op.stop() == 0, f"SIGTERM must stop the operator cleanly:\n{op.log_tail()}"


async def test_wrong_federated_token_is_reported_without_retry_storm(op: OperatorProcess) -> None:
    op.arm.workload_identity = (*WORKLOAD_IDENTITY[:2], "a-token-entra-does-not-trust")
    await op.create(cr_body("m1"))
    condition = await op.wait_for(
        lambda: (c := op.condition("m1", "NodePoolReady")) and c.get("reason") == "CloudError" and c, within=60
    )
    assert "AADSTS700213" in condition["message"]
    token_requests = len(op.arm.calls("POST", "/oauth2/"))
    await asyncio.sleep(3)  # six timer ticks: a refused credential is not retried at the poll rate
    assert len(op.arm.calls("POST", "/oauth2/")) == token_requests
    assert op.arm.pool_names() == []


async def test_killed_process_restarts_without_duplicate_pool_or_lost_status(op: OperatorProcess) -> None:
    op.arm.provisioning_polls = 10_000
    await op.create(cr_body("m1"))
    await op.wait_for(lambda: op.condition("m1", "NodePoolReady").get("reason") == "Provisioning", within=30)
    name = op.arm.pool_names()[0]
    assert await op.stop(kill=True) == -9
    status_while_down = (op.get("m1") or {})["status"]
    await op.start()
    await op.wait_for(lambda: len(op.arm.calls("GET", f"/agentPools/{name}$")) > 3, message="re-observed")
    assert (op.get("m1") or {})["status"]["nodePool"] == status_while_down["nodePool"]
    op.arm.provisioning_polls = 2
    await op.wait_ready("m1", within=60)
    assert op.arm.pool_names() == [name]
    assert len(op.arm.calls("PUT", f"/agentPools/{name}$")) == 1, "the restarted process observes, not re-creates"


@pytest.fixture
async def slow_poll(
    kmock: kmock.KubernetesEmulator, wi_arm: ArmEmulator, tmp_path: Path
) -> AsyncIterator[OperatorProcess]:
    declare_resources(kmock)
    process = OperatorProcess(kmock, wi_arm, tmp_path, FAST | {"TOKENPLANE_POLL_INTERVAL_S": "300"})
    await process.start()
    yield process
    await process.stop(kill=True)


async def test_rayservice_status_change_reconciles_the_owner_without_waiting_for_the_poll(
    slow_poll: OperatorProcess,
) -> None:
    op = slow_poll
    existing = {"existing": {"nodeSelector": {"agentpool": "gpu"}}}
    body = cr_body("m1", hardware={"vmSize": "Standard_NC24ads_A100_v4", "nodePool": existing})
    await op.create(body)
    await op.wait_for(lambda: op.get("m1", resource=RS_RESOURCE), within=60, message="the RayService")
    await op.wait_for(lambda: op.condition("m1", "ServingReady").get("status") == "False", within=30)
    await asyncio.sleep(1)  # kopf has handled the creation; only the 300 s poll would look again
    started = asyncio.get_running_loop().time()
    await op.make_rayservice_ready("m1")
    await op.wait_for(lambda: op.condition("m1", "Ready").get("status") == "True", within=10, message="Ready")
    elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 10, f"the owner turned Ready {elapsed:.1f} s after its RayService, poll or not"
