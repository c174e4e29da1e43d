"""Benchmark (not a timed test): 1,000 InferenceDeployments to Ready on kopf + kmock + the ARM emulator."""

import asyncio
import os
import resource
import time
from collections import Counter
from collections.abc import AsyncIterator

import kmock
import pytest

from tests.support.arm_emulator import ArmEmulator
from tests.support.kopf_harness import OperatorHarness, cr_body, declare_resources

COUNT = int(os.environ.get("TOKENPLANE_BENCHMARK_COUNT", "1000"))
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
async def op(kmock: kmock.KubernetesEmulator, arm_emulator: ArmEmulator) -> AsyncIterator[OperatorHarness]:
    declare_resources(kmock)
    harness = OperatorHarness(kmock, arm_emulator, pool_cache_ttl_s=10.0)
    await harness.start()
    yield harness
    await harness.stop(kill=True)


def ready_reasons(op: OperatorHarness) -> Counter[str]:
    reasons: Counter[str] = Counter()
    for (res, _, _), obj in list(op.k.objects.items()):
        if getattr(res, "plural", "") != CR_PLURAL or obj.deleted:
            continue
        conditions = (obj.get("status") or {}).get("conditions") or []
        ready = next((c for c in conditions if c["type"] == "Ready"), {"status": "None", "reason": "NoStatus"})
        reasons["Ready" if ready["status"] == "True" else ready["reason"]] += 1
    return reasons


async def play_kuberay(op: OperatorHarness, stop: asyncio.Event) -> None:
    """Mark every new RayService Ready, as KubeRay would once its pods run."""
    done: set[tuple[str, str]] = set()
    while not stop.is_set():
        # kmock 0.8 re-scans every recorded request on each new one (O(n^2) overall) and keeps every
        # version of every object: forget both, or the emulator, not the operator, is what gets measured.
        op.k._requests.clear()
        for obj in list(op.k.objects.values()):
            if not obj.deleted and len(obj.history) > 1:
                obj.history = [obj.history[-1]]
        for (res, ns, name), obj in list(op.k.objects.items()):
            if getattr(res, "plural", "") == "rayservices" and (ns, name) not in done and not obj.deleted:
                done.add((ns, name))
                await op.make_rayservice_ready(name, namespace=ns)
        await asyncio.sleep(0.2)


@pytest.mark.benchmark
async def test_benchmark_1000_deployments_converge(op: OperatorHarness) -> None:
    # ru_maxrss, not tracemalloc: tracing every allocation slows the operator by an order of magnitude.
    rss_before_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stop = asyncio.Event()
    kuberay = asyncio.create_task(play_kuberay(op, stop))
    started = time.monotonic()
    for i in range(COUNT):
        await op.create(body(i))
        if i % 100 == 99:
            print(f"  {time.monotonic() - started:6.1f}s: {i + 1} applied", flush=True)
    applied = time.monotonic() - started
    while (ready := (reasons := ready_reasons(op))["Ready"]) < COUNT:
        assert time.monotonic() - started < 1800, f"only {ready}/{COUNT} Ready after 30 minutes: {reasons}"
        print(f"  {time.monotonic() - started:6.1f}s: {ready}/{COUNT} Ready; {dict(reasons)}", flush=True)
        await asyncio.sleep(15)
    converged = time.monotonic() - started
    stop.set()
    await kuberay
    maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    puts = len(op.arm.calls("PUT"))
    gets = len(op.arm.calls("GET"))
    print(
        f"\nBENCHMARK {COUNT} InferenceDeployments, {len(CLASSES)} shared pools: "
        f"applied in {applied:.1f}s, all Ready after {converged:.1f}s; "
        f"peak RSS {maxrss_mib:.0f} MiB (+{maxrss_mib - rss_before_mib:.0f} MiB over the idle operator; one "
        f"process holds the operator, kmock and the ARM emulator); ARM requests: {puts} PUT, {gets} GET"
    )
    assert len(op.arm.pool_names()) == len(CLASSES)
