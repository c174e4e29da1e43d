"""Run the real kopf operator in-process against kmock's KubernetesEmulator and the HTTPS ARM emulator."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

# Timer cadence is read when the handlers register: set it before importing them.
os.environ.setdefault("TOKENPLANE_POLL_INTERVAL_S", "0.3")
os.environ.setdefault("TOKENPLANE_METRICS_INTERVAL_S", "0.5")

import aiohttp
import kmock
import kopf

import tokenplane_operator.handlers  # noqa: F401  (registers the operator's handlers)
from tests.operator.conftest import CLUSTER, RESOURCE_GROUP, SUBSCRIPTION, FakeCredential
from tests.support.arm_emulator import ArmEmulator
from tokenplane_operator.adapters.azure import AksAgentPools
from tokenplane_operator.adapters.kube import KubeObjects
from tokenplane_operator.reconcile import Clients
from tokenplane_operator.settings import OperatorSettings

__all__ = [
    "CR_RESOURCE",
    "RS_RESOURCE",
    "OperatorHarness",
    "cr_body",
    "declare_resources",
    "free_port",
]

CR_RESOURCE = "tokenplane.io/v1alpha1/inferencedeployments"
RS_RESOURCE = "ray.io/v1/rayservices"
A100 = "Standard_NC24ads_A100_v4"
_LOGIN: dict[str, str] = {}

# How long a wait gives what it waits for by default (see `OperatorHarness.wait_for`).
_LIVENESS_S = 60.0


@kopf.on.login()
def _login(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=_LOGIN["url"], insecure=True)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def _drop_ray_json_root_handler() -> None:
    """Remove the root handler importing Ray Serve LLM installs in this test process (not in the operator's).

    `ray.llm._internal.serve` replaces the root logger's handlers with one formatting records as JSON
    (`observability/logging/setup.py`), which cannot encode the `settings` kopf attaches to its records: every
    kopf log then printed "--- Logging error ---" with a traceback into the suite's output.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler.formatter).__module__.startswith("ray."):
            root.removeHandler(handler)


class OperatorHarness:
    """kopf running in an asyncio task; start, stop (a kill), restart, and helpers to drive CRs."""

    def __init__(self, k: kmock.KubernetesEmulator, arm: ArmEmulator, **settings: Any) -> None:
        self.k = k
        self.arm = arm
        self.url = str(k.url).rstrip("/")
        fast = {
            "poll_interval_s": float(os.environ["TOKENPLANE_POLL_INTERVAL_S"]),
            "pool_cache_ttl_s": 0.0,
            "backoff_base_s": 0.5,
            "backoff_max_s": 2.0,
            "throttle_default_s": 1.0,
            "rejected_retry_s": 1.0,
            # The KubeRay peer's pods sit on loopback: scrape a port nothing listens on unless a test says.
            "metrics_port": free_port(),
        }
        self.config = OperatorSettings(
            subscription_id=SUBSCRIPTION,
            resource_group=RESOURCE_GROUP,
            cluster_name=CLUSTER,
            arm_endpoint=arm.base_url,
            arm_ca_bundle=str(arm.ca_pem),
            **(fast | settings),
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None]
        self._stop: threading.Event | None = None

    async def start(self) -> None:
        """Start kopf in its own thread and event loop, as a separate process would be."""
        _LOGIN["url"] = self.url
        _drop_ray_json_root_handler()
        self._stop = threading.Event()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="kopf", daemon=True)
        self._thread.start()
        if not await asyncio.to_thread(ready.wait, 15):
            raise RuntimeError("kopf did not start")

    def _run(self, ready: threading.Event) -> None:
        # Its own loop: kopf's shutdown cancels the tasks around it, which must not be the test's or kmock's.
        loop = asyncio.new_event_loop()
        self._loop = loop
        settings = kopf.OperatorSettings()
        settings.networking.error_backoffs = [0.1, 0.2]
        settings.posting.enabled = False  # kmock has no generateName: every event after the first would 409
        settings.watching.reconnect_backoff = 0.1
        settings.persistence.consistency_timeout = 0.5  # kmock never bumps resourceVersion

        async def main() -> None:
            pools = AksAgentPools(
                subscription_id=SUBSCRIPTION,
                resource_group=RESOURCE_GROUP,
                cluster_name=CLUSTER,
                credential=FakeCredential(),
                arm_endpoint=self.arm.base_url,
                connection_verify=str(self.arm.ca_pem),
                polling_interval_s=0.01,
            )
            clients = Clients(kube=KubeObjects.for_host(self.url), pools=pools)
            # As main._run_kopf: the handlers stop kopf through the stop flag when another release outranks it.
            memo = kopf.Memo(
                config=self.config,
                clients=clients,
                keep_clients=True,
                stop_flag=self._stop,
                peering_priority=self.config.peering_priority or 0,
            )
            try:
                await kopf.operator(
                    clusterwide=True,
                    standalone=True,
                    settings=settings,
                    stop_flag=self._stop,
                    ready_flag=ready,
                    memo=memo,
                )
            finally:
                with contextlib.suppress(Exception):
                    await clients.close()

        self._main = loop.create_task(main())
        with contextlib.suppress(BaseException):
            loop.run_until_complete(self._main)
        with contextlib.suppress(BaseException):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    async def stop(self, *, kill: bool = False) -> None:
        """Stop kopf; `kill` cancels it mid-flight like a crashed pod instead of a graceful stop."""
        if self._thread is None:
            return
        if not kill:
            assert self._stop is not None
            self._stop.set()
        for attempt in range(100):
            if (kill or attempt >= 10) and self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._main.cancel)
            await asyncio.to_thread(self._thread.join, 0.2)
            if not self._thread.is_alive():
                break
        # kopf waits for a threading stop flag in an executor thread; a killed kopf leaves that thread
        # waiting, and the interpreter joins executor threads at exit: release it, or pytest never exits.
        assert self._stop is not None
        self._stop.set()
        self._thread = None

    # -- the Kubernetes side ------------------------------------------------------------------------

    def _path(self, namespace: str, name: str | None = None, resource: str = CR_RESOURCE) -> str:
        group_version, plural = resource.rsplit("/", 1)
        path = f"/apis/{group_version}/namespaces/{namespace}/{plural}"
        return f"{path}/{name}" if name else path

    async def create(self, body: dict[str, Any]) -> None:
        await self._send("POST", self._path(body["metadata"]["namespace"]), body)

    async def create_pod(self, body: dict[str, Any]) -> None:
        """Create a Pod (as KubeRay would); kmock keeps its status as given."""
        await self._send("POST", f"/api/v1/namespaces/{body['metadata']['namespace']}/pods", body)

    async def patch(self, name: str, patch: dict[str, Any], *, namespace: str = "default") -> None:
        await self._send("PATCH", self._path(namespace, name), patch)

    async def delete(self, name: str, *, namespace: str = "default") -> None:
        await self._send("DELETE", self._path(namespace, name))

    def get(self, name: str, *, namespace: str = "default", resource: str = CR_RESOURCE) -> dict[str, Any] | None:
        try:
            obj = self.k.objects[resource, namespace, name]
        except KeyError:
            return None
        return None if obj.deleted else dict(obj)

    def condition(self, name: str, kind: str, *, namespace: str = "default") -> dict[str, Any]:
        body = self.get(name, namespace=namespace) or {}
        conditions = (body.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), {})

    async def _send(self, method: str, path: str, body: Any = None) -> None:
        # A keep-alive connection can be dropped when kopf stops; one retry on a fresh one is enough.
        for attempt in range(3):
            try:
                async with self.k.request(method, path, json=body) as resp:
                    assert resp.status in (200, 201, 202), await resp.text()
                    return
            except aiohttp.ServerDisconnectedError:
                if attempt == 2:
                    raise

    # A liveness bound, not a speed assertion: `make test` runs these tests niced beside the live engines, where a
    # test that takes 3 s alone (test_quota's pending pools) took 26 s once and missed the old 20 s bound. A test
    # that asserts promptness passes its own `within`.
    async def wait_for(self, what: Callable[[], Any], *, within: float = _LIVENESS_S, message: str = "") -> Any:
        deadline = time.monotonic() + within
        while True:
            value = what()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {message or what}")
            await asyncio.sleep(0.05)

    async def wait_ready(self, name: str, *, namespace: str = "default", within: float = _LIVENESS_S) -> dict[str, Any]:
        """Wait until the CR is Ready (the KubeRay peer, tests/support/kuberay_peer.py, runs its RayService)."""
        await self.wait_for(
            lambda: self.condition(name, "Ready", namespace=namespace).get("status") == "True",
            within=within,
            message=f"{name} Ready",
        )
        body = self.get(name, namespace=namespace)
        assert body is not None
        return body
