"""Quota before it bites: the adapter reads the region's vCPU quota through the real Compute SDK, and the
operator bounds (or holds back) a pool the quota cannot cover, then converges once quota is freed."""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest

from tests.operator.conftest import CLUSTER, RESOURCE_GROUP, SUBSCRIPTION, WORKLOAD_IDENTITY, FakeCredential
from tests.support.arm_emulator import ArmEmulator
from tests.support.kopf_harness import OperatorHarness, cr_body, declare_resources
from tests.support.kube_emulator import ApiServerEmulator
from tests.support.kuberay_peer import KubeRayPeer
from tokenplane_operator.adapters.azure import AksAgentPools
from tokenplane_operator.desired.agentpool import DesiredAgentPool
from tokenplane_operator.errors import CloudRejectedError

ROOT = Path(__file__).resolve().parents[2]
A100_FAMILY = "StandardNCADSA100v4Family"  # Standard_NC24ads_A100_v4: 24 vCPUs, one GPU
POOL_PUT = "/agentPools/tp[0-9a-f]+$"


async def test_adapter_reads_family_vcpus_and_usage(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    arm_emulator.set_quota(A100_FAMILY, 100, other=24)
    pool = DesiredAgentPool(name="tpquota1", vm_size="Standard_NC24ads_A100_v4", min_count=2, max_count=3)
    await aks_pools.begin_apply(pool)  # two nodes now: 48 vCPUs of the family
    reading = await aks_pools.read_quota("standard_nc24ads_a100_v4")
    assert reading is not None
    assert (reading.region, reading.family, reading.vcpus_per_node) == ("eastus", A100_FAMILY, 24)
    family = reading.usages[A100_FAMILY.lower()]
    assert (family.current, family.limit) == (24 + 48, 100)
    assert reading.usages["cores"].current == 24 + 48 - 24  # `other` was set on the family row only
    # The region, SKU list and usage came from the three Compute/AKS read APIs, with api-versions.
    paths = [r.path for r in arm_emulator.calls("GET")]
    assert any(p.endswith(f"/managedClusters/{aks_pools.cluster_name}") for p in paths)
    skus = arm_emulator.calls("GET", "/Microsoft.Compute/skus$")
    assert skus and skus[0].query["$filter"] == "location eq 'eastus'" and "api-version" in skus[0].query
    assert arm_emulator.calls("GET", "/locations/eastus/usages$")


async def test_adapter_caches_the_sku_list_and_knows_unknown_sizes(
    aks_pools: AksAgentPools, arm_emulator: ArmEmulator
) -> None:
    assert await aks_pools.read_quota("Standard_Unknown_v9") is None
    assert await aks_pools.read_quota("Standard_NC40ads_H100_v5") is not None
    assert len(arm_emulator.calls("GET", "/Microsoft.Compute/skus$")) == 1
    assert len(arm_emulator.calls("GET", "/usages$")) == 1


async def test_adapter_reports_a_refused_usage_read(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    arm_emulator.arm_error(
        "GET",
        "/usages$",
        code="AuthorizationFailed",
        message="The client does not have authorization to perform action 'Microsoft.Compute/locations/usages/read'",
        status=403,
    )
    with pytest.raises(CloudRejectedError, match="usages/read"):
        await aks_pools.read_quota("Standard_NC24ads_A100_v4")


def test_emulator_preflight_refuses_nodes_beyond_the_quota(arm_emulator: ArmEmulator) -> None:
    """AKS preflight refuses a PUT whose nodes exceed the family quota, in its own words."""

    async def put() -> None:
        async with AksAgentPools(
            subscription_id=SUBSCRIPTION,
            resource_group=RESOURCE_GROUP,
            cluster_name=CLUSTER,
            credential=FakeCredential(),
            arm_endpoint=arm_emulator.base_url,
            connection_verify=str(arm_emulator.ca_pem),
        ) as pools:
            pool = DesiredAgentPool(name="tpquota2", vm_size="Standard_NC24ads_A100_v4", min_count=3, max_count=3)
            await pools.begin_apply(pool)

    arm_emulator.set_quota(A100_FAMILY, 48)
    with pytest.raises(CloudRejectedError) as caught:
        asyncio.run(put())
    assert caught.value.reason == "QuotaExceeded"
    assert f"exceeding approved {A100_FAMILY} Cores quota" in caught.value.message
    assert "Current Limit: 48" in caught.value.message and "Additional Required: 72" in caught.value.message


# -- the operator ---------------------------------------------------------------------------------------


@pytest.fixture
async def op(
    kmock: kmock.KubernetesEmulator, arm_emulator: ArmEmulator, kuberay: KubeRayPeer
) -> AsyncIterator[OperatorHarness]:
    declare_resources(kmock)
    harness = OperatorHarness(kmock, arm_emulator, quota_cache_ttl_s=0.0)
    await harness.start()
    yield harness
    await harness.stop(kill=True)


@pytest.fixture
async def op_block(
    kmock: kmock.KubernetesEmulator, arm_emulator: ArmEmulator, kuberay: KubeRayPeer
) -> AsyncIterator[OperatorHarness]:
    declare_resources(kmock)
    harness = OperatorHarness(kmock, arm_emulator, quota_cache_ttl_s=0.0, quota_policy="block")
    await harness.start()
    yield harness
    await harness.stop(kill=True)


def four_replicas(name: str = "m1") -> dict:
    # Scale-to-zero keeps the pool's floor at 0 (the floor follows minReplicas), so only quota moves the bounds.
    return cr_body(name, scaling={"minReplicas": 0, "maxReplicas": 4, "scaleToZero": {"enabled": True}})


def pool_bounds(op: OperatorHarness) -> tuple[int, int] | None:
    names = op.arm.pool_names()
    if not names:
        return None
    props = (op.arm.pool(names[0]) or {})["properties"]
    return props["minCount"], props["maxCount"]


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_enough_quota_creates_the_whole_pool(op: OperatorHarness) -> None:
    op.arm.set_quota(A100_FAMILY, 96)  # exactly 4 x 24 vCPUs
    await op.create(four_replicas())
    await op.wait_ready("m1")
    assert pool_bounds(op) == (0, 4)
    quota = op.condition("m1", "QuotaInsufficient")
    assert (quota["status"], quota["reason"]) == ("False", "QuotaSufficient")
    assert "96 available" in quota["message"] and A100_FAMILY in quota["message"]


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_too_little_quota_bounds_the_pool_then_converges_when_freed(op: OperatorHarness) -> None:
    op.arm.set_quota(A100_FAMILY, 100, other=52)  # 48 vCPUs free: two of the four nodes fit
    await op.create(four_replicas())
    await op.wait_ready("m1")  # serving on what fits
    assert pool_bounds(op) == (0, 2)
    quota = op.condition("m1", "QuotaInsufficient")
    assert (quota["status"], quota["reason"]) == ("True", "QuotaInsufficient")
    for part in (A100_FAMILY, "eastus", "96 more vCPUs", "48 available", "bounded to 2 nodes"):
        assert part in quota["message"], quota["message"]
    assert op.condition("m1", "Stalled")["status"] == "False"
    assert not op.arm.calls("PUT", POOL_PUT) or all(
        r.body["properties"]["maxCount"] <= 2 for r in op.arm.calls("PUT", POOL_PUT)
    ), "never asked AKS for more than the quota allows"

    op.arm.set_quota(A100_FAMILY, 100, other=0)  # the other VMs went away
    await op.wait_for(lambda: pool_bounds(op) == (0, 4), message="the pool to grow to maxReplicas")
    await op.wait_for(
        lambda: op.condition("m1", "QuotaInsufficient").get("status") == "False", message="QuotaInsufficient False"
    )
    await op.wait_for(lambda: op.condition("m1", "Ready").get("status") == "True", message="Ready")


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_two_pools_of_one_family_share_its_free_quota(op: OperatorHarness) -> None:
    # Two hardware classes of one VM family (zones 1 and 2: two pools) each read the same 144 free vCPUs as theirs:
    # both pools were created with maxCount 4 and "QuotaSufficient", 8 nodes that the quota could never hold.
    op.arm.set_quota(A100_FAMILY, 144)  # six of the eight nodes fit
    bodies = [four_replicas("m1"), four_replicas("m2")]
    for body, zone in zip(bodies, ("1", "2"), strict=True):
        body["spec"]["hardware"]["zones"] = [zone]
        await op.create(body)
    for name in ("m1", "m2"):
        await op.wait_ready(name)
    maxima = sorted((op.arm.pool(name) or {})["properties"]["maxCount"] for name in op.arm.pool_names())
    assert maxima == [2, 4], "the family's quota holds six nodes, not eight"
    quota = {name: op.condition(name, "QuotaInsufficient") for name in ("m1", "m2")}
    [short] = [name for name, condition in quota.items() if condition["status"] == "True"]
    for part in ("48 available", "limit 144, in use 0, 96 claimed by other tokenplane pools (tp", "bounded to 2 nodes"):
        assert part in quota[short]["message"], quota[short]["message"]

    op.arm.set_quota(A100_FAMILY, 192)  # raised: both grow to maxReplicas
    await op.wait_for(lambda: op.condition(short, "QuotaInsufficient").get("status") == "False", message="freed")
    await op.wait_for(
        lambda: sorted((op.arm.pool(n) or {})["properties"]["maxCount"] for n in op.arm.pool_names()) == [4, 4],
        message="both pools at maxCount 4",
    )


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_a_pool_being_replaced_keeps_no_quota_from_its_replacement(op: OperatorHarness) -> None:
    # The old pool (moving to another VM size of the family) claimed the 4 x 24 vCPUs it may still add, against
    # the very pool replacing it: the replacement was bounded to 1 of its 2 nodes although the old one goes away.
    op.arm.set_quota(A100_FAMILY, 144)
    await op.create(four_replicas())
    old = (await op.wait_ready("m1"))["status"]["nodePool"]["name"]
    await op.patch("m1", {"spec": {"hardware": {"vmSize": "Standard_NC48ads_A100_v4"}}})
    await op.wait_for(lambda: len(op.arm.pool_names()) == 2, message="the new pool next to the old one")
    [new] = [name for name in op.arm.pool_names() if name != old]
    assert (op.arm.pool(new) or {})["properties"]["maxCount"] == 2  # 4 one-GPU replicas on 2-GPU VMs
    await op.wait_for(lambda: op.condition("m1", "QuotaInsufficient").get("status") == "False", message="sufficient")
    assert all(r.body["properties"]["maxCount"] == 2 for r in op.arm.calls("PUT", f"/agentPools/{new}$"))


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_a_throttled_pool_list_keeps_the_pool_bounded_on_the_last_list(op: OperatorHarness) -> None:
    # A 429 on the list of the cluster's pools skipped the round's quota check: QuotaInsufficient went Unknown and
    # the pool bounded to 2 nodes was PUT with its full maxCount 4, which the quota cannot hold.
    op.arm.set_quota(A100_FAMILY, 100, other=52)  # two of the four nodes fit
    await op.create(four_replicas())
    await op.wait_ready("m1")
    assert pool_bounds(op) == (0, 2)
    lists = len(op.arm.calls("GET", "/agentPools$"))
    op.arm.throttle("GET", "/agentPools$", retry_after_s=1, times=3)
    await op.wait_for(lambda: len(op.arm.calls("GET", "/agentPools$")) >= lists + 4, message="three 429s, then a list")
    assert pool_bounds(op) == (0, 2)
    assert all(r.body["properties"]["maxCount"] <= 2 for r in op.arm.calls("PUT", POOL_PUT))
    assert op.condition("m1", "QuotaInsufficient")["status"] == "True"


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_pending_pools_get_the_quota_in_the_order_they_were_asked_for(
    kmock: kmock.KubernetesEmulator, arm_emulator: ArmEmulator, kuberay: KubeRayPeer
) -> None:
    # Pending pools were served by name (a hash): the deployment created second took 4 of the 6 nodes that fit
    # and the one created first, waiting already, was bounded to 2.
    declare_resources(kmock)
    op = OperatorHarness(kmock, arm_emulator, quota_cache_ttl_s=0.0)
    op.arm.set_quota(A100_FAMILY, 144)  # six of the eight nodes fit
    first, second = four_replicas("m2"), four_replicas("m1")
    first["spec"]["hardware"]["zones"] = ["2"]  # its pool's name sorts after the second's (tpba... > tp2f...)
    second["spec"]["hardware"]["zones"] = ["1"]
    await op.create(first)
    await asyncio.sleep(1.1)  # creationTimestamp has whole seconds
    await op.create(second)
    await op.start()  # both pending when the operator first sees them
    try:
        for name in ("m1", "m2"):
            await op.wait_ready(name)
        maxima = {name: (op.arm.pool(op.get(name)["status"]["nodePool"]["name"]) or {}) for name in ("m1", "m2")}  # type: ignore[index]
        assert {name: pool["properties"]["maxCount"] for name, pool in maxima.items()} == {"m2": 4, "m1": 2}
        assert op.condition("m2", "QuotaInsufficient")["status"] == "False"
    finally:
        await op.stop(kill=True)


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_a_pool_the_quota_holds_back_does_not_hold_back_the_next(op_block: OperatorHarness) -> None:
    # A pool not created yet claimed its whole maxCount for the pools whose names sort after it, even when `block`
    # never creates it: one deployment asking for more than the quota held back every other one.
    op = op_block
    op.arm.set_quota(A100_FAMILY, 120)  # five nodes
    big = cr_body("m1", scaling={"minReplicas": 0, "maxReplicas": 8, "scaleToZero": {"enabled": True}})
    big["spec"]["hardware"]["zones"] = ["1"]  # asked for before m2 (and its pool name sorts first: tp2f... < tpba...)
    await op.create(big)
    await op.wait_for(
        lambda: op.condition("m1", "NodePoolReady").get("reason") == "QuotaExceeded", message="m1 held back"
    )
    small = four_replicas("m2")
    small["spec"]["hardware"]["zones"] = ["2"]
    await op.create(small)
    await op.wait_ready("m2")
    [name] = op.arm.pool_names()
    assert (op.arm.pool(name) or {})["properties"]["maxCount"] == 4
    assert op.condition("m2", "QuotaInsufficient")["status"] == "False"
    assert op.condition("m1", "NodePoolReady")["reason"] == "QuotaExceeded"


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_block_policy_creates_nothing_until_the_quota_fits(op_block: OperatorHarness) -> None:
    op = op_block
    op.arm.set_quota(A100_FAMILY, 72)  # three of four nodes would fit; `block` creates none
    await op.create(four_replicas())
    await op.wait_for(
        lambda: op.condition("m1", "NodePoolReady").get("reason") == "QuotaExceeded", message="QuotaExceeded"
    )
    assert op.arm.pool_names() == [] and not op.arm.calls("PUT", POOL_PUT)
    quota = op.condition("m1", "QuotaInsufficient")
    assert quota["status"] == "True" and "no agent pool is created" in quota["message"]
    assert "96 more vCPUs" in quota["message"] and "72 available" in quota["message"]
    assert op.condition("m1", "Stalled")["status"] == "True"

    op.arm.set_quota(A100_FAMILY, 96)
    await op.wait_ready("m1")
    assert pool_bounds(op) == (0, 4)
    assert op.condition("m1", "QuotaInsufficient")["status"] == "False"


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_a_quota_failure_of_the_operation_is_reported_as_quota(op: OperatorHarness) -> None:
    message = (
        'Code="OperationNotAllowed" Message="Operation could not be completed as it results in exceeding approved '
        f'{A100_FAMILY} Cores quota. Additional details - Deployment Model: Resource Manager, Location: eastus."'
    )
    op.arm.fail_operation(POOL_PUT, code="ReconcileVMSSAgentPoolFailed", message=message, times=1)
    await op.create(four_replicas())
    await op.wait_for(
        lambda: op.condition("m1", "NodePoolReady").get("reason") == "QuotaExceeded", message="QuotaExceeded"
    )
    assert A100_FAMILY in op.condition("m1", "NodePoolReady")["message"]
    assert op.condition("m1", "Stalled")["status"] == "True"
    await op.wait_ready("m1")  # the slow retry succeeds once quota was granted
    assert len(op.arm.calls("PUT", POOL_PUT)) == 2


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_unreadable_quota_never_blocks_the_pool(op: OperatorHarness) -> None:
    op.arm.arm_error("GET", "/usages$", code="AuthorizationFailed", message="no usages/read", status=403, times=1000)
    await op.create(four_replicas())
    await op.wait_ready("m1")
    assert pool_bounds(op) == (0, 4)
    quota = op.condition("m1", "QuotaInsufficient")
    assert (quota["status"], quota["reason"]) == ("Unknown", "QuotaUnknown") and "usages/read" in quota["message"]


# -- tokenplane plan --------------------------------------------------------------------------------


async def test_plan_counts_the_nodes_the_pool_already_has(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    """A pool running all its nodes uses the quota they fill: plan read that as short (its nodes counted twice)."""
    from tokenplane_cli.plan import read_headroom

    arm_emulator.set_quota(A100_FAMILY, 96)  # exactly 4 x 24 vCPUs, all in use by the pool itself
    pool = DesiredAgentPool(name="tpquota3", vm_size="Standard_NC24ads_A100_v4", min_count=4, max_count=4)
    await aks_pools.begin_apply(pool)
    arm_emulator.settle()
    check = await read_headroom(aks_pools, pool)
    assert not isinstance(check, str) and check.sufficient, check
    assert (check.current_nodes, check.needed_vcpus, check.available_vcpus) == (4, 0, 0)
    grown = pool.model_copy(update={"max_count": 5})
    short = await read_headroom(aks_pools, grown)
    assert not isinstance(short, str) and not short.sufficient and short.reachable_nodes == 4
    assert f"{A100_FAMILY} to 120 vCPUs" in short.remedy()


async def test_plan_json_shows_the_vcpus_other_pools_claim(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    # `-o json` said 48 available of a 144-vCPU quota with nothing in use and no word of the 96 another tokenplane
    # pool may still add (only the table's sentence named them).
    from tokenplane_cli.plan import quota_json, read_headroom

    arm_emulator.set_quota(A100_FAMILY, 144)
    other = DesiredAgentPool(name="tpother1", vm_size="Standard_NC24ads_A100_v4", min_count=0, max_count=4)
    await aks_pools.begin_apply(other)
    arm_emulator.settle()
    pool = DesiredAgentPool(name="tpquota4", vm_size="Standard_NC24ads_A100_v4", min_count=0, max_count=4)
    doc = quota_json(await read_headroom(aks_pools, pool))
    assert (doc["availableVcpus"], doc["claimedVcpus"], doc["claimedBy"]) == (48, 96, ["tpother1"])
    assert (doc["reachableNodes"], doc["sufficient"]) == (2, False)


def _plan(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import sys; from tokenplane_cli import main; sys.argv = ['tokenplane', *sys.argv[1:]]; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "plan", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_plan_shows_quota_headroom_with_the_operators_identity(wi_arm: ArmEmulator, tmp_path: Path) -> None:
    """`tokenplane plan` reads the quota through workload identity (as the operator does) when it can."""
    wi_arm.set_quota("StandardNCadsH100v5Family", 60)  # the copilot's pool reaches 2 x 40 vCPUs
    tenant, client_id, token = WORKLOAD_IDENTITY
    (tmp_path / "token").write_text(token)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENPLANE_", "AZURE_"))}
    base["PYTHONPATH"] = os.pathsep.join(str(ROOT / part) for part in ("operator", "serving", "cli"))
    env = base | {
        "AZURE_TENANT_ID": tenant,
        "AZURE_CLIENT_ID": client_id,
        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "token"),
        "AZURE_AUTHORITY_HOST": wi_arm.base_url,
        "SSL_CERT_FILE": str(wi_arm.ca_pem),
        "TOKENPLANE_SUBSCRIPTION_ID": SUBSCRIPTION,
        "TOKENPLANE_RESOURCE_GROUP": RESOURCE_GROUP,
        "TOKENPLANE_CLUSTER_NAME": CLUSTER,
        "TOKENPLANE_ARM_ENDPOINT": wi_arm.base_url,
        "TOKENPLANE_ARM_CA_BUNDLE": str(wi_arm.ca_pem),
    }
    example = str(ROOT / "deploy/examples/internal-copilot-mig.yaml")
    result = _plan([example, "-o", "json"], env)
    quota = json.loads(result.stdout)["quota"]
    assert quota == {
        "family": "StandardNCadsH100v5Family",
        "region": "eastus",
        "vcpusPerNode": 40,
        "wantedNodes": 2,
        "neededVcpus": 80,
        "availableVcpus": 60,
        "limitingQuota": "StandardNCadsH100v5Family",
        "claimedVcpus": 0,
        "claimedBy": [],
        "reachableNodes": 1,
        "sufficient": False,
    }, result.stderr
    table = _plan([example], env | {"COLUMNS": "400"}).stdout
    assert "quota" in table and "short" in table and "80 more vCPUs" in table and "60 available" in table
    # Without Azure settings the plan is the same, minus the quota row; nothing is contacted.
    before = len(wi_arm.requests)
    offline = _plan([example, "-o", "json"], base)
    assert "quota" not in json.loads(offline.stdout) and len(wi_arm.requests) == before
