"""Rollouts against a KubeRay peer that follows KubeRay 1.7's rules (tests/support/kuberay_peer.py).

Engine arguments change in place; a cluster-level change (image) rolls out by replacing the RayService; a VM-size
change moves to a new pool and the old pool is released only after no pod of the deployment runs on it; the
status says what is rendered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
import yaml

from tests.support.arm_emulator import ArmEmulator
from tests.support.kopf_harness import RS_RESOURCE, OperatorHarness, cr_body
from tests.support.kube_emulator import ApiServerEmulator
from tests.support.kuberay_peer import KubeRayPeer
from tokenplane_operator.api.validation import parse_inference_deployment
from tokenplane_operator.desired.agentpool import POOL_LABEL
from tokenplane_operator.desired.bundle import build_desired_state
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_operator.desired.schedulable import parse_quantity

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)


@pytest.fixture
async def op(kmock: kmock.KubernetesEmulator, arm_emulator: ArmEmulator, kuberay: KubeRayPeer) -> AsyncIterator[Any]:
    harness = OperatorHarness(kmock, arm_emulator)
    await harness.start()
    yield harness
    await harness.stop()


async def ready_at(op: OperatorHarness, generation: int, name: str = "m1") -> dict[str, Any]:
    def ready() -> bool:
        condition = op.condition(name, "Ready")
        return condition.get("status") == "True" and condition.get("observedGeneration") == generation

    await op.wait_for(ready, within=30, message=f"Ready for generation {generation}")
    body = op.get(name)
    assert body is not None
    return body


def clusters(kuberay: KubeRayPeer, name: str = "m1") -> list[str]:
    return [e.removeprefix("created ") for e in kuberay.history[("default", name)] if e.startswith("created ")]


async def test_engine_args_change_applies_in_place(op: OperatorHarness, kuberay: KubeRayPeer) -> None:
    await op.create(cr_body("m1"))
    await ready_at(op, 1)
    first = clusters(kuberay)
    pods_before = {p["metadata"]["name"] for p in kuberay.pods()}
    await op.patch("m1", {"spec": {"engine": {"maxNumSeqs": 32}}})
    await ready_at(op, 2)
    events = kuberay.history[("default", "m1")]
    assert clusters(kuberay) == first, "an engine change must not start a new Ray cluster"
    assert f"resubmitted serve config to {first[0]}" in events
    assert {p["metadata"]["name"] for p in kuberay.pods()} == pods_before
    app = yaml.safe_load((op.get("m1", resource=RS_RESOURCE) or {})["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"]["engine"]["max_num_seqs"] == 32


async def test_image_change_rolls_out_a_new_cluster(
    kmock: kmock.KubernetesEmulator, arm_emulator: ArmEmulator, kuberay: KubeRayPeer
) -> None:
    op = OperatorHarness(kmock, arm_emulator)
    await op.start()
    try:
        await op.create(cr_body("m1"))
        await ready_at(op, 1)
        first = clusters(kuberay)
        await op.stop()
        # A new operator release ships a new serving image: the Ray cluster itself must change.
        op = OperatorHarness(kmock, arm_emulator, serving_image="example.com/serving:2")
        await op.start()

        def rolled_out() -> bool:
            pods = kuberay.pods()
            images = {c["image"] for p in pods for c in p["spec"]["containers"]}
            ready = op.condition("m1", "Ready").get("status") == "True"
            return bool(pods) and images == {"example.com/serving:2"} and ready

        await op.wait_for(rolled_out, within=30, message="every pod on the new image, Ready")
        assert len(clusters(kuberay)) == 2 and clusters(kuberay)[0] == first[0]
        assert f"deleted {first[0]}" in kuberay.history[("default", "m1")]
    finally:
        await op.stop()


async def test_upgrade_strategy_none_alone_would_never_roll_out(kuberay: KubeRayPeer, op: OperatorHarness) -> None:
    """What the operator works around: KubeRay ignores a cluster change under upgradeStrategy None."""
    await op.create(cr_body("m1", upgrade={"strategy": "inPlace"}))
    await ready_at(op, 1)
    rs = op.get("m1", resource=RS_RESOURCE) or {}
    assert rs["spec"]["upgradeStrategy"] == {"type": "None"}
    await op.stop(kill=True)  # only KubeRay acts now
    patched = {"spec": {"rayClusterConfig": {"rayVersion": "9.9.9"}}}
    await op._send("PATCH", "/apis/ray.io/v1/namespaces/default/rayservices/m1", patched)
    await op.wait_for(lambda: any(e.startswith("ignored ") for e in kuberay.history[("default", "m1")]))
    assert len(clusters(kuberay)) == 1


async def test_vm_size_change_releases_the_old_pool_only_after_its_pods_are_gone(
    op: OperatorHarness, kuberay: KubeRayPeer
) -> None:
    await op.create(cr_body("m1"))
    old = (await ready_at(op, 1))["status"]["nodePool"]["name"]
    await op.patch("m1", {"spec": {"hardware": {"vmSize": "Standard_NC40ads_H100_v5"}}})
    await op.wait_for(lambda: op.arm.calls("DELETE", f"/agentPools/{old}$"), within=30, message="old pool DELETE")
    on_old = [p for p in kuberay.pods() if (p["spec"].get("nodeSelector") or {}).get(POOL_LABEL) == old]
    assert on_old == [], f"the old pool was released while {len(on_old)} pod(s) still ran on it"
    body = await ready_at(op, 2)
    new = body["status"]["nodePool"]["name"]
    assert new != old and op.arm.pool(new)["properties"]["vmSize"] == "Standard_NC40ads_H100_v5"  # type: ignore[index]
    workers = [p for p in kuberay.pods() if "-worker-" in p["metadata"]["name"]]
    assert {(p["spec"].get("nodeSelector") or {}).get(POOL_LABEL) for p in workers} == {new}


async def test_status_equals_what_is_rendered(op: OperatorHarness, kuberay: KubeRayPeer) -> None:
    body = cr_body("m1", model={"source": "hf://meta-llama/Llama-3.1-70B-Instruct", "maxModelLen": 8192})
    body["spec"]["hardware"] = {}  # vmSize auto
    await op.create(body)
    status = (await ready_at(op, 1))["status"]
    rendered = build_desired_state(parse_inference_deployment(body), op.config.render_config())
    assert status["plan"] == rendered.plan.model_dump(mode="json", by_alias=True, exclude_none=True)
    rs = op.get("m1", resource=RS_RESOURCE) or {}
    assert rs["spec"] == rendered.rayservice["spec"]
    worker = next(p for p in kuberay.pods() if "-worker-" in p["metadata"]["name"])
    limits = worker["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == str(int(status["plan"]["gpusPerReplica"]))
    assert worker["spec"]["nodeSelector"][POOL_LABEL] == status["nodePool"]["name"]
    assert op.arm.pool(status["nodePool"]["name"])["properties"]["vmSize"] == status["plan"]["vmSize"]  # type: ignore[index]


async def test_the_head_pod_kuberay_builds_fits_a_system_node(kuberay: KubeRayPeer, op: OperatorHarness) -> None:
    """KubeRay adds its autoscaler container to the head (in-tree autoscaling): the pod as scheduled still fits."""
    await op.create(cr_body("m1"))
    await ready_at(op, 1)
    (head,) = [p for p in kuberay.pods() if p["metadata"]["name"].endswith("-head")]
    containers = head["spec"]["containers"]
    assert [c["name"] for c in containers] == ["ray-head", "autoscaler"]
    cpu = sum(parse_quantity(c["resources"]["requests"]["cpu"]) for c in containers)
    memory = sum(parse_quantity(c["resources"]["requests"]["memory"]) for c in containers)
    # The operator's head request plus KubeRay's sidecar (500m, 512Mi): 0.8 cores and 3.5 GiB by default.
    head_request = RenderConfig()
    system_node = head_request.system_node()
    assert cpu == parse_quantity(head_request.head_cpu) + 0.5 and cpu <= system_node.cpu_millis / 1000
    assert memory == parse_quantity(head_request.head_memory) + 512 * 2**20 and memory <= system_node.memory_bytes


async def test_a_head_the_system_node_cannot_hold_is_refused(
    kmock: kmock.KubernetesEmulator, arm_emulator: ArmEmulator, kuberay: KubeRayPeer
) -> None:
    """A 2-CPU head (2.5 with the autoscaler) on a Standard_D2s_v3 system pool (0.9 allocatable) would stay Pending."""
    harness = OperatorHarness(kmock, arm_emulator, head_cpu="2", system_node_vm_size="Standard_D2s_v3")
    await harness.start()
    try:
        arm_emulator.clear_requests()
        await harness.create(cr_body("big-head"))
        await harness.wait_for(lambda: harness.condition("big-head", "Validated").get("reason") == "DoesNotFit")
        message = harness.condition("big-head", "Validated")["message"]
        assert "cpu 2.5 = 2.5 exceeds the allocatable 0.90 of a system node (Standard_D2s_v3)" in message, message
        assert harness.get("big-head", resource=RS_RESOURCE) is None and arm_emulator.requests == []
    finally:
        await harness.stop()
