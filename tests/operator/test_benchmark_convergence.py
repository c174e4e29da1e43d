"""Benchmark (not a timed test): 1,000 InferenceDeployments to Ready.

The operator runs as its own process (`tokenplane operator`, workload identity, production poll cadence),
so its peak memory is measured alone; kmock and the ARM emulator live in the test process.
"""

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest

from tests.support.arm_emulator import ArmEmulator
from tests.support.kopf_harness import cr_body, declare_resources
from tests.support.kube_emulator import ApiServerEmulator
from tests.support.kuberay_peer import KubeRayPeer
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

COUNT = int(os.environ.get("TOKENPLANE_BENCHMARK_COUNT", "1000"))
# The production poll cadence bounds convergence (~2.5 polls); a shorter one shows the operator's throughput.
POLL_S = os.environ.get("TOKENPLANE_BENCHMARK_POLL_S", "30")
LOG_LEVEL = os.environ.get("TOKENPLANE_BENCHMARK_LOG_LEVEL", "WARNING")  # INFO shows each handler's timing
CR_PLURAL = "inferencedeployments"
# Four hardware classes, so deployments share four pools whose bounds grow as deployments arrive.
CLASSES = [
    {"vm_size": "Standard_NC24ads_A100_v4"},
    {"vm_size": "Standard_NC40ads_H100_v5"},
    {"vm_size": "Standard_NC24ads_A100_v4", "hardware_extra": {"spot": {"enabled": True}}},
    {"vm_size": "Standard_NC24ads_A100_v4", "hardware_extra": {"zones": ["1"]}},
]


def body(i: int) -> dict:
    cls = CLASSES[i % len(CLASSES)]
    b = cr_body(f"m{i:04d}", namespace=f"team{i % 10}", vm_size=cls["vm_size"])
    b["spec"]["hardware"].update(cls.get("hardware_extra", {}))
    return b


@pytest.fixture
async def kuberay(kmock: kmock.KubernetesEmulator) -> AsyncIterator[KubeRayPeer]:
    """KubeRay as its controller behaves: a RayCluster with head and worker pods, Serve deploying, then Ready."""
    declare_resources(kmock)
    assert isinstance(kmock, ApiServerEmulator)
    kmock.forget = True
    peer = KubeRayPeer(kmock)
    await peer.start()
    yield peer
    await peer.stop()


@pytest.fixture
async def op(
    kmock: kmock.KubernetesEmulator, wi_arm: ArmEmulator, tmp_path: Path, kuberay: KubeRayPeer
) -> AsyncIterator[OperatorProcess]:
    # Production settings otherwise (10 s shared pool reads, 32 reconciles in flight).
    env = {
        "TOKENPLANE_LOG_LEVEL": os.environ.get("TOKENPLANE_BENCHMARK_LOG_LEVEL", "WARNING"),
        "TOKENPLANE_POLL_INTERVAL_S": POLL_S,
    }
    process = OperatorProcess(kmock, wi_arm, tmp_path, env)
    await process.start()
    yield process
    await process.stop(kill=True)


def ready_reasons(op: OperatorProcess) -> Counter[str]:
    reasons: Counter[str] = Counter()
    for (res, _, _), obj in list(op.k.objects.items()):
        if getattr(res, "plural", "") != CR_PLURAL or obj.deleted:
            continue
        conditions = (obj.get("status") or {}).get("conditions") or []
        ready = next((c for c in conditions if c["type"] == "Ready"), {"status": "None", "reason": "NoStatus"})
        reasons["Ready" if ready["status"] == "True" else ready["reason"]] += 1
    return reasons


@pytest.mark.benchmark
@pytest.mark.timeout(1900)
async def test_benchmark_1000_deployments_converge(op: OperatorProcess, kuberay: KubeRayPeer) -> None:
    rss_idle_mib, cpu_idle_s, test_cpu_s = op.peak_rss_mib(), op.cpu_s(), time.process_time()
    load_before = os.getloadavg()
    started = time.monotonic()
    for i in range(COUNT):
        await op.create(body(i))
        if i % 100 == 99:
            print(f"  {time.monotonic() - started:6.1f}s: {i + 1} applied", flush=True)
    applied = time.monotonic() - started
    last_print = 0.0
    while (ready := (reasons := ready_reasons(op))["Ready"]) < COUNT:
        assert time.monotonic() - started < 1800, f"only {ready}/{COUNT} Ready after 30 minutes: {reasons}"
        if time.monotonic() - last_print >= 15:
            last_print = time.monotonic()
            print(f"  {time.monotonic() - started:6.1f}s: {ready}/{COUNT} Ready; {dict(reasons)}", flush=True)
        await asyncio.sleep(0.5)  # fine enough to time "Ready after the last RayService turned Ready"
    converged = time.monotonic() - started
    after_last_rayservice = time.monotonic() - max(kuberay.ready_at.values())
    peak_mib, now_mib = op.peak_rss_mib(), op.rss_mib()
    cpu_s, test_cpu_s = op.cpu_s() - cpu_idle_s, time.process_time() - test_cpu_s
    puts = len(op.arm.calls("PUT"))
    gets = len(op.arm.calls("GET"))
    print(
        f"\nBENCHMARK {COUNT} InferenceDeployments, {len(CLASSES)} shared pools, {POLL_S} s polls: "
        f"applied in {applied:.1f}s, all Ready after {converged:.1f}s "
        f"({after_last_rayservice:.1f}s after the last RayService turned Ready); "
        f"operator RSS: peak {peak_mib:.0f} MiB, {now_mib:.0f} MiB once converged, {rss_idle_mib:.0f} MiB idle; "
        f"CPU until converged: operator {cpu_s:.1f} s, test process (API server, ARM, KubeRay) {test_cpu_s:.1f} s; "
        f"ARM requests: {puts} PUT, {gets} GET, {len(op.arm.issued_tokens)} tokens; load average "
        f"{' '.join(f'{x:.1f}' for x in load_before)} before, {' '.join(f'{x:.1f}' for x in os.getloadavg())} after"
    )
    assert len(op.arm.pool_names()) == len(CLASSES)
