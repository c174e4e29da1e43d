"""CR lifecycles a platform engineer plausibly goes through, beyond the happy paths of the lifecycle tests."""

from typing import Any

import pytest

from tests.operator.conftest import CLUSTER, RESOURCE_GROUP, SUBSCRIPTION
from tests.support.kopf_harness import A100, RS_RESOURCE, OperatorHarness, cr_body
from tests.support.kube_emulator import ApiServerEmulator
from tokenplane_operator.adapters.azure import AksAgentPools
from tokenplane_operator.reconcile import pool_demand

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)


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


async def test_pool_deleted_out_of_band_is_recreated_and_status_says_so_meanwhile(
    op: OperatorHarness, aks_pools: AksAgentPools
) -> None:
    await op.create(cr_body("m1"))
    name = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]
    await aks_pools.begin_delete(name)  # someone in the portal
    op.arm.settle()
    await op.wait_for(lambda: op.condition("m1", "Ready").get("status") == "False", message="Ready=False")
    await op.wait_ready("m1")
    assert op.arm.pool_names() == [name]
    assert len(op.arm.calls("PUT", f"/agentPools/{name}$")) == 2


async def test_rayservice_deleted_by_hand_is_recreated(op: OperatorHarness) -> None:
    await op.create(cr_body("m1"))
    await op.wait_ready("m1")
    async with op.k.request("DELETE", "/apis/ray.io/v1/namespaces/default/rayservices/m1") as resp:
        assert resp.status in (200, 202)
    await op.wait_for(lambda: op.get("m1", resource=RS_RESOURCE) is not None, message="RayService back")
    await op.wait_ready("m1")


async def test_an_invalid_edit_keeps_what_runs_and_a_fix_resumes_it(op: OperatorHarness) -> None:
    await op.create(cr_body("m1"))
    name = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]
    await op.patch("m1", {"spec": {"scaling": {"minReplicas": 3, "maxReplicas": 1}}})
    await op.wait_for(lambda: op.condition("m1", "Validated").get("reason") == "InvalidSpec", message="InvalidSpec")
    assert op.condition("m1", "Ready")["status"] == "False"
    await op.patch("m1", {"spec": {"scaling": {"minReplicas": 1, "maxReplicas": 2}}})
    await op.wait_for(lambda: op.condition("m1", "Validated").get("reason") == "Valid", message="Valid")
    await op.wait_ready("m1")
    assert op.arm.pool_names() == [name] and not op.arm.calls("DELETE")
    assert op.get("m1", resource=RS_RESOURCE) is not None
    await op.wait_for(lambda: op.arm.pool(name)["properties"]["maxCount"] == 2, message="maxCount 2")  # type: ignore[index]


async def test_same_name_in_two_namespaces_are_two_deployments(op: OperatorHarness) -> None:
    await op.create(cr_body("m1"))
    await op.create(cr_body("m1", namespace="team"))
    await op.wait_ready("m1")
    await op.wait_ready("m1", namespace="team")
    await op.delete("m1")
    await op.wait_for(lambda: op.get("m1") is None, message="default/m1 gone")
    assert op.get("m1", namespace="team", resource=RS_RESOURCE) is not None
    assert len(op.arm.pool_names()) == 1 and not op.arm.calls("DELETE")
    assert op.condition("m1", "Ready", namespace="team")["status"] == "True"


async def test_recreated_at_once_adopts_what_its_namesake_left_before_the_gc_deletes_it(op: OperatorHarness) -> None:
    await op.create(cr_body("m1"))
    name = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]
    await op.delete("m1")
    await op.wait_for(lambda: op.get("m1") is None, message="m1 gone")
    body = cr_body("m1")
    body["metadata"]["uid"] = "uid-default-m1-again"
    await op.create(body)
    await op.wait_ready("m1")
    await op.wait_for(lambda: op.arm.pool(name) is not None, message="a pool")
    assert op.arm.pool_names() == [name]
    rs = op.get("m1", resource=RS_RESOURCE)
    assert rs is not None and rs["metadata"]["ownerReferences"][0]["uid"] == "uid-default-m1-again"


async def test_a_crd_edit_made_while_the_operator_was_down_is_applied_on_restart(op: OperatorHarness) -> None:
    await op.create(cr_body("m1"))
    await op.wait_ready("m1")
    before = (op.get("m1", resource=RS_RESOURCE) or {})["spec"]["serveConfigV2"]
    await op.stop(kill=True)
    await op.patch("m1", {"spec": {"engine": {"maxNumSeqs": 32}}})
    await op.start()
    await op.wait_for(
        lambda: (op.get("m1", resource=RS_RESOURCE) or {})["spec"]["serveConfigV2"] != before, message="applied"
    )
    await op.wait_ready("m1")


async def test_vm_size_edited_and_reverted_while_provisioning_leaves_one_pool(op: OperatorHarness) -> None:
    op.arm.provisioning_polls = 10_000  # every pool stays Creating until settled
    await op.create(cr_body("m1"))
    await op.wait_for(lambda: len(op.arm.pool_names()) == 1, message="the first pool PUT")
    first = op.arm.pool_names()[0]
    await op.wait_for(lambda: (op.get("m1") or {}).get("status", {}).get("nodePool"), message="status pool")
    await op.patch("m1", {"spec": {"hardware": {"vmSize": "Standard_NC40ads_H100_v5"}}})
    await op.wait_for(lambda: len(op.arm.pool_names()) == 2, message="the second pool PUT")
    second = next(name for name in op.arm.pool_names() if name != first)
    await op.patch("m1", {"spec": {"hardware": {"vmSize": A100}}})
    op.arm.provisioning_polls = 2
    op.arm.settle()
    body = await op.wait_ready("m1")
    assert body["status"]["nodePool"]["name"] == first
    await op.wait_for(lambda: op.arm.calls("DELETE", f"/agentPools/{second}$"), message="the H100 pool released")
    assert not op.arm.calls("DELETE", f"/agentPools/{first}$")


