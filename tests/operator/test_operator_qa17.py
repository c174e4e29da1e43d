"""CR lifecycles and hand edits last session's scenarios did not reach: merged edits, drifted objects, KubeRay and
ARM failures, quota."""

from datetime import UTC, datetime

import pytest

from tests.support.kopf_harness import CR_RESOURCE, OperatorHarness, cr_body
from tests.support.kube_emulator import ApiServerEmulator
from tokenplane_operator.adapters.azure import AksAgentPools
from tokenplane_operator.adapters.kube import KubeObjects
from tokenplane_operator.reconcile import Clients, reconcile, status_patch

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

H100 = "Standard_NC40ads_H100_v5"


async def test_a_pool_a_poll_made_for_an_edit_kopf_merged_into_no_change_is_released(
    op: OperatorHarness, aks_pools: AksAgentPools
) -> None:
    await op.create(cr_body("m1"))
    first = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]
    await op.stop(kill=True)
    # vmSize A -> B -> A, which kopf merges into no change: between the edits a poll saw B and created its pool.
    kube = KubeObjects.for_host(op.url)
    group_version = CR_RESOURCE.rsplit("/", 1)[0]
    try:
        seen = await kube.get("InferenceDeployment", group_version, "default", "m1")
        assert seen is not None
        seen["spec"]["hardware"]["vmSize"] = H100
        result = await reconcile(
            seen, clients=Clients(kube=kube, pools=aks_pools), settings=op.config, now=datetime.now(UTC)
        )
        await kube.patch_status(
            "InferenceDeployment", group_version, "default", "m1", status_patch(result.status, seen["status"])
        )
    finally:
        await kube.close()
    second = next(name for name in op.arm.pool_names() if name != first)
    await op.start()
    await op.wait_for(lambda: op.arm.calls("DELETE", f"/agentPools/{second}$"), message="the H100 pool released")
    body = await op.wait_ready("m1")
    assert body["status"]["nodePool"]["name"] == first and "movingTo" not in body["status"]["nodePool"]
    assert not op.arm.calls("DELETE", f"/agentPools/{first}$")
