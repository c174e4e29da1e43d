"""Fixtures for the operator's adapter and integration tests: the ARM emulator, an AKS client on it, and KubeRay."""

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import kmock
import pytest
import trustme
from azure.core.credentials import AccessToken, AccessTokenInfo

from tests.support.arm_emulator import ArmEmulator
from tests.support.kuberay_peer import KubeRayPeer
from tokenplane_operator.adapters.azure import AksAgentPools

if TYPE_CHECKING:
    from tests.support.kopf_harness import OperatorHarness

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
RESOURCE_GROUP = "rg-tokenplane"
CLUSTER = "aks-tokenplane"
# (tenant id, client id, federated token) as the AKS workload-identity webhook would project them.
WORKLOAD_IDENTITY = (
    "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "11111111-2222-3333-4444-555555555555",
    "eyJhbGciOiJSUzI1NiJ9.projected-service-account-token.signature",
)


class FakeCredential:
    """An async Azure credential that hands out a dummy bearer token and never talks to Entra ID."""

    def __init__(self) -> None:
        self.expires_on = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-token", self.expires_on)

    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo("fake-token", self.expires_on)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> "FakeCredential":
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


@pytest.fixture(scope="session")
def arm_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def arm_emulator(arm_ca: trustme.CA) -> Iterator[ArmEmulator]:
    """A started ARM emulator: operations finish on their second observation."""
    with ArmEmulator(ca=arm_ca, provisioning_polls=2) as emulator:
        yield emulator


@pytest.fixture
def wi_arm(arm_ca: trustme.CA) -> Iterator[ArmEmulator]:
    """An ARM emulator that also plays Entra ID and accepts only the tokens it issued."""
    with ArmEmulator(ca=arm_ca, provisioning_polls=2, workload_identity=WORKLOAD_IDENTITY) as emulator:
        yield emulator


@pytest.fixture
async def aks_pools(arm_emulator: ArmEmulator) -> AsyncIterator[AksAgentPools]:
    """The real adapter (real aio ContainerServiceClient) pointed at the emulator over HTTPS."""
    pools = AksAgentPools(
        subscription_id=SUBSCRIPTION,
        resource_group=RESOURCE_GROUP,
        cluster_name=CLUSTER,
        credential=FakeCredential(),
        arm_endpoint=arm_emulator.base_url,
        connection_verify=str(arm_emulator.ca_pem),
        polling_interval_s=0.01,
    )
    async with pools:
        yield pools


@pytest.fixture
async def kuberay(kmock: kmock.KubernetesEmulator) -> AsyncIterator[KubeRayPeer]:
    """KubeRay on the emulated API server: clusters, pods and RayService status as KubeRay 1.7 makes them."""
    from tests.support.kopf_harness import declare_resources  # the harness imports this module's constants

    declare_resources(kmock)
    peer = KubeRayPeer(kmock)
    await peer.start()
    yield peer
    await peer.stop()


@pytest.fixture
async def op(
    kmock: kmock.KubernetesEmulator, arm_emulator: ArmEmulator, kuberay: KubeRayPeer
) -> AsyncIterator["OperatorHarness"]:
    """The real operator in this process, default settings, on the emulated API server, ARM and KubeRay.

    Test modules that need other settings (metrics, quota cache, a subprocess) define their own `op`.
    """
    from tests.support.kopf_harness import OperatorHarness, declare_resources  # it imports this module's constants

    declare_resources(kmock)
    harness = OperatorHarness(kmock, arm_emulator)
    await harness.start()
    yield harness
    await harness.stop(kill=True)
