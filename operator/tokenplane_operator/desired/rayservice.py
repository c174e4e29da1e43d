"""The desired KubeRay RayService (`ray.io/v1`): serveConfigV2 from ServingArgs, a CPU head and one worker group."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import yaml

from tokenplane_operator.api.v1alpha1 import (
    AcceleratorKind,
    AuthMode,
    InferenceDeployment,
    MigProfile,
    RoutingPolicy,
    SourceScheme,
    UpgradeStrategy,
    parse_source,
)
from tokenplane_operator.desired.agentpool import POOL_LABEL, SPOT_TAINT, DesiredAgentPool
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_operator.desired.naming import (
    CLUSTER_HASH_ANNOTATION,
    DASHBOARD_PORT,
    GCS_PORT,
    METRICS_PORT,
    SERVE_PORT,
    SPEC_HASH_ANNOTATION,
    api_keys_secret_name,
    rayservice_name,
    spec_hash,
    standard_labels,
)
from tokenplane_operator.desired.serveconfig import (
    API_KEYS_DIR,
    BATCH_REDIS_URL_ENV,
    BLOB_DOWNLOAD_DIR,
    CACHE_REDIS_URL_ENV,
    SourceVolume,
    has_blob_sources,
    source_volumes,
)
from tokenplane_operator.plan.allocatable import node_allocatable
from tokenplane_operator.plan.catalog import GIB, GpuSku
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_operator.plan.spec import replicas_per_gpu
from tokenplane_serving.args import ServingArgs
from tokenplane_serving.blob_uri import BLOB_CREDENTIAL_ENV, STORE_CREDENTIAL_ENV
from tokenplane_serving.mapping import FAST_PATH_ENV, hold_environment

__all__ = [
    "GPU_RESOURCE",
    "IMPORT_PATH",
    "SYSTEM_POOL_TAINT",
    "WORKER_GROUP",
    "WORKLOAD_IDENTITY_LABEL",
    "WorkerShape",
    "build_rayservice",
    "build_serve_config",
    "cluster_hash",
    "compute_worker_shape",
    "tolerations_for",
    "weights_disk_bytes",
]

IMPORT_PATH = "tokenplane_serving.app:build_app"
# The batch consumers: a Serve application of their own next to the LLM app (same args), when batch is on.
BATCH_IMPORT_PATH = "tokenplane_serving.batch.consumer:build_consumer_app"
GPU_RESOURCE = "nvidia.com/gpu"
WORKER_GROUP = "gpu"
# AKS's only NoSchedule taint allowed on a system pool (learn.microsoft.com/azure/aks/use-system-pools).
SYSTEM_POOL_TAINT = "CriticalAddonsOnly=true:NoSchedule"
SYSTEM_POOL_TOLERATION = {"key": "CriticalAddonsOnly", "operator": "Exists", "effect": "NoSchedule"}
CPU_WORKER_GROUP = "cpu"
_SHM_VOLUME = "dshm"
_API_KEYS_VOLUME = "api-keys"
_BLOB_VOLUME = "blob-downloads"
WORKLOAD_IDENTITY_LABEL = "azure.workload.identity/use"
_TERMINATION_MARGIN_S = 30  # Ray's own shutdown after the drain
# Downloaded weights take the node's OS disk (the Hugging Face cache in the container's writable layer, or the
# Blob download emptyDir); 10% on top for tokenizer, config and partially written files while a download runs.
_WEIGHTS_DISK_HEADROOM = 1.1
_DOWNLOADED = (SourceScheme.HUGGING_FACE, SourceScheme.AZURE_BLOB)


@dataclass(frozen=True)
class WorkerShape:
    """What one Ray worker pod holds and how many replicas, pods and nodes the deployment may use.

    Attributes:
        resource_name: Extended resource a pod requests (`nvidia.com/gpu`, `nvidia.com/mig-3g.47gb`), or None
            for CPU workers.
        units_per_pod: How many of that resource one pod requests.
        units_per_node: How many of that resource one node offers (GPUs, or GPUs x slices for MIG).
        ray_gpus_per_pod: What the pod advertises to Ray as `num-gpus` (a MIG slice is one device to Ray).
        min_replicas: Serve replicas the worker group must hold at least (0 with scale-to-zero).
        max_replicas: Serve replicas the worker group may hold at most.
        replicas_per_pod: Fractional replicas packed onto one pod's GPU (1 otherwise).
        pods_per_replica: Whole-VM pods one replica spans (pipeline parallel across VMs; 1 otherwise).
    """

    resource_name: str | None
    units_per_pod: int
    units_per_node: int
    ray_gpus_per_pod: int
    min_replicas: int
    max_replicas: int
    replicas_per_pod: int = 1
    pods_per_replica: int = 1

    @property
    def pods_per_node(self) -> int:
        """Worker pods one node holds: its GPUs (or slices) over one pod's."""
        if self.resource_name is None:
            return 1
        return max(1, self.units_per_node // self.units_per_pod)

    @property
    def min_pods(self) -> int:
        """Worker group minReplicas."""
        return self.pods_for(self.min_replicas)

    @property
    def max_pods(self) -> int:
        """Worker group maxReplicas."""
        return self.pods_for(self.max_replicas)

    @property
    def min_nodes(self) -> int:
        """Nodes that `min_pods` pods need (0 when the group may be empty, as with scale-to-zero)."""
        if self.resource_name is None:
            return 0
        return self.nodes_for(self.min_replicas)

    @property
    def max_nodes(self) -> int:
        """Nodes needed to run `max_pods` pods (at least 1)."""
        if self.resource_name is None:
            return 1
        return max(1, self.nodes_for(self.max_replicas))

    def pods_for(self, replicas: int) -> int:
        """Count the worker pods `replicas` Serve replicas take."""
        return math.ceil(replicas / self.replicas_per_pod) * self.pods_per_replica

    def nodes_for(self, replicas: int) -> int:
        """Count the GPU nodes `replicas` Serve replicas need: whole pods per node, as the scheduler places them."""
        return math.ceil(self.pods_for(replicas) / self.pods_per_node)

    def replicas_on(self, nodes: int) -> int:
        """Count the Serve replicas `nodes` GPU nodes hold (0 when one replica needs more nodes than that)."""
        return nodes * self.pods_per_node // self.pods_per_replica * self.replicas_per_pod


def compute_worker_shape(deployment: InferenceDeployment, sku: GpuSku | None) -> WorkerShape:
    """Derive the worker pod size and the worker group bounds from the CR's hardware and scaling.

    One pod holds one replica's GPUs when they fit in a VM; a replica larger than a VM (pipeline parallel
    across VMs) spans whole-VM pods. A MIG replica is one slice per pod; fractional replicas share one GPU
    per pod, packed `floor(1 / gpuFraction)` to a pod.

    Args:
        deployment: A validated InferenceDeployment.
        sku: The VM size the workers run on; None only for CPU deployments.

    Returns:
        The worker shape.

    Raises:
        PlanError: InvalidWorkload when the MIG profile is not offered on the VM size, or a multi-VM replica
            does not split into whole VMs.
    """
    spec = deployment.spec
    hardware, scaling = spec.hardware, spec.scaling
    min_replicas = 0 if scaling.scale_to_zero.enabled else scaling.min_replicas
    max_replicas = scaling.max_replicas
    if spec.disaggregation.enabled:
        # Prefill and decode replica counts are fixed, so the group is sized for exactly both pools.
        max_replicas = min_replicas = spec.disaggregation.prefill_replicas + spec.disaggregation.decode_replicas
    if hardware.accelerator is AcceleratorKind.CPU or sku is None:
        return WorkerShape(None, 0, 0, 0, min_replicas, max_replicas)
    if hardware.mig_profile is not None:
        mig = sku.mig_profiles.get(hardware.mig_profile.value)
        if mig is None:
            raise PlanError(
                PlanErrorReason.INVALID_WORKLOAD,
                f"{sku.vm_size} ({sku.gpu_model}) has no MIG profile {hardware.mig_profile.value}; "
                f"supported: {', '.join(sorted(sku.mig_profiles)) or 'none'}",
            )
        per_node = sku.gpu_count * mig.slices_per_gpu
        return WorkerShape(mig.resource_name, 1, per_node, 1, min_replicas, max_replicas)
    if hardware.gpu_fraction is not None:
        per_gpu = replicas_per_gpu(hardware.gpu_fraction)
        return WorkerShape(GPU_RESOURCE, 1, sku.gpu_count, 1, min_replicas, max_replicas, replicas_per_pod=per_gpu)
    gpus = hardware.gpus_per_replica
    if gpus <= sku.gpu_count:
        per_pod, pods_per_replica = gpus, 1
    elif gpus % sku.gpu_count == 0:
        per_pod, pods_per_replica = sku.gpu_count, gpus // sku.gpu_count
    else:
        raise PlanError(
            PlanErrorReason.INVALID_WORKLOAD,
            f"gpusPerReplica {gpus} spans VMs of {sku.gpu_count} GPUs ({sku.vm_size}) but is not a multiple of "
            f"{sku.gpu_count}; use a multiple so each pipeline stage fills whole VMs",
        )
    return WorkerShape(
        GPU_RESOURCE, per_pod, sku.gpu_count, per_pod, min_replicas, max_replicas, pods_per_replica=pods_per_replica
    )


def weights_disk_bytes(deployment: InferenceDeployment, download_bytes: int | None) -> int:
    """Node disk one worker pod fills with the model's downloaded weights.

    Args:
        deployment: A validated InferenceDeployment.
        download_bytes: The checkpoint's bytes as stored (`resolve.checkpoint_bytes`): with online
            quantization (fp8 on a bf16 checkpoint) more than status.plan.weightsBytes, which are at the serving
            precision. None when the model is unknown.

    Returns:
        `ceil(1.1 x download_bytes)` for `hf://` and Azure Blob sources, which every worker downloads onto its
        node; 0 for PVC and local sources (read in place) and for unknown weights.
    """
    if download_bytes is None or parse_source(deployment.spec.model.source)[0] not in _DOWNLOADED:
        return 0
    return math.ceil(_WEIGHTS_DISK_HEADROOM * download_bytes)


def tolerations_for(taints: tuple[str, ...] | list[str]) -> list[dict[str, str]]:
    """Turn node taints (`key=value:Effect` or `key:Effect`) into pod tolerations.

    Args:
        taints: Taints as AKS and the CR write them.

    Returns:
        One toleration per taint: `Equal` when the taint has a value, `Exists` otherwise.
    """
    tolerations = []
    for taint in taints:
        key_value, _, effect = taint.rpartition(":")
        key, has_value, value = key_value.partition("=")
        if has_value:
            tolerations.append({"key": key, "operator": "Equal", "value": value, "effect": effect})
        else:
            tolerations.append({"key": key, "operator": "Exists", "effect": effect})
    return tolerations


# libyaml's emitter writes the same text as the pure-Python SafeDumper, 5x faster (every reconcile renders).
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def build_serve_config(serving_args: ServingArgs) -> str:
    """Render serveConfigV2: one application whose `args` are the serving contract.

    Args:
        serving_args: The validated serving contract.

    Returns:
        The Ray Serve deploy config as a YAML string, keys in a stable order.
    """
    # Features that are off are left out: deployments without them keep their serve config and spec hash.
    off = {name for name in ("cache", "batch") if not getattr(serving_args, name).enabled}
    args = serving_args.model_dump(mode="json", exclude_none=True, exclude=off or None)
    applications = [{"name": serving_args.app_name, "route_prefix": "/", "import_path": IMPORT_PATH, "args": args}]
    if serving_args.batch.enabled:
        # No route: the consumers take their work from the queue, not from HTTP.
        applications.append({"name": f"{serving_args.app_name}-batch", "import_path": BATCH_IMPORT_PATH, "args": args})
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": applications,
    }
    return yaml.dump(config, Dumper=_YAML_DUMPER, sort_keys=False, default_flow_style=False)


