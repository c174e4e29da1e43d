"""What pods can request on one AKS node of a VM size: capacity minus AKS's reservations and the node's DaemonSets.

AKS reservations, from "Node resource reservations in AKS" (learn.microsoft.com/azure/aks/node-resource-reservations),
for AKS 1.29 and later:

- CPU: kube-reserved by host cores, a table: 1 core 60m, 2 cores 100m, 4 140m, 8 180m, 16 260m, 32 420m, 64 740m.
  Between rows it is linear; above 64 cores the table's last slope (10m per core) is extended.
- Memory: the kubelet's `memory.available<100Mi` hard eviction threshold plus kube-reserved, the smaller of
  `20 MB x max pods + 50 MB` and 25% of the VM's memory.
- Ephemeral storage: the kubelet's default `nodefs.available<10%` hard eviction threshold on the OS disk.

Max pods per node depends on the network plugin (Azure CNI Overlay and kubenet allow up to 250); 250 gives the
largest memory reservation, so sizing with it fits every plugin.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from tokenplane_operator.plan.catalog import GIB, GpuSku

__all__ = [
    "AKS_MAX_PODS",
    "NodeAllocatable",
    "NodeOverhead",
    "host_allocatable",
    "kube_reserved_cpu_millis",
    "kube_reserved_memory_bytes",
    "node_allocatable",
]

AKS_MAX_PODS = 250
_MB = 10**6
_MIB = 1 << 20
_EVICTION_MEMORY = 100 * _MIB
_EVICTION_NODEFS_FRACTION = 0.10
# (host cores, kube-reserved millicores), the AKS table.
_CPU_TABLE = ((1, 60), (2, 100), (4, 140), (8, 180), (16, 260), (32, 420), (64, 740))


@dataclass(frozen=True)
class NodeOverhead:
    """What runs on every GPU node besides our workers, and the node's OS disk.

    The defaults budget the requests of the DaemonSets AKS runs on a GPU node: kube-proxy, azure-ip-masq-agent,
    cloud-node-manager, the Azure Disk/File/Blob CSI node plugins, azure-cns, the NVIDIA device plugin and GPU
    driver DaemonSets (`gpuProfile.driver: Install`), and the Container Insights / managed Prometheus node agents
    when enabled. Their requests change between AKS releases, so this is a budget with headroom, not a measured
    sum: the operator settings `TOKENPLANE_NODE_DAEMONSET_CPU_MILLIS`, `..._MEMORY_MIB` and
    `TOKENPLANE_NODE_OS_DISK_GIB` (chart: `operator.nodeOverhead`) override it; `tokenplane validate`, `render`
    and `plan` read the same variables.

    Attributes:
        daemonset_cpu_millis: CPU requested by the node's DaemonSets.
        daemonset_memory_mib: Memory requested by the node's DaemonSets.
        os_disk_gib: OS disk size (AKS default 128 GiB); the kubelet's root filesystem, ephemeral storage.
    """

    daemonset_cpu_millis: int = 1000
    daemonset_memory_mib: int = 2048
    os_disk_gib: int = 128


@dataclass(frozen=True)
class NodeAllocatable:
    """What pods of ours can request on one node.

    Attributes:
        cpu_millis: CPU, millicores.
        memory_bytes: Memory, bytes.
        ephemeral_bytes: Ephemeral storage, bytes.
        extended: Extended resources (GPUs or MIG slices) by resource name.
    """

    cpu_millis: int
    memory_bytes: int
    ephemeral_bytes: int
    extended: dict[str, int]


def kube_reserved_cpu_millis(cores: int) -> int:
    """Return AKS's kube-reserved CPU for a host with `cores` vCPUs (the documented table, interpolated).

    Args:
        cores: Host vCPUs, at least 1.

    Returns:
        Millicores AKS keeps from pods.
    """
    cores = max(1, cores)
    at = bisect.bisect_left([c for c, _ in _CPU_TABLE], cores)
    if at < len(_CPU_TABLE) and _CPU_TABLE[at][0] == cores:
        return _CPU_TABLE[at][1]
    if at >= len(_CPU_TABLE):
        (c0, m0), (c1, m1) = _CPU_TABLE[-2], _CPU_TABLE[-1]
    else:
        (c0, m0), (c1, m1) = _CPU_TABLE[at - 1], _CPU_TABLE[at]
    return m0 + (cores - c0) * (m1 - m0) // (c1 - c0)


def kube_reserved_memory_bytes(memory_bytes: int, *, max_pods: int = AKS_MAX_PODS) -> int:
    """Return what AKS keeps from pods of a host's memory: eviction threshold plus kube-reserved.

    Args:
        memory_bytes: Host RAM.
        max_pods: The node's max pods.

    Returns:
        Bytes not allocatable to pods.
    """
    kube_reserved = min(20 * _MB * max_pods + 50 * _MB, memory_bytes // 4)
    return _EVICTION_MEMORY + kube_reserved


def node_allocatable(
    sku: GpuSku, mig_profile: str | None = None, overhead: NodeOverhead | None = None
) -> NodeAllocatable:
    """Compute what our pods can request on one node of a VM size.

    Args:
        sku: The VM size (with host vCPUs and RAM).
        mig_profile: The pool's AKS GPU instance profile (MIG1g..MIG7g), or None for whole GPUs.
        overhead: DaemonSet budget and OS disk; the defaults when None.

    Returns:
        CPU, memory and ephemeral storage left for our pods, and the GPU resource the NVIDIA device plugin
        advertises: `nvidia.com/gpu` per GPU, or (MIG, `migStrategy=mixed`) `nvidia.com/mig-<profile>` per slice.
        A profile the size does not offer leaves no GPU resource at all.
    """
    extended = {"nvidia.com/gpu": sku.gpu_count}
    if mig_profile is not None:
        mig = sku.mig_profiles.get(mig_profile)
        extended = {mig.resource_name: sku.gpu_count * mig.slices_per_gpu} if mig else {}
    host = host_allocatable(sku.vcpus, sku.memory_gib, overhead)
    return NodeAllocatable(host.cpu_millis, host.memory_bytes, host.ephemeral_bytes, extended)


def host_allocatable(vcpus: int, memory_gib: float, overhead: NodeOverhead | None = None) -> NodeAllocatable:
    """Compute what pods can request on a node of any VM size (no GPU resources).

    Args:
        vcpus: Host vCPUs.
        memory_gib: Host RAM, GiB.
        overhead: DaemonSet budget and OS disk; the defaults when None.

    Returns:
        CPU, memory and ephemeral storage left after AKS's reservations and the DaemonSets.
    """
    overhead = overhead or NodeOverhead()
    memory = int(memory_gib * GIB)
    cpu = vcpus * 1000 - kube_reserved_cpu_millis(vcpus) - overhead.daemonset_cpu_millis
    mem = memory - kube_reserved_memory_bytes(memory) - overhead.daemonset_memory_mib * _MIB
    disk = int(overhead.os_disk_gib * GIB * (1 - _EVICTION_NODEFS_FRACTION))
    return NodeAllocatable(max(0, cpu), max(0, mem), disk, {})
