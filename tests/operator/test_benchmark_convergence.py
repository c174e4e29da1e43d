"""Benchmark (not a timed test): 1,000 InferenceDeployments to Ready on kopf + kmock + the ARM emulator."""

import asyncio
import resource
import time
import tracemalloc
from collections.abc import AsyncIterator

import kmock
import pytest

from tests.support.arm_emulator import ArmEmulator
from tests.support.kopf_harness import OperatorHarness, cr_body, declare_resources

COUNT = 1000
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
    harness = OperatorHarness(kmock, arm_emulator, pool_cache_ttl_s=1.0)
    await harness.start()
    yield harness
    await harness.stop(kill=True)


def ready_count(op: OperatorHarness) -> int:
    ready = 0
    for (res, _, _), obj in list(op.k.objects.items()):
        if getattr(res, "plural", "") != CR_PLURAL or obj.deleted:
            continue
        conditions = (obj.get("status") or {}).get("conditions") or []
        ready += any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return ready


async def play_kuberay(op: OperatorHarness, stop: asyncio.Event) -> None:
    """Mark every new RayService Ready, as KubeRay would once its pods run."""
    done: set[tuple[str, str]] = set()
    while not stop.is_set():
        for (res, ns, name), obj in list(op.k.objects.items()):
            if getattr(res, "plural", "") == "rayservices" and (ns, name) not in done and not obj.deleted:
                done.add((ns, name))
                await op.make_rayservice_ready(name, namespace=ns)
        await asyncio.sleep(0.2)


@pytest.mark.benchmark
async def test_benchmark_1000_deployments_converge(op: OperatorHarness) -> None:
    tracemalloc.start()
    stop = asyncio.Event()
    kuberay = asyncio.create_task(play_kuberay(op, stop))
    started = time.monotonic()
    for i in range(COUNT):
        await op.create(body(i))
    applied = time.monotonic() - started
    await op.wait_for(lambda: ready_count(op) == COUNT, within=900, message=f"{COUNT} Ready")
    converged = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stop.set()
    await kuberay
    maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    puts = len(op.arm.calls("PUT"))
    gets = len(op.arm.calls("GET"))
    print(
        f"\nBENCHMARK {COUNT} InferenceDeployments, {len(CLASSES)} shared pools: "
        f"applied in {applied:.1f}s, all Ready after {converged:.1f}s; "
        f"peak traced Python memory {peak / 2**20:.1f} MiB (whole test process: operator + kmock + ARM emulator), "
        f"max RSS {maxrss_mib:.0f} MiB; ARM requests: {puts} PUT, {gets} GET; pools {op.arm.pool_names()}"
    )
    assert len(op.arm.pool_names()) == len(CLASSES)
