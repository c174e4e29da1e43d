"""`helm uninstall` stops while InferenceDeployments remain: the chart's pre-delete Job, run as it renders it.

Uninstalling the operator first left every InferenceDeployment's finalizer and GPU node pool (billed) with nothing to
remove them. The Job's command runs here as the chart configures it (its args, its service account's token) against
the emulated API server; what it asks for is checked against what the chart's RBAC grants that account.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.support.chart import granted, render
from tests.support.kopf_harness import CR_RESOURCE, cr_body, declare_resources
from tests.support.kube_emulator import ApiServerEmulator

pytest.importorskip("helm_python")
pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)


def _hook(values: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    objects = render(values, namespace="tokenplane", name="tokenplane")
    (job,) = [o for o in objects if o["kind"] == "Job"]
    return objects, job


async def _run_hook(k: kmock.KubernetesEmulator, job: dict[str, Any], tmp_path: Path) -> tuple[int, str]:
    """Run the Job's container as the image does (`python -m tokenplane_operator ARGS`), with a kubeconfig for the
    emulator and a service account's token; return its exit code and stderr."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f'{{"apiVersion": "v1", "kind": "Config", "current-context": "k",'
        f' "clusters": [{{"name": "k", "cluster": {{"server": "{str(k.url).rstrip("/")}"}}}}],'
        f' "users": [{{"name": "sa", "user": {{"token": "hook-token"}}}}],'
        f' "contexts": [{{"name": "k", "context": {{"cluster": "k", "user": "sa"}}}}]}}'
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenplane_operator", *container["args"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


@pytest.mark.parametrize(
    ("values", "remaining"),
    [
        ({}, "2 InferenceDeployment(s) remain (ai/chat, web/site)"),
        ({"operator": {"watchNamespaces": ["ai"]}}, "1 InferenceDeployment(s) remain (ai/chat)"),
    ],
)
async def test_uninstall_waits_for_the_deployments_it_watches(
    kmock: ApiServerEmulator, tmp_path: Path, values: dict[str, Any], remaining: str
) -> None:
    declare_resources(kmock)
    objects, job = _hook(values)
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    assert job["spec"]["backoffLimit"] == 0
    for namespace, name in (("ai", "chat"), ("web", "site")):
        kmock.objects[CR_RESOURCE, namespace, name] = cr_body(name, namespace=namespace)
    code, stderr = await _run_hook(kmock, job, tmp_path)
    assert code == 1, stderr
    assert remaining in stderr and "helm uninstall --no-hooks" in stderr
    # Helm's error names only the Job ("job failed: BackoffLimitExceeded"); Helm 3.18+ prints the failed Job's log,
    # these lines, when the hook asks for it, and `kubectl describe pod` shows their tail as the termination message.
    assert job["metadata"]["annotations"]["helm.sh/hook-output-log-policy"] == "hook-failed"
    assert job["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"
    account = job["spec"]["template"]["spec"]["serviceAccountName"]
    assert kmock.accessed and kmock.accessed <= granted(objects, account, "tokenplane"), "its RBAC lets it look"
    del kmock.objects[CR_RESOURCE, "ai", "chat"]
    del kmock.objects[CR_RESOURCE, "web", "site"]
    code, stderr = await _run_hook(kmock, job, tmp_path)
    assert code == 0, stderr


async def test_a_team_release_is_not_held_by_another_teams_deployments(
    kmock: ApiServerEmulator, tmp_path: Path
) -> None:
    declare_resources(kmock)
    kmock.objects[CR_RESOURCE, "web", "site"] = cr_body("site", namespace="web")
    _, job = _hook({"operator": {"watchNamespaces": ["ai"]}})
    code, stderr = await _run_hook(kmock, job, tmp_path)
    assert code == 0, stderr