@pytest.mark.parametrize(
    "spec",
    [
        {"model": {"source": "org/model"}, "hardware": "big"},
        {"model": {"source": "org/model"}, "hardware": {"vmSize": A100}, "scaling": {"maxReplicas": "lots"}},
        {"model": {"source": "org/model"}, "hardware": {"vmSize": "Standard_Nope_v9"}},
    ],
)
async def test_malformed_spec_is_one_line_invalid_spec_and_no_traceback(
    op: OperatorHarness, spec: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    body = cr_body("bad")
    body["spec"] = spec
    await op.create(body)
    await op.wait_for(lambda: op.condition("bad", "Validated").get("status") == "False", message="refused")
    message = op.condition("bad", "Validated")["message"]
    assert message.startswith("spec.") and "\n" not in message, message
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    await op.create(cr_body("good"))
    await op.wait_ready("good")  # the operator stays up


async def test_scale_to_zero_and_back_moves_the_pool_floor_in_place(op: OperatorHarness) -> None:
    await op.create(cr_body("m1", scaling={"minReplicas": 1, "maxReplicas": 2}))
    name = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]

    def floor(count: int) -> bool:
        # The status is written after the pool's PUT returns: wait for both, or the status read races the write.
        pool = op.arm.pool(name) or {}
        status = (op.get("m1") or {}).get("status", {}).get("nodePool", {})
        return (
            pool.get("properties", {}).get("minCount") == count
            and status.get("minCount") == count
            and op.condition("m1", "Ready")["status"] == "True"
        )

    zero = {"minReplicas": 0, "maxReplicas": 2, "scaleToZero": {"enabled": True}}
    await op.patch("m1", {"spec": {"scaling": zero}})
    await op.wait_for(lambda: floor(0), message="minCount 0")
    await op.patch("m1", {"spec": {"scaling": {"minReplicas": 1, "scaleToZero": {"enabled": False}}}})
    await op.wait_for(lambda: floor(1), message="minCount 1")
    assert op.arm.pool_names() == [name] and not op.arm.calls("DELETE")


async def test_restart_mid_move_still_releases_the_old_pool(op: OperatorHarness) -> None:
    await op.create(cr_body("m1"))
    old = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]
    op.arm.provisioning_polls = 10_000
    await op.patch("m1", {"spec": {"hardware": {"vmSize": "Standard_NC40ads_H100_v5"}}})
    await op.wait_for(lambda: len(op.arm.pool_names()) == 2, message="the new pool PUT")
    await op.stop(kill=True)
    op.arm.provisioning_polls = 2
    await op.start()
    await op.wait_for(lambda: op.arm.calls("DELETE", f"/agentPools/{old}$"), message="the old pool released")
    body = await op.wait_ready("m1")
    assert body["status"]["nodePool"]["name"] != old
    assert len(op.arm.calls("PUT", "/agentPools/tp")) == 2, "no pool created twice"


async def test_restart_while_deleting_lets_the_cr_go(op: OperatorHarness) -> None:
    await op.create(cr_body("m1"))
    name = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]
    op.arm.provisioning_polls = 10_000  # the DELETE stays Deleting
    await op.delete("m1")
    await op.wait_for(lambda: op.arm.calls("DELETE", f"/agentPools/{name}$"), message="the pool DELETE")
    await op.stop(kill=True)
    op.arm.provisioning_polls = 2
    await op.start()
    await op.wait_for(lambda: op.get("m1") is None, message="the CR gone after the restart")
    assert op.arm.pool_names() == []


async def test_bounds_edited_while_creating_are_applied_once_it_is_done(op: OperatorHarness) -> None:
    op.arm.provisioning_polls = 10_000
    await op.create(cr_body("m1", scaling={"maxReplicas": 1}))
    await op.wait_for(lambda: op.condition("m1", "NodePoolReady").get("reason") == "Provisioning", message="prov")
    name = op.arm.pool_names()[0]
    await op.patch("m1", {"spec": {"scaling": {"maxReplicas": 3}}})
    await op.wait_for(lambda: (op.get("m1") or {})["status"].get("observedGeneration") == 2, message="gen 2 seen")
    assert len(op.arm.calls("PUT", f"/agentPools/{name}$")) == 1, "no PUT into a running operation"
    op.arm.provisioning_polls = 2
    op.arm.settle()
    await op.wait_for(lambda: op.arm.pool(name)["properties"]["maxCount"] == 3, message="maxCount 3")  # type: ignore[index]
    await op.wait_ready("m1")
    assert (op.get("m1") or {})["status"]["nodePool"]["maxCount"] == 3


async def test_a_hand_edit_of_the_serve_config_is_undone(op: OperatorHarness) -> None:
    await op.create(cr_body("m1"))
    await op.wait_ready("m1")
    want = (op.get("m1", resource=RS_RESOURCE) or {})["spec"]["serveConfigV2"]
    edit = {"spec": {"serveConfigV2": "applications: []"}}  # `kubectl edit` keeps the spec-hash annotation
    async with op.k.request("PATCH", "/apis/ray.io/v1/namespaces/default/rayservices/m1", json=edit) as resp:
        assert resp.status == 200
    await op.wait_for(
        lambda: (op.get("m1", resource=RS_RESOURCE) or {})["spec"]["serveConfigV2"] == want, message="undone"
    )
