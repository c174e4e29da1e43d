"""Latency-target autoscaling policy for Ray Serve: queue depth plus the replicas' reported P95."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["LatencyTargetPolicy"]

# Below this fraction of the target, latency no longer holds replicas back from scaling in.
_DOWNSCALE_HEADROOM = 0.5


class LatencyTargetPolicy:
    """Ray Serve `autoscaling_config.policy` class (`policy_kwargs` go to the constructor).

    Desired replicas are the larger of two views: queue depth (`total_num_requests /
    target_ongoing_requests`, as Serve's built-in policy) and latency (one more replica while the
    worst replica's P95 exceeds the target). Scaling in happens only when the queue view allows it and
    the P95 is well under the target. Serve applies min/max bounds and the up/down delays afterwards,
    and handles cold start from zero without calling the policy.
    """

    def __init__(self, metric: str, p95_ms: float, target_ongoing_requests: float) -> None:
        """Configure the policy.

        Args:
            metric: `ttft` or `e2e`; replicas report `<metric>_p95_ms` via `record_autoscaling_stats`.
            p95_ms: Target P95 in milliseconds.
            target_ongoing_requests: Requests per replica the queue view aims for.
        """
        self.metric_key = f"{metric}_p95_ms"
        self.p95_ms = p95_ms
        self.target_ongoing_requests = target_ongoing_requests

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """Decide the replica count for one autoscaling tick.

        Args:
            ctx: Ray Serve's `AutoscalingContext` (`current_num_replicas`, `total_num_requests`,
                `aggregated_metrics`).

        Returns:
            Desired replicas and the state Serve hands back next tick (the inputs, for debugging).
        """
        current = int(ctx.current_num_replicas)
        by_queue = math.ceil(float(ctx.total_num_requests) / self.target_ongoing_requests)
        reported = (ctx.aggregated_metrics or {}).get(self.metric_key) or {}
        # Per-replica P95s cannot be merged into a fleet P95; the worst replica is what users feel.
        worst = max(reported.values(), default=0.0)
        loaded = ctx.total_num_requests > 0  # an idle replica's P95 is history, not a reason to grow
        if loaded and worst > self.p95_ms:
            desired = max(by_queue, current + 1)
        elif loaded and by_queue < current and worst > self.p95_ms * _DOWNSCALE_HEADROOM:
            desired = current  # latency is close to the target: shrinking would push it over
        else:
            desired = by_queue
        return desired, {"worst_p95_ms": worst, "by_queue": by_queue}
