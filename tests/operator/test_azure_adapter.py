"""The AKS adapter against the ARM emulator: real aio SDK, real HTTPS, real LRO protocol, injected faults."""

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request
from email.utils import formatdate
from typing import Any

import pytest
from azure.core.credentials import AccessTokenInfo
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.containerservice.models import AgentPool

from tests.operator.conftest import CLUSTER, RESOURCE_GROUP, SUBSCRIPTION, FakeCredential
from tests.support.arm_emulator import ArmEmulator
from tokenplane_operator.adapters.azure import AksAgentPools
from tokenplane_operator.desired.agentpool import (
    SPOT_TAINT,
    DesiredAgentPool,
    ObservedAgentPool,
    needs_replacement,
    operation_failure,
    to_arm_body,
)
from tokenplane_operator.errors import CloudRejectedError, OperationFailedError, TransientCloudError

H100 = "Standard_NC40ads_H100_v5"
POOL = DesiredAgentPool(name="tp1234abcd", vm_size=H100, mig_profile="MIG1g", min_count=0, max_count=4)
POOLS_PATH = r"/agentPools/tp1234abcd$"


async def converge(pools: AksAgentPools, name: str, polls: int = 20) -> ObservedAgentPool | None:
    """Re-observe as the operator's timer would, until no operation runs on the pool."""
    for _ in range(polls):
        pool = await pools.observe(name)
        if pool is None or not pool.in_progress:
            return pool
    raise AssertionError(f"{name} still in progress after {polls} observations")


