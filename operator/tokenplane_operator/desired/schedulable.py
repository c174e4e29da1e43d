"""Would it run on AKS? Check a rendered deployment the way the scheduler, the device plugin and the CNI would.

The rules re-derive their answers from the rendered objects and the catalog (never from the renderer's own
intermediate values), so a rendering bug shows up as a problem here:

- `fits`: every worker pod, times the pods a node of its pool holds, fits the node's allocatable CPU, memory
  and ephemeral storage (on the OS disk, `TOKENPLANE_NODE_OS_DISK_GIB`); a worker that downloads the weights
  (hf://, az://) requests disk for them and bounds its Blob download volume; the head, with the autoscaler
  container KubeRay adds to it, fits a system node.
- `gpu-resource`: each extended resource a worker asks for exists on the pool's VM size with its MIG profile,
  and Ray is told the same number of GPUs.
- `parallelism`: vLLM's TP x PP equals the GPUs of one replica, which whole worker pods hold; status.plan
  says what is rendered.
- `placement`: worker nodeSelector and tolerations match the pool's labels and taints.
- `names`: every name (and the names KubeRay derives from them) fits its Kubernetes limit.
- `service`: the Service selects the pods that serve, on the port Serve listens on.
- `network`: the NetworkPolicy, evaluated as Kubernetes would, admits the flows the system needs and refuses
  the others (`admits` is the evaluator).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from tokenplane_operator.desired.agentpool import SPOT_TAINT
from tokenplane_operator.desired.bundle import DesiredState
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_operator.desired.naming import (
    DASHBOARD_PORT,
    GCS_PORT,
    MAX_NAME_LENGTH,
    METRICS_PORT,
    selector_labels,
)
from tokenplane_operator.desired.rayservice import SYSTEM_POOL_TAINT, weights_disk_bytes
from tokenplane_operator.desired.resolve import checkpoint_bytes
from tokenplane_operator.plan.allocatable import NodeAllocatable, node_allocatable
from tokenplane_operator.plan.catalog import find_sku

__all__ = [
    "KUBERAY_AUTOSCALER_RESOURCES",
    "Peer",
    "Problem",
    "admits",
    "check_head_fits",
    "check_schedulable",
    "parse_quantity",
]

# The autoscaler container KubeRay adds to the head pod with enableInTreeAutoscaling, unless
# autoscalerOptions.resources replaces it (ray-operator/controllers/ray/common/pod.go, BuildAutoscalerContainer).
KUBERAY_AUTOSCALER_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "500m", "memory": "512Mi"},
    "limits": {"cpu": "500m", "memory": "512Mi"},
}
# KubeRay sets this label itself: "true" on RayService worker pods, on the head once its proxy is healthy
# (ray-operator/controllers/ray/common/pod.go, BuildPod).
_KUBERAY_SERVE_LABEL = ("ray.io/serve", "true")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_POOL_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_OUTSIDE_IP = "203.0.113.7"  # TEST-NET-3: an address no VNet uses
_ELSEWHERE = "tokenplane-check-elsewhere"  # a namespace no rule names


@dataclass(frozen=True)
class Problem:
    """One reason the rendering would not run as intended.

    Attributes:
        rule: Which rule failed (fits, gpu-resource, parallelism, placement, names, service, network).
        where: The object and field, e.g. `RayService/m .workerGroupSpecs[gpu]`.
        message: What is wrong, with the numbers.
    """

    rule: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.where}: {self.message}"


@dataclass(frozen=True)
class Peer:
    """The source of a connection, as a NetworkPolicy sees it.

    Attributes:
        namespace: The source pod's namespace; None for an address outside the cluster.
        labels: The source pod's labels.
        ip: The source address (for ipBlock rules).
        namespace_labels: Extra labels of the namespace (the API server always sets kubernetes.io/metadata.name).
    """

    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str | None = None
    namespace_labels: Mapping[str, str] = field(default_factory=dict)


def parse_quantity(value: str | int | float) -> float:
    """Parse a Kubernetes quantity ("46", "500m", "433Gi", "1e3") into a plain number (cores or bytes)."""
    text = str(value).strip()
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    for suffix, factor in _SUFFIX.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


# --- the NetworkPolicy evaluator ----------------------------------------------------------------------------


def _selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Match a metav1.LabelSelector; an empty selector matches everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], source: Peer, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        if source.ip is None:
            return False
        address = ipaddress.ip_address(source.ip)
        block = peer["ipBlock"]
        inside = address in ipaddress.ip_network(block["cidr"], strict=False)
        return inside and not any(address in ipaddress.ip_network(c, strict=False) for c in block.get("except") or [])
    if source.namespace is None:
        return False  # pod and namespace selectors only ever match pods
    namespace_labels = {"kubernetes.io/metadata.name": source.namespace, **source.namespace_labels}
    if "namespaceSelector" in peer:
        if not _selector_matches(peer["namespaceSelector"], namespace_labels):
            return False
    elif source.namespace != policy_namespace:
        return False  # a podSelector alone means pods of the policy's own namespace
    return "podSelector" not in peer or _selector_matches(peer["podSelector"], source.labels)


def _port_matches(ports: list[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        start = entry.get("port")
        if start is None or (isinstance(start, int) and start <= port <= int(entry.get("endPort") or start)):
            return True
    return False


def admits(
    policies: Iterable[Mapping[str, Any]],
    *,
    namespace: str,
    pod_labels: Mapping[str, str],
    source: Peer,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Say whether Kubernetes NetworkPolicies let `source` reach a pod on `port` (ingress only).

    Semantics of networking.k8s.io/v1: a pod no Ingress policy selects admits everything; otherwise a
    connection is admitted when any rule of any selecting policy admits both its source and its port. A rule
    without `from` admits every source; without `ports`, every port. Named ports are not resolved (they
    never match), which errs towards refusing.

    Args:
        policies: NetworkPolicy objects.
        namespace: The destination pod's namespace.
        pod_labels: The destination pod's labels.
        source: Who connects.
        port: Destination port.
        protocol: TCP, UDP or SCTP.

    Returns:
        Whether the connection is admitted.
    """
    selecting = [
        p
        for p in policies
        if (p.get("metadata") or {}).get("namespace") == namespace
        and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or ["Ingress"])
        and _selector_matches((p.get("spec") or {}).get("podSelector"), pod_labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            if peers and not any(_peer_matches(peer, source, namespace) for peer in peers):
                continue
            if _port_matches(rule.get("ports"), port, protocol):
                return True
    return False


# --- the checker --------------------------------------------------------------------------------------------


def check_schedulable(state: DesiredState, config: RenderConfig) -> list[Problem]:
    """Check every rule against one rendered deployment.

    Args:
        state: What `build_desired_state` rendered.
        config: The render settings it used (node overhead, system node size, system namespaces, private ranges).

    Returns:
        The problems found; empty when it would schedule and serve as intended.
    """
    return [
        *_check_fits(state, config),
        *_check_parallelism(state),
        *_check_placement(state),
        *_check_names(state),
        *_check_service(state),
        *_check_network(state, config),
    ]


def _cluster(state: DesiredState) -> dict[str, Any]:
    cluster: dict[str, Any] = state.rayservice["spec"]["rayClusterConfig"]
    return cluster


def _where(state: DesiredState, path: str) -> str:
    return f"RayService/{state.rayservice['metadata']['name']} {path}"


def _pod_requests(template: Mapping[str, Any], extra: Iterable[Mapping[str, Any]] = ()) -> dict[str, float]:
    """Effective requests of a pod: per container, a limit without a request counts as the request.

    `extra` are the `resources` of containers a controller adds to the pod (KubeRay's autoscaler sidecar).
    """
    total: dict[str, float] = {}
    for resources in [c.get("resources") or {} for c in template["spec"]["containers"]] + list(extra):
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, value in merged.items():
            total[name] = total.get(name, 0.0) + parse_quantity(value)
    return total


def _injected_head_containers(cluster: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Return the `resources` of the containers KubeRay adds to the head pod (the autoscaler, when in-tree).

    KubeRay appends it to the head pod (ray-operator/controllers/ray/common/pod.go, `DefaultHeadPodTemplate` and
    `BuildAutoscalerContainer`: 500m CPU and 512Mi requests and limits), and `autoscalerOptions.resources`, when
    set, replaces those whole (`mergeAutoscalerOverrides`).
    """
    if not cluster.get("enableInTreeAutoscaling"):
        return []
    resources = (cluster.get("autoscalerOptions") or {}).get("resources")
    return [KUBERAY_AUTOSCALER_RESOURCES if resources is None else resources]


def _worker_node(state: DesiredState, config: RenderConfig) -> NodeAllocatable | None:
    sku = find_sku(state.vm_size) if state.vm_size else None
    if sku is None:
        return None
    mig = state.agent_pool.mig_profile if state.agent_pool else None
    if state.agent_pool is None and state.deployment.spec.hardware.mig_profile is not None:
        mig = state.deployment.spec.hardware.mig_profile.value  # bring-your-own MIG nodes
    overhead = config.node_overhead()
    if state.agent_pool is not None and state.agent_pool.os_disk_size_gb is not None:
        overhead = replace(overhead, os_disk_gib=state.agent_pool.os_disk_size_gb)  # the pool's osDiskSizeGB
    return node_allocatable(sku, mig, overhead)


def check_head_fits(state: DesiredState, config: RenderConfig) -> list[Problem]:
    """Check that the Ray head (with any container KubeRay adds) fits a system node; validate and the operator check it.

    Args:
        state: What `build_desired_state` rendered.
        config: The render settings it used; `system_node_vm_size` is the node the head runs on.

    Returns:
        One problem per resource the head asks more of than the node has, naming the settings to change.
    """
    cluster = _cluster(state)
    sidecars = _injected_head_containers(cluster)
    problems = _fit_problems(_pod_requests(cluster["headGroupSpec"]["template"], sidecars), config.system_node(), 1)
    counted = " (with the autoscaler container KubeRay adds)" if sidecars else ""
    # The head's requests are operator settings, not the CR's: name them, as the OS disk's fix does.
    fix = (
        "; lower TOKENPLANE_HEAD_CPU / TOKENPLANE_HEAD_MEMORY (chart serving.head.cpu / serving.head.memory) or "
        f"give the system pool a larger VM size than {config.system_node_vm_size} and set it in "
        "TOKENPLANE_SYSTEM_NODE_VM_SIZE (chart serving.head.systemNodeVmSize)"
    )
    where = _where(state, ".headGroupSpec.template.spec.containers[ray-head].resources")
    node = f"a system node ({config.system_node_vm_size})"
    return [Problem("fits", where, f"{p} of {node}{counted}{fix}") for p in problems]


def _check_fits(state: DesiredState, config: RenderConfig) -> list[Problem]:
    found = check_head_fits(state, config)
    node = _worker_node(state, config)
    for group in _cluster(state)["workerGroupSpecs"]:
        where = _where(state, f".workerGroupSpecs[{group['groupName']}]")
        requests = _pod_requests(group["template"])
        gpus = {name: units for name, units in requests.items() if name.startswith("nvidia.com/")}
        if not gpus or node is None:
            continue  # CPU workers: no pool of ours to fit
        for name, units in gpus.items():
            if node.extended.get(name, 0) < units:
                offered = ", ".join(f"{k}: {v}" for k, v in node.extended.items()) or "no GPU resource"
                found.append(
                    Problem("gpu-resource", where, f"asks {name}: {units:g}; {state.vm_size} offers {offered}")
                )
        per_node = min((node.extended.get(n, 0) // int(u) for n, u in gpus.items() if u), default=0)
        if per_node:
            found += [Problem("fits", where, p) for p in _fit_problems(requests, node, int(per_node))]
        found += _check_weights_disk(state, group, requests, where)
        ray_gpus = float(group["rayStartParams"].get("num-gpus", "0"))
        if ray_gpus != sum(gpus.values()):
            found.append(Problem("gpu-resource", where, f"Ray num-gpus {ray_gpus:g} but the pod holds {gpus}"))
    return found


def _check_weights_disk(
    state: DesiredState, group: Mapping[str, Any], requests: Mapping[str, float], where: str
) -> list[Problem]:
    """Check that a worker which downloads the weights requests disk for them and bounds its Blob volume."""
    # The checkpoint as stored, re-derived from the model (not status.plan.weightsBytes, at the serving precision).
    need = weights_disk_bytes(state.deployment, checkpoint_bytes(state.deployment))
    if not need:
        return []
    found = []
    asked = requests.get("ephemeral-storage", 0.0)
    if asked < need:
        found.append(
            Problem(
                "fits",
                f"{where}.template.spec.containers[ray-worker].resources.requests.ephemeral-storage",
                f"{asked / 2**30:g} GiB does not hold the {need / 2**30:.1f} GiB of weights the pod downloads",
            )
        )
    for volume in group["template"]["spec"].get("volumes") or []:
        limit = (volume.get("emptyDir") or {}).get("sizeLimit")
        if limit is not None and not need <= parse_quantity(limit) <= asked:
            found.append(
                Problem(
                    "fits",
                    f"{where}.template.spec.volumes[{volume['name']}].emptyDir.sizeLimit",
                    f"{limit} must hold the {need / 2**30:.1f} GiB of weights and stay within the pod's "
                    f"ephemeral-storage request ({asked / 2**30:g} GiB)",
                )
            )
    return found


def _fit_problems(requests: Mapping[str, float], node: NodeAllocatable, pods: int) -> list[str]:
    problems = []
    for name, have in (("cpu", node.cpu_millis / 1000), ("memory", node.memory_bytes),
                       ("ephemeral-storage", node.ephemeral_bytes)):  # fmt: skip
        need = requests.get(name, 0.0) * pods
        if need > have:
            unit = "" if name == "cpu" else " GiB"
            scale = 1 if name == "cpu" else 2**30
            # The OS disk is an operator setting (AKS pools get 128 GiB unless told otherwise): name the fix.
            fix = (
                "; the weights need a bigger node OS disk: raise TOKENPLANE_NODE_OS_DISK_GIB (chart "
                "operator.nodeOverhead.osDiskGiB) to match the pools' osDiskSizeGB, or use a PVC model source"
                if name == "ephemeral-storage"
                else ""
            )
            problems.append(
                f"{pods} pod(s) x {name} {requests[name] / scale:g}{unit} = {need / scale:g}{unit} exceeds the "
                f"allocatable {have / scale:.2f}{unit}{fix}"
            )
    return problems


def _serve_args(state: DesiredState) -> dict[str, Any]:
    config = yaml.safe_load(state.rayservice["spec"]["serveConfigV2"])
    args: dict[str, Any] = config["applications"][0]["args"]
    return args


def _check_parallelism(state: DesiredState) -> list[Problem]:
    args = _serve_args(state)
    engine, accelerator = args.get("engine") or {}, args.get("accelerator") or {}
    if accelerator.get("kind") != "gpu":
        return []
    tp, pp = int(engine.get("tensor_parallel_size", 1)), int(engine.get("pipeline_parallel_size", 1))
    devices = float(accelerator.get("gpus_per_replica", 1))
    where = _where(state, ".serveConfigV2 engine")
    found = []
    (group,) = _cluster(state)["workerGroupSpecs"]
    per_pod = float(group["rayStartParams"].get("num-gpus", "0"))
    if devices < 1 or any(k.startswith("nvidia.com/mig-") for k in _pod_requests(group["template"])):
        if tp * pp != 1:
            found.append(Problem("parallelism", where, f"TP {tp} x PP {pp} on a GPU fraction or MIG slice"))
    elif tp * pp != devices:
        found.append(Problem("parallelism", where, f"TP {tp} x PP {pp} = {tp * pp} but a replica holds {devices:g}"))
    elif not (per_pod >= devices and per_pod % devices == 0) and not (devices % per_pod == 0 and tp <= per_pod):
        found.append(
            Problem("parallelism", where, f"a {devices:g}-GPU replica does not split into whole {per_pod:g}-GPU pods")
        )
    plan = state.plan
    rendered = (state.vm_size, tp, pp, state.agent_pool.mig_profile if state.agent_pool else plan.mig_profile)
    planned = (plan.vm_size, plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.mig_profile)
    if rendered != planned:
        found.append(Problem("parallelism", "status.plan", f"says {planned} but renders {rendered}"))
    return found


def _tolerates(tolerations: list[Mapping[str, Any]], taint: str) -> bool:
    key_value, _, effect = taint.rpartition(":")
    key, _, value = key_value.partition("=")
    for t in tolerations:
        if t.get("effect") not in (None, "", effect):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, "", key):
            return True
        if t.get("key") == key and t.get("operator", "Equal") == "Equal" and t.get("value", "") == value:
            return True
    return False


def _check_placement(state: DesiredState) -> list[Problem]:
    found = []
    head = _cluster(state)["headGroupSpec"]["template"]["spec"]
    if not _tolerates(head.get("tolerations") or [], SYSTEM_POOL_TAINT):
        where = _where(state, ".headGroupSpec.template.spec")
        found.append(Problem("placement", where, f"no toleration for the system pool's taint {SYSTEM_POOL_TAINT}"))
    for group in _cluster(state)["workerGroupSpecs"]:
        if group["groupName"] != "gpu":
            continue
        where = _where(state, f".workerGroupSpecs[{group['groupName']}].template.spec")
        spec = group["template"]["spec"]
        selector, tolerations = spec.get("nodeSelector") or {}, spec.get("tolerations") or []
        pool = state.agent_pool
        if pool is None:
            if not selector:
                found.append(Problem("placement", where, "no nodeSelector: workers could land on any node"))
            spot = state.deployment.spec.hardware.spot.enabled
            if spot and not _tolerates(tolerations, SPOT_TAINT):  # AKS taints the user's spot nodes too
                found.append(Problem("placement", where, f"spot nodes are tainted {SPOT_TAINT}; no toleration"))
            continue
        labels = pool.effective_labels
        wrong = {k: v for k, v in selector.items() if labels.get(k) != v}
        if wrong:
            found.append(Problem("placement", where, f"nodeSelector {wrong} matches no label of pool {pool.name}"))
        for taint in pool.effective_taints:
            if not taint.endswith(":PreferNoSchedule") and not _tolerates(tolerations, taint):
                found.append(Problem("placement", where, f"no toleration for pool {pool.name}'s taint {taint}"))
    return found


def _check_names(state: DesiredState) -> list[Problem]:
    found = []
    rs = state.rayservice["metadata"]["name"]
    # KubeRay: RayCluster `<rs>-<5 chars>`, its `<cluster>-head-svc`, and the RayService's `<rs>-serve-svc`.
    names = {
        "RayService": (rs, MAX_NAME_LENGTH, _DNS_LABEL),
        "RayCluster head Service": (f"{rs}-xxxxx-head-svc", 63, _DNS_LABEL),
        "RayService serve Service": (f"{rs}-serve-svc", 63, _DNS_LABEL),
        "Service": (state.service["metadata"]["name"], 63, _DNS_LABEL),
        "NetworkPolicy": (state.network_policy["metadata"]["name"], 253, _DNS_SUBDOMAIN),
    }
    if state.agent_pool is not None:
        names["agent pool"] = (state.agent_pool.name, 12, _POOL_NAME)
    for kind, (name, limit, pattern) in names.items():
        if len(name) > limit or not pattern.match(name):
            found.append(Problem("names", kind, f"{name!r} ({len(name)} chars) is not a valid name of at most {limit}"))
    templates = [
        _cluster(state)["headGroupSpec"]["template"],
        *(g["template"] for g in _cluster(state)["workerGroupSpecs"]),
    ]
    objects = [state.rayservice, state.service, state.network_policy, *templates]
    for obj in objects:
        for key, value in ((obj.get("metadata") or {}).get("labels") or {}).items():
            if len(value) > 63 or not _LABEL_VALUE.match(value):
                found.append(Problem("names", f"label {key}", f"value {value!r} is not a valid label value (<= 63)"))
    for template in templates:
        for item in [*template["spec"]["containers"], *(template["spec"].get("volumes") or [])]:
            if len(item["name"]) > 63 or not _DNS_LABEL.match(item["name"]):
                found.append(Problem("names", "container/volume", f"{item['name']!r} is not a DNS label"))
    return found


def _check_service(state: DesiredState) -> list[Problem]:
    service = state.service
    where = f"Service/{service['metadata']['name']}"
    found = []
    selector = service["spec"].get("selector") or {}
    if not selector:
        found.append(Problem("service", where, "no selector: it would select no pods of ours"))
    for group in _cluster(state)["workerGroupSpecs"]:
        labels = {
            **(group["template"]["metadata"].get("labels") or {}),
            _KUBERAY_SERVE_LABEL[0]: _KUBERAY_SERVE_LABEL[1],
        }
        missing = {k: v for k, v in selector.items() if labels.get(k) != v}
        if missing:
            found.append(Problem("service", where, f"selector {missing} matches no {group['groupName']} worker pod"))
    if service["metadata"]["namespace"] != state.rayservice["metadata"]["namespace"]:
        found.append(Problem("service", where, "not in the namespace of the pods it should select"))
    serve_port = int(_serve_args_http_port(state))
    targets = {port.get("targetPort") for port in service["spec"]["ports"]}
    if targets != {serve_port}:
        found.append(
            Problem("service", where, f"targets port(s) {sorted(map(str, targets))}; Serve listens on {serve_port}")
        )
    return found


def _serve_args_http_port(state: DesiredState) -> int:
    config = yaml.safe_load(state.rayservice["spec"]["serveConfigV2"])
    return int((config.get("http_options") or {}).get("port", 8000))


def _flows(
    state: DesiredState, config: RenderConfig
) -> tuple[list[tuple[str, Peer, int]], list[tuple[str, Peer, int]]]:
    """Return the flows the system needs, and flows it must refuse (each with a description)."""
    deployment = state.deployment
    namespace = deployment.namespace
    serve = _serve_args_http_port(state)
    own_pods = Peer(namespace, selector_labels(deployment.name))
    callers = sorted({namespace, *deployment.spec.endpoint.allowed_namespaces})
    system = {config.kuberay_namespace, config.operator_namespace}
    needed = [
        *((f"KubeRay ({config.kuberay_namespace}) -> {port}", Peer(config.kuberay_namespace), port)
          for port in (DASHBOARD_PORT, GCS_PORT, serve)),
        (f"operator ({config.operator_namespace}) -> {METRICS_PORT}", Peer(config.operator_namespace), METRICS_PORT),
        *((f"Prometheus ({ns}) -> {METRICS_PORT}", Peer(ns), METRICS_PORT) for ns in config.metrics_namespaces),
        *((f"Ray pod -> Ray pod {port}", own_pods, port) for port in (GCS_PORT, 10001, 12345)),
        *((f"caller in {ns} -> serve {serve}", Peer(ns, {"app": "client"}), serve) for ns in callers),
    ]  # fmt: skip
    refused = [
        (f"namespace {_ELSEWHERE} -> {port}", Peer(_ELSEWHERE), port) for port in (serve, DASHBOARD_PORT, GCS_PORT)
    ]
    refused += [
        (f"caller in {ns} -> {port}", Peer(ns, {"app": "client"}), port)
        for ns in callers
        if ns not in system
        for port in (DASHBOARD_PORT, GCS_PORT, METRICS_PORT)
        if port != METRICS_PORT or ns not in config.metrics_namespaces
    ]
    if config.operator_namespace not in {config.kuberay_namespace, *callers}:
        refused += [(f"operator -> {p}", Peer(config.operator_namespace), p) for p in (DASHBOARD_PORT, GCS_PORT)]
    if config.kuberay_namespace not in {config.operator_namespace, *config.metrics_namespaces, *callers}:
        refused.append((f"KubeRay -> metrics {METRICS_PORT}", Peer(config.kuberay_namespace), METRICS_PORT))
    if namespace not in system:
        other = Peer(namespace, selector_labels(f"{deployment.name}-other"))
        refused.append(("another deployment's pod -> GCS", other, GCS_PORT))
    private = deployment.spec.endpoint.visibility.value == "private"
    for cidr in config.private_source_ranges if private else ():
        needed.append((f"VNet client {cidr} -> serve", Peer(ip=str(ipaddress.ip_network(cidr)[1])), serve))
    if not any(ipaddress.ip_address(_OUTSIDE_IP) in ipaddress.ip_network(c) for c in config.private_source_ranges):
        refused.append((f"outside address {_OUTSIDE_IP} -> serve", Peer(ip=_OUTSIDE_IP), serve))
    return needed, refused


def _check_network(state: DesiredState, config: RenderConfig) -> list[Problem]:
    policy = state.network_policy
    where = f"NetworkPolicy/{policy['metadata']['name']}"
    namespace = state.deployment.namespace
    pods = {
        "head": _cluster(state)["headGroupSpec"]["template"]["metadata"].get("labels") or {},
        **{g["groupName"]: g["template"]["metadata"].get("labels") or {} for g in _cluster(state)["workerGroupSpecs"]},
    }
    found = []
    for pod, labels in pods.items():
        if not _selector_matches(policy["spec"].get("podSelector"), labels):
            found.append(Problem("network", where, f"does not select the {pod} pods: they would be open to all"))
            continue
        needed, refused = _flows(state, config)
        for what, source, port in needed:
            if not admits([policy], namespace=namespace, pod_labels=labels, source=source, port=port):
                found.append(Problem("network", where, f"refuses a needed flow to the {pod}: {what}"))
        for what, source, port in refused:
            if admits([policy], namespace=namespace, pod_labels=labels, source=source, port=port):
                found.append(Problem("network", where, f"admits a flow nothing needs to the {pod}: {what}"))
    return found
