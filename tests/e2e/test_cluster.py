"""Opt-in tier against a real cluster with KubeRay: a CPU InferenceDeployment goes Ready and is cleaned up.

Run with `TOKENPLANE_E2E_KUBECONFIG=~/.kube/config make test-e2e`. Optional: TOKENPLANE_E2E_MODEL_SOURCE (a model
the serving image can read, e.g. pvc://models/tiny or an HF id when the cluster has egress) and
TOKENPLANE_SERVING_IMAGE (the serving image the RayService runs). No Azure is touched: the CR runs on CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "charts" / "tokenplane" / "crds" / "inferencedeployments.tokenplane.io.yaml"
GROUP, VERSION, PLURAL = "tokenplane.io", "v1alpha1", "inferencedeployments"


@pytest.fixture(scope="module")
def api() -> Any:
    from kubernetes import client, config

    config.load_kube_config(config_file=os.environ["TOKENPLANE_E2E_KUBECONFIG"])
    return client


@pytest.fixture(scope="module")
def namespace(api: Any) -> Iterator[str]:
    name = f"tokenplane-e2e-{uuid.uuid4().hex[:6]}"
    extensions = api.ApiextensionsV1Api()
    crd = yaml.safe_load(CRD.read_text())
    try:
        extensions.create_custom_resource_definition(crd)
    except api.ApiException as exc:
        if exc.status != 409:
            raise
    api.CoreV1Api().create_namespace({"metadata": {"name": name}})
    yield name
    api.CoreV1Api().delete_namespace(name)


@pytest.fixture(scope="module")
def operator_process(namespace: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "KUBECONFIG": os.environ["TOKENPLANE_E2E_KUBECONFIG"]}
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenplane_operator", "operator", "--namespace", namespace], env=env
    )
    yield process
    process.terminate()
    process.wait(timeout=60)


def _wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(5)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_cpu_deployment_goes_ready_and_is_cleaned_up(
    api: Any, namespace: str, operator_process: subprocess.Popen[bytes]
) -> None:
    custom = api.CustomObjectsApi()
    source = os.environ.get("TOKENPLANE_E2E_MODEL_SOURCE", "pvc://models/tiny")
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceDeployment",
        "metadata": {"name": "tiny", "namespace": namespace},
        "spec": {
            "model": {"source": source, "maxModelLen": 1024},
            "engine": {"maxNumSeqs": 8, "enforceEager": True},
            "hardware": {"accelerator": "cpu"},
            "endpoint": {"auth": {"mode": "none"}},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def ready() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tiny")
        conditions = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
        return obj if conditions.get("Ready", {}).get("status") == "True" else None

    obj = _wait(ready, 1800, "condition Ready=True")
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert obj["status"]["endpoint"]["url"].endswith("/v1")
    rayservice = custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", "tiny")
    assert rayservice["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tiny")

    def rayservice_gone() -> bool:
        try:
            custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", "tiny")
        except api.ApiException as exc:
            return exc.status == 404
        return False

    _wait(rayservice_gone, 600, "the RayService to be garbage-collected")
    assert operator_process.poll() is None, "the operator exited"
