"""An Azure Resource Manager emulator of the AKS agentPools API and the Compute quota APIs, over HTTPS,
with LROs and fault injection.

The real ``azure.mgmt.containerservice`` client talks to it through ``base_url``; azure-core refuses
bearer tokens over plain HTTP, so it serves TLS with a throwaway ``trustme`` CA (``ca_pem``).

What it speaks (every request needs ``api-version`` and a bearer token)::

    GET    {cluster}/agentPools                     200 {"value": [...]}
    GET    {cluster}/agentPools/{name}              200 pool | 404 NotFound
    PUT    {cluster}/agentPools/{name}              201 (create) | 200 (update), provisioningState
                                                    Creating/Updating + Azure-AsyncOperation;
                                                    400 on a bad name/body or an immutable change;
                                                    409 while another operation runs on the pool
    DELETE {cluster}/agentPools/{name}              202 + Location + Azure-AsyncOperation | 204 if absent
    POST   /{tenant}/oauth2/v2.0/token              Entra ID, when ``workload_identity`` is set: trades the
                                                    federated service-account token for an access token,
                                                    and ARM then accepts only tokens it issued
    GET    .../locations/{loc}/operations/{id}      {"status": "InProgress" | "Succeeded" | "Failed", "error"}
    GET    .../locations/{loc}/operationresults/{id}  202 while running, 204 when done
    GET    {rg}/providers/Microsoft.ContainerService/managedClusters/{cluster}   the cluster (its location)
    GET    /subscriptions/{sub}/providers/Microsoft.Compute/skus?$filter=location eq '{loc}'
                                                    resource SKUs: each VM size's quota family and vCPUs
    GET    /subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/usages
                                                    vCPU quota rows {"unit", "currentValue", "limit",
                                                    "name": {"value", "localizedValue"}}

Quota follows Compute's rules (REST: learn.microsoft.com/rest/api/compute/usage/list and
.../resource-skus/list; "vCPU quotas", learn.microsoft.com/azure/virtual-machines/quotas): a regular VM
counts its vCPUs against its family's row and the regional ``cores`` row, a spot VM only against
``lowPriorityCores``. Usage is what the stored pools' ``count`` nodes take plus ``set_quota(..., other=)``
(VMs outside these pools). A PUT that would add nodes beyond a limit is refused as AKS preflight refuses
it (400 ``QuotaExceeded``, "... exceeding approved <family> Cores quota ..."); maxCount is not checked,
as the cluster autoscaler's scale-ups are not either.

An operation finishes once it has been observed ``provisioning_polls`` times (a GET of the pool, the
list, or the operation) *and* ``provisioning_seconds`` have passed; ``settle()`` finishes all at once.
A DELETE preempts a running create/update (AKS allows deleting a pool that is still provisioning).

It runs its own event loop in a daemon thread, so sync and async tests use it alike.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trustme
from aiohttp import web

__all__ = ["ArmEmulator", "Fault", "RecordedRequest"]

_CLUSTER = (
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.ContainerService/managedClusters/(?P<cluster>[^/]+)/agentPools"
)
_POOL_PATH = re.compile(_CLUSTER + r"/(?P<name>[^/]+)$", re.IGNORECASE)
_LIST_PATH = re.compile(_CLUSTER + r"$", re.IGNORECASE)
_OP_PATH = re.compile(
    r"/subscriptions/[^/]+/providers/Microsoft\.ContainerService/locations/[^/]+"
    r"/(?P<kind>operations|operationresults)/(?P<op>[^/]+)$",
    re.IGNORECASE,
)
_TOKEN_PATH = re.compile(r"^/(?P<tenant>[^/]+)/oauth2/v2\.0/token$")
_CLUSTER_PATH = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.ContainerService/managedClusters/(?P<cluster>[^/]+)$",
    re.IGNORECASE,
)
_SKUS_PATH = re.compile(r"/subscriptions/[^/]+/providers/Microsoft\.Compute/skus$", re.IGNORECASE)
_USAGES_PATH = re.compile(
    r"/subscriptions/[^/]+/providers/Microsoft\.Compute/locations/(?P<loc>[^/]+)/usages$", re.IGNORECASE
)
_LOCATION_FILTER = re.compile(r"^\s*location\s+eq\s+'(?P<loc>[^']+)'\s*$", re.IGNORECASE)
# VM size -> (quota family as the resource SKU list and usage API name it, vCPUs); from `az vm list-skus`
# output and Azure's family table (e.g. Standard_NC80adis_H100_v5 is StandardNCadsH100v5Family, 80 vCPUs).
VM_SKUS: dict[str, tuple[str, int]] = {
    "Standard_NC4as_T4_v3": ("standardNCASv3_T4Family", 4),
    "Standard_NC64as_T4_v3": ("standardNCASv3_T4Family", 64),
    "Standard_NV36ads_A10_v5": ("StandardNVADSA10v5Family", 36),
    "Standard_NC24ads_A100_v4": ("StandardNCADSA100v4Family", 24),
    "Standard_NC48ads_A100_v4": ("StandardNCADSA100v4Family", 48),
    "Standard_NC96ads_A100_v4": ("StandardNCADSA100v4Family", 96),
    "Standard_NC40ads_H100_v5": ("StandardNCadsH100v5Family", 40),
    "Standard_NC80adis_H100_v5": ("StandardNCadsH100v5Family", 80),
    "Standard_ND96asr_v4": ("standardNDASv4_A100Family", 96),
    "Standard_ND96amsr_A100_v4": ("standardNDAMSv4_A100Family", 96),
    "Standard_ND96isr_H100_v5": ("standardNDSH100v5Family", 96),
    "Standard_ND96isr_H200_v5": ("standardNDISRH200V5Family", 96),
}
_REGIONAL, _SPOT = "cores", "lowPriorityCores"
_DEFAULT_LIMIT = 100_000  # generous unless a test sets a quota
_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_POOL_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_TAG_NAME_FORBIDDEN = re.compile(r"[<>%&\\?/]")
# Fields AKS refuses to change on an existing pool (PropertyChangeNotAllowed).
_IMMUTABLE = (
    "vmSize",
    "gpuInstanceProfile",
    "scaleSetPriority",
    "availabilityZones",
    "osSKU",
    "osDiskSizeGB",
    "nodeTaints",
)
_SPOT_TAINT = "kubernetes.azure.com/scalesetpriority=spot:NoSchedule"


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator received, faulted or not."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class Fault:
    """The next ``times`` requests matching ``method`` and ``path`` (re.search) get this answer instead.

    ``lro_error`` set means: accept the PUT normally, but its operation ends Failed with that error.
    """

    method: str
    path: re.Pattern[str]
    times: int
    status: int = 500
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    lro_error: dict[str, str] | None = None


@dataclass
class Stall:
    """The next ``times`` requests matching ``method`` and ``path`` are answered normally, ``seconds`` late."""

    method: str
    path: re.Pattern[str]
    times: int
    seconds: float


_Pending = TypeVar("_Pending", Fault, Stall)


def _take(pending: list[_Pending], method: str, path: str) -> _Pending | None:
    """The first of ``pending`` that matches the request, used up once."""
    for item in pending:
        if item.method == method and item.path.search(path):
            item.times -= 1
            if item.times <= 0:
                pending.remove(item)
            return item
    return None


@dataclass
class _Operation:
    id: str
    key: tuple[str, str, str, str]
    kind: str  # create, update, delete
    started: float
    error: dict[str, str] | None = None
    polls: int = 0
    status: str = "InProgress"


class ArmEmulator:
    """The emulator; use as a context manager or call `start()` / `stop()`.

    Args:
        location: Azure region the operation URLs name.
        provisioning_polls: Observations an operation needs before it finishes.
        provisioning_seconds: Minimum wall time an operation takes.
        ca: A trustme CA to reuse (making one takes a moment); None makes a fresh one.
        workload_identity: ``(tenant_id, client_id, federated_token)`` to also act as Entra ID for
            AKS workload identity (``AZURE_AUTHORITY_HOST`` pointed here); None accepts any bearer token.
    """

    def __init__(
        self,
        *,
        location: str = "eastus",
        provisioning_polls: int = 2,
        provisioning_seconds: float = 0.0,
        ca: trustme.CA | None = None,
        workload_identity: tuple[str, str, str] | None = None,
    ) -> None:
        self.location = location
        self.workload_identity = workload_identity
        self.issued_tokens: list[str] = []
        self.provisioning_polls = provisioning_polls
        self.provisioning_seconds = provisioning_seconds
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._ops: dict[str, _Operation] = {}
        self._faults: list[Fault] = []
        self._stalls: list[Stall] = []
        self._limits: dict[str, int] = {}  # quota name (lower case) -> limit in vCPUs
        self._other_usage: dict[str, int] = {}  # quota name (lower case) -> vCPUs used outside the pools
        self._requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self._dir = Path(tempfile.mkdtemp(prefix="arm-emulator-"))
        self._ca = ca or trustme.CA()
        self.ca_pem = self._dir / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_pem))
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"https://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> ArmEmulator:
        """Start serving in a background thread; returns self once the socket accepts connections."""
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(ssl_ctx)
        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            assert self._loop is not None and self._runner is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._runner.setup())
            site = web.SockSite(self._runner, self._sock, ssl_context=ssl_ctx)
            self._loop.run_until_complete(site.start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="arm-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the ARM emulator did not start")
        return self

    def stop(self) -> None:
        """Stop serving and remove the CA files."""
        if self._loop is not None and self._runner is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._loop = None
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ArmEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection and control (thread-safe; call from tests) ------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order (faulted ones included)."""
        with self._lock:
            return list(self._requests)

    def calls(self, method: str | None = None, path: str = "") -> list[RecordedRequest]:
        """Recorded requests with this method (any if None) whose path matches ``path`` (re.search)."""
        return [r for r in self.requests if (method is None or r.method == method) and re.search(path, r.path)]

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    def pool(self, name: str) -> dict[str, Any] | None:
        """A copy of the stored pool resource with this name (any cluster), or None; does not tick LROs."""
        with self._lock:
            for key, pool in self._pools.items():
                if key[3] == name:
                    return copy.deepcopy(pool)
        return None

    def pool_names(self) -> list[str]:
        """Names of every stored pool, sorted."""
        with self._lock:
            return sorted(key[3] for key in self._pools)

    def seed(
        self, sub: str, rg: str, cluster: str, name: str, properties: dict[str, Any], state: str = "Succeeded"
    ) -> None:
        """Store a pool directly, as if made earlier (by us before a restart, or by someone else)."""
        key = (sub.lower(), rg.lower(), cluster.lower(), name)
        with self._lock:
            self._pools[key] = self._resource(key, copy.deepcopy(properties), state)

    def set_quota(self, name: str, limit: int, *, other: int | None = None) -> None:
        """Set a quota's limit in vCPUs (a family, ``cores`` or ``lowPriorityCores``), and optionally the vCPUs
        that VMs outside the emulated pools use of it."""
        with self._lock:
            self._limits[name.lower()] = limit
            if other is not None:
                self._other_usage[name.lower()] = other

    def usage(self, name: str) -> int:
        """vCPUs in use of one quota now: the pools' nodes plus ``other``."""
        with self._lock:
            return self._used()[name.lower()]

    def settle(self) -> None:
        """Finish every running operation now, with its planned outcome."""
        with self._lock:
            for op in list(self._ops.values()):
                if op.status == "InProgress":
                    self._finish(op)

    def inject(
        self,
        method: str,
        path: str,
        *,
        status: int = 500,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests with this status, body and headers."""
        self._add(Fault(method.upper(), re.compile(path), times, status, body, dict(headers or {})))

    def stall(self, method: str, path: str, *, seconds: float, times: int = 1) -> None:
        """Hold the next ``times`` matching requests for ``seconds`` before answering them normally (a slow ARM)."""
        with self._lock:
            self._stalls.append(Stall(method.upper(), re.compile(path), times, seconds))

    def throttle(self, method: str, path: str, *, retry_after_s: int, times: int = 1) -> None:
        """Answer 429 with ``Retry-After`` as ARM's throttling does."""
        body = _error("TooManyRequests", "The request is being throttled as the limit has been reached.")
        self.inject(method, path, status=429, body=body, headers={"Retry-After": str(retry_after_s)}, times=times)

    def server_error(self, method: str, path: str, *, status: int = 500, times: int = 1) -> None:
        """Answer a 5xx with ARM's InternalServerError body."""
        body = _error("InternalServerError", "An unexpected error occured while processing the request.")
        self.inject(method, path, status=status, body=body, times=times)

    def arm_error(self, method: str, path: str, *, code: str, message: str, status: int = 400, times: int = 1) -> None:
        """Answer with an ARM error body ``{"error": {"code", "message"}}``."""
        self.inject(method, path, status=status, body=_error(code, message), times=times)

    def quota_exceeded(
        self,
        method: str = "PUT",
        path: str = "",
        *,
        family: str = "standardNCADSH100v5Family",
        times: int = 1,
    ) -> None:
        """Refuse like AKS preflight does when a VM family's core quota would be exceeded."""
        message = (
            "Preflight validation check for resource(s) for container service failed. "
            "Details: Operation could not be completed as it results in exceeding approved "
            f"{family} Cores quota. Additional details - Deployment Model: Resource Manager, "
            f"Location: {self.location}, Current Limit: 0, Current Usage: 0, Additional Required: 40, "
            "(Minimum) New Limit Required: 40."
        )
        self.arm_error(method, path, code="QuotaExceeded", message=message, times=times)

    def sku_not_available(
        self,
        method: str = "PUT",
        path: str = "",
        *,
        vm_size: str = "Standard_NC40ads_H100_v5",
        times: int = 1,
    ) -> None:
        """Refuse like ARM does when a VM size is not offered in the region or zone."""
        message = (
            f"The requested VM size '{vm_size}' is currently not available in location '{self.location}' "
            "for this subscription. Please try another size or deploy to a different location or zones."
        )
        self.arm_error(method, path, code="SkuNotAvailable", message=message, times=times)

    def fail_operation(
        self,
        path: str = "",
        *,
        code: str = "ReconcileVMSSAgentPoolFailed",
        message: str = 'Code="AllocationFailed" Message="Allocation failed. We do not have sufficient '
        'capacity for the requested VM size in this region."',
        times: int = 1,
    ) -> None:
        """Accept the next ``times`` matching PUTs, but end their operations Failed with this error."""
        self._add(Fault("PUT", re.compile(path), times, lro_error={"code": code, "message": message}))

    # -- the HTTP side (runs on the emulator's loop) ----------------------------------------------

    def _add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        with self._lock:
            self._requests.append(RecordedRequest(request.method, request.path, dict(request.query), body))
            stall = _take(self._stalls, request.method, request.path)
        if stall is not None:
            await asyncio.sleep(stall.seconds)
        with self._lock:
            fault = _take(self._faults, request.method, request.path)
            if fault is not None and fault.lro_error is None:
                return _json(fault.status, fault.body, fault.headers)
            if match := _TOKEN_PATH.match(request.path):
                return self._issue_token(match["tenant"], body)
            if "api-version" not in request.query:
                return _json(
                    400,
                    _error(
                        "MissingApiVersionParameter",
                        "The api-version query parameter (?api-version=) is required for all requests.",
                    ),
                )
            authorization = request.headers.get("Authorization", "")
            if not authorization.startswith("Bearer "):
                return _json(401, _error("AuthenticationFailed", "Authentication failed."))
            if self.workload_identity and authorization.removeprefix("Bearer ") not in self.issued_tokens:
                return _json(401, _error("InvalidAuthenticationToken", "The access token is invalid."))
            if match := _USAGES_PATH.match(request.path):
                return self._usages(match["loc"])
            if _SKUS_PATH.match(request.path):
                return self._skus(request.query.get("$filter", ""))
            if match := _CLUSTER_PATH.match(request.path):
                return self._cluster(match, request.method)
            return self._route(request, body, fault)

    def _cluster(self, match: re.Match[str], method: str) -> web.Response:
        if method != "GET":
            return _json(405, _error("MethodNotAllowed", f"{method} is not allowed here."))
        return _json(
            200,
            {
                "id": f"/subscriptions/{match['sub']}/resourceGroups/{match['rg']}/providers"
                f"/Microsoft.ContainerService/managedClusters/{match['cluster']}",
                "name": match["cluster"],
                "type": "Microsoft.ContainerService/ManagedClusters",
                "location": self.location,
                "properties": {"provisioningState": "Succeeded", "kubernetesVersion": "1.33.2"},
            },
        )

    def _skus(self, filter_: str) -> web.Response:
        # Only the location filter is supported by the real API too ("Only location filter is supported").
        match = _LOCATION_FILTER.match(filter_) if filter_ else None
        if filter_ and match is None:
            return _json(400, _error("InvalidFilter", f"Unsupported $filter: {filter_}"))
        if match is not None and match["loc"].lower() != self.location.lower():
            return _json(200, {"value": []})
        value = [
            {
                "resourceType": "virtualMachines",
                "name": size,
                "tier": "Standard",
                "size": size.removeprefix("Standard_"),
                "family": family,
                "locations": [self.location],
                "locationInfo": [{"location": self.location, "zones": ["1", "2", "3"], "zoneDetails": []}],
                "capabilities": [
                    {"name": "vCPUs", "value": str(vcpus)},
                    {"name": "vCPUsAvailable", "value": str(vcpus)},
                ],
                "restrictions": [],
            }
            for size, (family, vcpus) in VM_SKUS.items()
        ]
        return _json(200, {"value": value})

    def _usages(self, location: str) -> web.Response:
        if location.lower() != self.location.lower():
            return _json(200, {"value": []})
        used = self._used()
        names = [_REGIONAL, _SPOT, *sorted({family for family, _ in VM_SKUS.values()}, key=str.lower)]
        value = [
            {
                "unit": "Count",
                "currentValue": used[name.lower()],
                "limit": self._limits.get(name.lower(), _DEFAULT_LIMIT),
                "name": {"value": name, "localizedValue": _localized(name)},
            }
            for name in names
        ]
        return _json(200, {"value": value})

    def _used(self) -> defaultdict[str, int]:
        used: defaultdict[str, int] = defaultdict(int, self._other_usage)
        for pool in self._pools.values():
            for name, vcpus in self._quota_rows(pool["properties"], int(pool["properties"].get("count") or 0)):
                used[name] += vcpus
        return used

    def _quota_rows(self, props: dict[str, Any], nodes: int) -> list[tuple[str, int]]:
        """The quota rows (lower-case names) and vCPUs that ``nodes`` VMs of a pool count against."""
        size = next((s for s in VM_SKUS if s.lower() == str(props.get("vmSize", "")).lower()), None)
        if size is None:
            return []
        family, vcpus = VM_SKUS[size]
        if props.get("scaleSetPriority") == "Spot":
            return [(_SPOT.lower(), nodes * vcpus)]
        return [(family.lower(), nodes * vcpus), (_REGIONAL, nodes * vcpus)]

    def _preflight_quota(self, props: dict[str, Any], existing: dict[str, Any] | None) -> web.Response | None:
        """Refuse a PUT whose new nodes exceed a quota, with AKS's preflight message."""
        before = int((existing or {}).get("properties", {}).get("count") or 0)
        added = self._quota_rows(props, max(0, int(props.get("count") or 0) - before))
        used = self._used()
        for name, vcpus in added:
            limit = self._limits.get(name, _DEFAULT_LIMIT)
            if vcpus and used[name] + vcpus > limit:
                family = next(f for f, _ in VM_SKUS.values() if f.lower() == name) if name != _REGIONAL else None
                what = f"approved {family} Cores quota" if family else "Total Regional Cores quota"
                message = (
                    "Preflight validation check for resource(s) for container service failed. Details: Operation "
                    f"could not be completed as it results in exceeding {what}. Additional details - Deployment "
                    f"Model: Resource Manager, Location: {self.location}, Current Limit: {limit}, Current Usage: "
                    f"{used[name]}, Additional Required: {vcpus}, (Minimum) New Limit Required: {used[name] + vcpus}."
                )
                return _json(400, _error("QuotaExceeded", message))
        return None

    def _issue_token(self, tenant: str, body: Any) -> web.Response:
        # The client-credentials grant with a federated assertion, as WorkloadIdentityCredential sends it.
        form = {key: values[0] for key, values in urllib.parse.parse_qs(body if isinstance(body, str) else "").items()}
        expected_tenant, client_id, federated_token = self.workload_identity or ("", "", "")
        checks = {
            "tenant": tenant == expected_tenant,
            "grant_type": form.get("grant_type") == "client_credentials",
            "client_id": form.get("client_id") == client_id,
            "client_assertion_type": form.get("client_assertion_type") == _JWT_BEARER,
            "client_assertion": form.get("client_assertion") == federated_token,
            "scope": form.get("scope") == "https://management.azure.com/.default",
        }
        if self.workload_identity is None or not all(checks.values()):
            failed = ", ".join(name for name, ok in checks.items() if not ok) or "workload identity is off"
            description = f"AADSTS700213: No matching federated identity record found ({failed})."
            return _json(401, {"error": "invalid_client", "error_description": description})
        token = f"wi-token-{next(self._ids)}"
        self.issued_tokens.append(token)
        return _json(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token})

    def _route(self, request: web.Request, body: Any, fault: Fault | None) -> web.Response:
        method, path = request.method, request.path
        if match := _OP_PATH.match(path):
            return self._get_operation(match["op"], match["kind"].lower(), request)
        if match := _LIST_PATH.match(path):
            if method != "GET":
                return _json(405, _error("MethodNotAllowed", f"{method} is not allowed here."))
            prefix = (match["sub"].lower(), match["rg"].lower(), match["cluster"].lower())
            keys = [key for key in self._pools if key[:3] == prefix]
            pools = [self._observe(key) for key in keys]
            return _json(200, {"value": [pool for pool in pools if pool is not None]})
        if match := _POOL_PATH.match(path):
            key = (match["sub"].lower(), match["rg"].lower(), match["cluster"].lower(), match["name"])
            if method == "GET":
                return self._get_pool(key)
            if method == "PUT":
                return self._put_pool(key, body, request, fault)
            if method == "DELETE":
                return self._delete_pool(key, request)
            return _json(405, _error("MethodNotAllowed", f"{method} is not allowed here."))
        return _json(404, _error("InvalidResourceType", f"No route for {method} {path}."))

    def _get_pool(self, key: tuple[str, str, str, str]) -> web.Response:
        pool = self._observe(key)  # may finish a delete, so look after observing
        if pool is None:
            return _json(404, _error("NotFound", f"Agent pool '{key[3]}' was not found."))
        return _json(200, pool)

    def _put_pool(
        self, key: tuple[str, str, str, str], body: Any, request: web.Request, fault: Fault | None
    ) -> web.Response:
        props = body.get("properties") if isinstance(body, dict) else None
        if not isinstance(props, dict) or not props.get("vmSize"):
            return _json(400, _error("InvalidParameter", "The value of parameter properties.vmSize is invalid."))
        if not _POOL_NAME.match(key[3]):
            return _json(
                400,
                _error(
                    "InvalidParameter",
                    f"The value of parameter agentPoolProfile.name is invalid: '{key[3]}'. Linux agent pool "
                    "names must start with a lowercase letter, contain only lowercase letters and numbers, "
                    "and be at most 12 characters long.",
                ),
            )
        bad_tags = [name for name in props.get("tags") or {} if _TAG_NAME_FORBIDDEN.search(name)]
        if bad_tags:
            return _json(400, _error("InvalidTagNameCharacters", f"Tag names contain invalid characters: {bad_tags}"))
        props = copy.deepcopy(props)
        if props.get("scaleSetPriority") == "Spot" and _SPOT_TAINT not in props.setdefault("nodeTaints", []):
            props["nodeTaints"].append(_SPOT_TAINT)  # AKS adds the spot taint itself
        existing = self._pools.get(key)
        if existing is not None:
            op = self._running(key)
            if op is not None:
                return _json(
                    409,
                    _error(
                        "OperationNotAllowed",
                        f"Operation is not allowed because there's an in progress {op.kind} node pool "
                        f"operation on agent pool '{key[3]}'. Please wait for it to finish.",
                    ),
                )
            old = existing["properties"]
            for name in _IMMUTABLE:
                if _canonical(old.get(name)) != _canonical(props.get(name)):
                    return _json(
                        400,
                        _error(
                            "PropertyChangeNotAllowed",
                            f"Changing property '{name}' is not allowed.",
                        ),
                    )
        if refused := self._preflight_quota(props, existing):
            return refused
        kind = "update" if existing is not None else "create"
        self._pools[key] = self._resource(key, props, "Updating" if existing else "Creating")
        op = self._start(key, kind, fault.lro_error if fault else None)
        headers = {"Azure-AsyncOperation": self._op_url(op, "operations", request)}
        return _json(200 if existing else 201, copy.deepcopy(self._pools[key]), headers)

    def _delete_pool(self, key: tuple[str, str, str, str], request: web.Request) -> web.Response:
        if key not in self._pools:
            return web.Response(status=204)
        running = self._running(key)
        if running is not None and running.kind == "delete":
            op = running
        else:
            if running is not None:
                running.status = "Canceled"  # a delete preempts a create or update
            op = self._start(key, "delete", None)
            self._pools[key]["properties"]["provisioningState"] = "Deleting"
        headers = {
            "Azure-AsyncOperation": self._op_url(op, "operations", request),
            "Location": self._op_url(op, "operationresults", request),
        }
        return web.Response(status=202, headers=headers)

    def _get_operation(self, op_id: str, kind: str, request: web.Request) -> web.Response:
        op = self._ops.get(op_id)
        if op is None:
            return _json(404, _error("NotFound", f"Operation '{op_id}' was not found."))
        self._tick(op)
        if kind == "operationresults":
            if op.status == "InProgress":
                return web.Response(status=202, headers={"Location": self._op_url(op, kind, request)})
            return web.Response(status=204)
        doc: dict[str, Any] = {"id": op.id, "name": op.id, "status": op.status}
        if op.status == "Failed" and op.error:
            doc["error"] = op.error
        return _json(200, doc)

    # -- state machine (called with the lock held) -------------------------------------------------

    def _start(self, key: tuple[str, str, str, str], kind: str, error: dict[str, str] | None) -> _Operation:
        op = _Operation(f"op{next(self._ids):06d}", key, kind, time.monotonic(), error)
        self._ops[op.id] = op
        return op

    def _running(self, key: tuple[str, str, str, str]) -> _Operation | None:
        return next((op for op in self._ops.values() if op.key == key and op.status == "InProgress"), None)

    def _observe(self, key: tuple[str, str, str, str]) -> dict[str, Any] | None:
        op = self._running(key)
        if op is not None:
            self._tick(op)
        pool = self._pools.get(key)
        return copy.deepcopy(pool) if pool is not None else None

    def _tick(self, op: _Operation) -> None:
        if op.status != "InProgress":
            return
        op.polls += 1
        elapsed = time.monotonic() - op.started
        if op.polls >= self.provisioning_polls and elapsed >= self.provisioning_seconds:
            self._finish(op)

    def _finish(self, op: _Operation) -> None:
        pool = self._pools.get(op.key)
        if op.kind == "delete":
            self._pools.pop(op.key, None)
            op.status = "Succeeded"
            return
        op.status = "Failed" if op.error else "Succeeded"
        if pool is None:
            return
        props = pool["properties"]
        props["provisioningState"] = op.status
        if op.error:
            props["status"] = {"provisioningError": dict(op.error)}
        else:
            props.pop("status", None)

    def _resource(self, key: tuple[str, str, str, str], props: dict[str, Any], state: str) -> dict[str, Any]:
        sub, rg, cluster, name = key
        props["provisioningState"] = state
        props.setdefault("powerState", {"code": "Running"})
        return {
            "id": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService"
            f"/managedClusters/{cluster}/agentPools/{name}",
            "name": name,
            "type": "Microsoft.ContainerService/managedClusters/agentPools",
            "properties": props,
        }

    def _op_url(self, op: _Operation, kind: str, request: web.Request) -> str:
        api_version = request.query.get("api-version", "")
        return (
            f"{self.base_url}/subscriptions/{op.key[0]}/providers/Microsoft.ContainerService"
            f"/locations/{self.location}/{kind}/{op.id}?api-version={api_version}"
        )


def _localized(name: str) -> str:
    if name == _REGIONAL:
        return "Total Regional vCPUs"
    if name == _SPOT:
        return "Total Regional Low-priority vCPUs"
    return f"{name.removeprefix('standard').removeprefix('Standard').removesuffix('Family')} Family vCPUs"


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.json_response(body, status=status, headers=headers)


def _canonical(value: Any) -> Any:
    # Lists compare as sets (zones, taints); strings case-insensitively (ARM is case-insensitive).
    if isinstance(value, list):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, str):
        return value.lower()
    return value
