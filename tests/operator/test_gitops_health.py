"""Argo CD's health Lua and Flux's kstatus read our status the same way, on bodies a running operator wrote.

The operator (kopf + the emulated API server and ARM) produces four bodies: provisioning (progressing), Ready,
stalled on a GPU quota error, and a Ready body whose spec changed while the operator was down (stale generation).
The Lua runs in a real Lua runtime (lupa) exactly as argocd-cm ships it; kstatus is sigs.k8s.io/cli-utils'
pkg/kstatus/status generic rules (checkGenericProperties: observedGeneration, then Reconciling=True ->
InProgress, Stalled=True -> Failed, otherwise Current), transcribed below.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.support.kopf_harness import OperatorHarness, cr_body
from tests.support.kube_emulator import ApiServerEmulator

lupa = pytest.importorskip("lupa")
pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

LUA = Path(__file__).resolve().parents[2] / "deploy" / "gitops" / "argocd" / "inferencedeployment-health.lua"
POOL_PUT = r"/agentPools/[^/]+$"


def argocd_health(body: dict[str, Any]) -> tuple[str, str]:
    """Run the health Lua as Argo CD does: the resource as the global `obj`, the script's returned table read."""
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return runtime.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return runtime.table_from([to_lua(v) for v in value])
        return value

    runtime.globals().obj = to_lua(body)
    result = runtime.execute(LUA.read_text())
    return str(result["status"]), str(result["message"])


def kstatus(body: dict[str, Any]) -> str:
    """kstatus' generic reading of a custom resource (cli-utils pkg/kstatus/status/generic.go)."""
    status = body.get("status") or {}
    generation = (body.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress"
    for condition in status.get("conditions") or []:
        if condition["type"] == "Reconciling" and condition["status"] == "True":
            return "InProgress"
        if condition["type"] == "Stalled" and condition["status"] == "True":
            return "Failed"
    return "Current"


AGREE = {"Healthy": "Current", "Progressing": "InProgress", "Degraded": "Failed"}


async def test_argocd_lua_and_kstatus_agree_on_real_status_bodies(op: OperatorHarness) -> None:
    bodies: dict[str, dict[str, Any]] = {}
    # Stalled: Azure refuses the pool for quota (twice; the harness retries rejected requests after 1 s).
    op.arm.quota_exceeded("PUT", POOL_PUT, family="standardNCADSA100v4Family", times=2)
    await op.create(cr_body("quota"))
    await op.wait_for(lambda: op.condition("quota", "Stalled").get("status") == "True", message="stalled")
    bodies["stalled"] = copy.deepcopy(op.get("quota") or {})
    await op.delete("quota")
    await op.wait_for(lambda: op.get("quota") is None, message="quota deleted")

    # Progressing: the pool is there, the RayService exists, KubeRay has not reported it ready.
    await op.create(cr_body("m1", vm_size="Standard_NC40ads_H100_v5"))
    await op.wait_for(lambda: op.get("m1", resource="ray.io/v1/rayservices"), message="RayService")
    await op.wait_for(lambda: op.condition("m1", "NodePoolReady").get("status") == "True", message="pool ready")
    bodies["progressing"] = copy.deepcopy(op.get("m1") or {})
    bodies["ready"] = copy.deepcopy(await op.wait_ready("m1"))

    # Stale generation: the spec changes while no operator runs; Ready=True is then about the old spec.
    await op.stop()
    await op.patch("m1", {"spec": {"engine": {"maxNumSeqs": 48}}})
    bodies["stale-generation"] = copy.deepcopy(op.get("m1") or {})
    stale = bodies["stale-generation"]
    assert stale["metadata"]["generation"] > stale["status"]["observedGeneration"]
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in stale["status"]["conditions"])

    expected = {
        "stalled": "Degraded",
        "progressing": "Progressing",
        "ready": "Healthy",
        "stale-generation": "Progressing",
    }
    for name, body in bodies.items():
        health, message = argocd_health(body)
        assert health == expected[name], (name, health, message, body.get("status"))
        assert kstatus(body) == AGREE[health], (name, kstatus(body), health)
    assert "QuotaExceeded" in argocd_health(bodies["stalled"])[1]
    assert "generation" in argocd_health(bodies["stale-generation"])[1]


def test_lua_without_status_is_progressing() -> None:
    body = cr_body("new")
    assert argocd_health(body)[0] == "Progressing"
    assert kstatus(body) == "Current"  # kstatus' known blind spot: no status yet reads as Current
