"""CR lifecycles and hand edits last session's scenarios did not reach: merged edits, drifted objects, KubeRay and
ARM failures, quota."""

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.operator.test_quota import A100_FAMILY
from tests.support.kopf_harness import CR_RESOURCE, RS_RESOURCE, OperatorHarness, cr_body
from tests.support.kube_emulator import ApiServerEmulator
from tests.support.kuberay_peer import KubeRayPeer
from tokenplane_operator.adapters.azure import AksAgentPools
from tokenplane_operator.adapters.kube import KubeObjects
from tokenplane_operator.reconcile import Clients, reconcile, status_patch

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

H100 = "Standard_NC40ads_H100_v5"


async def _round_on_h100(op: OperatorHarness, aks_pools: AksAgentPools, *, write_status: bool) -> None:
    """Run one reconcile round of m1 as if its spec asked for H100s, the operator stopped; its status optionally."""
    kube = KubeObjects.for_host(op.url)
    group_version = CR_RESOURCE.rsplit("/", 1)[0]
    try:
        seen = await kube.get("InferenceDeployment", group_version, "default", "m1")
        assert seen is not None
        seen["spec"]["hardware"]["vmSize"] = H100
        result = await reconcile(
            seen, clients=Clients(kube=kube, pools=aks_pools), settings=op.config, now=datetime.now(UTC)
        )
        if write_status:
            await kube.patch_status(
                "InferenceDeployment", group_version, "default", "m1", status_patch(result.status, seen["status"])
            )
    finally:
        await kube.close()


async def test_a_pool_a_poll_made_for_an_edit_kopf_merged_into_no_change_is_released(
    op: OperatorHarness, aks_pools: AksAgentPools
) -> None:
    await op.create(cr_body("m1"))
    first = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]
    await op.stop(kill=True)
    # vmSize A -> B -> A, which kopf merges into no change: between the edits a poll saw B and created its pool.
    await _round_on_h100(op, aks_pools, write_status=True)
    second = next(name for name in op.arm.pool_names() if name != first)
    await op.start()
    await op.wait_for(lambda: op.arm.calls("DELETE", f"/agentPools/{second}$"), message="the H100 pool released")
    body = await op.wait_ready("m1")
    assert body["status"]["nodePool"]["name"] == first and "movingTo" not in body["status"]["nodePool"]
    assert not op.arm.calls("DELETE", f"/agentPools/{first}$")


async def test_a_pool_put_just_before_a_crash_is_released_when_the_spec_goes_back(
    op: OperatorHarness, aks_pools: AksAgentPools
) -> None:
    await op.create(cr_body("m1"))
    first = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]
    await op.stop(kill=True)
    # A round moving to H100 PUTs the new pool, then the operator dies before its status patch; the spec goes back.
    await _round_on_h100(op, aks_pools, write_status=False)
    second = next(name for name in op.arm.pool_names() if name != first)
    await op.start()
    await op.wait_for(lambda: op.arm.calls("DELETE", f"/agentPools/{second}$"), message="the H100 pool released")
    assert (await op.wait_ready("m1"))["status"]["nodePool"]["name"] == first


# What the operator owns for deployment m1: kmock resource, name, and the API path a person edits it at.
OWNED = {
    "RayService": (RS_RESOURCE, "m1", "/apis/ray.io/v1/namespaces/default/rayservices/m1"),
    "Service": ("v1/services", "m1-openai", "/api/v1/namespaces/default/services/m1-openai"),
    "NetworkPolicy": (
        "networking.k8s.io/v1/networkpolicies",
        "m1-ingress",
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/m1-ingress",
    ),
}


def _spec(op: OperatorHarness, kind: str) -> dict[str, Any]:
    resource, name, _ = OWNED[kind]
    return copy.deepcopy((op.get(name, resource=resource) or {}).get("spec") or {})


async def _edit(op: OperatorHarness, kind: str, patch: dict[str, Any]) -> None:
    """Merge-patch an owned object without the operator's token: as a person, the API server or KubeRay would."""
    headers = {"Content-Type": "application/merge-patch+json"}
    async with op.k.request("PATCH", OWNED[kind][2], json=patch, headers=headers) as resp:
        assert resp.status == 200, await resp.text()


def _writes(op: OperatorHarness) -> dict[str, int]:
    assert isinstance(op.k, ApiServerEmulator)
    return {kind: op.k.writes[path] for kind, (_, _, path) in OWNED.items()}


