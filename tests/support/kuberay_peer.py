"""A test peer that plays KubeRay 1.7's RayService controller against the emulated API server.

Each rule cites the KubeRay v1.7.0 source that defines it (github.com/ray-project/kuberay, ray-operator/...):

- Cluster identity: a RayCluster's hash is `GenerateHashWithoutReplicasAndWorkersToDelete` (utils/util.go): the
  RayService's rayClusterConfig with every worker group's replicas, minReplicas, maxReplicas and
  workersToDelete, all pod tolerations and scheduling gates, and the cluster upgradeStrategy muted.
- New cluster or not: `shouldPrepareNewCluster` (rayservice_controller.go) prepares a pending RayCluster when
  none exists, or when the hash differs and zero-downtime upgrade is enabled, i.e. `upgradeStrategy.type` is
  NewCluster (`isZeroDowntimeUpgradeEnabled`; NewClusterWithIncrementalUpgrade also needs a Gateway, not played
  here). With type None a changed hash is ignored: the running cluster stays as it is.
- In place: a hash-equal change (replica bounds) rescales the running cluster (`shouldUpdateCluster`,
  `modifyRayCluster`); a changed serveConfigV2 is resubmitted to the running cluster's dashboard
  (`checkIfNeedSubmitServeApplications`): the application goes DEPLOYING then RUNNING, no new cluster.
- Promotion: a pending cluster whose Serve applications run is promoted to active
  (`reconcilePromotionAndServingStatus`); the old cluster is deleted after `rayClusterDeletionDelaySeconds`
  (default 60 s, `cleanUpRayClusterInstance`; the peer's `deletion_delay_s`).
- Ports: the Ray container (the first) of every pod gets the port `metrics`, 8080, unless it names one already
  (common/pod.go `DefaultHeadPodTemplate`, `DefaultWorkerPodTemplate`: utils.MetricsPortName,
  utils.DefaultMetricsPort); `with_metrics_port`.
- Pods: worker pods get `ray.io/serve=true`, the head `false` until its proxy is healthy (common/pod.go
  `BuildPod`, `updateHeadPodServeLabel`); every pod carries the template's labels and nodeSelector. With
  `enableInTreeAutoscaling` the head pod also gets the `autoscaler` container, in the head's image with 500m CPU
  and 512Mi requests and limits, or `autoscalerOptions.resources` when set (common/pod.go
  `DefaultHeadPodTemplate`, `BuildAutoscalerContainer`, `mergeAutoscalerOverrides`).
- Status (`calculateStatus`, `calculateConditions`): observedGeneration = metadata.generation; Ready is True
  while the serve Service has endpoints (a ready pod labelled ray.io/serve=true), even while an application
  redeploys; UpgradeInProgress is True while both an active and a pending cluster exist; serviceStatus
  Running mirrors Ready; applicationStatuses report each app's status.
- Validation (`validateRayService`, called first in `Reconcile`): a RayService KubeRay refuses gets Ready False,
  reason ValidationFailed, the error as message (`setCondition`, then `Status().Update` of the rest as it was), and
  nothing else is done: no cluster, no observedGeneration. The peer's `invalid` is that error.
- Deleting the RayService deletes its clusters at once (deletion delay 0 when the RayService is deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kmock

__all__ = ["KubeRayPeer", "with_metrics_port"]

_RS_PLURAL = "rayservices"
_TICK_S = 0.05


def kuberay_cluster_hash(cluster_spec: dict[str, Any]) -> str:
    """KubeRay's GenerateHashWithoutReplicasAndWorkersToDelete (utils/util.go), over our JSON."""
    spec = copy.deepcopy(cluster_spec)
    spec.pop("upgradeStrategy", None)
    head = spec["headGroupSpec"]["template"]["spec"]
    head.pop("tolerations", None)
    head.pop("schedulingGates", None)
    for group in spec.get("workerGroupSpecs") or []:
        for key in ("replicas", "minReplicas", "maxReplicas"):
            group.pop(key, None)
        (group.get("scaleStrategy") or {}).pop("workersToDelete", None)
        group["template"]["spec"].pop("tolerations", None)
        group["template"]["spec"].pop("schedulingGates", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def with_metrics_port(template: dict[str, Any]) -> dict[str, Any]:
    """Return a pod template as KubeRay builds its pods: with the port `metrics` (8080) on its Ray container."""
    template = copy.deepcopy(template)
    ray = template["spec"]["containers"][0]
    if not any(port.get("name") == "metrics" for port in ray.get("ports") or []):
        ray["ports"] = [*(ray.get("ports") or []), {"name": "metrics", "containerPort": 8080}]
    return template


def _with_autoscaler(cluster_spec: dict[str, Any]) -> dict[str, Any]:
    """The head pod template as KubeRay builds it: the autoscaler container appended with in-tree autoscaling."""
    template = copy.deepcopy(cluster_spec["headGroupSpec"]["template"])
    if not cluster_spec.get("enableInTreeAutoscaling"):
        return template
    options = cluster_spec.get("autoscalerOptions") or {}
    default = {"cpu": "500m", "memory": "512Mi"}
    resources = options.get("resources")
    containers = template["spec"]["containers"]
    containers.append(
        {
            "name": "autoscaler",
            "image": options.get("image") or containers[0]["image"],
            "resources": {"requests": dict(default), "limits": dict(default)} if resources is None else resources,
        }
    )
    return template


@dataclass
class _Cluster:
    name: str
    hash: str
    spec: dict[str, Any]
    serve_config: str | None = None  # the config last submitted to its dashboard
    app_status: str = "DEPLOYING"
    submitted_at: float = 0.0  # when the serve config was last submitted (Serve takes a moment to deploy)
    pods: list[str] = field(default_factory=list)
    retired_at: float | None = None


@dataclass
class _Service:
    uid: str | None = None
    active: _Cluster | None = None
    pending: _Cluster | None = None
    retired: list[_Cluster] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


class KubeRayPeer:
    """Play KubeRay for every RayService in the emulator; start() / stop() around a test.

    Attributes:
        services: What the peer knows per (namespace, name): active/pending clusters.
        history: The event log per (namespace, name), across re-creations ("created X", "ignored <hash>",
            "resubmitted serve config to X", "promoted X", "deleted X").
        deletion_delay_s: KubeRay's RayClusterDeletionDelayDuration (60 s in KubeRay; short in tests).
        deploy_s: Seconds Serve takes to turn a submitted application RUNNING.
        ready_at: When (event-loop time) the peer first reported each RayService Ready.
        paused: While True, KubeRay does nothing (down, or busy elsewhere).
        invalid: While set, KubeRay's validation refuses every RayService with this error (a spec this KubeRay
            version does not accept).
    """

    _suffixes = itertools.count(1)

    def __init__(
        self,
        k: kmock.KubernetesEmulator,
        *,
        deletion_delay_s: float = 0.5,
        deploy_s: float = 0.2,
        pod_ip: str = "127.0.0.1",
    ) -> None:
        self.k = k
        self.deletion_delay_s = deletion_delay_s
        self.deploy_s = deploy_s
        self.pod_ip = pod_ip  # loopback: whatever the operator sends a pod (metrics scrapes) stays on this machine
        self.services: dict[tuple[str, str], _Service] = {}
        self.history: dict[tuple[str, str], list[str]] = {}
        self.ready_at: dict[tuple[str, str], float] = {}  # when the peer first reported each RayService Ready
        self.paused = False  # KubeRay not acting (down, or slow to get to it): nothing reconciles while set
        self.invalid: str | None = None
        self._seen: dict[tuple[str, str], str] = {}  # resourceVersion last reconciled, per RayService
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start playing KubeRay in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop playing; a failure of the peer itself fails the test here."""
        if self._task is not None:
            if self._task.done():
                self._task.result()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def pods(self, namespace: str = "default") -> list[dict[str, Any]]:
        """The live pods in a namespace (what KubeRay created and has not deleted)."""
        return [
            _plain(obj)
            for (res, ns, _), obj in list(self.k.objects.items())
            if getattr(res, "plural", "") == "pods" and ns == namespace and not obj.deleted
        ]

    async def _run(self) -> None:
        while True:
            for (res, ns, name), obj in [] if self.paused else list(self.k.objects.items()):
                if getattr(res, "plural", "") != _RS_PLURAL:
                    continue
                if obj.deleted:
                    await self._deleted(ns, name)
                elif self._needs_reconcile(ns, name, obj):
                    await self._reconcile(ns, name, _plain(obj))
                    self._seen[(ns, name)] = str(obj.get("metadata", {}).get("resourceVersion"))
            await asyncio.sleep(_TICK_S)

    def _needs_reconcile(self, ns: str, name: str, obj: Any) -> bool:
        """KubeRay requeues every RayService every 2 s, but a settled one changes nothing: skip it (1,000 of them)."""
        state = self.services.get((ns, name))
        if state is None or self._seen.get((ns, name)) != str(obj.get("metadata", {}).get("resourceVersion")):
            return True
        clusters = [c for c in (state.active, state.pending) if c is not None]
        return bool(state.pending or state.retired) or any(c.app_status != "RUNNING" for c in clusters)

    async def _reconcile(self, ns: str, name: str, rs: dict[str, Any]) -> None:
        if self.invalid is not None:
            await self._refuse(ns, name, rs, self.invalid)
            return
        uid = (rs.get("metadata") or {}).get("uid")
        state = self.services.get((ns, name))
        if state is not None and state.uid != uid:
            await self._deleted(ns, name)  # deleted and created again between two ticks: a new RayService
            state = None
        if state is None:
            # The event log outlives a deleted RayService: tests read a whole rollout from it.
            state = self.services[(ns, name)] = _Service(uid=uid, events=self.history.setdefault((ns, name), []))
        spec = rs["spec"]
        goal = kuberay_cluster_hash(spec["rayClusterConfig"])
        strategy = (spec.get("upgradeStrategy") or {}).get("type", "NewCluster")
        current = state.pending or state.active
        if current is None:
            state.pending = await self._create_cluster(ns, name, spec, goal, state)
        elif current.hash != goal:
            if strategy == "NewCluster" and state.pending is None:
                state.pending = await self._create_cluster(ns, name, spec, goal, state)
            elif strategy != "NewCluster" and f"ignored {goal}" not in state.events:
                state.events.append(f"ignored {goal}")  # shouldPrepareNewCluster: zero-downtime upgrade off
        else:
            await self._scale(ns, current, spec, name)  # hash-equal: modifyRayCluster in place
        for cluster in (c for c in (state.active, state.pending) if c is not None):
            self._serve(cluster, spec["serveConfigV2"], state)
        pending = state.pending
        if pending is not None and pending.app_status == "RUNNING":
            if state.active is not None:
                state.active.retired_at = asyncio.get_running_loop().time()
                state.retired.append(state.active)
            state.active, state.pending = pending, None
            state.events.append(f"promoted {pending.name}")
        await self._clean_up(ns, state)
        await self._write_status(ns, name, rs, state)

    async def _create_cluster(self, ns: str, name: str, spec: dict[str, Any], goal: str, state: _Service) -> _Cluster:
        cluster = _Cluster(f"{name}-{next(self._suffixes):05d}", goal, copy.deepcopy(spec["rayClusterConfig"]))
        state.events.append(f"created {cluster.name}")
        head = _with_autoscaler(cluster.spec)
        cluster.pods.append(await self._create_pod(ns, f"{cluster.name}-head", head, cluster.name, "head", name))
        await self._scale(ns, cluster, spec, name)
        return cluster

    async def _scale(self, ns: str, cluster: _Cluster, spec: dict[str, Any], rs_name: str) -> None:
        (group,) = spec["rayClusterConfig"]["workerGroupSpecs"]
        want = max(int(group.get("replicas") or 0), int(group.get("minReplicas") or 0), 1)
        workers = [p for p in cluster.pods if "-worker-" in p]
        for index in range(len(workers), want):
            template = cluster.spec["workerGroupSpecs"][0]["template"]
            pod = f"{cluster.name}-worker-{index}"
            cluster.pods.append(await self._create_pod(ns, pod, template, cluster.name, "worker", rs_name))

    async def _create_pod(
        self, ns: str, pod: str, template: dict[str, Any], cluster: str, node_type: str, rs_name: str
    ) -> str:
        template = with_metrics_port(template)
        labels = {
            **(template.get("metadata") or {}).get("labels", {}),
            "ray.io/cluster": cluster,
            "ray.io/node-type": node_type,
            "ray.io/serve": "true" if node_type == "worker" else "false",
        }
        spec = {k: v for k, v in template["spec"].items() if k in ("nodeSelector", "tolerations", "containers")}
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": ns, "labels": labels},
            "spec": spec,
            "status": {"phase": "Running", "podIP": self.pod_ip},
        }
        await self._send("POST", f"/api/v1/namespaces/{ns}/pods", body)
        return pod

    def _serve(self, cluster: _Cluster, serve_config: str, state: _Service) -> None:
        if cluster.serve_config != serve_config:  # checkIfNeedSubmitServeApplications
            if cluster.serve_config is not None:
                state.events.append(f"resubmitted serve config to {cluster.name}")
            cluster.serve_config, cluster.app_status = serve_config, "DEPLOYING"
            cluster.submitted_at = asyncio.get_running_loop().time()
        if asyncio.get_running_loop().time() - cluster.submitted_at >= self.deploy_s:
            cluster.app_status = "RUNNING"

    async def _clean_up(self, ns: str, state: _Service) -> None:
        now = asyncio.get_running_loop().time()
        for cluster in list(state.retired):
            if cluster.retired_at is not None and now - cluster.retired_at >= self.deletion_delay_s:
                await self._delete_cluster(ns, cluster)
                state.retired.remove(cluster)
                state.events.append(f"deleted {cluster.name}")

    async def _delete_cluster(self, ns: str, cluster: _Cluster) -> None:
        for pod in cluster.pods:
            await self._send("DELETE", f"/api/v1/namespaces/{ns}/pods/{pod}")
        cluster.pods.clear()

    async def _deleted(self, ns: str, name: str) -> None:
        state = self.services.pop((ns, name), None)
        self._seen.pop((ns, name), None)
        if state is None:
            return
        for cluster in (c for c in (state.active, state.pending, *state.retired) if c is not None):
            await self._delete_cluster(ns, cluster)
            state.events.append(f"deleted {cluster.name}")

    async def _refuse(self, ns: str, name: str, rs: dict[str, Any], error: str) -> None:
        status = copy.deepcopy(rs.get("status") or {})
        others = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
        ready = {"type": "Ready", "status": "False", "reason": "ValidationFailed", "message": error}
        status["conditions"] = [ready, *others]
        if (rs.get("status") or {}) != status:
            await self._send("PATCH", f"/apis/ray.io/v1/namespaces/{ns}/{_RS_PLURAL}/{name}/status", {"status": status})

    async def _write_status(self, ns: str, name: str, rs: dict[str, Any], state: _Service) -> None:
        active, pending = state.active, state.pending
        endpoints = 1 if active is not None and any("-worker-" in p for p in active.pods) else 0
        generation = (rs.get("metadata") or {}).get("generation")

        def service_status(cluster: _Cluster | None, app: str) -> dict[str, Any]:
            if cluster is None:
                return {}
            workers = sum(1 for p in cluster.pods if "-worker-" in p)
            return {
                "rayClusterName": cluster.name,
                "rayClusterStatus": {"readyWorkerReplicas": workers, "desiredWorkerReplicas": workers},
                "applicationStatuses": {app: {"status": cluster.app_status}},
            }

        app = _app_name(rs["spec"]["serveConfigV2"])
        ready = endpoints > 0
        status = {
            "observedGeneration": generation,
            "numServeEndpoints": endpoints,
            "serviceStatus": "Running" if ready else "NotRunning",
            "activeServiceStatus": service_status(active, app),
            "pendingServiceStatus": service_status(pending, app),
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False",
                 "reason": "NonZeroServeEndpoints" if ready else "RayServiceInitializing"},
                {"type": "UpgradeInProgress", "status": "True" if active and pending else "False",
                 "reason": "BothActivePendingClustersExist" if active and pending else "NoPendingCluster"},
            ],
        }  # fmt: skip
        if (rs.get("status") or {}) != status:
            path = f"/apis/ray.io/v1/namespaces/{ns}/{_RS_PLURAL}/{name}/status"
            await self._send("PATCH", path, {"status": status})
            if ready:
                self.ready_at.setdefault((ns, name), asyncio.get_running_loop().time())

    async def _send(self, method: str, path: str, body: Any = None) -> None:
        async with self.k.request(method, path, json=body) as resp:
            if resp.status == 404 and (method == "DELETE" or path.endswith("/status")):
                return  # deleted meanwhile
            assert resp.status in (200, 201, 202), f"{method} {path}: {resp.status} {await resp.text()}"


def _plain(value: Any) -> Any:
    """kmock's stored objects (ObjectVersion mappings) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@functools.lru_cache(maxsize=4096)
def _app_name(serve_config: str) -> str:
    import yaml

    config = yaml.safe_load(serve_config) or {}
    return str(((config.get("applications") or [{}])[0]).get("name", "app"))
