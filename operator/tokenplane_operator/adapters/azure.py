"""AKS agent pools and the region's vCPU quota through the async Azure SDKs; Azure errors become domain errors."""

import email.utils
import ssl
import time
from types import TracebackType
from typing import Any, Self

import aiohttp
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.core.pipeline.transport import AioHttpTransport
from azure.identity.aio import DefaultAzureCredential
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.containerservice.models import AgentPool

from tokenplane_operator.adapters.exporter import count_api_error
from tokenplane_operator.converge.quota import QuotaReading, QuotaUsage
from tokenplane_operator.desired.agentpool import DesiredAgentPool, ObservedAgentPool, to_arm_body
from tokenplane_operator.errors import CloudRejectedError, TokenplaneError, TransientCloudError, is_quota_error

__all__ = ["AksAgentPools"]

# Capacity shortages clear by themselves (or in another zone): retry, do not page a human.
_CAPACITY_CODES = frozenset(
    {
        "AllocationFailed",
        "ZonalAllocationFailed",
        "OverconstrainedAllocationRequest",
        "OverconstrainedZonalAllocationRequest",
    }
)


class AksAgentPools:
    """Observe, create/update and delete one AKS cluster's agent pools (never waiting on an LRO); read quota.

    ``begin_*`` methods send only the initial request of a long-running operation (``polling=False``)
    and return once Azure accepted it; callers re-`observe` ``provisioning_state`` from a timer.

    Args:
        subscription_id: Azure subscription of the cluster.
        resource_group: Resource group of the cluster.
        cluster_name: Name of the AKS managed cluster.
        credential: An async Azure credential; None builds ``DefaultAzureCredential`` (workload
            identity in AKS), which `close` then closes. An injected credential stays the caller's.
        arm_endpoint: ARM base URL override (sovereign clouds, emulators); None is public Azure.
        connection_verify: Path of a CA bundle to trust for TLS, or None for the system store.
        polling_interval_s: Seconds between LRO polls, for callers that use the SDK's pollers.
        sku_cache_s: How long the region's VM size list (family and vCPUs of each size) is reused.
    """

    def __init__(
        self,
        *,
        subscription_id: str,
        resource_group: str,
        cluster_name: str,
        credential: AsyncTokenCredential | None = None,
        arm_endpoint: str | None = None,
        connection_verify: str | None = None,
        polling_interval_s: float = 30.0,
        sku_cache_s: float = 3600.0,
    ) -> None:
        self.resource_group = resource_group
        self.cluster_name = cluster_name
        self._owned_credential: DefaultAzureCredential | None = None
        if credential is None:
            credential = self._owned_credential = DefaultAzureCredential()
        self._client = ContainerServiceClient(
            credential,
            subscription_id,
            base_url=arm_endpoint,
            polling_interval=polling_interval_s,
            # No SDK retries: they sleep inside the call (up to Retry-After), blocking a handler.
            # The caller retries instead, from the TransientCloudError's retry_after_s.
            retry_total=0,
            **_tls(connection_verify),
        )
        # The same credential reads quota: Microsoft.Compute/locations/usages/read and skus/read.
        self._compute = ComputeManagementClient(
            credential, subscription_id, base_url=arm_endpoint, retry_total=0, **_tls(connection_verify)
        )
        self._region: str | None = None
        self._sku_cache_s = sku_cache_s
        self._skus: dict[str, tuple[float, dict[str, tuple[str, int]]]] = {}

    async def observe(self, name: str) -> ObservedAgentPool | None:
        """Read one agent pool.

        Args:
            name: The agent pool name.

        Returns:
            The pool as AKS reports it, or None if it does not exist.

        Raises:
            TransientCloudError: Throttling, server or network failure; retry.
            CloudRejectedError: Azure refused the request (e.g. credentials, permissions).
        """
        try:
            pool = await self._client.agent_pools.get(self.resource_group, self.cluster_name, name)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _convert(exc) from exc
        return ObservedAgentPool.from_arm(pool.as_dict())

    async def list_managed(self) -> list[ObservedAgentPool]:
        """List the cluster's agent pools that carry tokenplane's managed-by tag.

        Raises:
            TransientCloudError: Throttling, server or network failure; retry.
            CloudRejectedError: Azure refused the request.
        """
        try:
            pools = [
                ObservedAgentPool.from_arm(pool.as_dict())
                async for pool in self._client.agent_pools.list(self.resource_group, self.cluster_name)
            ]
        except AzureError as exc:
            raise _convert(exc) from exc
        return [pool for pool in pools if pool.managed]

    async def begin_apply(self, desired: DesiredAgentPool) -> None:
        """Start creating the pool, or updating it in place, and return once Azure accepted the PUT.

        An existing pool's node count is carried over so the update does not undo the autoscaler.
        Whether the change is possible in place is the caller's question (`needs_replacement`).

        Args:
            desired: The pool to create or update.

        Raises:
            TransientCloudError: Throttling, 5xx, capacity, or another operation still running; retry.
            CloudRejectedError: Quota, SKU availability, or an invalid/immutable change; a human acts.
        """
        current = await self.observe(desired.name)
        body = to_arm_body(desired, current_count=None if current is None else current.count)
        try:
            # polling=False: the SDK sends the PUT, reads the reply and hands back a poller that
            # never polls. Async pollers start no background task, so dropping it leaks nothing.
            await self._client.agent_pools.begin_create_or_update(
                self.resource_group, self.cluster_name, desired.name, AgentPool(body), polling=False
            )
        except AzureError as exc:
            raise _convert(exc) from exc

    async def begin_delete(self, name: str) -> None:
        """Start deleting the pool and return once Azure accepted it; a missing pool is already deleted.

        Args:
            name: The agent pool name.

        Raises:
            TransientCloudError: Throttling, server or network failure; retry.
            CloudRejectedError: Azure refused the request.
        """
        try:
            await self._client.agent_pools.begin_delete(self.resource_group, self.cluster_name, name, polling=False)
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise _convert(exc) from exc

    async def read_quota(self, vm_size: str) -> QuotaReading | None:
        """Read the vCPU quota and usage of the cluster's region, and the VM size's quota family.

        The region comes from the managed cluster; the size's family and vCPUs from the resource SKU
        list (``az vm list-skus``), whose ``family`` is the name of the size's row in the usage list.

        Args:
            vm_size: The pool's VM size.

        Returns:
            The reading, or None when the region's SKU list does not have the size.

        Raises:
            TransientCloudError: Throttling, server or network failure; retry.
            CloudRejectedError: Azure refused (e.g. the identity may not read usages).
        """
        try:
            region = await self._cluster_region()
            skus = await self._region_skus(region)
            sku = skus.get(vm_size.lower())
            if sku is None:
                return None
            usages = {
                usage.name.value.lower(): QuotaUsage(usage.name.value, int(usage.current_value), int(usage.limit))
                async for usage in self._compute.usage.list(region)
                if usage.name is not None and usage.name.value
            }
        except AzureError as exc:
            raise _convert(exc) from exc
        return QuotaReading(
            region=region, vm_size=vm_size, family=sku[0], vcpus_per_node=sku[1], usages=usages, sizes=skus
        )

    async def _cluster_region(self) -> str:
        if self._region is None:
            cluster = await self._client.managed_clusters.get(self.resource_group, self.cluster_name)
            self._region = cluster.location
        return self._region

    async def _region_skus(self, region: str) -> dict[str, tuple[str, int]]:
        """VM sizes offered in the region: lower-case name -> (quota family, vCPUs), cached for `sku_cache_s`."""
        cached = self._skus.get(region)
        if cached is not None and time.monotonic() - cached[0] < self._sku_cache_s:
            return cached[1]
        skus: dict[str, tuple[str, int]] = {}
        async for sku in self._compute.resource_skus.list(filter=f"location eq '{region}'"):
            if sku.resource_type != "virtualMachines" or not sku.name or not sku.family:
                continue
            capabilities = {c.name: c.value for c in sku.capabilities or ()}
            try:
                skus[sku.name.lower()] = (sku.family, int(capabilities.get("vCPUs") or 0))
            except ValueError:
                continue
        self._skus[region] = (time.monotonic(), skus)
        return skus

    async def close(self) -> None:
        """Close the HTTP sessions, and the credential if this object created it."""
        await self._client.close()
        await self._compute.close()
        if self._owned_credential is not None:
            await self._owned_credential.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _tls(ca_bundle: str | None) -> dict[str, Any]:
    """Trust a CA bundle through one TLS context per client, so its connections are reused.

    Given `connection_verify` as a path, azure-core builds a new SSLContext for every request, and aiohttp pools
    connections per context: every ARM call then opened (and kept) its own TLS connection with a 256 KiB buffer.
    """
    if ca_bundle is None:
        return {}
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=ca_bundle))
    return {"transport": AioHttpTransport(session=aiohttp.ClientSession(connector=connector), session_owner=True)}


