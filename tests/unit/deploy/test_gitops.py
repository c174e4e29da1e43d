"""deploy/gitops: every Flux and Argo CD object validates against its published CRD (vendored under tests/data/
with its license), the paths they point at exist, the values they pass render with the chart, and the Argo CD
health Lua shipped in the ConfigMap is the tested file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chart import render
from tests.support.crd_schema import crd_validator

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[3]
GITOPS = ROOT / "deploy" / "gitops"
DATA = ROOT / "tests" / "data"
CRDS = {
    "GitRepository": DATA / "flux" / "source.toolkit.fluxcd.io_gitrepositories.yaml",
    "Kustomization": DATA / "flux" / "kustomize.toolkit.fluxcd.io_kustomizations.yaml",
    "HelmRelease": DATA / "flux" / "helm.toolkit.fluxcd.io_helmreleases.yaml",
    "Application": DATA / "argocd" / "application-crd.yaml",
    "InferenceDeployment": ROOT / "charts" / "tokenplane" / "crds" / "inferencedeployments.tokenplane.io.yaml",
}


def objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(GITOPS.rglob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_gitops_object_validates() -> None:
    found = objects()
    assert {o["kind"] for o in found} == {
        "GitRepository",
        "Kustomization",
        "HelmRelease",
        "Application",
        "ConfigMap",
        "Namespace",
        "InferenceDeployment",
    }
    for obj in found:
        if obj["kind"] in CRDS:
            version = obj["apiVersion"].split("/")[1]
            errors = list(crd_validator(CRDS[obj["kind"]], obj["kind"], version).iter_errors(obj))
            assert not errors, [f"{obj['kind']} {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
        else:
            kubernetes_validate.validate(obj, "1.33", strict=True)


def test_a_misplaced_field_is_caught() -> None:
    release = next(o for o in objects() if o["kind"] == "HelmRelease")
    release["spec"]["chart"]["spec"]["chartPath"] = "./charts/tokenplane"
    assert list(crd_validator(CRDS["HelmRelease"], "HelmRelease", "v2").iter_errors(release))


def test_paths_exist_and_values_render() -> None:
    found = objects()
    paths = [o["spec"]["path"] for o in found if o["kind"] == "Kustomization"]
    paths += [o["spec"]["source"]["path"] for o in found if o["kind"] == "Application"]
    paths += [o["spec"]["chart"]["spec"]["chart"] for o in found if o["kind"] == "HelmRelease"]
    for path in paths:
        assert (ROOT / path).is_dir(), path
    for values in [o["spec"]["values"] for o in found if o["kind"] == "HelmRelease"] + [
        o["spec"]["source"]["helm"]["valuesObject"]
        for o in found
        if o["kind"] == "Application" and "helm" in o["spec"]["source"]
    ]:
        assert any(obj["kind"] == "Deployment" for obj in render(values))


def test_argocd_configmap_ships_the_tested_lua() -> None:
    config = next(o for o in objects() if o["kind"] == "ConfigMap")
    lua = config["data"]["resource.customizations.health.tokenplane.io_InferenceDeployment"]
    assert lua == (GITOPS / "argocd" / "inferencedeployment-health.lua").read_text()


def synced_paths() -> list[tuple[dict[str, Any], str]]:
    """Each Flux Kustomization and Argo CD Application with the repository path it syncs."""
    found = objects()
    return [(o, o["spec"]["path"]) for o in found if o["kind"] == "Kustomization"] + [
        (o, o["spec"]["source"]["path"]) for o in found if o["kind"] == "Application"
    ]


def test_alerts_come_with_both_monitors_they_read() -> None:
    """The readiness, maxReplicas and quota alerts read the operator's metrics: the HelmRelease enabled alerts and the
    serving PodMonitor only, so three of six alerts could never fire, and a HelmRelease shows no NOTES saying so."""
    found = objects()
    values = [o["spec"]["values"] for o in found if o["kind"] == "HelmRelease"] + [
        o["spec"]["source"]["helm"]["valuesObject"]
        for o in found
        if o["kind"] == "Application" and "helm" in o["spec"]["source"]
    ]
    for monitoring in (v.get("monitoring") or {} for v in values):
        if (monitoring.get("alerts") or {}).get("enabled"):
            assert monitoring["podMonitor"]["enabled"] and monitoring["operatorMonitor"]["enabled"], monitoring


def test_synced_inference_deployments_are_one_example_with_its_namespace() -> None:
    """Both pointed at deploy/examples: all eight examples (a 235B MoE on 8-GPU nodes among them) in four namespaces
    nothing created, so the first sync failed on the namespaces, or, where they existed, provisioned every pool."""
    examples = ROOT / "deploy" / "examples"
    for owner, path in synced_paths():
        files = sorted((ROOT / path).glob("*.yaml"))
        docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if isinstance(d, dict) and "kind" in d]
        if not any(d["kind"] == "InferenceDeployment" for d in docs):
            continue
        assert (ROOT / path) != examples, owner["metadata"]["name"]
        created = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
        used = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
        assert used <= created, (owner["metadata"]["name"], used - created)
        if owner["kind"] == "Application":
            # The CRD comes from the chart's Application: no dry run of a kind the cluster does not know yet.
            assert "SkipDryRunOnMissingResource=true" in owner["spec"]["syncPolicy"]["syncOptions"]
        tested = [yaml.safe_load(f.read_text()) for f in sorted(examples.glob("*.yaml"))]
        for doc in (d for d in docs if d["kind"] == "InferenceDeployment"):
            assert doc in tested, f"{path}: {doc['metadata']['name']} is not a deploy/examples file (validated there)"


def test_argo_cd_never_deletes_the_charts_crds() -> None:
    """Argo CD renders crds/ as ordinary resources of the Application: deleting it (cascade, `argocd app delete`'s
    default) or pruning deleted the InferenceDeployment CRD, and with it every InferenceDeployment in the cluster
    (their node pools orphaned or torn down, depending on which the operator saw first), and kopf's peering CRDs other
    kopf operators use."""
    crds = [
        d
        for f in sorted((ROOT / "charts" / "tokenplane" / "crds").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]
    assert len(crds) == 3
    for crd in crds:
        options = crd["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-options", "")
        assert {"Delete=false", "Prune=false"} <= {o.strip() for o in options.split(",")}, crd["metadata"]["name"]
