"""status.metrics: the operator scrapes the serving pods' Prometheus pages and reports the seeds' economics."""

import time
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from aiohttp import web

from tests.support.arm_emulator import ArmEmulator
from tests.support.kopf_harness import CR_RESOURCE, OperatorHarness, cr_body, declare_resources
from tests.support.kube_emulator import ApiServerEmulator
from tests.support.kuberay_peer import KubeRayPeer
from tests.support.operator_process import free_port

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

# Relative tolerance of a token rate over one 0.5-s scrape window (see the first test).
WINDOW_TOLERANCE = 0.25


class MetricsPages:
    """Serves a Ray worker's /metrics; every scrape finds 10 more requests, and tokens flow at a steady rate.

    Per scrape: 300 prefix-cache hits in 400 queries, 2 response-cache hits and 8 misses, and end-to-end
    latencies of 5 requests under 0.5 s, 4 more under 1 s, 1 under 2.5 s. Tokens: 2,000 output and 8,000 prompt
    tokens per second of wall time, so the rate the operator computes does not depend on how late its timer runs.
    """

    def __init__(self) -> None:
        self.scrapes = 0
        self.hosts: set[str] = set()
        self.started = time.monotonic()
        # The autoscaling policy's gauges, as the head pod serves them from the Serve controller (when set):
        # (running, desired, reason, decided at, at zero since).
        self.decision: tuple[int, int, str, float, float] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.hosts.add(request.host)
        self.scrapes += 1
        n = self.scrapes
        tokens = 2000 * (time.monotonic() - self.started)
        labels = 'model_name="m1",WorkerId="abc"'
        lines = [
            "# TYPE ray_vllm_generation_tokens_total counter",
            f"ray_vllm_generation_tokens_total{{{labels}}} {tokens:.3f}",
            "# TYPE ray_vllm_prompt_tokens_total counter",
            f"ray_vllm_prompt_tokens_total{{{labels}}} {4 * tokens:.3f}",
            "# TYPE ray_vllm_prefix_cache_hits_total counter",
            f"ray_vllm_prefix_cache_hits_total{{{labels}}} {300 * n}.0",
            "# TYPE ray_vllm_prefix_cache_queries_total counter",
            f"ray_vllm_prefix_cache_queries_total{{{labels}}} {400 * n}.0",
            "# TYPE ray_tokenplane_response_cache_hits_total counter",
            f"ray_tokenplane_response_cache_hits_total{{{labels}}} {2 * n}.0",
            "# TYPE ray_tokenplane_response_cache_misses_total counter",
            f"ray_tokenplane_response_cache_misses_total{{{labels}}} {8 * n}.0",
            "# TYPE ray_vllm_e2e_request_latency_seconds histogram",
        ]
        for le, per_scrape in (("0.5", 5), ("1.0", 9), ("2.5", 10), ("+Inf", 10)):
            lines.append(f'ray_vllm_e2e_request_latency_seconds_bucket{{{labels},le="{le}"}} {per_scrape * n}.0')
        lines += [
            f"ray_vllm_e2e_request_latency_seconds_count{{{labels}}} {10 * n}.0",
            f"ray_vllm_e2e_request_latency_seconds_sum{{{labels}}} {7.5 * n}",
        ]
        if self.decision is not None:
            current, desired, reason, decided, zero = self.decision
            controller = 'application="llm",deployment="LLMServer:m1",SessionName="s"'
            lines += [
                "# TYPE ray_tokenplane_autoscaler_replicas gauge",
                f'ray_tokenplane_autoscaler_replicas{{{controller},kind="current"}} {current}',
                f'ray_tokenplane_autoscaler_replicas{{{controller},kind="desired"}} {desired}',
                "# TYPE ray_tokenplane_autoscaler_decision_timestamp_seconds gauge",
                f'ray_tokenplane_autoscaler_decision_timestamp_seconds{{{controller},reason="{reason}"}} {decided}',
                f'ray_tokenplane_autoscaler_decision_timestamp_seconds{{{controller},reason="Steady"}} 0.0',
                "# TYPE ray_tokenplane_autoscaler_zero_since_timestamp_seconds gauge",
                f"ray_tokenplane_autoscaler_zero_since_timestamp_seconds{{{controller}}} {zero}",
            ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


@pytest.fixture
async def pages() -> AsyncIterator[tuple[MetricsPages, int]]:
    served = MetricsPages()
    app = web.Application()
    app.router.add_get("/metrics", served.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    yield served, port
    await runner.cleanup()


@pytest.fixture
async def op(
    kmock: kmock.KubernetesEmulator,
    arm_emulator: ArmEmulator,
    pages: tuple[MetricsPages, int],
    kuberay: KubeRayPeer,
) -> AsyncIterator[OperatorHarness]:
    declare_resources(kmock)
    harness = OperatorHarness(kmock, arm_emulator, metrics_port=pages[1])
    await harness.start()
    yield harness
    await harness.stop(kill=True)


def pod(name: str, deployment: str, ip: str, phase: str, limits: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"tokenplane.io/deployment": deployment}},
        "spec": {"containers": [{"name": "ray-worker", "image": "x", "resources": {"limits": limits}}]},
        "status": {"phase": phase, "podIP": ip},
    }


