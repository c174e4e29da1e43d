"""Tokenplane's autoscaling policy for Ray Serve: queue depth plus the fleet's P95, node-aware.

Ray Serve calls `TokenplanePolicy.__call__` once per control-loop tick (`autoscaling_config.policy`) with an
`AutoscalingContext`; `tokenplane simulate` calls the very same object. Replicas report, through
`record_autoscaling_stats`, their engine queue and a *histogram* of recent latencies (sparse bucket counts,
`latency_histogram`). The policy sums the fresh replicas' buckets into the fleet's histogram and reads the
P95 from it: a fleet P95 cannot be recovered from per-replica P95s (their max over-scales when one replica is
unlucky, their mean hides a slow half).

Decision, per tick (the reasons are the operator's status reasons):
- `QueueDepth`: requests waiting (Serve-queued + waiting in a replica for a slot + engine waiting) exceed
  `targetQueueDepth` per replica; grow in proportion, so that the waiting requests fit in the new replicas' batches.
- `LatencyBreach`: the fleet P95 exceeds the target; grow by the breach ratio (capped at 2x per tick). The
  per-replica load at which the breach happened is remembered as the replica's *capacity*, so later load
  changes are sized in advance (`ongoing / (0.8 x capacity)`) instead of waiting for the next breach.
- `WaitingForCapacity`: replicas have been pending longer than a cold start takes (no node for them): hold
  at the current target instead of adding more replicas that cannot be placed either.
- `Idle`: no traffic: go to the floor (zero with scale-to-zero; Serve applies `downscale_to_zero_delay_s`).
  Scale-in otherwise needs the P95 well under the target (hysteresis band), an empty queue, no scale-up in
  the last cooldown, and the busiest load of that cooldown to fit the smaller fleet at 60% of capacity; it
  removes at most half the replicas per decision (Serve's `downscale_delay_s` then holds each decision).
- `Schedule`: a time window's minimum (see `tokenplane_serving.schedule`) holds more replicas than load needs.
- `Batch`: Batch API requests (which replicas report as `batch_running`) are not demand the fleet grows for: they
  fill the capacity interactive traffic keeps. Alone, they hold at most `batch_max_replicas` replicas (the
  batch's GPU budget; Serve starts the first one from zero for a queued request, as for any other).
Replicas whose last report is older than `stale_after_s` are ignored; with no fresh report at all the
policy never scales in (it does not know the fleet's state), but still scales out on Serve's own counts.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tokenplane_serving.schedule import ScheduleWindow, schedule_minimum

__all__ = [
    "BUCKET_BOUNDS_MS",
    "REASONS",
    "FleetMetrics",
    "TokenplanePolicy",
    "bucket_key",
    "latency_histogram",
    "merge_replica_reports",
    "quantile_from_histogram",
]

# Geometric buckets from 5 ms to about 10 min, 15% apart: a quantile read from them is within one bucket.
_BUCKET_RATIO = 1.15
BUCKET_BOUNDS_MS: tuple[float, ...] = tuple(5.0 * _BUCKET_RATIO**i for i in range(85))
REASONS = ("QueueDepth", "LatencyBreach", "Idle", "WaitingForCapacity", "Schedule", "Batch", "Steady")

_HEADROOM = 0.8  # size the fleet for this fraction of the learned per-replica capacity
_SCALE_IN_UTILIZATION = 0.6  # scale in only if the smaller fleet runs below this fraction of capacity
_SCALE_IN_BAND = 0.7  # ... and the fleet P95 is below this fraction of the target
_LEARNED_BAND = 0.9  # ... or this fraction once a breach has shown where the knee is
_WINDOW_S = 30.0  # the replicas' latency histogram window (tokenplane_serving.server)
_MAX_GROWTH_PER_TICK = 2.0


def bucket_key(metric: str, index: int) -> str:
    """Name of one histogram bucket in a replica's autoscaling report."""
    return f"{metric}_h{index}"


