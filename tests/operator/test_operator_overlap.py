"""A second tokenplane release's operator refuses to start beside a running one that watches the same namespaces.

Helm's `lookup` refuses such an install, but `helm template`, dry runs and Argo CD never run it; kopf's peering
keeps one release's replicas apart, not two releases'. The operator runs here as the chart configures it (its args
and variables) against the emulated API server holding the other release's peering object.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.operator.test_rbac import declare_peering, operator_container
from tests.support.arm_emulator import ArmEmulator
from tests.support.chart import render
from tests.support.kopf_harness import OperatorHarness
from tests.support.kube_emulator import ApiServerEmulator

pytest.importorskip("helm_python")
pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)


def _running(objects: list[dict[str, Any]], *, seen_s_ago: float) -> dict[str, Any]:
    """The other release's peering object as Helm leaves it and kopf keeps it, one replica seen that long ago."""
    (peering,) = [o for o in objects if o["apiVersion"] == "kopf.dev/v1"]
    peering["metadata"]["annotations"] = {"meta.helm.sh/release-name": "tp", "meta.helm.sh/release-namespace": "ops"}
    lastseen = (datetime.now(UTC) - timedelta(seconds=seen_s_ago)).isoformat()
    peering["status"] = {"tp-7d9f-abcde": {"priority": 3, "lifetime": 60, "lastseen": lastseen}}
    return peering


async def _start(k: ApiServerEmulator, objects: list[dict[str, Any]], tmp_path: Path) -> tuple[int | None, str]:
    """Start the chart's operator container against the emulator; its exit code and stderr, or None if it runs."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f'{{"apiVersion": "v1", "kind": "Config", "current-context": "k",'
        f' "clusters": [{{"name": "k", "cluster": {{"server": "{str(k.url).rstrip("/")}"}}}}],'
        f' "users": [{{"name": "sa", "user": {{"token": "operator-token"}}}}],'
        f' "contexts": [{{"name": "k", "context": {{"cluster": "k", "user": "sa"}}}}]}}'
    )
    container = operator_container(objects)
    env = {n: v for n, v in os.environ.items() if not n.startswith("TOKENPLANE_")}
    env |= {e["name"]: e["value"] for e in container["env"] if "value" in e} | {"KUBECONFIG": str(kubeconfig)}
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tokenplane_operator", *container["args"], env=env, stdout=out, stderr=out
        )
        try:
            code = await asyncio.wait_for(process.wait(), timeout=30)
        except TimeoutError:
            process.kill()
            await process.wait()
            code = None
    return code, log.read_text(errors="replace")


async def test_an_operator_over_a_running_releases_namespace_refuses_to_start(
    kmock: ApiServerEmulator, tmp_path: Path
) -> None:
    declare_peering(kmock)
    other = _running(render({"operator": {"watchNamespaces": ["ai"]}}, namespace="ops", name="tp"), seen_s_ago=5)
    kmock.objects["kopf.dev/v1/kopfpeerings", "ai", other["metadata"]["name"]] = other
    ours = render({}, namespace="tokenplane", name="tokenplane")  # every namespace, ai among them
    code, stderr = await _start(kmock, ours, tmp_path)
    assert code == 1, stderr
    assert (
        "release ops/tp's operator is running and watches namespace ai (KopfPeering ai/tokenplane-operator); this "
        "operator, watching every namespace, would reconcile the same InferenceDeployments" in stderr
    ), stderr
    assert "Traceback" not in stderr


async def test_a_release_started_beside_another_stops_once_it_sees_the_older_one(
    kmock: ApiServerEmulator, arm_emulator: ArmEmulator
) -> None:
    """Both passed the start-up check (neither had joined its peering): the lower priority stops, the higher runs on."""
    declare_peering(kmock)
    other = _running(render({}, namespace="ops", name="tp"), seen_s_ago=1)  # cluster-wide, one replica, priority 3
    key = ("kopf.dev/v1/clusterkopfpeerings", None, other["metadata"]["name"])
    kmock.objects[key] = other
    op = OperatorHarness(kmock, arm_emulator, peering_name="tokenplane", peering_priority=5)
    await op.start()
    thread = op._thread
    assert thread is not None
    try:
        await asyncio.sleep(1.0)  # three checks: this one outranks the other, it runs on
        assert thread.is_alive()
        (replica,) = other["status"].values()
        kmock.objects[key] = {**other, "status": {"tp-1": {**replica, "priority": 8}}}
        await op.wait_for(lambda: not thread.is_alive(), within=5, message="the operator stopped")
    finally:
        await op.stop(kill=True)
