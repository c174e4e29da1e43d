"""The chart's RBAC grants exactly what the operator process uses: recorded from its requests, compared both ways.

The operator runs as the chart configures it (its args, its peering object, its settings) against the emulated
API server, through a whole lifecycle: start and peer, create to Ready, status metrics (pod listing), a spec update
(re-apply of every owned object), deletion, graceful stop. Every request's RBAC verb is recorded
(`ApiServerEmulator.accessed`). Whoever adds a Kubernetes call without its grant, or leaves a grant nobody uses,
fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.support.aks_script import role_actions
from tests.support.arm_emulator import ArmEmulator
from tests.support.chart import granted, render
from tests.support.kopf_harness import RS_RESOURCE, cr_body, declare_resources
from tests.support.kube_emulator import Access, ApiServerEmulator
from tests.support.kuberay_peer import KubeRayPeer
from tests.support.operator_process import OperatorProcess

pytest.importorskip("helm_python")
pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

RELEASE_NAMESPACE = "tokenplane"
FAST = {
    "TOKENPLANE_POLL_INTERVAL_S": "0.5",
    "TOKENPLANE_METRICS_INTERVAL_S": "0.5",
    "TOKENPLANE_POOL_CACHE_TTL_S": "0",
    "TOKENPLANE_BACKOFF_BASE_S": "0.5",
    "TOKENPLANE_BACKOFF_MAX_S": "2",
}


def declare_peering(k: kmock.KubernetesEmulator) -> None:
    """kopf's peering CRDs as the chart's crds/ installs them (kopf's own peering.yaml)."""
    verbs = {"list", "watch", "get", "patch", "create", "delete"}
    k.resources["kopf.dev/v1/clusterkopfpeerings"] = kmock.ResourceInfo(
        kind="ClusterKopfPeering", namespaced=False, verbs=verbs
    )
    k.resources["kopf.dev/v1/kopfpeerings"] = kmock.ResourceInfo(kind="KopfPeering", namespaced=True, verbs=verbs)


async def install(op: OperatorProcess, objects: list[dict[str, Any]]) -> None:
    """Create the chart's peering objects in the emulator, as `helm install` would."""
    for obj in objects:
        if obj["kind"] == "ClusterKopfPeering":
            await op._send("POST", "/apis/kopf.dev/v1/clusterkopfpeerings", obj)
        elif obj["kind"] == "KopfPeering":
            await op._send("POST", f"/apis/kopf.dev/v1/namespaces/{obj['metadata']['namespace']}/kopfpeerings", obj)


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


async def run_lifecycle(
    k: kmock.KubernetesEmulator, arm: ArmEmulator, workdir: Path, objects: list[dict[str, Any]], namespace: str
) -> set[Access]:
    container = operator_container(objects)
    env = {e["name"]: e["value"] for e in container["env"] if e["name"] == "TOKENPLANE_PEERING_NAME"}
    op = OperatorProcess(k, arm, workdir, FAST | env, args=tuple(container["args"][1:]))
    await install(op, objects)
    await op.start()
    try:
        await op.create(cr_body("m1", namespace=namespace))
        await op.wait_ready("m1", namespace=namespace, within=60)
        await op.create_pod(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "m1-worker", "namespace": namespace, "labels": {"tokenplane.io/deployment": "m1"}},
                "spec": {"containers": [{"name": "ray-worker", "image": "x"}]},
                "status": {"phase": "Running", "podIP": "127.0.0.1"},
            }
        )
        await op.wait_for(lambda: Access("", "pods", "list", namespace) in k.accessed, within=30, message="scrape")
        before = (op.get("m1", namespace=namespace, resource=RS_RESOURCE) or {})["metadata"]["resourceVersion"]
        # Every owned object changes: the engine (RayService), the port (Service), the callers (NetworkPolicy).
        update = {"engine": {"maxNumSeqs": 32}, "endpoint": {"port": 8443, "allowedNamespaces": ["web"]}}
        await op.patch("m1", {"spec": update}, namespace=namespace)
        await op.wait_for(
            lambda: (
                (op.get("m1", namespace=namespace, resource=RS_RESOURCE) or {})["metadata"]["resourceVersion"] != before
            ),
            within=30,
            message="RayService re-applied",
        )
        # A Ray-cluster change (a new env var on every pod): with upgradeStrategy None the operator replaces it.
        await op.patch("m1", {"spec": {"model": {"accessSecretRef": {"name": "hf"}}}}, namespace=namespace)
        replaced = Access("ray.io", "rayservices", "delete", namespace)
        await op.wait_for(lambda: replaced in k.accessed, within=30, message="RayService replaced")
        await op.delete("m1", namespace=namespace)
        await op.wait_for(lambda: op.get("m1", namespace=namespace) is None, within=60, message="m1 gone")
        assert await op.stop() == 0, op.log_tail()
    finally:
        await op.stop(kill=True)
    assert "Pausing" not in op.log_path.read_text(), "a lone replica must not pause: its peering is broken"
    return set(k.accessed)