def latency_histogram(metric: str, samples_ms: Iterable[float]) -> dict[str, float]:
    """Encode latency samples as sparse bucket counts (`<metric>_h<i>`) for `record_autoscaling_stats`.

    Ray Serve's custom metrics are one float per name, so a histogram travels as one name per non-empty
    bucket; bucket `i` counts samples in `(BUCKET_BOUNDS_MS[i-1], BUCKET_BOUNDS_MS[i]]`.
    """
    counts: dict[str, float] = {}
    last = len(BUCKET_BOUNDS_MS) - 1
    for value in samples_ms:
        key = bucket_key(metric, min(last, bisect.bisect_left(BUCKET_BOUNDS_MS, value)))
        counts[key] = counts.get(key, 0.0) + 1.0
    return counts


def quantile_from_histogram(counts: Mapping[int, float], q: float) -> float | None:
    """Return the q-quantile (ms) of a bucket histogram, interpolated geometrically inside the bucket."""
    total = sum(counts.values())
    if total <= 0:
        return None
    rank, seen = q * total, 0.0
    for index in sorted(counts):
        count = counts[index]
        if seen + count >= rank:
            upper = BUCKET_BOUNDS_MS[index]
            lower = BUCKET_BOUNDS_MS[index - 1] if index > 0 else 0.0
            frac = (rank - seen) / count if count else 1.0
            return lower * (upper / lower) ** frac if lower > 0 else upper * frac
        seen += count
    return BUCKET_BOUNDS_MS[max(counts)]


@dataclass(frozen=True)
class FleetMetrics:
    """What the fresh replicas reported, merged over the fleet."""

    fresh_replicas: int
    stale_replicas: int
    engine_waiting: float
    engine_running: float
    histogram: dict[int, float]
    batch_running: float = 0.0
    # Accepted by a replica, waiting for a slot: with direct streaming Serve's own counts miss them.
    replica_waiting: float = 0.0

    def p95_ms(self, q: float = 0.95) -> float | None:
        """Return the fleet's latency quantile from the merged histogram (None without samples)."""
        return quantile_from_histogram(self.histogram, q)

    @property
    def samples(self) -> float:
        """Latency samples in the merged histogram."""
        return sum(self.histogram.values())


def _latest(series: Any) -> tuple[float, float] | None:
    if not series:
        return None
    last = max(series, key=lambda point: point.timestamp)
    return float(last.timestamp), float(last.value)


def merge_replica_reports(
    raw_metrics: Mapping[str, Mapping[Any, Any]], metric: str, now: float, stale_after_s: float
) -> FleetMetrics:
    """Merge each replica's latest report into fleet metrics, skipping replicas whose report is stale.

    Args:
        raw_metrics: `AutoscalingContext.raw_metrics`: metric name -> replica -> time series.
        metric: The latency metric whose histogram buckets to merge (`ttft` or `e2e`).
        now: The controller's clock.
        stale_after_s: Reports older than this are ignored.

    Returns:
        FleetMetrics over the fresh replicas. A bucket whose newest point is older than its replica's newest
        report was absent from that report (the histogram is sparse), so it counts as zero.
    """
    latest: dict[Any, dict[str, tuple[float, float]]] = {}
    for name, per_replica in raw_metrics.items():
        for replica, series in per_replica.items():
            point = _latest(series)
            if point is not None:
                latest.setdefault(replica, {})[name] = point
    prefix = f"{metric}_h"
    waiting = running = batch = replica_waiting = 0.0
    histogram: dict[int, float] = {}
    fresh = stale = 0
    for values in latest.values():
        newest = max(ts for ts, _ in values.values())
        if now - newest > stale_after_s:
            stale += 1
            continue
        fresh += 1
        for name, (ts, value) in values.items():
            if ts < newest - 1e-6:
                continue  # not in the latest report
            if name == "engine_waiting":
                waiting += value
            elif name == "replica_waiting":
                replica_waiting += value
            elif name == "engine_running":
                running += value
            elif name == "batch_running":
                batch += value
            elif name.startswith(prefix) and name[len(prefix) :].isdigit():
                index = int(name[len(prefix) :])
                histogram[index] = histogram.get(index, 0.0) + value
    return FleetMetrics(fresh, stale, waiting, running, histogram, batch, replica_waiting)