def cluster_hash(rayservice_spec: dict[str, Any]) -> str:
    """Hash the part of a RayService spec whose change needs a new Ray cluster.

    Mirrors KubeRay 1.7's `GenerateHashWithoutReplicasAndWorkersToDelete`
    (ray-operator/controllers/ray/utils/util.go): worker replicas and bounds, tolerations and scheduling gates
    are muted, because the autoscaler and external controllers change them on a running cluster.
    serveConfigV2 is outside rayClusterConfig, so engine and routing changes leave this hash alone (Serve
    redeploys the application in place).

    Args:
        rayservice_spec: The RayService `spec`.

    Returns:
        16 hex digits.
    """
    cluster = dict(rayservice_spec["rayClusterConfig"])
    cluster["headGroupSpec"] = _mute_pod(cluster["headGroupSpec"])
    cluster["workerGroupSpecs"] = [
        _mute_pod({k: v for k, v in group.items() if k not in ("replicas", "minReplicas", "maxReplicas")})
        for group in cluster.get("workerGroupSpecs", [])
    ]
    return spec_hash(cluster)


def _mute_pod(group: dict[str, Any]) -> dict[str, Any]:
    template = dict(group["template"])
    template["spec"] = {k: v for k, v in template["spec"].items() if k not in ("tolerations", "schedulingGates")}
    return {**group, "template": template}