def compare(needed: set[Access], grants: set[Access], *, clusterwide: bool) -> tuple[set[Access], set[Access]]:
    """(requests no grant covers, grants no request used). A cluster grant covers any namespace."""

    def covers(grant: Access, access: Access) -> bool:
        same = (grant.group, grant.resource, grant.verb) == (access.group, access.resource, access.verb)
        in_scope = grant.namespace is None or grant.namespace == access.namespace
        return same and in_scope

    def used(grant: Access) -> bool:
        # A namespaced operator's cluster-wide grant must be needed cluster-wide, not only in its namespaces.
        return any(
            covers(grant, a) and (clusterwide or grant.namespace is not None or a.namespace is None) for a in needed
        )

    missing = {a for a in needed if not any(covers(g, a) for g in grants)}
    unused = {g for g in grants if not used(g)}
    return missing, unused


@pytest.mark.parametrize(
    ("values", "namespace", "clusterwide"),
    [({}, "default", True), ({"operator": {"watchNamespaces": ["ai"]}}, "ai", False)],
    ids=["all-namespaces", "one-namespace"],
)
async def test_rbac_grants_exactly_what_the_operator_uses(
    kmock: ApiServerEmulator,
    wi_arm: ArmEmulator,
    tmp_path: Path,
    values: dict[str, Any],
    namespace: str,
    clusterwide: bool,
    kuberay: KubeRayPeer,
) -> None:
    declare_resources(kmock)
    declare_peering(kmock)
    objects = render(values, namespace=RELEASE_NAMESPACE)
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    needed = await run_lifecycle(kmock, wi_arm, tmp_path, objects, namespace)
    grants = granted(objects, account, RELEASE_NAMESPACE)
    assert not any("*" in (g.group, g.resource, g.verb) for g in grants), "no wildcards"
    missing, unused = compare(needed, grants, clusterwide=clusterwide)
    assert not missing, f"the operator made requests the chart does not allow: {sorted(missing)}"
    assert not unused, f"the chart grants what the operator never uses: {sorted(unused)}"
    assert arm_actions(wi_arm) == role_actions(), "deploy/aks/prepare-cluster.sh's custom role != the ARM calls made"


# The Azure RBAC action each ARM request of the operator needs (learn.microsoft.com/azure/role-based-access-control/
# permissions/containers#microsoftcontainerservice); Entra ID's token endpoint needs none.
_ARM_ACTIONS = {
    ("GET", r"/agentPools(/[^/]+)?$"): "Microsoft.ContainerService/managedClusters/agentPools/read",
    ("PUT", r"/agentPools/[^/]+$"): "Microsoft.ContainerService/managedClusters/agentPools/write",
    ("DELETE", r"/agentPools/[^/]+$"): "Microsoft.ContainerService/managedClusters/agentPools/delete",
    # The quota check (learn.microsoft.com/azure/role-based-access-control/permissions/compute).
    ("GET", r"/managedClusters/[^/]+$"): "Microsoft.ContainerService/managedClusters/read",
    ("GET", r"/providers/Microsoft\.Compute/skus$"): "Microsoft.Compute/skus/read",
    ("GET", r"/providers/Microsoft\.Compute/locations/[^/]+/usages$"): "Microsoft.Compute/locations/usages/read",
}


def arm_actions(arm: ArmEmulator) -> set[str]:
    """The Azure RBAC actions the recorded ARM requests needed; an unknown request fails (map it, and grant it)."""
    actions = set()
    for call in arm.calls():
        if call.method == "POST" and "/oauth2/" in call.path:
            continue
        matched = [
            a for (method, path), a in _ARM_ACTIONS.items() if call.method == method and re.search(path, call.path)
        ]
        assert matched, f"an ARM request with no known RBAC action: {call.method} {call.path}"
        actions.add(matched[0])
    return actions
