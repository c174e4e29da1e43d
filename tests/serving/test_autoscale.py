"""The latency-target autoscaling policy against a stub of Ray Serve's AutoscalingContext."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tokenplane_serving.autoscale import LatencyTargetPolicy


@dataclass
class Ctx:
    current_num_replicas: int
    total_num_requests: float
    aggregated_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def p95(*values: float) -> dict[str, dict[str, float]]:
    return {"ttft_p95_ms": {f"r{i}": v for i, v in enumerate(values)}}


POLICY = LatencyTargetPolicy(metric="ttft", p95_ms=500, target_ongoing_requests=8)


@pytest.mark.parametrize(
    ("ctx", "desired"),
    [
        (Ctx(2, 16, p95(100, 120)), 2),  # on target both ways
        (Ctx(2, 40, p95(100, 120)), 5),  # queue says 5
        (Ctx(2, 8, p95(200, 900)), 3),  # queue is fine but the worst replica is slow: one more
        (Ctx(2, 40, p95(900, 900)), 5),  # both say grow; the larger wins
        (Ctx(3, 4, p95(300, 350, 320)), 3),  # queue would shrink, latency is near target: hold
        (Ctx(3, 4, p95(50, 60, 40)), 1),  # latency far under target: shrink to the queue view
        (Ctx(2, 0, p95(2000, 2000)), 0),  # idle: old P95s do not keep replicas (Serve clamps to min)
        (Ctx(1, 3, {}), 1),  # no custom metrics yet: queue view
    ],
)
def test_policy(ctx: Ctx, desired: int) -> None:
    replicas, state = POLICY(ctx)
    assert replicas == desired
    assert set(state) == {"worst_p95_ms", "by_queue"}


def test_e2e_metric_key() -> None:
    policy = LatencyTargetPolicy(metric="e2e", p95_ms=1000, target_ongoing_requests=4)
    assert policy(Ctx(1, 4, {"e2e_p95_ms": {"r": 5000}}))[0] == 2