def _volumes(
    deployment: InferenceDeployment, sources: list[SourceVolume], *, downloads: bool, weights_disk: int = 0
) -> tuple[list[Any], list[Any]]:
    # Memory-backed /dev/shm: NCCL and Ray's object store need more than the container runtime's 64 MiB.
    # It counts against the container memory limit, so it needs no size limit of its own.
    volumes: list[Any] = [{"name": _SHM_VOLUME, "emptyDir": {"medium": "Memory"}}]
    mounts: list[Any] = [{"name": _SHM_VOLUME, "mountPath": "/dev/shm"}]
    auth = deployment.spec.endpoint.auth
    if auth.mode is AuthMode.API_KEY:
        secret = auth.api_key_secret_ref.name if auth.api_key_secret_ref else api_keys_secret_name(deployment.name)
        volumes.append({"name": _API_KEYS_VOLUME, "secret": {"secretName": secret}})
        mounts.append({"name": _API_KEYS_VOLUME, "mountPath": API_KEYS_DIR, "readOnly": True})
    for index, source in enumerate(sources):
        name = f"model-{index}"
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": source.claim, "readOnly": True}})
        mounts.append({"name": name, "mountPath": source.mount_path, "readOnly": True})
    if downloads:
        # Azure Blob sources: the replica downloads them here (node disk) before its engine starts. A Blob model
        # bounds it at the weights' disk share (the kubelet evicts past it; the request reserves it). Blob
        # adapters of an hf:// model are unsized: their bytes are unknown here.
        blob_model = parse_source(deployment.spec.model.source)[0] is SourceScheme.AZURE_BLOB
        limit = {"sizeLimit": f"{_gib_ceil(weights_disk)}Gi"} if blob_model and weights_disk else {}
        volumes.append({"name": _BLOB_VOLUME, "emptyDir": limit})
        mounts.append({"name": _BLOB_VOLUME, "mountPath": BLOB_DOWNLOAD_DIR})
    return volumes, mounts


