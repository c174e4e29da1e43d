"""Run the real kopf operator in-process against kmock's KubernetesEmulator and the HTTPS ARM emulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

# Timer cadence is read when the handlers register: set it before importing them.
os.environ.setdefault("TOKENPLANE_POLL_INTERVAL_S", "0.3")

import kmock
import kopf

import tokenplane_operator.handlers  # noqa: F401  (registers the operator's handlers)
from tests.operator.conftest import CLUSTER, RESOURCE_GROUP, SUBSCRIPTION, FakeCredential
from tests.support.arm_emulator import ArmEmulator
from tokenplane_operator.adapters.azure import AksAgentPools
from tokenplane_operator.adapters.kube import KubeObjects
from tokenplane_operator.reconcile import Clients
from tokenplane_operator.settings import OperatorSettings

__all__ = ["CR_RESOURCE", "OperatorHarness", "cr_body"]

CR_RESOURCE = "tokenplane.io/v1alpha1/inferencedeployments"
RS_RESOURCE = "ray.io/v1/rayservices"
A100 = "Standard_NC24ads_A100_v4"
_LOGIN: dict[str, str] = {}


@kopf.on.login()
def _login(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=_LOGIN["url"], insecure=True)


def cr_body(name: str, *, namespace: str = "default", vm_size: str = A100, **spec: Any) -> dict[str, Any]:
    """A minimal GPU InferenceDeployment with the uid and resourceVersion kmock needs (apis.md §6.3)."""
    body: dict[str, Any] = {
        "apiVersion": "tokenplane.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}", "resourceVersion": "1"},
        "spec": {"model": {"source": "org/model"}, "hardware": {"vmSize": vm_size}, **spec},
    }
    return body


def declare_resources(k: kmock.KubernetesEmulator) -> None:
    k.resources.load_bundled()  # namespaces (kopf waits for them), services, networkpolicies, events
    verbs = {"list", "watch", "get", "patch", "create", "delete"}
    k.resources[CR_RESOURCE] = kmock.ResourceInfo(
        kind="InferenceDeployment", namespaced=True, subresources={"status"}, verbs=verbs, shortnames={"infd"}
    )
    k.resources[RS_RESOURCE] = kmock.ResourceInfo(
        kind="RayService", namespaced=True, subresources={"status"}, verbs=verbs
    )


class OperatorHarness:
    """kopf running in an asyncio task; start, stop (a kill), restart, and helpers to drive CRs."""

    def __init__(self, k: kmock.KubernetesEmulator, arm: ArmEmulator, **settings: Any) -> None:
        self.k = k
        self.arm = arm
        self.url = str(k.url).rstrip("/")
        self.config = OperatorSettings(
            subscription_id=SUBSCRIPTION,
            resource_group=RESOURCE_GROUP,
            cluster_name=CLUSTER,
            arm_endpoint=arm.base_url,
            arm_ca_bundle=str(arm.ca_pem),
            poll_interval_s=float(os.environ["TOKENPLANE_POLL_INTERVAL_S"]),
            pool_cache_ttl_s=0.0,
            backoff_base_s=0.5,
            backoff_max_s=2.0,
            throttle_default_s=1.0,
            rejected_retry_s=1.0,
            **settings,
        )
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self.clients: Clients | None = None

    async def start(self) -> None:
        _LOGIN["url"] = self.url
        pools = AksAgentPools(
            subscription_id=SUBSCRIPTION,
            resource_group=RESOURCE_GROUP,
            cluster_name=CLUSTER,
            credential=FakeCredential(),
            arm_endpoint=self.arm.base_url,
            connection_verify=str(self.arm.ca_pem),
            polling_interval_s=0.01,
        )
        self.clients = Clients(kube=KubeObjects.for_host(self.url), pools=pools)
        settings = kopf.OperatorSettings()
        settings.networking.error_backoffs = [0.1, 0.2]
        settings.watching.reconnect_backoff = 0.1
        settings.persistence.consistency_timeout = 0.5  # kmock never bumps resourceVersion
        self._stop = asyncio.Event()
        ready = asyncio.Event()
        memo = kopf.Memo(config=self.config, clients=self.clients)
        self._task = asyncio.create_task(
            kopf.operator(
                clusterwide=True, standalone=True, settings=settings, stop_flag=self._stop, ready_flag=ready, memo=memo
            )
        )
        await asyncio.wait_for(ready.wait(), 10)

    async def stop(self, *, kill: bool = False) -> None:
        """Stop kopf; `kill` cancels it mid-flight like a crashed pod instead of a graceful stop."""
        if self._task is None:
            return
        if kill:
            self._task.cancel()
        else:
            assert self._stop is not None
            self._stop.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._task, 15)
        self._task = None
        if self.clients is not None:
            with contextlib.suppress(Exception):
                await self.clients.close()
            self.clients = None

    # -- the Kubernetes side ------------------------------------------------------------------------

    def _path(self, namespace: str, name: str | None = None, resource: str = CR_RESOURCE) -> str:
        group_version, plural = resource.rsplit("/", 1)
        path = f"/apis/{group_version}/namespaces/{namespace}/{plural}"
        return f"{path}/{name}" if name else path

    async def create(self, body: dict[str, Any]) -> None:
        async with self.k.post(self._path(body["metadata"]["namespace"]), json=body) as resp:
            assert resp.status in (200, 201), await resp.text()

    async def patch(self, name: str, patch: dict[str, Any], *, namespace: str = "default") -> None:
        async with self.k.patch(self._path(namespace, name), json=patch) as resp:
            assert resp.status == 200, await resp.text()

    async def delete(self, name: str, *, namespace: str = "default") -> None:
        async with self.k.delete(self._path(namespace, name)) as resp:
            assert resp.status in (200, 202), await resp.text()

    def get(self, name: str, *, namespace: str = "default", resource: str = CR_RESOURCE) -> dict[str, Any] | None:
        try:
            return dict(self.k.objects[resource, namespace, name])
        except KeyError:
            return None

    def condition(self, name: str, kind: str, *, namespace: str = "default") -> dict[str, Any]:
        body = self.get(name, namespace=namespace) or {}
        conditions = (body.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), {})

    async def make_rayservice_ready(self, name: str, *, namespace: str = "default") -> None:
        """Play KubeRay: mark the RayService Ready with one ready worker."""
        status = {
            "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}],
            "serviceStatus": "Running",
            "activeServiceStatus": {
                "rayClusterStatus": {"readyWorkerReplicas": 1, "desiredWorkerReplicas": 1},
                "applicationStatuses": {"llm": {"status": "RUNNING"}},
            },
        }
        path = self._path(namespace, name, RS_RESOURCE) + "/status"
        async with self.k.patch(path, json={"status": status}) as resp:
            assert resp.status == 200, await resp.text()

    async def wait_for(self, what: Callable[[], Any], *, timeout: float = 20.0, message: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = what()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {message or what}")
            await asyncio.sleep(0.05)

    async def wait_ready(self, name: str, *, namespace: str = "default", timeout: float = 20.0) -> dict[str, Any]:
        """Wait for the pool and RayService, playing KubeRay once the RayService exists; returns the CR."""

        def rayservice() -> Any:
            return self.get(name, namespace=namespace, resource=RS_RESOURCE)

        await self.wait_for(rayservice, timeout=timeout, message=f"RayService {name}")
        await self.make_rayservice_ready(name, namespace=namespace)
        await self.wait_for(
            lambda: self.condition(name, "Ready", namespace=namespace).get("status") == "True",
            timeout=timeout,
            message=f"{name} Ready",
        )
        body = self.get(name, namespace=namespace)
        assert body is not None
        return body
