"""Two tokenplane releases whose operators would reconcile the same InferenceDeployments: the second is refused.

Helm's `lookup` reads the peering objects the other releases made; the chart is rendered the way `helm install` renders
it (helm-python-sdk's cluster-aware render), against the emulated API server holding those objects.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import pytest

from tests.support.chart import CHART, render
from tests.support.kube_emulator import ApiServerEmulator

helm_python = pytest.importorskip("helm_python")
pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

CLUSTER_PEERINGS = "kopf.dev/v1/clusterkopfpeerings"
PEERINGS = "kopf.dev/v1/kopfpeerings"


def _installed(k: kmock.KubernetesEmulator, name: str, namespace: str, watch: list[str]) -> None:
    """Put another release's peering objects in the cluster, as `helm install` leaves them (with its annotations)."""
    for obj in render({"operator": {"watchNamespaces": watch}}, namespace=namespace, name=name):
        if obj["apiVersion"] != "kopf.dev/v1":
            continue
        meta = obj["metadata"]
        meta["annotations"] = {"meta.helm.sh/release-name": name, "meta.helm.sh/release-namespace": namespace}
        plural = CLUSTER_PEERINGS if obj["kind"] == "ClusterKopfPeering" else PEERINGS
        k.objects[plural, meta.get("namespace"), f"{meta['name']}-{name}"] = obj


async def _install(k: kmock.KubernetesEmulator, watch: list[str], namespace: str = "team-ops") -> dict[str, Any]:
    """Render the chart as `helm install tokenplane` into `namespace` does, `lookup` reading the emulated cluster."""
    url = str(k.url).rstrip("/")
    kubeconfig = (
        f'{{"apiVersion": "v1", "kind": "Config", "current-context": "k",'
        f' "clusters": [{{"name": "k", "cluster": {{"server": "{url}"}}}}],'
        f' "users": [{{"name": "u", "user": {{"token": "helm-user"}}}}],'
        f' "contexts": [{{"name": "k", "context": {{"cluster": "k", "user": "u"}}}}]}}'
    )

    def render_with_lookup() -> dict[str, Any]:
        with helm_python.Config(kubeconfig_content=kubeconfig, namespace=namespace) as config:
            chart = helm_python.Chart.load(str(CHART))
            values = {"operator": {"watchNamespaces": watch}}
            return dict(config.render(chart, values, name="tokenplane", namespace=namespace, is_install=True))

    return await asyncio.to_thread(render_with_lookup)  # the emulator answers on this test's event loop


@pytest.fixture
def cluster(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    kmock.resources[CLUSTER_PEERINGS] = kmock.ResourceInfo(kind="ClusterKopfPeering", namespaced=False, verbs={"list"})
    kmock.resources[PEERINGS] = kmock.ResourceInfo(kind="KopfPeering", namespaced=True, verbs={"list"})
    return kmock


@pytest.mark.parametrize(
    ("other", "watch", "message"),
    [
        # A team's release beside an operator over every namespace: both reconciled the team's deployments.
        (["*"], ["ai"], "release ops/tp's operator already watches every namespace, and this release's (team-ops/"
         "tokenplane, watching namespaces ai) would reconcile the same InferenceDeployments"),
        # An operator over every namespace beside a team's.
        (["ai", "web"], [], "release ops/tp's operator already watches namespace ai, and this release's (team-ops/"
         "tokenplane, watching every namespace) would reconcile"),
        # Two teams' releases sharing a namespace.
        (["web", "ai"], ["ai", "support"], "already watches namespace ai, and this release's (team-ops/tokenplane, "
         "watching namespaces ai, support)"),
    ],
)  # fmt: skip
async def test_a_release_overlapping_another_is_refused_naming_it(
    cluster: kmock.KubernetesEmulator, other: list[str], watch: list[str], message: str
) -> None:
    _installed(cluster, "tp", "ops", [] if other == ["*"] else other)
    with pytest.raises(helm_python.HelmError) as caught:
        await _install(cluster, watch)
    assert message in str(caught.value)
    assert "give the two releases namespaces of their own, or uninstall ops/tp first" in str(caught.value)


async def test_releases_over_their_own_namespaces_and_upgrades_install(cluster: kmock.KubernetesEmulator) -> None:
    _installed(cluster, "tp", "ops", ["web"])
    _installed(cluster, "tokenplane", "team-ops", ["ai"])  # this release itself, upgraded
    # Another kopf operator's peering, not a tokenplane release's.
    cluster.objects[CLUSTER_PEERINGS, None, "other"] = {
        "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "other"}
    }  # fmt: skip
    rendered = await _install(cluster, ["ai", "support"])
    assert any(path.endswith("deployment.yaml") for path in rendered)
