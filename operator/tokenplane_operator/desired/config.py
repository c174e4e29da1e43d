"""Operator-wide render settings: what shapes every rendered object but belongs to no single CR."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tokenplane_operator.plan.allocatable import NodeAllocatable, NodeOverhead, host_allocatable
from tokenplane_operator.plan.catalog import host_size

__all__ = ["CPU_QUANTITY", "MEMORY_QUANTITY", "RenderConfig"]

# Kubernetes quantities the head's requests may take: whole or decimal cores or millicores ("300m", "1.5"), and
# bytes with a suffix ("3Gi", "3072Mi"). Narrower than Kubernetes' grammar, so a typo ("3GB", "half") is refused at
# start-up, naming the setting, not by the API server on every RayService write.
CPU_QUANTITY = r"^([1-9][0-9]*m|[0-9]+(\.[0-9]+)?)$"
MEMORY_QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"


class RenderConfig(BaseModel):
    """Operator-wide settings that shape rendered objects but are not part of any CR."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    serving_image: str = Field(default="ghcr.io/tokenplane/serving:0.1.0", description="Ray head and worker image.")
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    ray_version: str = Field(default="2.60.0", description="Ray version inside serving_image.")
    cluster_domain: str = Field(default="cluster.local", description="DNS domain for the endpoint URL.")
    os_sku: Literal["AzureLinux", "Ubuntu"] = Field(
        default="AzureLinux", description="Node OS of managed pools whose CR has no nodePool.managed block."
    )
    # The head runs no Serve replica (num-cpus 0): GCS, the dashboard, the Serve controller and a proxy, and beside
    # it KubeRay's 500m / 512Mi autoscaler container. Every head runs on the system pool, so the old 2 CPUs / 8Gi
    # never fit a 2-vCPU node (Standard_D2s_v3, older `az aks create` clusters) and left 0.36 CPU on a D4s_v5.
    # KubeRay's RayService sample asks 2 CPUs and 2Gi (limit 5Gi) for a head that also runs tasks
    # (ray-operator/config/samples/ray-service.sample.yaml); ours runs none, and a CPU request is no limit: an idle
    # head uses a fraction of a core and the proxy may burst into idle CPU. 300m and 3Gi, with the sidecar 0.8 CPU
    # and 3.5 GiB, fit a D2s_v3's 0.9 CPU and 3.9 GiB left after AKS's reservations and the 1000m / 2 GiB
    # DaemonSet budget (desired/schedulable.py checks it). Memory is also the limit, and Ray's head grows
    # (the dashboard's event cache, docs.ray.io/en/master/ray-core/head-node-memory-management.html) and may build
    # the app (importing Ray Serve LLM): hence 3Gi, not the sample's 2Gi.
    head_cpu: str = Field(default="300m", pattern=CPU_QUANTITY, description="Ray head CPU request.")
    head_memory: str = Field(default="3Gi", pattern=MEMORY_QUANTITY, description="Ray head memory request and limit.")
    # AKS has no one system node size: the resource provider picks the default by quota and capacity (az aks create
    # --node-vm-size; Azure/azure-powershell#27663 dropped the client-side Standard_DS2_v2 default for that reason).
    # The default is the size the head's fit was checked against before this setting (Standard_D4ds_v5, 4 vCPUs,
    # 16 GiB): an upgrade refuses no head that passed before, including the 2-CPU / 8Gi one docs/rollouts.md pins to
    # keep running clusters. The head defaults also fit a 2-vCPU node; set the real size to check against it.
    system_node_vm_size: str = Field(
        default="Standard_D4ds_v5",
        description="VM size of the system pool the Ray heads run on (their fit is checked).",
    )
    node_daemonset_cpu_millis: int = Field(
        default=NodeOverhead.daemonset_cpu_millis, ge=0, description="CPU the DaemonSets of a GPU node request."
    )
    node_daemonset_memory_mib: int = Field(
        default=NodeOverhead.daemonset_memory_mib, ge=0, description="Memory the DaemonSets of a GPU node request."
    )
    node_os_disk_gib: int = Field(
        default=NodeOverhead.os_disk_gib,
        ge=30,
        le=2048,
        description="OS disk of GPU nodes (the kubelet's ephemeral storage).",
    )
    worker_ephemeral_storage_gib: int = Field(
        default=20, ge=1, description="Most ephemeral storage a worker requests (less when many pods share a node)."
    )
    cpu_worker_base_memory_gib: int = Field(
        default=4, ge=1, description="CPU workers: memory on top of the KV cache (weights, Ray, Python)."
    )
    kuberay_namespace: str = Field(
        default="kuberay-system", description="Namespace of the KubeRay operator (admitted to dashboard, GCS, serve)."
    )
    operator_namespace: str = Field(
        default="tokenplane", description="Namespace of the tokenplane operator (admitted to the metrics port)."
    )
    metrics_namespaces: tuple[str, ...] = Field(
        default=(),
        description="Namespaces of the Prometheus that scrapes the serving pods (admitted to the metrics port, as the "
        "operator's namespace is).",
    )
    private_source_ranges: tuple[str, ...] = Field(
        default=("10.224.0.0/12",),
        description="CIDRs admitted to the serve port of private endpoints (the AKS-created VNet's address space).",
    )

    @field_validator("private_source_ranges")
    @classmethod
    def _no_open_range(cls, ranges: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in ranges:
            network = ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad CIDR
            if network.prefixlen == 0:
                raise ValueError(f"{cidr} admits every address and would void allowedNamespaces; use the VNet's range")
        return ranges

    @field_validator("system_node_vm_size")
    @classmethod
    def _known_system_size(cls, vm_size: str) -> str:
        host_size(vm_size)  # ValueError names the size
        return vm_size

    def system_node(self) -> NodeAllocatable:
        """Return what pods can request on one system node, where every Ray head runs."""
        return host_allocatable(*host_size(self.system_node_vm_size))

    def node_overhead(self) -> NodeOverhead:
        """Return what every GPU node keeps from our workers besides AKS's own reservations."""
        return NodeOverhead(
            daemonset_cpu_millis=self.node_daemonset_cpu_millis,
            daemonset_memory_mib=self.node_daemonset_memory_mib,
            os_disk_gib=self.node_os_disk_gib,
        )