async def test_defaulted_fields_are_left_alone_and_a_hand_edit_of_any_field_we_set_is_undone_once(
    op: OperatorHarness,
) -> None:
    await op.create(cr_body("m1"))
    await op.wait_ready("m1")
    want = {kind: _spec(op, kind) for kind in OWNED}
    # What the API server and KubeRay add: defaults inside what we set, and fields we never set.
    head = want["RayService"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    containers = [
        {**c, "imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/termination-log"}
        for c in head["containers"]
    ]
    await _edit(
        op,
        "RayService",
        {
            "spec": {
                "serviceUnhealthySecondThreshold": 900,
                "rayClusterConfig": {
                    "headGroupSpec": {"template": {"spec": {"containers": containers, "restartPolicy": "Always"}}}
                },
            }
        },
    )
    await _edit(op, "Service", {"spec": {"clusterIP": "10.0.0.17", "sessionAffinity": "None", "ipFamilies": ["IPv4"]}})
    await _edit(
        op,
        "NetworkPolicy",
        {
            "spec": {
                "ingress": [
                    {**rule, "ports": [{**p, "endPort": p["port"]} for p in rule.get("ports") or []]}
                    if rule.get("ports")
                    else rule
                    for rule in want["NetworkPolicy"]["ingress"]
                ]
            }
        },
    )
    before = _writes(op)
    await asyncio.sleep(1.2)  # four polls
    assert _writes(op) == before, "a field the operator does not set was written back"

    await _edit(op, "RayService", {"spec": {"rayClusterConfig": {"enableInTreeAutoscaling": False}}})
    await _edit(
        op, "Service", {"spec": {"ports": [{"name": "http", "port": 9999, "targetPort": 9999, "protocol": "TCP"}]}}
    )
    await _edit(op, "NetworkPolicy", {"spec": {"policyTypes": ["Ingress", "Egress"]}})

    def undone() -> bool:
        specs = {kind: _spec(op, kind) for kind in OWNED}
        return (
            specs["RayService"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
            and specs["Service"]["ports"] == want["Service"]["ports"]
            and specs["NetworkPolicy"]["policyTypes"] == ["Ingress"]
        )

    await op.wait_for(undone, within=5.0, message="every hand edit undone")
    await asyncio.sleep(1.2)
    # The edit, then the one write that undid it: no re-apply loop.
    assert _writes(op) == {kind: count + 2 for kind, count in before.items()}, "one write undoes each edit"


async def test_kuberay_refusing_the_rayservice_is_serving_failed_with_its_error_until_it_accepts_it(
    op: OperatorHarness, kuberay: KubeRayPeer
) -> None:
    kuberay.invalid = "worker group gpu has minReplicas 3 greater than maxReplicas 2"

    def failed() -> bool:
        return op.condition("m1", "ServingReady").get("reason") == "ServingFailed"

    await op.create(cr_body("m1"))
    await op.wait_for(failed, message="ServingFailed")
    message = op.condition("m1", "ServingReady")["message"]
    assert message == f"KubeRay refused the RayService: {kuberay.invalid}", message
    assert (op.get("m1") or {})["status"]["phase"] == "Degraded"  # as for a Serve application DEPLOY_FAILED
    before = _writes(op)
    await asyncio.sleep(1.2)  # four polls
    assert _writes(op)["RayService"] == before["RayService"], "the refused RayService is not rewritten every poll"
    assert failed()
    kuberay.invalid = None  # KubeRay upgraded, or its validation fixed
    await op.wait_ready("m1")


async def test_arm_409_another_operation_in_progress_is_retried_and_said_in_a_condition(op: OperatorHarness) -> None:
    await op.create(cr_body("m1", scaling={"maxReplicas": 1}))
    name = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]
    # Someone (an AKS upgrade, the portal) started an operation on the pool between the operator's read and its PUT.
    busy = (
        f"Operation is not allowed because there's an in progress upgrade node pool operation on agent pool '{name}'."
    )
    op.arm.arm_error("PUT", f"/agentPools/{name}$", code="OperationNotAllowed", message=busy, status=409, times=2)
    messages: list[str] = []

    def said() -> bool:
        conditions = (op.get("m1") or {}).get("status", {}).get("conditions") or []
        messages.extend(f"{c['type']} {c.get('reason')}: {c.get('message')}" for c in conditions)
        return any("in progress upgrade node pool operation" in m for m in messages)

    await op.patch("m1", {"spec": {"scaling": {"maxReplicas": 3}}})
    await op.wait_for(said, message="the conflict in a condition")
    await op.wait_for(lambda: op.arm.pool(name)["properties"]["maxCount"] == 3, message="maxCount 3")  # type: ignore[index]
    await op.wait_ready("m1")
    assert len(op.arm.calls("PUT", f"/agentPools/{name}$")) == 4, "1 create, 2 refused, 1 accepted"


async def test_min_replicas_raised_above_the_quota_is_said_plainly_and_not_retried_in_a_loop(
    op: OperatorHarness,
) -> None:
    op.arm.set_quota(A100_FAMILY, 48)  # two Standard_NC24ads_A100_v4 nodes (24 vCPUs each)
    await op.create(cr_body("m1", scaling={"minReplicas": 1, "maxReplicas": 2}))
    name = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]
    await op.patch("m1", {"spec": {"scaling": {"minReplicas": 3, "maxReplicas": 3}}})
    await op.wait_for(
        lambda: op.condition("m1", "QuotaInsufficient").get("status") == "True", message="QuotaInsufficient"
    )
    quota = op.condition("m1", "QuotaInsufficient")["message"]
    for part in ("not even the pool's floor of 3 nodes (spec.scaling.minReplicas)", "bounded to 2 nodes", "to 72"):
        assert part in quota, quota
    assert "lower spec.scaling.maxReplicas and spec.scaling.minReplicas" in quota, quota
    puts = len(op.arm.calls("PUT", f"/agentPools/{name}$"))
    await asyncio.sleep(1.2)  # four polls
    assert len(op.arm.calls("PUT", f"/agentPools/{name}$")) == puts == 2, "created, then bounded to (2, 2): no loop"
    assert op.arm.pool(name)["properties"]["minCount"] == 2  # type: ignore[index]
    assert op.condition("m1", "Stalled")["status"] == "False"

    # It serves on 2 nodes, so Ready stays True, but not as if the 3 minReplicas asks for ran. Waited for, not read
    # once: the reconcile that writes it can still be running (starved beside the live engines, a CI run read
    # "Deploying" here).
    def waiting_for_capacity() -> dict[str, Any] | None:
        ready = op.condition("m1", "Ready")
        return ready if (ready.get("status"), ready.get("reason")) == ("True", "WaitingForCapacity") else None

    ready = await op.wait_for(waiting_for_capacity, message="Ready True with WaitingForCapacity")
    assert "holds 2 of the 3 nodes spec.scaling.minReplicas needs" in ready["message"], ready
    assert (op.get("m1") or {})["status"]["phase"] == "Degraded"