def _env(deployment: InferenceDeployment, serving_args: ServingArgs) -> list[Any]:
    env: list[Any] = []
    ref = deployment.spec.model.access_secret_ref
    if ref is not None:
        # The secret reads the model's source: a Hugging Face token, or a SAS / connection string for Azure Blob.
        blob = parse_source(deployment.spec.model.source)[0] is SourceScheme.AZURE_BLOB
        name = BLOB_CREDENTIAL_ENV if blob else "HF_TOKEN"
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    cache = deployment.spec.endpoint.cache
    if cache.enabled and cache.redis_secret_ref is not None:
        ref = cache.redis_secret_ref
        env.append({"name": CACHE_REDIS_URL_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    batch = deployment.spec.batch
    if batch.enabled:
        for name, secret in (
            (BATCH_REDIS_URL_ENV, batch.redis_secret_ref),
            (STORE_CREDENTIAL_ENV, batch.store_secret_ref),
        ):
            if secret is not None:
                env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}})
    if deployment.spec.routing.policy is RoutingPolicy.SESSION_AFFINITY:
        # Serve's HTTP proxy reads the session header name once per process, so it must be in every pod's env.
        env.append({"name": "RAY_SERVE_SESSION_ID_HEADER_KEY", "value": deployment.spec.routing.session_header.lower()})
    # Ray reads these once per process at start: HAProxy and direct streaming (the serving contract's
    # FAST_PATH_ENV; build_app refuses to build without it rather than serve Ray's featureless ingress).
    env.extend({"name": name, "value": value} for name, value in FAST_PATH_ENV.items())
    # Scale to zero: how long, and how many, requests Ray's fallback proxy holds while a replica starts.
    env.extend({"name": name, "value": value} for name, value in hold_environment(serving_args).items())
    return env