class TokenplanePolicy:
    """Ray Serve `autoscaling_config.policy` class; `policy_kwargs` go to the constructor.

    Serve applies `min_replicas`/`max_replicas`, `upscale_delay_s`/`downscale_delay_s`/
    `downscale_to_zero_delay_s` after it, and starts the first replica from zero without calling it; called at
    zero anyway (by the simulator, or a future Serve), it sizes the cold start from the queue.
    """

    def __init__(
        self,
        max_ongoing_requests: float,
        target_queue_depth: float = 8.0,
        metric: str = "ttft",
        p95_ms: float | None = None,
        stale_after_s: float = 30.0,
        min_samples: int = 20,
        cold_start_s: float = 600.0,
        cooldown_s: float = 120.0,
        min_replicas: int = 0,
        schedule: list[dict[str, Any]] | None = None,
        batch_max_replicas: int = 0,
    ) -> None:
        """Configure the policy.

        Args:
            max_ongoing_requests: A replica's batch cap (Serve's `max_ongoing_requests`): its capacity until a
                latency breach shows a lower one.
            target_queue_depth: Waiting requests per replica tolerated before scaling out (CR `targetQueueDepth`).
            metric: `ttft` or `e2e`: whose histogram the latency target applies to.
            p95_ms: Target P95 in ms; None scales on queue depth and load alone.
            stale_after_s: Replica reports older than this are ignored (3 push intervals by default).
            min_samples: Fewer latency samples than this in the fleet histogram are not a P95.
            cold_start_s: Longest a replica takes from pending to running when a node is free (node provisioning
                plus model loading); pending longer means no capacity.
            cooldown_s: No scale-in this long after a scale-out (and no second latency scale-out before the
                first one's replicas could have changed the latency window).
            min_replicas: The CR's floor, for the schedule's reason (Serve enforces the bound itself).
            schedule: Time windows with their own minimum replicas (`ScheduleWindow` fields).
            batch_max_replicas: Most replicas Batch API requests alone may hold (their GPU budget).
        """
        self.max_ongoing = float(max_ongoing_requests)
        self.target_queue = float(target_queue_depth)
        self.metric = metric
        self.p95_ms = p95_ms
        self.stale_after_s = stale_after_s
        self.min_samples = min_samples
        self.cold_start_s = cold_start_s
        self.cooldown_s = cooldown_s
        self.min_replicas = min_replicas
        self.schedule = [ScheduleWindow.model_validate(w) for w in schedule or []]
        self.batch_max_replicas = batch_max_replicas

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """Decide the replica count for one tick.

        Args:
            ctx: Ray Serve's `AutoscalingContext`.

        Returns:
            Desired replicas, and the state Serve hands back next tick: the decision's `reason`, the fleet
            `p95_ms`, the `queue`, the learned per-replica `capacity`, the load of the last cooldown, and
            the timestamps the policy needs.
        """
        now = float(ctx.current_time if ctx.current_time is not None else time.time())
        state = dict(ctx.policy_state or {})
        current, target = int(ctx.current_num_replicas), int(ctx.target_num_replicas)
        fleet = merge_replica_reports(ctx.raw_metrics or {}, self.metric, now, self.stale_after_s)
        # Batch requests are left out of the demand; low priority, they also make up the engine's waiting first.
        batch = min(fleet.batch_running, float(ctx.total_num_requests or 0.0))
        # Requests waiting inside replicas are load and queue, as Serve counts its handle-queued ones in both.
        ongoing = float(ctx.total_num_requests or 0.0) - batch + fleet.replica_waiting
        queue = float(ctx.total_queued_requests or 0.0) + fleet.replica_waiting + max(0.0, fleet.engine_waiting - batch)
        p95 = fleet.p95_ms() if fleet.samples >= self.min_samples else None
        if state.get("fleet_size") != current:
            state["fleet_size"], state["fleet_changed"] = current, now
        state["stable"] = now - float(state["fleet_changed"]) >= self.stale_after_s + _WINDOW_S
        capacity = self._learn_capacity(state, current, ongoing, queue, p95, fleet)
        recent = [(t, v) for t, v in state.get("recent_load", []) if now - t < self.cooldown_s]
        recent.append((now, ongoing))
        peak = max(v for _, v in recent)

        needs = {"QueueDepth": ongoing / (_HEADROOM * capacity), "LatencyBreach": 0.0}
        if queue > self.target_queue * max(current, 1):
            running_each = max(1.0, (ongoing - queue) / current) if current else capacity
            needs["QueueDepth"] = max(needs["QueueDepth"], ongoing / (running_each + self.target_queue))
        last_up = float(state.get("last_up", -math.inf))
        if p95 is not None and self.p95_ms is not None and p95 > self.p95_ms and now - last_up >= self.cooldown_s:
            needs["LatencyBreach"] = max(current + 1.0, current * min(_MAX_GROWTH_PER_TICK, p95 / self.p95_ms))
        reason = max(needs, key=lambda k: needs[k])
        grow = math.ceil(needs[reason] - 1e-9)

        pending_since = state.get("pending_since") if target > current else None
        if target > current and pending_since is None:
            pending_since = now
        starved = pending_since is not None and now - float(pending_since) > self.cold_start_s
        floor, window = schedule_minimum(self.schedule, now)
        if grow > target and not starved:
            desired, state["last_up"] = grow, now
        elif peak <= 0 and queue <= 0:
            desired, reason = 0, "Idle"
        elif self._may_scale_in(fleet, p95, queue, now, last_up, bool(state.get("learned"))) and grow < current:
            # Sized for the busiest moment of the last cooldown, so an oscillating load does not flap.
            in_fleet = math.ceil(peak / (_SCALE_IN_UTILIZATION * capacity) - 1e-9)
            desired = max(in_fleet, math.ceil(current / 2), 1)
            reason = "Idle" if desired < current else "Steady"
        else:
            desired, reason = max(target, current), "Steady"
        if starved and desired >= target:
            # More replicas would wait for nodes too: hold, and say so (the operator reports this reason).
            desired, reason = target, "WaitingForCapacity"
        if floor is not None and floor > max(desired, self.min_replicas):
            desired, reason = floor, "Schedule"
        batch_hold = min(self.batch_max_replicas, math.ceil(batch / (_HEADROOM * capacity) - 1e-9))
        if batch_hold > desired:
            desired, reason = batch_hold, "Batch"
        state.update(
            reason=reason,
            p95_ms=p95,
            queue=queue,
            capacity=capacity,
            pending_since=pending_since if desired > current else None,
            schedule_window=window,
            stale_replicas=fleet.stale_replicas,
            recent_load=recent,
        )
        return desired, state

    def _learn_capacity(
        self, state: dict[str, Any], current: int, ongoing: float, queue: float, p95: float | None, fleet: FleetMetrics
    ) -> float:
        capacity = float(state.get("capacity") or self.max_ongoing)
        if current <= 0 or fleet.fresh_replicas == 0 or not state.get("stable"):
            # Right after the fleet changed size, the latency window still holds the old fleet's requests.
            return capacity
        per_replica = ongoing / current
        if self.p95_ms is not None and p95 is not None and p95 > self.p95_ms:
            # The fleet breached at this load: a replica holds at most that much within the target.
            capacity = min(capacity, max(1.0, per_replica))
            state["learned"] = True
        elif p95 is not None and (self.p95_ms is None or p95 < _SCALE_IN_BAND * self.p95_ms):
            # Comfortably within target at this load: a replica holds at least that much.
            capacity = min(self.max_ongoing, max(capacity, per_replica))
        if queue > self.target_queue * current:
            # Requests wait: the replicas' batches are full at what they are running now.
            capacity = min(capacity, max(1.0, (ongoing - queue) / current))
        return capacity

    def _may_scale_in(
        self, fleet: FleetMetrics, p95: float | None, queue: float, now: float, last_up: float, learned: bool
    ) -> bool:
        if fleet.fresh_replicas == 0 or queue > 0 or now - last_up < self.cooldown_s:
            return False
        if self.p95_ms is None or p95 is None:
            return True
        # With a capacity learned from a breach, the load check sizes the smaller fleet; the latency only has to
        # be inside the target. Without one, the latency must be well inside it (the knee is unknown).
        return p95 < (_LEARNED_BAND if learned else _SCALE_IN_BAND) * self.p95_ms