async def test_status_metrics_report_the_economics_of_the_serving_pods(
    op: OperatorHarness, pages: tuple[MetricsPages, int], kuberay: KubeRayPeer
) -> None:
    served, port = pages
    await op.create(cr_body("m1", vm_size="Standard_NC24ads_A100_v4"))
    await op.wait_ready("m1")
    # KubeRay's head and worker pods (the peer's, Running on 127.0.0.1; the worker holds nvidia.com/gpu: 1).
    assert {p["metadata"]["labels"]["ray.io/node-type"] for p in kuberay.pods()} == {"head", "worker"}
    mig = {"nvidia.com/mig-3g.40gb": "1"}
    await op.create_pod(pod("m1-worker-b", "m1", "127.0.0.2", "Pending", mig))  # not scraped: not running
    await op.create_pod(pod("other-worker", "other", "127.0.0.3", "Running", mig))  # another deployment's

    def metrics() -> dict[str, Any]:
        return ((op.get("m1") or {}).get("status") or {}).get("metrics") or {}

    await op.wait_for(lambda: metrics().get("tokensPerGpuHour"), message="status.metrics")
    reported = metrics()
    assert reported["kvCacheHitRate"] == 0.75
    assert reported["responseCacheHitRatio"] == 0.2
    assert reported["outputInputTokenRatio"] == 0.25
    # 95th of every 10 requests lies halfway into the (1 s, 2.5 s] bucket; the 99th, 90% of the way.
    assert reported["p95LatencyMs"] == 1750.0
    assert reported["p99LatencyMs"] == 2350.0
    assert reported["tokensPerGpuHour"] == pytest.approx(reported["tokensPerSecondPerGpu"] * 3600, rel=1e-3)
    # Two pods (head and worker), each page 2,000 output tokens/s, on 1 GPU: 4,000 tokens/s per GPU. The wrong sums
    # are 2,000 (one pod) and 8,000 (two GPUs); the tolerance is wide because the window is 0.5 s, where a 60 ms
    # stall of this process under CI's load between a page and the operator's clock moves the rate by 12%.
    assert reported["tokensPerSecondPerGpu"] == pytest.approx(4000, rel=WINDOW_TOLERANCE)
    assert served.hosts == {f"127.0.0.1:{port}"}
    # The reconcile timer keeps writing its own fields without erasing the collector's.
    await op.wait_for(lambda: served.scrapes >= 4, message="more scrapes")
    assert metrics().get("kvCacheHitRate") == 0.75
    assert op.condition("m1", "Ready")["status"] == "True"


async def test_no_throughput_per_gpu_is_reported_until_a_gpu_worker_spans_the_window(
    op: OperatorHarness, pages: tuple[MetricsPages, int], kuberay: KubeRayPeer
) -> None:
    served, port = pages
    kuberay.paused = True  # the test makes the pods: the head first, as KubeRay does, a worker waiting for a node
    await op.create(cr_body("m1", vm_size="Standard_NC24ads_A100_v4"))
    await op.create_pod(pod("m1-head", "m1", "127.0.0.1", "Running", {}))
    await op.create_pod(pod("m1-worker-0", "m1", "127.0.0.3", "Pending", {"nvidia.com/gpu": "1"}))
    await op.wait_for(lambda: served.scrapes >= 3, message="two windows over the head alone")
    await op.create_pod(pod("m1-worker-1", "m1", "127.0.0.2", "Running", {"nvidia.com/gpu": "1"}))
    await op.wait_for(lambda: f"127.0.0.2:{port}" in served.hosts, message="a window the worker started in")
    # Neither the head's windows nor the one the worker started in hold a GPU's tokens: the first number reported
    # is the next window's, over both pods, 4,000 tokens/s on the worker's GPU (the head's 2,000 alone, per GPU,
    # would be half of it).
    cr = op.k.objects[CR_RESOURCE, "default", "m1"]
    await op.wait_for(lambda: ((cr.last.get("status") or {}).get("metrics") or {}).get("tokensPerGpuHour"))
    reported = [
        version["status"]["metrics"]["tokensPerSecondPerGpu"]
        for version in cr.history
        if version is not None and "tokensPerSecondPerGpu" in ((version.get("status") or {}).get("metrics") or {})
    ]
    assert reported and all(value == pytest.approx(4000, rel=WINDOW_TOLERANCE) for value in reported), reported


async def test_the_policys_decision_reaches_status_and_the_scaled_condition(
    op: OperatorHarness, pages: tuple[MetricsPages, int]
) -> None:
    served, _ = pages
    await op.create(cr_body("m1", vm_size="Standard_NC24ads_A100_v4"))
    await op.wait_ready("m1")
    await op.create_pod(pod("m1-head", "m1", "127.0.0.1", "Running", {}))
    served.decision = (2, 4, "WaitingForCapacity", 1_800_000_000.0, 0.0)

    def scaling() -> dict[str, Any]:
        return ((op.get("m1") or {}).get("status") or {}).get("scaling") or {}

    await op.wait_for(lambda: scaling().get("reason") == "WaitingForCapacity", message="status.scaling")
    assert scaling()["current"] == 2 and scaling()["desired"] == 4
    assert scaling()["lastDecisionTime"].startswith("2027-01-15T08:00:00")
    await op.wait_for(lambda: op.condition("m1", "Scaled")["reason"] == "WaitingForCapacity", message="Scaled")
    assert op.condition("m1", "Scaled")["status"] == "False"
    assert op.condition("m1", "Ready")["status"] == "True"  # still serving at the size it has
    # Then the load goes away and the policy takes the deployment to zero: the time at zero is reported.
    served.decision = (0, 0, "Idle", 1_800_000_600.0, 1_800_000_900.0)
    await op.wait_for(lambda: scaling().get("zeroSince", "").startswith("2027-01-15T08:15:00"), message="zeroSince")
    await op.wait_for(lambda: op.condition("m1", "Scaled")["reason"] == "Idle", message="Scaled Idle")
    assert "at zero since 2027-01-15T08:15:00Z" in op.condition("m1", "Scaled")["message"]