def _pod_metadata_and_identity(deployment: InferenceDeployment) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pod template metadata and the pod spec fields that give the pods their Azure identity.

    AKS workload identity (https://learn.microsoft.com/azure/aks/workload-identity-deploy-cluster): the pod
    runs as a ServiceAccount annotated `azure.workload.identity/client-id` and carries the label
    `azure.workload.identity/use: "true"`; the webhook then injects AZURE_CLIENT_ID, AZURE_TENANT_ID,
    AZURE_FEDERATED_TOKEN_FILE and AZURE_AUTHORITY_HOST, which `DefaultAzureCredential` reads.
    """
    labels = standard_labels(deployment.name)
    account = deployment.spec.service_account_name
    if account is None:
        return {"labels": labels}, {}
    return {"labels": {**labels, WORKLOAD_IDENTITY_LABEL: "true"}}, {"serviceAccountName": account}


def _container(name: str, image: str, config: RenderConfig, resources: dict[str, Any], **extra: Any) -> Any:
    container = {"name": name, "image": image, "imagePullPolicy": config.image_pull_policy, "resources": resources}
    return container | {key: value for key, value in extra.items() if value}


def _head_group(
    deployment: InferenceDeployment, config: RenderConfig, sources: list[SourceVolume], env: list[Any]
) -> Any:
    # The head gets the same mounts and token as the workers: Serve may build the app or place the
    # CPU-only ingress there, and both read the API keys and the model's config.
    # No blob download volume: the head builds the app (which reads no weights) and runs no replica.
    volumes, mounts = _volumes(deployment, sources, downloads=False)
    metadata, identity = _pod_metadata_and_identity(deployment)
    ports = [
        {"name": "gcs-server", "containerPort": GCS_PORT},
        {"name": "dashboard", "containerPort": DASHBOARD_PORT},
        {"name": "client", "containerPort": 10001},
        {"name": "serve", "containerPort": SERVE_PORT},
        {"name": "metrics", "containerPort": METRICS_PORT},
    ]
    resources = {
        "requests": {"cpu": config.head_cpu, "memory": config.head_memory},
        "limits": {"memory": config.head_memory},
    }
    container = _container(
        "ray-head", config.serving_image, config, resources, ports=ports, env=env, volumeMounts=mounts
    )
    return {
        # Zero CPUs and GPUs for Ray: replicas never land on the head, which has no GPU toleration anyway.
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0", "num-gpus": "0"},
        "template": {
            "metadata": metadata,
            "spec": {
                **identity,
                "nodeSelector": {"kubernetes.io/os": "linux"},
                # The head belongs on the system pool, which production AKS clusters often taint
                # CriticalAddonsOnly=true:NoSchedule (learn.microsoft.com/azure/aks/use-system-pools); the
                # GPU pools are tainted too, so without this the head stayed Pending and nothing served.
                "tolerations": [SYSTEM_POOL_TOLERATION],
                "containers": [container],
                "volumes": volumes,
            },
        },
    }


def _gib_ceil(value: int) -> int:
    return -(-value // GIB)


def _gpu_worker_resources(
    shape: WorkerShape, sku: GpuSku, mig: MigProfile | None, config: RenderConfig, weights_disk: int, os_disk: int
) -> Any:
    """Split a node's allocatable CPU, memory and ephemeral storage evenly between the workers it holds.

    Whole-GPU replicas get one pod per node when they fill it; MIG slices and fractions pack
    `pods_per_node` pods, each asking for its share, so exactly that many fit next to the node's DaemonSets.
    Each pod's ephemeral storage also counts the weights it downloads (`weights_disk` bytes): the scheduler
    then refuses a node whose disk cannot hold them instead of the kubelet evicting the pod mid-download.
    """
    overhead = replace(config.node_overhead(), os_disk_gib=os_disk)
    node = node_allocatable(sku, mig.value if mig else None, overhead)
    pods = shape.pods_per_node
    cpu = max(1, node.cpu_millis // pods // 1000)
    memory = max(1, node.memory_bytes // pods // GIB)
    weights_gib = _gib_ceil(weights_disk)
    # The base share (logs, Ray's session files) gives way to the weights on a crowded disk, down to 1 GiB.
    base = max(1, min(config.worker_ephemeral_storage_gib, node.ephemeral_bytes // pods // GIB - weights_gib))
    ephemeral = base + weights_gib
    assert shape.resource_name is not None
    return {
        "requests": {"cpu": str(cpu), "memory": f"{memory}Gi", "ephemeral-storage": f"{ephemeral}Gi"},
        "limits": {"memory": f"{memory}Gi", shape.resource_name: str(shape.units_per_pod)},
    }


def _worker_placement(deployment: InferenceDeployment, pool: DesiredAgentPool | None) -> tuple[Any, Any]:
    existing = deployment.spec.hardware.node_pool.existing
    if pool is not None:
        return {POOL_LABEL: pool.name}, tolerations_for(pool.effective_taints)
    if existing is not None:
        taints = tuple(existing.tolerations_for_taints)
        if deployment.spec.hardware.spot.enabled:
            # AKS taints every spot node itself (SPOT_TAINT; learn.microsoft.com/azure/aks/spot-node-pool), so
            # workers on a spot pool of the user's need its toleration, as managed spot pools get it.
            taints = tuple(dict.fromkeys((*taints, SPOT_TAINT)))
        return dict(existing.node_selector), tolerations_for(taints)
    return {}, []


def _worker_group(
    deployment: InferenceDeployment,
    shape: WorkerShape,
    pool: DesiredAgentPool | None,
    config: RenderConfig,
    sources: list[SourceVolume],
    drain_grace_period_s: float,
    sku: GpuSku | None,
    weights_disk: int,
    env: list[Any],
) -> Any:
    volumes, mounts = _volumes(deployment, sources, downloads=has_blob_sources(deployment), weights_disk=weights_disk)
    node_selector, tolerations = _worker_placement(deployment, pool)
    metadata, identity = _pod_metadata_and_identity(deployment)
    if shape.resource_name is None:
        cpus = deployment.spec.hardware.cpu.cpus_per_replica
        # One CPU on top of the replica's: the head has num-cpus 0, so the ingress lands on a worker too.
        cpu_units = math.ceil(cpus) + 1
        memory = f"{deployment.spec.hardware.cpu.kv_cache_gib + config.cpu_worker_base_memory_gib}Gi"
        group_name = CPU_WORKER_GROUP
        start_params = {"num-cpus": str(cpu_units), "num-gpus": "0"}
        resources: dict[str, Any] = {
            "requests": {"cpu": str(cpu_units), "memory": memory},
            "limits": {"memory": memory},
        }
    else:
        group_name = WORKER_GROUP
        # Explicit: KubeRay counts only `nvidia.com/gpu` limits as Ray GPUs, not MIG resources.
        start_params = {"num-gpus": str(shape.ray_gpus_per_pod)}
        assert sku is not None  # a GPU shape comes from a VM size
        # A managed pool may have a bigger OS disk for the weights; bring-your-own nodes have the setting's.
        os_disk = pool.os_disk_size_gb if pool and pool.os_disk_size_gb else config.node_os_disk_gib
        mig = deployment.spec.hardware.mig_profile
        resources = _gpu_worker_resources(shape, sku, mig, config, weights_disk, os_disk)
    container = _container("ray-worker", config.serving_image, config, resources, env=env, volumeMounts=mounts)
    pod_spec: dict[str, Any] = {
        **identity,
        "containers": [container],
        "volumes": volumes,
        # Serve drains in-flight streams for drain_grace_period_s; the kubelet must not kill the pod first.
        "terminationGracePeriodSeconds": math.ceil(drain_grace_period_s) + _TERMINATION_MARGIN_S,
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    return {
        "groupName": group_name,
        "replicas": shape.min_pods,
        "minReplicas": shape.min_pods,
        "maxReplicas": shape.max_pods,
        "rayStartParams": start_params,
        "template": {"metadata": metadata, "spec": pod_spec},
    }


def build_rayservice(
    deployment: InferenceDeployment,
    *,
    serving_args: ServingArgs,
    pool: DesiredAgentPool | None,
    config: RenderConfig,
    sku: GpuSku | None = None,
    download_bytes: int | None = None,
) -> dict[str, Any]:
    """Build the RayService manifest for one InferenceDeployment.

    Args:
        deployment: A validated InferenceDeployment.
        serving_args: The serving contract (from `build_serving_args`), embedded in serveConfigV2.
        pool: The managed agent pool the workers run on, or None (bring-your-own nodes or CPU).
        config: Operator-wide rendering settings (image, Ray version, sizes).
        sku: The VM size of the workers; None for CPU deployments.
        download_bytes: The checkpoint's bytes as stored (`resolve.checkpoint_bytes`, not the serving
            precision's); downloaded weights add to the workers' ephemeral storage.

    Returns:
        A `ray.io/v1` RayService dict with spec-hash and cluster-hash annotations and no ownerReferences
        (the reconciler adds the owner with the live uid).

    Raises:
        PlanError: InvalidWorkload when the hardware cannot be expressed as a worker group.
    """
    shape = compute_worker_shape(deployment, sku)
    sources = source_volumes(deployment)
    env = _env(deployment, serving_args)
    spec: dict[str, Any] = {
        # "None": a spec change never starts a second cluster, which would need twice the GPUs. serveConfigV2
        # changes (engine, scaling, routing) are still applied in place by Serve; rayClusterConfig changes are
        # ignored by KubeRay, so the operator replaces the RayService when the cluster hash changes
        # (ActionKind.REPLACE_RAYSERVICE; docs/rollouts.md). "NewCluster" (zero downtime, 2x GPUs while both
        # run) is opt-in per CR: spec.upgrade.strategy blueGreen.
        "upgradeStrategy": {
            "type": "NewCluster" if deployment.spec.upgrade.strategy is UpgradeStrategy.BLUE_GREEN else "None"
        },
        "serveConfigV2": build_serve_config(serving_args),
        "rayClusterConfig": {
            "rayVersion": config.ray_version,
            # Ray's autoscaler turns pending Serve replicas into worker pods; the cluster autoscaler adds nodes.
            "enableInTreeAutoscaling": True,
            "headGroupSpec": _head_group(deployment, config, sources, env),
            "workerGroupSpecs": [
                _worker_group(
                    deployment,
                    shape,
                    pool,
                    config,
                    sources,
                    serving_args.drain_grace_period_s,
                    sku,
                    weights_disk_bytes(deployment, download_bytes),
                    env,
                )
            ],
        },
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": rayservice_name(deployment.name),
            "namespace": deployment.namespace,
            "labels": standard_labels(deployment.name),
            "annotations": {SPEC_HASH_ANNOTATION: spec_hash(spec), CLUSTER_HASH_ANNOTATION: cluster_hash(spec)},
        },
        "spec": spec,
    }