def _convert(exc: AzureError) -> TokenplaneError:
    """Translate an Azure SDK error into the domain's retry semantics, and count it by reason."""
    error = _classify(exc)
    if isinstance(error, CloudRejectedError):
        reason: str = error.reason
    elif isinstance(error, TransientCloudError) and error.throttled:
        reason = "Throttled"
    else:
        reason = "Transient"
    count_api_error("arm", reason)
    return error


def _classify(exc: AzureError) -> TokenplaneError:
    """Map an Azure SDK error to the domain's retry semantics (see `tokenplane_operator.errors`)."""
    if not isinstance(exc, HttpResponseError) or exc.response is None:
        if isinstance(exc, ClientAuthenticationError):
            # No token at all: workload identity is not set up (or not yet); a human looks.
            return CloudRejectedError("InvalidRequest", f"no Azure token: {exc.message}", code="NoToken")
        return TransientCloudError(f"Azure unreachable: {exc.message}")
    status = exc.status_code
    code = (exc.error.code if exc.error else None) or ""
    message = (exc.error.message if exc.error else None) or exc.message
    retry_after = _retry_after_s(getattr(exc.response, "headers", {}))
    if status == 429:
        return TransientCloudError(message, retry_after_s=retry_after, code=code or None, status=status)
    if is_quota_error(code, message):
        return CloudRejectedError("QuotaExceeded", message, code=code)
    if code == "SkuNotAvailable":
        return CloudRejectedError("SkuNotAvailable", message, code=code)
    # 409: another operation on the pool is still running (OperationNotAllowed); it will finish.
    if code in _CAPACITY_CODES or status is None or status >= 500 or status == 409:
        return TransientCloudError(message, retry_after_s=retry_after, code=code or None, status=status)
    return CloudRejectedError("InvalidRequest", message, code=code or None)


def _retry_after_s(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms``/``x-ms-retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        if value := headers.get(name):
            try:
                return float(value) / 1000
            except ValueError:
                pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