async def test_create_is_started_not_awaited_and_converges(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    await aks_pools.begin_apply(POOL)

    assert [r.method for r in arm_emulator.calls(path=POOLS_PATH)] == ["GET", "PUT"]
    assert arm_emulator.calls(path="/operations/") == []  # the adapter never polls the LRO itself
    first = await aks_pools.observe(POOL.name)
    assert first is not None and first.provisioning_state == "Creating" and first.in_progress
    done = await converge(aks_pools, POOL.name)
    assert done is not None and done.succeeded
    assert (done.vm_size, done.mig_profile, done.max_count, done.managed) == (H100, "MIG1g", 4, True)
    assert needs_replacement(POOL, done) is None


async def test_slow_provisioning_does_not_block_and_leaks_no_task(
    aks_pools: AksAgentPools, arm_emulator: ArmEmulator
) -> None:
    arm_emulator.provisioning_seconds = 60
    before = asyncio.all_tasks()
    started = time.monotonic()

    await aks_pools.begin_apply(POOL)

    assert time.monotonic() - started < 2
    assert asyncio.all_tasks() == before
    for _ in range(3):
        pool = await aks_pools.observe(POOL.name)
        assert pool is not None and pool.provisioning_state == "Creating"
    arm_emulator.settle()
    pool = await aks_pools.observe(POOL.name)
    assert pool is not None and pool.succeeded


async def test_min_max_update_in_place_keeps_the_autoscaled_count(
    aks_pools: AksAgentPools, arm_emulator: ArmEmulator
) -> None:
    properties = to_arm_body(POOL)["properties"] | {"count": 3}
    arm_emulator.seed(SUBSCRIPTION, RESOURCE_GROUP, CLUSTER, POOL.name, properties)
    wider = POOL.model_copy(update={"min_count": 1, "max_count": 8})

    await aks_pools.begin_apply(wider)

    put = arm_emulator.calls("PUT", POOLS_PATH)[-1]
    assert put.body["properties"]["count"] == 3
    updating = await aks_pools.observe(POOL.name)
    assert updating is not None and updating.provisioning_state == "Updating"
    done = await converge(aks_pools, POOL.name)
    assert done is not None and done.succeeded and (done.min_count, done.max_count) == (1, 8)


async def test_delete_then_gone(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    await aks_pools.begin_apply(POOL)
    arm_emulator.settle()

    await aks_pools.begin_delete(POOL.name)

    deleting = await aks_pools.observe(POOL.name)
    assert deleting is not None and deleting.provisioning_state == "Deleting"
    assert await converge(aks_pools, POOL.name) is None
    await aks_pools.begin_delete(POOL.name)  # already gone: not an error
    assert arm_emulator.pool_names() == []


async def test_delete_while_still_provisioning(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    await aks_pools.begin_apply(POOL)
    await aks_pools.begin_delete(POOL.name)
    assert await converge(aks_pools, POOL.name) is None


async def test_list_managed_skips_pools_we_did_not_make(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    arm_emulator.seed(SUBSCRIPTION, RESOURCE_GROUP, CLUSTER, "nodepool1", {"vmSize": "Standard_D4s_v5"})
    await aks_pools.begin_apply(POOL)
    assert [pool.name for pool in await aks_pools.list_managed()] == [POOL.name]


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_throttling_honours_retry_after_without_sdk_retries(
    aks_pools: AksAgentPools, arm_emulator: ArmEmulator, form: str
) -> None:
    # The date is computed when the test runs, not at collection, which may be minutes earlier.
    retry_after = "7" if form == "seconds" else formatdate(time.time() + 7, usegmt=True)
    arm_emulator.inject("PUT", POOLS_PATH, status=429, headers={"Retry-After": retry_after})

    with pytest.raises(TransientCloudError) as caught:
        await aks_pools.begin_apply(POOL)

    assert caught.value.throttled
    assert caught.value.retry_after_s == pytest.approx(7, abs=1.5)
    assert len(arm_emulator.calls("PUT", POOLS_PATH)) == 1  # no hidden retry sleeping in the handler
    await aks_pools.begin_apply(POOL)  # the fault cleared: the retry goes through


async def test_throttling_helper_speaks_arm(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    arm_emulator.throttle("GET", POOLS_PATH, retry_after_s=12)
    with pytest.raises(TransientCloudError) as caught:
        await aks_pools.observe(POOL.name)
    assert (caught.value.retry_after_s, caught.value.code) == (12, "TooManyRequests")


@pytest.mark.parametrize(("method", "status"), [("GET", 500), ("PUT", 503), ("DELETE", 502)])
async def test_server_errors_are_transient(
    aks_pools: AksAgentPools, arm_emulator: ArmEmulator, method: str, status: int
) -> None:
    arm_emulator.server_error(method, POOLS_PATH, status=status)
    with pytest.raises(TransientCloudError) as caught:
        if method == "GET":
            await aks_pools.observe(POOL.name)
        elif method == "PUT":
            await aks_pools.begin_apply(POOL)
        else:
            await aks_pools.begin_delete(POOL.name)
    assert (caught.value.status, caught.value.retry_after_s, caught.value.throttled) == (status, None, False)


async def test_quota_exceeded_names_the_family_and_region(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    arm_emulator.quota_exceeded("PUT", POOLS_PATH)

    with pytest.raises(CloudRejectedError) as caught:
        await aks_pools.begin_apply(POOL)

    assert caught.value.reason == "QuotaExceeded"
    assert "standardNCADSH100v5Family Cores quota" in caught.value.message
    assert "Location: eastus" in caught.value.message


async def test_core_quota_as_operation_not_allowed(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    message = "Operation results in exceeding quota limits of Core. Maximum allowed: 0, Current in use: 0."
    arm_emulator.arm_error("PUT", POOLS_PATH, code="OperationNotAllowed", message=message, status=409)
    with pytest.raises(CloudRejectedError) as caught:
        await aks_pools.begin_apply(POOL)
    assert (caught.value.reason, caught.value.code) == ("QuotaExceeded", "OperationNotAllowed")


async def test_sku_not_available(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    arm_emulator.sku_not_available("PUT", POOLS_PATH, vm_size=H100)
    with pytest.raises(CloudRejectedError) as caught:
        await aks_pools.begin_apply(POOL)
    assert caught.value.reason == "SkuNotAvailable"
    assert H100 in caught.value.message and "eastus" in caught.value.message


async def test_capacity_shortage_is_transient(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    arm_emulator.arm_error("PUT", POOLS_PATH, code="ZonalAllocationFailed", message="no capacity in zone 1")
    with pytest.raises(TransientCloudError) as caught:
        await aks_pools.begin_apply(POOL)
    assert (caught.value.code, caught.value.status) == ("ZonalAllocationFailed", 400)


async def test_operation_ending_failed_shows_in_the_observation(
    aks_pools: AksAgentPools, arm_emulator: ArmEmulator
) -> None:
    arm_emulator.fail_operation(POOLS_PATH, code="ReconcileVMSSAgentPoolFailed", message="AllocationFailed")

    await aks_pools.begin_apply(POOL)

    failed = await converge(aks_pools, POOL.name)
    assert failed is not None and failed.provisioning_state == "Failed"
    error = operation_failure(failed)
    assert isinstance(error, OperationFailedError)
    assert (error.code, error.message) == ("ReconcileVMSSAgentPoolFailed", "AllocationFailed")
    await aks_pools.begin_apply(POOL)  # a failed pool takes a new PUT, which succeeds this time
    retried = await converge(aks_pools, POOL.name)
    assert retried is not None and retried.succeeded and retried.error_code is None


async def test_put_during_a_running_operation_is_a_transient_conflict(
    aks_pools: AksAgentPools, arm_emulator: ArmEmulator
) -> None:
    arm_emulator.provisioning_polls = 100
    await aks_pools.begin_apply(POOL)
    with pytest.raises(TransientCloudError) as caught:
        await aks_pools.begin_apply(POOL.model_copy(update={"max_count": 6}))
    assert (caught.value.status, caught.value.code) == (409, "OperationNotAllowed")


async def test_immutable_change_is_refused_not_ignored(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    await aks_pools.begin_apply(POOL)
    arm_emulator.settle()
    with pytest.raises(CloudRejectedError) as caught:
        await aks_pools.begin_apply(POOL.model_copy(update={"mig_profile": "MIG3g"}))
    assert (caught.value.reason, caught.value.code) == ("InvalidRequest", "PropertyChangeNotAllowed")


async def test_spot_pool_round_trips(aks_pools: AksAgentPools, arm_emulator: ArmEmulator) -> None:
    spot = DesiredAgentPool(name="tpspot0001", vm_size=H100, min_count=0, max_count=2, spot=True, zones=("1",))
    await aks_pools.begin_apply(spot)
    pool = await converge(aks_pools, spot.name)
    assert pool is not None and pool.spot and pool.spot_max_price == -1 and SPOT_TAINT in pool.node_taints
    assert needs_replacement(spot, pool) is None


async def test_unreachable_arm_is_transient(arm_emulator: ArmEmulator) -> None:
    async with AksAgentPools(
        subscription_id=SUBSCRIPTION,
        resource_group=RESOURCE_GROUP,
        cluster_name=CLUSTER,
        credential=FakeCredential(),
        arm_endpoint="https://127.0.0.1:9",
        connection_verify=str(arm_emulator.ca_pem),
    ) as pools:
        with pytest.raises(TransientCloudError) as caught:
            await pools.observe(POOL.name)
    assert caught.value.status is None


class NoTokenCredential(FakeCredential):
    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        raise ClientAuthenticationError("WorkloadIdentityCredential: no federated token file")


async def test_missing_identity_is_rejected_without_a_call(arm_emulator: ArmEmulator) -> None:
    async with AksAgentPools(
        subscription_id=SUBSCRIPTION,
        resource_group=RESOURCE_GROUP,
        cluster_name=CLUSTER,
        credential=NoTokenCredential(),
        arm_endpoint=arm_emulator.base_url,
        connection_verify=str(arm_emulator.ca_pem),
    ) as pools:
        with pytest.raises(CloudRejectedError) as caught:
            await pools.begin_apply(POOL)
    assert caught.value.reason == "InvalidRequest" and "federated token" in caught.value.message
    assert arm_emulator.requests == []


async def test_emulator_speaks_the_lro_protocol_to_the_sdk_pollers(arm_emulator: ArmEmulator) -> None:
    """The SDK's own pollers follow the emulator's Azure-AsyncOperation URLs to Succeeded and Failed."""
    async with ContainerServiceClient(
        FakeCredential(),
        SUBSCRIPTION,
        base_url=arm_emulator.base_url,
        connection_verify=str(arm_emulator.ca_pem),
        polling_interval=0.01,
    ) as client:
        poller = await client.agent_pools.begin_create_or_update(
            RESOURCE_GROUP, CLUSTER, POOL.name, AgentPool(to_arm_body(POOL))
        )
        created = await poller.result()
        assert created.properties is not None and created.properties.provisioning_state == "Succeeded"
        await (await client.agent_pools.begin_delete(RESOURCE_GROUP, CLUSTER, POOL.name)).result()
        assert arm_emulator.pool_names() == []

        arm_emulator.fail_operation(POOLS_PATH, code="ReconcileVMSSAgentPoolFailed", message="boom")
        poller = await client.agent_pools.begin_create_or_update(
            RESOURCE_GROUP, CLUSTER, POOL.name, AgentPool(to_arm_body(POOL))
        )
        with pytest.raises(HttpResponseError, match="boom"):
            await poller.result()


def test_emulator_validates_requests_from_sync_code(arm_emulator: ArmEmulator) -> None:
    context = ssl.create_default_context(cafile=str(arm_emulator.ca_pem))
    url = (
        f"{arm_emulator.base_url}/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
        f"/providers/Microsoft.ContainerService/managedClusters/{CLUSTER}/agentPools/{POOL.name}"
    )
    cases: list[tuple[str, dict[str, str], dict[str, object] | None, str]] = [
        (url, {"Authorization": "Bearer x"}, None, "MissingApiVersionParameter"),
        (url + "?api-version=2026-08-01", {}, None, "AuthenticationFailed"),
        (
            url + "?api-version=2026-08-01",
            {"Authorization": "Bearer x"},
            {"properties": {}},
            "InvalidParameter",
        ),
    ]
    for target, headers, body, code in cases:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(target, data=data, headers=headers, method="PUT" if data else "GET")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, context=context)
        assert json.load(caught.value)["error"]["code"] == code
    assert len(arm_emulator.requests) == 3


def test_emulator_delete_offers_a_location_url_too(arm_emulator: ArmEmulator) -> None:
    arm_emulator.seed(SUBSCRIPTION, RESOURCE_GROUP, CLUSTER, POOL.name, to_arm_body(POOL)["properties"])
    context = ssl.create_default_context(cafile=str(arm_emulator.ca_pem))
    url = (
        f"{arm_emulator.base_url}/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers"
        f"/Microsoft.ContainerService/managedClusters/{CLUSTER}/agentPools/{POOL.name}?api-version=2026-08-01"
    )
    auth = {"Authorization": "Bearer x"}
    request = urllib.request.Request(url, headers=auth, method="DELETE")
    with urllib.request.urlopen(request, context=context) as response:
        assert response.status == 202
        location = response.headers["Location"]
        assert "/locations/eastus/operationresults/" in location
        assert "/locations/eastus/operations/" in response.headers["Azure-AsyncOperation"]
    with urllib.request.urlopen(urllib.request.Request(location, headers=auth), context=context) as response:
        assert response.status == 202
    arm_emulator.settle()
    with urllib.request.urlopen(urllib.request.Request(location, headers=auth), context=context) as response:
        assert response.status == 204
    assert arm_emulator.pool(POOL.name) is None
