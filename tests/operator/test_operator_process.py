"""The operator as a pod runs it: its own process, kubeconfig, workload identity, /healthz, /metrics, SIGTERM."""

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import kmock
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.operator.conftest import WORKLOAD_IDENTITY
from tests.support.arm_emulator import ArmEmulator
from tests.support.kopf_harness import RS_RESOURCE, cr_body, declare_resources
from tests.support.kube_emulator import ApiServerEmulator
from tests.support.kuberay_peer import KubeRayPeer
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

FAST = {
    "TOKENPLANE_POLL_INTERVAL_S": "0.5",
    "TOKENPLANE_POOL_CACHE_TTL_S": "0",
    "TOKENPLANE_BACKOFF_BASE_S": "0.5",
    "TOKENPLANE_BACKOFF_MAX_S": "2",
}


@pytest.fixture
async def op(
    kmock: kmock.KubernetesEmulator, wi_arm: ArmEmulator, tmp_path: Path, kuberay: KubeRayPeer
) -> AsyncIterator[OperatorProcess]:
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
    kmock: kmock.KubernetesEmulator, wi_arm: ArmEmulator, tmp_path: Path, kuberay: KubeRayPeer
) -> AsyncIterator[OperatorProcess]:
    process = OperatorProcess(kmock, wi_arm, tmp_path, FAST | {"TOKENPLANE_POLL_INTERVAL_S": "300"})
    await process.start()
    yield process
    await process.stop(kill=True)


async def test_rayservice_status_change_reconciles_the_owner_without_waiting_for_the_poll(
    slow_poll: OperatorProcess, kuberay: KubeRayPeer
) -> None:
    op = slow_poll
    kuberay.paused = True  # KubeRay gets to the new RayService only once kopf has handled the creation
    existing = {"existing": {"nodeSelector": {"agentpool": "gpu"}}}
    body = cr_body("m1", hardware={"vmSize": "Standard_NC24ads_A100_v4", "nodePool": existing})
    await op.create(body)
    await op.wait_for(lambda: op.get("m1", resource=RS_RESOURCE), within=60, message="the RayService")
    await op.wait_for(lambda: op.condition("m1", "ServingReady").get("status") == "False", within=30)
    await asyncio.sleep(1)  # kopf has handled the creation; only the 300 s poll would look again
    kuberay.paused = False
    await op.wait_for(lambda: ("default", "m1") in kuberay.ready_at, within=10, message="KubeRay reports Ready")
    await op.wait_for(lambda: op.condition("m1", "Ready").get("status") == "True", within=10, message="Ready")
    elapsed = asyncio.get_running_loop().time() - kuberay.ready_at[("default", "m1")]
    assert elapsed < 10, f"the owner turned Ready {elapsed:.1f} s after its RayService, poll or not"


async def scrape(op: OperatorProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The operator's /metrics page as {(series name, labels): value}, parsed by prometheus-client's own parser."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{op.metrics_port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(page: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    """The one series of `name` whose labels include `labels`, or None."""
    found = [v for (n, ls), v in page.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


async def test_metrics_endpoint_follows_a_deployment_to_ready(op: OperatorProcess) -> None:
    m1 = {"namespace": "default", "inference_deployment": "m1"}
    page = await scrape(op)
    assert value(page, "tokenplane_inferencedeployment_ready", **m1) is None
    assert not [k for k in page if k[0] == "tokenplane_operator_reconcile_total"], "no reconcile yet"
    assert (value(page, "process_resident_memory_bytes") or 0) > 10e6

    op.arm.throttle("PUT", "/agentPools/", retry_after_s=1)  # ARM's first answer to the pool's creation: 429
    await op.create(cr_body("m1", scaling={"minReplicas": 1, "maxReplicas": 3}))
    # Nobody plays KubeRay yet, so the deployment cannot be Ready whatever Azure does meanwhile.
    page = await op_wait_scrape(op, lambda p: value(p, "tokenplane_inferencedeployment_max_replicas", **m1) == 3)
    assert value(page, "tokenplane_inferencedeployment_ready", **m1) == 0
    assert value(page, "tokenplane_inferencedeployment_min_replicas", **m1) == 1

    body = await op.wait_ready("m1", within=60)
    pool = body["status"]["nodePool"]["name"]
    page = await op_wait_scrape(op, lambda p: value(p, "tokenplane_inferencedeployment_ready", **m1) == 1)
    assert value(page, "tokenplane_inferencedeployment_replicas_ready", **m1) == 1
    assert value(page, "tokenplane_inferencedeployment_replicas_desired", **m1) == 1
    assert value(page, "tokenplane_inferencedeployment_stalled", **m1) == 0
    assert value(page, "tokenplane_inferencedeployment_quota_insufficient", **m1) == 0
    assert value(page, "tokenplane_inferencedeployment_node_pool_state", **m1, node_pool=pool, state="Succeeded") == 1
    states = [ls for n, ls in page if n == "tokenplane_inferencedeployment_node_pool_state"]
    assert len(states) == 1, "one state series per deployment: the Creating one is gone"
    assert (value(page, "tokenplane_operator_api_errors_total", api="arm", reason="Throttled") or 0) >= 1
    rounds: dict[str, float] = {}  # summed over the triggers (change, poll, rayservice)
    for (name, labels), count in page.items():
        if name == "tokenplane_operator_reconcile_total":
            rounds[dict(labels)["result"]] = rounds.get(dict(labels)["result"], 0) + count
    assert rounds.get("success", 0) >= 1 and rounds.get("fault", 0) >= 1, rounds
    errors = sum(v for (n, _), v in page.items() if n == "tokenplane_operator_reconcile_errors_total")
    assert errors == rounds["fault"] + rounds.get("error", 0)
    timed = sum(v for (n, _), v in page.items() if n == "tokenplane_operator_reconcile_duration_seconds_count")
    assert timed == sum(rounds.values()), "every counted round was timed"

    await op.delete("m1")
    await op_wait_scrape(op, lambda p: value(p, "tokenplane_inferencedeployment_ready", **m1) is None)


async def op_wait_scrape(
    op: OperatorProcess, predicate: Callable[[dict[tuple[str, frozenset[tuple[str, str]]], float]], bool]
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Scrape until `predicate` holds for the page (the gauges follow the status within a reconcile)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        page = await scrape(op)
        if predicate(page):
            return page
        assert asyncio.get_running_loop().time() < deadline, f"metrics never matched:\n{op.log_tail()}"
        await asyncio.sleep(0.1)


async def test_a_port_taken_before_the_operator_binds_it_is_replaced(
    kmock: kmock.KubernetesEmulator, wi_arm: ArmEmulator, tmp_path: Path, kuberay: KubeRayPeer
) -> None:
    # The harness's own guard: a port free_port chose can be taken by another process before the operator binds
    # it (stop 30's CI: `address already in use` on the health port); the start retries on new ports.
    declare_resources(kmock)
    process = OperatorProcess(kmock, wi_arm, tmp_path, FAST)
    taken = process.health_port
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("0.0.0.0", taken))
        squatter.listen()
        try:
            await process.start()
        finally:
            await process.stop(kill=True)
    assert process.health_port != taken
    assert "address already in use" in process.log_path.read_text()
