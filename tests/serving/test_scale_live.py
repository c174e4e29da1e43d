"""TokenplanePolicy driving a real Ray Serve + vLLM deployment: 1 -> 2 replicas under load, back, to zero, and a
request that arrives at zero is held (by Ray's fallback proxy, HAProxy's backup server) until a replica serves it.

One own server (Ray runs once per process, so the shared one is stopped first, as the routing tests do), with
short delays: a 5 s downscale window and idle time, queue target 1 per replica. The hold at zero
(`tokenplane_serving.hold`) is shown within the one cold start: a request whose hold is shorter than the start
(the client's `x-tokenplane-hold-seconds`) gets 503 and is never run, one over the bound gets 429, and the
streamed one that waits gets keep-alives before its tokens.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import MODEL_ID, free_port, stop_shared_server
from tokenplane_serving.args import ServingArgs
from tokenplane_serving.hold import HOLD_SECONDS_HEADER, KEEPALIVE
from tokenplane_serving.local import LocalServer, serve_local

# Two cold starts and a load step: under the other tests' load on 2 cores the default 300 s is too close.
pytestmark = [pytest.mark.serving, pytest.mark.timeout(480)]

BODY = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Count to one hundred."}]}


def running_replicas(app_name: str) -> int:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return 0
    states = [dict(d.replica_states) for d in app.deployments.values()]
    return sum(n for s in states for k, n in s.items() if str(getattr(k, "value", k)) == "RUNNING")


def wait_for(predicate, timeout_s: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def scaled_server(tiny_model_dir: Path) -> Iterator[tuple[LocalServer, ServingArgs]]:
    stop_shared_server()
    args = ServingArgs.model_validate(
        {
            "model": {"id": MODEL_ID, "source": str(tiny_model_dir)},
            "accelerator": {"kind": "cpu", "cpu_kv_cache_gib": 1},
            "engine": {"dtype": "bfloat16", "max_model_len": 512, "enforce_eager": True, "max_num_seqs": 2},
            "scaling": {
                "min_replicas": 0,
                "max_replicas": 2,
                "initial_replicas": 1,
                "target_queue_depth": 1,
                "upscale_delay_s": 0,
                "downscale_delay_s": 5,
                "downscale_to_zero_delay_s": 5,
                # The plain and streamed requests at zero wait out the cold start; a third fills the bound.
                "hold": {"seconds": 120, "max_requests": 3},
            },
            "backpressure": {"max_ongoing_requests": 2, "max_queued_requests": 64},
        }
    )
    server = serve_local(args, port=free_port(), block=False, timeout_s=600, metrics_port=free_port())
    try:
        yield server, args
    finally:
        server.stop()


def test_load_step_scales_out_then_in_then_to_zero_and_a_request_at_zero_is_held(
    scaled_server: tuple[LocalServer, ServingArgs],
) -> None:
    server, args = scaled_server
    url = f"{server.base_url}/v1/chat/completions"
    assert running_replicas(args.app_name) == 1
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                client.post(url, json={**BODY, "max_tokens": 64})

    workers = [threading.Thread(target=load, daemon=True) for _ in range(8)]
    for worker in workers:
        worker.start()
    try:
        up = wait_for(lambda: running_replicas(args.app_name) >= 2, 300, "a second replica under load")
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
    print(f"\n[scale] 2 replicas {up:.0f}s into the load step")
    down = wait_for(lambda: running_replicas(args.app_name) == 0, 180, "zero replicas once idle")
    print(f"[scale] zero replicas {down:.0f}s after the load stopped")
    # Decision gauges, exported from the Serve controller for the operator's scrape.
    assert server.metrics_url is not None
    metrics_url = server.metrics_url

    def zero_since_reported() -> bool:
        # Ray's metrics agent exports on its own cadence, so the page can lag the controller's decision.
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            page = response.read().decode()
        assert "ray_tokenplane_autoscaler_decision_timestamp_seconds{" in page
        lines = [line for line in page.splitlines() if line.startswith("ray_tokenplane_autoscaler_zero_since")]
        return any(float(line.rsplit(" ", 1)[1]) > 0 for line in lines)

    wait_for(zero_since_reported, 60, "the zero-since gauge on /metrics")

    replicas_before = served_by_replica(metrics_url)
    results: dict[str, tuple[int, float, str, httpx.Headers]] = {}

    def call(name: str, stream: bool, headers: dict[str, str] | None = None) -> None:
        started = time.monotonic()
        with httpx.Client(timeout=300) as client:
            response = client.post(url, json={**BODY, "max_tokens": 8, "stream": stream}, headers=headers)
        results[name] = (response.status_code, time.monotonic() - started, response.text, response.headers)

    calls = [
        threading.Thread(target=call, args=("plain", False)),
        threading.Thread(target=call, args=("stream", True)),
        threading.Thread(target=call, args=("expired", False, {HOLD_SECONDS_HEADER: "5"})),
    ]
    for thread in calls:
        thread.start()
    time.sleep(2)  # all three held at the fallback proxy: the bound (3) is reached
    call("over", False)
    for thread in calls:
        thread.join(timeout=320)
    print(f"[scale] held at zero: { {name: result[:2] for name, result in results.items()} }")
    for name in ("plain", "stream"):
        status, waited, text, _ = results[name]
        assert status == 200, (name, status, text[:300])
        assert waited > 5, f"{name} answered in {waited:.1f}s: no replica should have been running"
    assert results["stream"][2].rstrip().endswith("data: [DONE]")
    assert results["stream"][2].startswith(KEEPALIVE.decode()), "a waiting stream gets keep-alives first"
    assert '"choices"' in results["plain"][2]
    for name, status, within in (("expired", 503, (4.5, 15.0)), ("over", 429, (0.0, 5.0))):
        got, waited, text, headers = results[name]
        assert got == status, (name, got, text[:300])
        assert within[0] <= waited <= within[1], f"{name} answered after {waited:.1f}s"
        assert int(headers["retry-after"]) > 0
        assert json.loads(text)["error"]["code"] == status
    assert results["expired"][1] < min(results["plain"][1], results["stream"][1]) - 5, "503 while still at zero"

    # The expired request was cancelled in Serve's queue: the replica that started served the other two only.
    def served() -> int:
        return sum(n for replica, n in served_by_replica(metrics_url).items() if replica not in replicas_before)

    wait_for(lambda: served() >= 2, 30, "the new replica's request counter")
    time.sleep(4)  # two metric exports: a third request would show by now
    assert served() == 2

    # With a replica running, what reaches the fallback proxy (HAProxy's health checks may mark a busy replica down)
    # passes as Ray ships it: Serve's status, asked from the proxy actor, says so; a 0.5 s hold cuts no longer answer.
    fallback = f"http://127.0.0.1:{os.environ['RAY_SERVE_FALLBACK_PROXY_HTTP_PORT']}/v1/chat/completions"
    started = time.monotonic()
    response = httpx.post(
        fallback, json={**BODY, "max_tokens": 200, "ignore_eos": True}, headers={HOLD_SECONDS_HEADER: "0.5"}, timeout=60
    )
    took = time.monotonic() - started
    print(f"[scale] via the fallback proxy, replica running, 0.5 s hold: {response.status_code} after {took:.1f}s")
    assert response.status_code == 200 and took > 0.5, (response.status_code, took, response.text[:300])


def served_by_replica(metrics_url: str) -> dict[str, float]:
    """Requests each replica served (`ray_serve_deployment_request_counter`), by replica id."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        page = response.read().decode()
    counts: dict[str, float] = {}
    for line in page.splitlines():
        if line.startswith("ray_serve_deployment_request_counter"):
            match = re.search(r'replica="([^"]+)"', line)
            if match:
                counts[match[1]] = counts.get(match[1], 0.0) + float(line.rsplit(" ", 1)[1])
    return counts
