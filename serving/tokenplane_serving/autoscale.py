"""Tokenplane's autoscaling policy for Ray Serve: queue depth plus the fleet's P95, node-aware.

Ray Serve calls `TokenplanePolicy.__call__` once per control-loop tick (`autoscaling_config.policy`) with an
`AutoscalingContext`; `tokenplane simulate` calls the very same object. Replicas report, through
`record_autoscaling_stats`, their engine queue and a *histogram* of recent latencies (sparse bucket counts,
`latency_histogram`). The policy sums the fresh replicas' buckets into the fleet's histogram and reads the
P95 from it: a fleet P95 cannot be recovered from per-replica P95s (their max over-scales when one replica is
unlucky, their mean hides a slow half). With the TTFT histogram come histograms of the finished requests' wait
before prefill and of their prefill (vLLM's `queued_time`, `prefill_time`): the P95 the rules below judge is the
part of the TTFT more replicas can remove (`TokenplanePolicy.judged_p95`), so long prompts, whose own prefill takes
most of the target, neither breach it nor keep every load from being proven within it.

The load is what the engines run (their own count, averaged over a latency window) plus what waits for them up
to `targetQueueDepth` per replica; more waiting is a *backlog*, which by Little's law inflates request counts by
the wait, not by the demand, so it is sized from rates instead. The load is scaled by the requests that arrived at
the replicas (`arrivals`, counted by each replica over its latency window) per request they served in that window:
a saturated replica's engine runs no more when more arrive, so without the arrival rate its rising demand would
look flat, and no trend could be read from it.

Decision, per tick (the reasons are the operator's status reasons):
- `QueueDepth`: the load, or its trend one start-up ahead, needs more replicas at the per-replica load the
  fleet is sized for. The trend is a least-squares slope over 3 minutes, used only when it stands 3 standard
  errors out of the noise and holds in both halves of the window (a burst's step is not a trend); the horizon
  is the longest start-up observed (from the order that asked for a replica to its running: a new node; never
  below half the cold start, the prior, since the start-ups seen may all have been model loads), or,
  when the replicas the load needs fit the nodes the fleet held within the last 10 minutes (an emptied node
  stays in the pool that long), the quickest observed (a model load) plus a latency window, so a ramp is met by
  replicas that are ready when it arrives, and a wave's replicas do not idle a node provisioning ahead.
  Overloaded (waiting beyond `targetQueueDepth` per replica), the fleet is sized from rates: the arrivals (as
  the replicas count them; from replicas that do not, what the fleet served in the last window plus how fast
  the queue grew; their trend one start-up ahead) at 85% of what a saturated replica serves, plus the replicas
  that drain the backlog within a minute. For two windows after an
  overload the load is capped at what those arrivals need: the backlog being served is not demand, and no trend
  is read from it.
- `LatencyBreach`: the fleet P95 exceeds the target and the latency window shows this fleet; grow by the breach
  ratio (at most 2x the running replicas; replicas already starting count towards it). An end-to-end P95 must breach
  at its lower 95% confidence bound too (`_breach_stands_out`): long answers make it swing. A fleet over the target
  for a minute (its last two disjoint latency windows merged, not one unlucky window; an end-to-end minute at its
  lower bound too) or overloaded shows the *knee* (`capacity`), never below a load carried within the target for a
  minute (an overload's first window still averages the load before it): from then on the fleet is sized at 85% of
  it, and while the fleet runs well within the target the knee is put a step (1.25x) beyond the load it carries (a
  knee read low, from a window still averaging a quiet phase or from a prefill backlog, is unlearned that way).
  Before, it is sized at 1.25x the most a replica has been seen to carry well within the target for a whole window
  (`proven`, the window's least load, and only from a window whose least is at least half its average: a ramp out of
  silence proves nothing): it approaches the knee in steps instead of jumping past it on an optimistic prior; never
  below the most a replica has carried within the target for a minute (`within`), since a light load proves little and
  would size a burst's fleet at a fraction of what the replicas do carry. Without a latency target there is no knee to
  look for: the fleet is sized at 85% of the batch cap until requests waiting beyond `targetQueueDepth` show less
  (scaling on queue depth alone, as the CR asks; exploring would order a replica for every load not carried before).
  An end-to-end breach the fleet's size does not move is a *floor* (`_find_floor`: two fleet sizes half again apart,
  both over the target for a minute, the larger running at most 2/3 the load per replica yet less than a quarter of
  the way to the target: long answers decode about as long on any replica): growing for it would buy nothing, so
  from then on only the excess over the floor is judged. A TTFT's floor, the prompts' own prefill, is taken out by
  the judged P95 above.
- `WaitingForCapacity`: replicas have been pending longer than a cold start takes (no node for them): hold
  at the current target instead of adding more replicas that cannot be placed either.
- `Idle`: no traffic for a whole downscale window: go to the floor (zero with scale-to-zero; Serve applies
  `downscale_to_zero_delay_s`). Scale-in otherwise needs the P95 under the target (well under it until the knee is
  known), fewer requests waiting than one replica tolerates, no scale-out within the downscale window, and the
  busiest load of that window to fit the smaller fleet (at 85% of the knee once known, and at the load scale-out
  sizes for: never below a load carried within the target for a minute unless the window's load outran the fleet;
  without a latency target, also at most a step beyond the most a replica has carried: sizing at the batch cap,
  as scale-out does, would pack replicas into batches whose latency no signal watches),
  and, once an overload has measured what a saturated replica serves, the window's busiest arrival rate at 85% of
  that (a load read on the bigger fleet understates the smaller one's: the same requests run in bigger, slower
  batches there); at most half the replicas go per decision. After a clear fall of a load the fleet kept up with (a
  minute at most 35% of the window's busiest load, with no overload or breach in the window: a wave that broke) the
  load since sizes the fleet instead, and a minute after a scale-out suffices; a load that outran the fleet is held
  for. The policy owns this hysteresis: the operator renders Serve's `downscale_delay_s` as 0, so they do not stack.
  Replicas still starting beyond the most the load needed over a latency window are cancelled (`Steady`): they serve
  nobody yet, so dropping them risks no latency.
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
from dataclasses import dataclass, field
from typing import Any

from tokenplane_serving.schedule import ScheduleWindow, schedule_minimum

__all__ = [
    "BUCKET_BOUNDS_MS",
    "DECISION_GAUGES",
    "LATENCY_SERIES",
    "NODE_IDLE_S",
    "REASONS",
    "FleetMetrics",
    "TokenplanePolicy",
    "bucket_key",
    "latency_histogram",
    "merge_replica_reports",
    "publish_decision",
    "quantile_from_histogram",
]

# Geometric buckets from 5 ms to about 10 min, 15% apart: a quantile read from them is within one bucket.
_BUCKET_RATIO = 1.15
BUCKET_BOUNDS_MS: tuple[float, ...] = tuple(5.0 * _BUCKET_RATIO**i for i in range(85))
REASONS = ("QueueDepth", "LatencyBreach", "Idle", "WaitingForCapacity", "Schedule", "Batch", "Steady")

_HEADROOM = 0.85  # size the fleet for this fraction of the learned per-replica capacity
_SCALE_IN_UTILIZATION = 0.85  # scale in to a fleet that runs at most this fraction of the learned knee
_SCALE_IN_BAND = 0.7  # ... and the fleet P95 is below this fraction of the target
_LEARNED_BAND = 0.9  # ... or this fraction once a breach has shown where the knee is
_WINDOW_S = 30.0  # the replicas' latency histogram window (tokenplane_serving.server)
_MAX_GROWTH_PER_TICK = 2.0
_TREND_S = 180.0  # the load trend is fitted over this window
_BACKLOG_S = 60.0  # an overloaded fleet is sized to drain its backlog within this long
_MIN_BUDGET = 0.2  # waits are judged against at least this fraction of the target (prompts longer than it)
_FALL = 0.35  # a load at most this fraction of the downscale window's busiest moment, for `_FALL_S`, has fallen
_FALL_S = 60.0
# An emptied node stays in an AKS pool this long (the cluster autoscaler's default scale-down-unneeded-time,
# 10 minutes): a replica started on it loads the model only. The simulator's pool keeps nodes as long.
NODE_IDLE_S = 600.0
_FLOOR_MOVED = 0.25  # a larger fleet that takes the P95 less of the way to the target than this shows a floor
_FLOOR_BAND = 0.25  # past a latency floor, this fraction of it beyond it is judged as the whole target
_BREACH_Z = 1.645  # an end-to-end breach holds this many standard errors below the P95 (one-sided 95%)
_EXPLORE = 1.25  # scale-in may load a replica this much beyond the most it has been seen to carry within target
_LEVEL = 0.5  # a latency window proves the least load it saw only if that is at least this fraction of its average


# The latency series each replica reports as histograms (`latency_histogram`): TTFT and end-to-end, and of the
# finished requests their wait before prefill and their prefill.
LATENCY_SERIES = ("ttft", "e2e", "wait", "prefill")


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
    # Requests that arrived at the replicas in their last latency window; None unless every fresh replica reports
    # them (a replica of an older version does not).
    arrivals: float | None = None
    # Requests that got their first token in that window (their TTFT samples, whatever metric is targeted).
    served: float = 0.0
    # Of the requests that finished in that window: their wait before prefill, and their prefill (`wait_h<i>`,
    # `prefill_h<i>`): the part of the TTFT more replicas remove, and the part the prompts themselves set.
    wait_histogram: dict[int, float] = field(default_factory=dict)
    prefill_histogram: dict[int, float] = field(default_factory=dict)

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
    histograms: dict[str, dict[int, float]] = {metric: {}, "wait": {}, "prefill": {}}
    waiting = running = batch = replica_waiting = arrivals = served = 0.0
    fresh = stale = counted = 0
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
            elif name == "arrivals":
                arrivals += value
                counted += 1
            if name.startswith("ttft_h") and name[6:].isdigit():
                served += value
            series_name, _, index = name.rpartition("_h")
            if index.isdigit() and series_name in histograms:
                histogram = histograms[series_name]
                histogram[int(index)] = histogram.get(int(index), 0.0) + value
    measured = arrivals if fresh and counted == fresh else None
    return FleetMetrics(
        fresh,
        stale,
        waiting,
        running,
        histograms[metric],
        batch,
        replica_waiting,
        measured,
        served,
        wait_histogram=histograms["wait"],
        prefill_histogram=histograms["prefill"],
    )


class TokenplanePolicy:
    """Ray Serve `autoscaling_config.policy` class; `policy_kwargs` go to the constructor.

    Serve applies `min_replicas`/`max_replicas`, `upscale_delay_s` and `downscale_to_zero_delay_s` after it (the
    operator renders Serve's `downscale_delay_s` as 0: this policy's own scale-in rule holds decisions for the
    CR's downscale delay, and two such holds would stack), and starts the first replica from zero without
    calling it; called at zero anyway (by the simulator, or a future Serve), it sizes the cold start from the
    queue.
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
        downscale_delay_s: float = 300.0,
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
                plus model loading); pending longer means no capacity. Half of it is the least start-up assumed
                for a replica that needs a new node (a longer one observed replaces it).
            downscale_delay_s: Scale-in needs the load to have been low this long (CR `downscaleDelaySeconds`):
                the fleet is sized for the busiest moment of this window, and nothing is removed this long after
                a scale-out.
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
        self.downscale_delay_s = downscale_delay_s
        self.min_replicas = min_replicas
        self.schedule = [ScheduleWindow.model_validate(w) for w in schedule or []]
        self.batch_max_replicas = batch_max_replicas

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """Decide the replica count for one tick.

        Args:
            ctx: Ray Serve's `AutoscalingContext`.

        Returns:
            Desired replicas, and the state Serve hands back next tick: the decision's `reason`, the fleet
            `p95_ms`, the `queue`, the learned per-replica `capacity` and `proven` load, the observed
            `startup_s`, the recent load, and the timestamps the policy needs.
        """
        now = float(ctx.current_time if ctx.current_time is not None else time.time())
        state = dict(ctx.policy_state or {})
        current, target = int(ctx.current_num_replicas), int(ctx.target_num_replicas)
        fleet = merge_replica_reports(ctx.raw_metrics or {}, self.metric, now, self.stale_after_s)
        # Batch requests are left out of the demand; low priority, they also make up the engine's waiting first.
        batch = min(fleet.batch_running, float(ctx.total_num_requests or 0.0))
        # Requests waiting inside replicas are load and queue, as Serve counts its handle-queued ones in both.
        ongoing = float(ctx.total_num_requests or 0.0) - batch + fleet.replica_waiting
        queue = self.waiting_requests(ctx, fleet, batch)
        # The load a replica carries is what runs in its batch (the engines' own count, from the same reports as
        # their waiting one) and what waits for it up to `targetQueueDepth` (an engine always holds some waiting
        # for prefill, and their wait is part of the latency); more waiting is a backlog, sized apart (by rate,
        # below): by Little's law a backlog inflates the request count by the wait, not by the demand.
        tolerated = min(queue, self.target_queue * max(current, 1))
        running = max(0.0, fleet.engine_running - batch) + tolerated if fleet.fresh_replicas else ongoing
        raw_p95 = fleet.p95_ms() if fleet.samples >= self.min_samples else None
        p95 = self.judged_p95(fleet.histogram, fleet.wait_histogram, fleet.prefill_histogram)
        self._track_fleet(state, current, target, now)
        # The engines' counts are snapshots: averaged over a latency window, as Serve averages its own counts.
        snapshots = [(t, v) for t, v in state.get("recent_running", []) if now - t < _WINDOW_S]
        snapshots.append((now, running))
        carried = sum(v for _, v in snapshots) / len(snapshots)
        # Arrivals beyond the requests served in the same window are demand the engines' counts cannot show: a
        # saturated replica runs no more when more arrive (the excess waits, and past `targetQueueDepth` is not
        # counted). By Little's law they add to the load in proportion, at the time a request spends running now.
        running = carried * self._arrival_ratio(fleet)
        overloaded = current > 0 and queue > self.target_queue * current
        backlog_need = 0.0
        if overloaded:
            state["overloaded_at"] = now
            state["arrival_need"], backlog_need = self._overload_need(state, current, queue, fleet, now)
        since_overload = now - float(state.get("overloaded_at", -math.inf))
        if since_overload <= 2 * _WINDOW_S:
            # A backlog being served runs in the batches after it left the queue (and in their average a window
            # longer): the demand is
            # the arrivals', as the rates measured it, not the backlog's.
            previous = self._per_replica_target(state, float(state.get("capacity") or self.max_ongoing))
            running = min(running, float(state["arrival_need"]) * previous)
        history = [(t, v) for t, v in state.get("recent_load", []) if now - t < max(self.downscale_delay_s, _TREND_S)]
        peak_rate = self._peak_arrival_rate(state, fleet, now)
        if not history or now - history[-1][0] >= 1.0:  # Serve ticks every 0.1 s: keep one point a second
            history.append((now, running))
        else:
            snapshots.pop()
        # The latency window answers for the load over that window: proven is the least of it, not its last point.
        # A knee or a proven load is what the replicas carried, never the demand beyond it.
        low = min(carried, *(v for t, v in history if now - t <= _WINDOW_S))
        capacity = self._learn_capacity(state, current, carried, low, queue, p95, fleet, now)
        p95 = self._beyond_floor(state, p95)
        peak = max([running, *(v for t, v in history if now - t < self.downscale_delay_s)])
        # A clear fall: the load of the last `_FALL_S` is at most `_FALL` of the window's busiest moment, and that
        # moment is older. The busiest moment no longer sizes the fleet: the load since does, and so soon after a
        # scale-out (a wave that broke). Only a load the fleet kept up with: one that overloaded it or breached the
        # target within the window outran the fleet's start-up, and when it comes back it would again.
        if self._breached(p95):
            state["breached_at"] = now
            if now - float(state.get("carried_used_at", -math.inf)) < self.downscale_delay_s:
                # A fleet sized by what it once carried breached soon after: the requests have grown heavier since,
                # and the evidence would shrink the fleet into a breach after every downscale window.
                state["carried"] = {n: v for n, v in state.get("carried", {}).items() if int(n) > current}
        outran = now - max(float(state.get("breached_at", -math.inf)), float(state.get("overloaded_at", -math.inf)))
        recent = max([running, *(v for t, v in history if now - t < _FALL_S)])
        fell = recent <= _FALL * peak and now - history[0][0] >= _FALL_S and outran >= self.downscale_delay_s
        if current > 0 and outran >= self.downscale_delay_s and now - state["fleet_changed"] >= self.downscale_delay_s:
            # This many replicas carried the busiest moment of a whole downscale window, within the target throughout.
            carried_by = dict(state.get("carried", {}))
            carried_by[str(current)] = max(float(carried_by.get(str(current), 0.0)), peak)
            state["carried"] = carried_by
        # Overloaded, the backlog hides the trend (the arrival rate sizes the fleet instead); draining, it would
        # make one up, were it not capped above.
        calm = since_overload > 2 * _WINDOW_S
        per_replica = self._per_replica_target(state, capacity)
        forecast = self._forecast_load(state, history, now, running, per_replica, current) if calm else running
        needs = {"QueueDepth": max(running, forecast) / per_replica, "LatencyBreach": 0.0}
        if current <= 0:
            needs["QueueDepth"] = ongoing / per_replica  # at zero, the queue is all there is to size from
        elif overloaded:
            needs["QueueDepth"] = max(needs["QueueDepth"], float(state["arrival_need"]) + backlog_need)
        last_up = float(state.get("last_up", -math.inf))
        if self._breached(p95) and state["stable"] and self._breach_stands_out(state, fleet.histogram):
            # The latency window shows this fleet (not the one before) over the target; replicas starting count
            # towards the growth (it acts only past the target, which includes them).
            needs["LatencyBreach"] = max(current + 1.0, current * min(_MAX_GROWTH_PER_TICK, p95 / self.p95_ms))  # type: ignore[operator]
        reason = max(needs, key=lambda k: needs[k])
        grow = math.ceil(needs[reason] - 1e-9)

        # What the load needed over the last latency window, one point a second (an overload needs every replica
        # ordered): replicas still starting beyond it are not needed.
        needed = [(t, n) for t, n in state.get("recent_need", []) if now - t < _WINDOW_S]
        need_now = max(grow, target) if queue > self.target_queue * current else grow
        if needed and now - needed[-1][0] < 1.0:
            needed[-1] = (needed[-1][0], max(needed[-1][1], need_now))
        else:
            needed.append((now, need_now))
        state["recent_need"] = needed
        still_needed = max(current, *(n for _, n in needed))
        pending_since = state.get("pending_since")
        starved = pending_since is not None and now - float(pending_since) > self.cold_start_s
        scheduled_min, window = schedule_minimum(self.schedule, now)
        # Scale-in is sized for the busiest moment of the downscale window: only once the policy has seen one.
        seen_window = now - float(state.setdefault("since", now)) >= self.downscale_delay_s
        if grow > target and not starved:
            desired, state["last_up"] = grow, now
        elif peak <= 0 and queue <= 0 and seen_window:
            desired, reason = 0, "Idle"
        elif grow < current and seen_window and self._may_scale_in(fleet, p95, queue, now, last_up, state, fell):
            kept_up = outran >= self.downscale_delay_s
            desired = self._scale_in_size(
                current, recent if fell else peak, per_replica, capacity, state, now, kept_up=kept_up, fell=fell,
                peak_rate=peak_rate,
            )  # fmt: skip
            reason = "Idle" if desired < current else "Steady"
        elif target > still_needed and now - max(last_up, float(state["since"])) >= _WINDOW_S:
            # Replicas still starting that the load has not needed for a window are cancelled: they serve nobody
            # yet, so dropping them risks no latency, and each would cost its whole start-up for nothing.
            desired, reason = still_needed, "Steady"
        else:
            desired, reason = max(target, current), "Steady"
        if starved and desired >= target:
            # More replicas would wait for nodes too: hold, and say so (the operator reports this reason).
            desired, reason = target, "WaitingForCapacity"
        if scheduled_min is not None and scheduled_min > max(desired, self.min_replicas):
            desired, reason = scheduled_min, "Schedule"
        batch_hold = min(self.batch_max_replicas, math.ceil(batch / (_HEADROOM * capacity) - 1e-9))
        if batch_hold > desired:
            desired, reason = batch_hold, "Batch"
        if desired > max([current, *(n for _, n in state["orders"])]):
            state["orders"].append((now, desired))
            state["pending_since"] = state["orders"][0][0]
        if reason != state.get("reason") or desired != state.get("desired"):
            state["decided_at"] = now  # the last time the decision changed, for the operator's status
        if current > 0 or target > 0:
            state["zero_since"] = None
        elif state.get("zero_since") is None:
            state["zero_since"] = now
        state.update(
            reason=reason,
            desired=desired,
            p95_ms=raw_p95,
            judged_p95_ms=p95,
            queue=queue,
            capacity=capacity,
            forecast=forecast,
            schedule_window=window,
            stale_replicas=fleet.stale_replicas,
            recent_load=history,
            recent_running=snapshots,
        )
        publish_decision(ctx, current, desired, state)
        return desired, state

    def _overload_need(
        self, state: dict[str, Any], current: int, queue: float, fleet: FleetMetrics, now: float
    ) -> tuple[float, float]:
        """Replicas for an overloaded fleet, from rates: arrivals = what the fleet serves + how fast the queue grows.

        The fleet's throughput is its latency samples of the last window (one per request served); per replica it
        is what a saturated replica serves.

        Returns:
            The replicas the arrivals need (at `_HEADROOM` of a saturated replica's rate), and those that drain
            the backlog within `_BACKLOG_S`.
        """
        queued = [(t, q) for t, q in state.get("recent_queue", []) if now - t <= _WINDOW_S]
        queued.append((now, queue))
        state["recent_queue"] = queued
        served = fleet.samples / _WINDOW_S
        if served <= 0 or fleet.fresh_replicas <= 0:
            return float(current), 0.0
        # What a saturated replica serves, measured while the window held one fleet (a replica that just started
        # has a short window and would understate it); until then, the fleet's rate per fresh replica.
        if state.get("stable"):
            state["saturated_rate"] = served / max(current, 1)
        per_replica = max(float(state.get("saturated_rate") or 0.0), served / fleet.fresh_replicas)
        elapsed = now - queued[0][0]
        growth = max(0.0, (queue - queued[0][1]) / elapsed) if elapsed >= _WINDOW_S / 3 else 0.0
        # A rising arrival rate is met one start-up ahead, as the load's trend is when the fleet keeps up.
        arrivals = [(t, a) for t, a in state.get("recent_arrivals", []) if now - t <= _TREND_S]
        # Counted where the replicas count them; else what the fleet serves plus how fast the queue grows.
        rate = fleet.arrivals / _WINDOW_S if fleet.arrivals is not None else served + growth
        if not arrivals or now - arrivals[-1][0] >= 1.0:
            arrivals.append((now, rate))
        state["recent_arrivals"] = arrivals
        ahead = _forecast(arrivals, now, rate, float(state["startup_s"]))
        # Every request in the backlog is late already: drained within a minute (what attainment is counted in).
        return ahead / (_HEADROOM * per_replica), queue / (per_replica * _BACKLOG_S)

    def _peak_arrival_rate(self, state: dict[str, Any], fleet: FleetMetrics, now: float) -> float | None:
        """Return the busiest arrival rate (requests/s, as the replicas count them) of the downscale window.

        None unless every point of a whole window is known: a window partly unmeasured (replicas of an older
        version, or none fresh) says nothing of its busiest moment.
        """
        rate = fleet.arrivals / _WINDOW_S if fleet.arrivals is not None and fleet.fresh_replicas else None
        rates = [(t, r) for t, r in state.get("recent_rate", []) if now - t < self.downscale_delay_s]
        if not rates or now - rates[-1][0] >= 1.0:
            rates.append((now, rate))
        state["recent_rate"] = rates
        if any(r is None for _, r in rates) or now - rates[0][0] < self.downscale_delay_s - 2.0:
            return None
        return max(float(r) for _, r in rates)

    def _arrival_ratio(self, fleet: FleetMetrics) -> float:
        """Return the requests that arrived per request served in the replicas' last latency window (at least 1).

        1 when the replicas do not count arrivals, when too few arrived for a ratio (`min_samples`), or when none
        was served (the queue sizes that fleet). Never below 1: a backlog being served is not less demand (the cap
        after an overload handles it), and batch requests, which arrive through handles, are served too.
        """
        if fleet.arrivals is None or fleet.arrivals < self.min_samples or fleet.served <= 0:
            return 1.0
        return max(1.0, fleet.arrivals / fleet.served)

    def waiting_requests(self, ctx: Any, fleet: FleetMetrics, batch: float = 0.0) -> float:
        """Count the interactive requests waiting for a slot: Serve-queued, waiting in a replica, engine-waiting.

        `batch` Batch API requests are taken off the engines' waiting first (they run at low priority).
        """
        return float(ctx.total_queued_requests or 0.0) + fleet.replica_waiting + max(0.0, fleet.engine_waiting - batch)

    def judged_p95(
        self, ttft: Mapping[int, float], wait: Mapping[int, float], prefill: Mapping[int, float]
    ) -> float | None:
        """Return the fleet P95 (ms) the policy judges against the target: the part more replicas can remove.

        A request's TTFT is its wait before prefill plus its prefill, which its prompt sets whatever the fleet
        size (a 3k-token prompt's own prefill can take most of the target). The waits are judged against what
        the prompts leave of the target (the target less the P95 prefill, at least `_MIN_BUDGET` of it), scaled
        to the target, so that the bands below apply to them unchanged; never above the raw P95, so a fleet
        within the target is never judged in breach. The raw P95 without wait and prefill samples (replicas of
        an older version), or when the target is on end-to-end latency.

        Args:
            ttft: The fleet's histogram of the targeted metric (`metric`).
            wait: Its histogram of the finished requests' wait before prefill.
            prefill: Its histogram of their prefill.
        """
        if sum(ttft.values()) < self.min_samples:
            return None
        raw = quantile_from_histogram(ttft, 0.95)
        if self.metric != "ttft" or self.p95_ms is None or raw is None:
            return raw
        waited = quantile_from_histogram(wait, 0.95) if sum(wait.values()) >= self.min_samples else None
        prefill_p95 = quantile_from_histogram(prefill, 0.95) if sum(prefill.values()) >= self.min_samples else None
        if waited is None or prefill_p95 is None:
            return raw
        budget = max(self.p95_ms - prefill_p95, _MIN_BUDGET * self.p95_ms)
        return min(raw, self.p95_ms * waited / budget)

    def _find_floor(
        self, state: dict[str, Any], current: int, minute_p95: float, per_replica: float, now: float
    ) -> bool:
        """Note a latency floor: a breach the fleet's size does not move (long answers against an e2e target).

        Each fleet size's last minute-long P95 (two latency windows merged) is kept with its load per replica. A
        fleet over the target for a minute sits at a floor when another size, seen within the last `NODE_IDLE_S`
        and at least half again larger or smaller, was over it too, and the larger fleet, at a load per replica at
        most 2/3 of the smaller's, took its P95 less than a quarter of the way to the target: the latency follows
        the requests, not the load. Past a floor, the same test may find a higher one (the answers grew longer). A
        downscale window within the target clears the floor (one minute does not: a P95 among a few long answers
        swings across the target from minute to minute).

        Returns:
            Whether a floor was found in this call.
        """
        if self.p95_ms is None or self.metric == "ttft":
            return False  # no target, no breach; a TTFT's own floor, the prompts' prefill, is `judged_p95`'s
        if minute_p95 > self.p95_ms:
            state["floor_within_since"] = None
        elif state.get("floor_within_since") is None:
            state["floor_within_since"] = now
        elif now - float(state["floor_within_since"]) >= self.downscale_delay_s:
            state.pop("latency_floor", None)
        seen = {n: v for n, v in state.get("minute_p95", {}).items() if now - float(v[0]) < NODE_IDLE_S}
        seen[str(current)] = (now, minute_p95, per_replica)
        state["minute_p95"] = seen
        if not self._breached(self._beyond_floor(state, minute_p95)):
            return False
        for size, (_, other_p95, other_load) in seen.items():
            # The larger fleet ran the lighter load per replica (on a rising load it may run a heavier one).
            pair = sorted([(int(size), other_load, other_p95), (current, per_replica, minute_p95)])
            (small, small_load, small_p95), (large, large_load, large_p95) = pair
            apart = large >= 1.5 * small and small_load >= 1.5 * large_load
            moved = small_p95 - large_p95  # towards the target, by the larger fleet
            if apart and other_p95 > self.p95_ms and moved < _FLOOR_MOVED * (small_p95 - self.p95_ms):
                state["latency_floor"] = max(minute_p95, other_p95)
                return True
        return False

    def _beyond_floor(self, state: Mapping[str, Any], p95: float | None) -> float | None:
        """Return the P95 to judge: past a latency floor (`_find_floor`), only its excess, against a quarter of it.

        The excess over the floor is what more replicas can remove; it is scaled to the target, as `judged_p95`
        scales waits, so that the bands apply unchanged (at the floor the fleet runs comfortably within target,
        and scales in on load alone; 25% beyond it, a load-driven rise, is a breach again).
        """
        floor = state.get("latency_floor")
        if p95 is None or floor is None or self.p95_ms is None:
            return p95
        return min(p95, self.p95_ms * max(0.0, p95 - float(floor)) / (_FLOOR_BAND * float(floor)))

    def _breach_stands_out(self, state: Mapping[str, Any], histogram: Mapping[int, float]) -> bool:
        """Whether an end-to-end breach holds at the P95's lower confidence bound, from the histogram's sample count.

        A P95 is one order statistic, and with a few long answers in the tail it swings across the target from one
        window to the next; the quantile `_BREACH_Z` binomial standard errors lower (the 91.7th percentile of 120
        samples) must breach too, both for growth (a window) and for the knee (a minute). A TTFT's judged P95 reads
        queue waits, which do not swing so, and does not need it (there it traded minutes on sawtooth and diurnal
        for GPU-hours elsewhere).
        """
        if self.metric == "ttft":
            return True
        q = 0.95 - _BREACH_Z * math.sqrt(0.95 * 0.05 / max(sum(histogram.values()), 1.0))
        return self._breached(self._beyond_floor(state, quantile_from_histogram(histogram, q)))

    def _breached(self, p95: float | None) -> bool:
        return p95 is not None and self.p95_ms is not None and p95 > self.p95_ms

    def _track_fleet(self, state: dict[str, Any], current: int, target: int, now: float) -> None:
        """Note when the fleet changed size, and how long started replicas took to run (the forecast horizon).

        Every increase of the target is an order, `(when, replicas)`, open until that many run. A replica that
        starts running fills the oldest open order (Serve starts replicas in the order asked), so its start-up
        is measured from that order, not from the first of a series of growing ones.
        """
        state.setdefault("startup_s", self.cold_start_s / 2)
        orders = [(float(t), int(n)) for t, n in state.get("orders", [])]
        if target > current and not any(n >= target for _, n in orders):
            # Replicas asked for outside this policy's orders (Serve's own start from zero, a restart).
            orders.append((float(state.get("pending_since") or now), target))
        previous = state.get("fleet_size")
        if previous != current:
            state["fleet_size"], state["fleet_changed"] = current, now
            if previous is not None and current > previous and orders:
                # The longest seen: a load beyond the fleet's recent size needs new nodes, the slowest start-up;
                # the quickest seen is a replica on a node still in the pool (a model load).
                observed = min(self.cold_start_s, now - orders[0][0])
                state["startup_s"] = max(observed, float(state["startup_s"]))
                state["startup_warm"] = min(observed, float(state.get("startup_warm") or observed))
            elif previous is not None and current < previous:
                # The nodes of the replicas that stopped stay in the pool for a while: note how many there were.
                state["freed"] = [*_recently_freed(state, now), (now, int(previous))]
        # Filled orders close; cancelled replicas (the target lowered) shrink the orders that asked for them.
        state["orders"] = [(t, min(n, target)) for t, n in orders if min(n, target) > current]
        state["pending_since"] = state["orders"][0][0] if state["orders"] else None
        state["stable"] = now - float(state["fleet_changed"]) >= self.stale_after_s + _WINDOW_S

    def _forecast_load(
        self,
        state: dict[str, Any],
        history: list[tuple[float, float]],
        now: float,
        running: float,
        per_replica: float,
        current: int,
    ) -> float:
        """Return the load one start-up ahead: a model load when the replicas it needs fit the warm pool.

        Replicas up to the most the fleet ran within the last `NODE_IDLE_S` start on nodes still in the pool
        (the cluster autoscaler keeps an emptied node that long), in the quickest start-up observed; beyond that
        they need new nodes, the longest start-up observed. Ordering everything a new node ahead would run
        the warm replicas idle for the difference, on every wave.
        """
        slow = float(state["startup_s"])
        forecast = _forecast(history, now, running, slow)
        quick = state.get("startup_warm")
        if quick is None or float(quick) >= slow:
            return forecast
        warm_pool = max([current, *(n for _, n in _recently_freed(state, now))])
        near = _forecast(history, now, running, float(quick) + _WINDOW_S)
        return near if near / per_replica <= warm_pool else forecast

    def _per_replica_target(self, state: dict[str, Any], capacity: float) -> float:
        """Return the requests per replica the fleet is sized for when it grows.

        After a breach has shown the knee (`capacity`), a margin below it. Before, the knee is unknown: the
        most a replica has been seen to carry well within the target (`proven`), plus a step, so that the
        fleet approaches the knee step by step (each step is proven or breaches, and then the knee is known);
        with nothing seen yet, or without a latency target (no knee to look for: the queue shows saturation), a
        margin below the batch cap.
        """
        if state.get("learned") or self.p95_ms is None:
            return _HEADROOM * capacity
        proven = float(state.get("proven", 0.0))
        if proven <= 0:
            return _HEADROOM * capacity
        # A light load proves little: never below a load the replicas have carried within the target.
        return min(_HEADROOM * capacity, max(_EXPLORE * proven, float(state.get("within", 0.0))))

    def _scale_in_size(
        self,
        current: int,
        peak: float,
        per_replica: float,
        capacity: float,
        state: dict[str, Any],
        now: float,
        *,
        kept_up: bool,
        fell: bool,
        peak_rate: float | None,
    ) -> int:
        # Sized for the busiest moment of the downscale window, so an oscillating load does not flap, at the
        # per-replica load scale-out sizes for (below the knee once it is known), at most half the fleet a step.
        # Beyond proven loads the step is 25%, or one replica when a fleet is too small for 25% to remove one.
        step = max(_EXPLORE, current / max(current - 1, 1))
        proven = float(state.get("proven", 0.0))
        # Never below a load the replicas carried within the target for a minute, as scale-out sizes, when the load
        # of the window never outran the fleet: after one that did, the step's margin meets its return.
        within = float(state.get("within", 0.0)) if kept_up else 0.0
        if state.get("learned"):
            explored = step * float(state.get("proven", capacity))
            per_replica = min(_SCALE_IN_UTILIZATION * capacity, max(explored, within))
        elif proven > 0:
            per_replica = min(_HEADROOM * capacity, max(step * proven, within))
        in_fleet = math.ceil(peak / max(per_replica, 1e-9) - 1e-9)
        if kept_up and not fell:
            # Like for like: a smaller fleet that itself carried a window whose busiest moment was at least this
            # one's, within the target throughout, carries this one (on a noisy flat load the least of a window,
            # which `within` is read from, sits well below its busiest moment, and would keep an extra replica).
            shown = [int(n) for n, load in state.get("carried", {}).items() if float(load) >= peak and int(n) > 0]
            if shown and min(shown) < min(in_fleet, current):
                in_fleet = min(shown)
                state["carried_used_at"] = now
        saturated = float(state.get("saturated_rate") or 0.0)
        if peak_rate is not None and saturated > 0:
            # The same requests on fewer replicas run in bigger, slower batches: a load read on this fleet
            # understates the smaller one's. Once an overload has measured what a saturated replica serves, the
            # smaller fleet must also serve the window's busiest arrival rate at the fleet's headroom.
            in_fleet = max(in_fleet, math.ceil(peak_rate / (_HEADROOM * saturated) - 1e-9))
        return min(current, max(in_fleet, math.ceil(current / 2), 1))

    def _learn_capacity(
        self,
        state: dict[str, Any],
        current: int,
        carried: float,
        low: float,
        queue: float,
        p95: float | None,
        fleet: FleetMetrics,
        now: float,
    ) -> float:
        capacity = float(state.get("capacity") or self.max_ongoing)
        if current <= 0 or fleet.fresh_replicas == 0 or not state.get("stable"):
            # Right after the fleet changed size, the latency window still holds the old fleet's requests.
            state["windows"] = []
            return capacity
        # The knee is read from this fleet's last two disjoint latency windows merged (twice the samples of one:
        # one unlucky window is not where the knee is); the fast breach response above reads one.
        windows = [w for w in state.get("windows", []) if now - w[0] < 2 * _WINDOW_S]
        if not windows or now - windows[-1][0] >= _WINDOW_S:
            windows.append((now, dict(fleet.histogram), dict(fleet.wait_histogram), dict(fleet.prefill_histogram)))
        state["windows"] = windows
        per_replica = carried / current
        merged: list[dict[int, float]] = [{}, {}, {}]
        for _, *histograms in windows:
            for into, histogram in zip(merged, histograms, strict=False):  # a 2-tuple: an older version's state
                for index, count in histogram.items():
                    into[int(index)] = into.get(int(index), 0.0) + count
        knee_p95 = self.judged_p95(*merged) if len(windows) == 2 else None
        not_waiting = queue <= self.target_queue * current
        if knee_p95 is not None and not_waiting and self._find_floor(state, current, knee_p95, per_replica, now):
            # A knee read from those breaches was the floor, not a load.
            capacity = self.max_ongoing
            state.pop("learned", None)
        p95, knee_p95 = self._beyond_floor(state, p95), self._beyond_floor(state, knee_p95)
        # A window proves the least load it saw only if its load held level enough for that to say so: a ramp out of
        # silence would prove the silence, and a fleet sized a step beyond it would be many times what the load needs.
        level = low >= _LEVEL * carried
        # A load a replica carried within the target for a minute is below the knee, whatever shows it later.
        carried_within = max(1.0, float(state.get("proven", 0.0)), float(state.get("within", 0.0)))
        if self._breached(p95) and self._breached(knee_p95) and self._breach_stands_out(state, merged[0]):
            # This fleet over the target for a minute, beyond its sampling noise, shows the knee: a replica holds
            # at most this load within the target.
            capacity = min(capacity, max(carried_within, per_replica))
            state["learned"] = True
        elif p95 is not None and level and (self.p95_ms is None or p95 < _SCALE_IN_BAND * self.p95_ms):
            # Comfortably within target at this load: a replica holds at least that much.
            capacity = min(self.max_ongoing, max(capacity, low / current))
            if state.get("learned"):
                # A knee read from a queue or a breach can be read low (the window still averaging the load before
                # a step, a prefill backlog): comfortably within the target, it is at least one step beyond
                # this load, so the fleet re-explores upwards instead of holding a low knee for good.
                capacity = min(self.max_ongoing, max(capacity, _EXPLORE * (low / current) / _HEADROOM))
            state["proven"] = max(float(state.get("proven", 0.0)), low / current)
        if knee_p95 is not None and p95 is not None and not self._breached(p95) and not self._breached(knee_p95):
            # Within the target for a minute at this load (not well within it: not proven, no step beyond it).
            state["within"] = max(float(state.get("within", 0.0)), low / current)
        if queue > self.target_queue * current:
            # Requests wait: the replicas run all they can, and the knee is at most what they run now.
            capacity = min(capacity, max(carried_within, per_replica))
            state["learned"] = True
        return capacity

    def _may_scale_in(
        self,
        fleet: FleetMetrics,
        p95: float | None,
        queue: float,
        now: float,
        last_up: float,
        state: dict[str, Any],
        fell: bool = False,
    ) -> bool:
        # Not overloaded (the requests waiting within `targetQueueDepth` are load the size accounts for), and a
        # latency window that shows this fleet (not the one before the last scale-in).
        overloaded = queue > self.target_queue * fleet.fresh_replicas
        hold = min(_FALL_S, self.downscale_delay_s) if fell else self.downscale_delay_s
        if fleet.fresh_replicas == 0 or overloaded or now - last_up < hold:
            return False
        if not state.get("stable"):
            return False
        if self.p95_ms is None:
            return True
        if p95 is None:
            return fleet.samples == 0  # no latency to judge: only a fleet that served nothing lately
        learned = bool(state.get("learned"))
        # With a capacity learned from a breach, the load check sizes the smaller fleet; the latency only has to
        # be inside the target. Without one, the latency must be well inside it (the knee is unknown).
        return p95 < (_LEARNED_BAND if learned else _SCALE_IN_BAND) * self.p95_ms


def _recently_freed(state: Mapping[str, Any], now: float) -> list[tuple[float, int]]:
    """Return the fleet sizes the policy shrank from within the last `NODE_IDLE_S`: their nodes are still up."""
    return [(float(t), int(n)) for t, n in state.get("freed", []) if now - float(t) < NODE_IDLE_S]


def _forecast(history: list[tuple[float, float]], now: float, current: float, horizon_s: float) -> float:
    """Load one start-up time ahead, from the least-squares trend of the last `_TREND_S` (never below now's).

    A replica asked for now serves only after a start-up; on a rising load it must be asked for the load it
    will meet then. Falling trends are not extrapolated (scale-in has its own, slower rule), and the forecast
    at most doubles the load, so one noisy minute cannot order a fleet.
    """
    points = [(t, v) for t, v in history if now - t <= _TREND_S]
    if len(points) < 3 or points[-1][0] - points[0][0] < _TREND_S / 2:
        return current
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var <= 0:
        return current
    slope = sum((t - mt) * (v - mv) for t, v in points) / var
    residual = sum((v - mv - slope * (t - mt)) ** 2 for t, v in points) / max(1, n - 2)
    # Only a trend that stands out of the noise (three standard errors; the points are 1 s apart but Serve
    # averages them over 30 s, so there are about n / 30 independent ones).
    stderr = math.sqrt(residual / var * max(1.0, 30.0 * n / (points[-1][0] - points[0][0] + 1.0)))
    if slope <= 3.0 * stderr:
        return current
    # A trend holds over the whole window: a step (a burst starting) has one flat half and is not extrapolated.
    half = points[0][0] + (points[-1][0] - points[0][0]) / 2
    if any(_slope([p for p in points if (p[0] <= half) == early]) <= slope / 3 for early in (True, False)):
        return current
    return min(2.0 * current, current + slope * horizon_s)


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / var if var > 0 else 0.0


# The decision leaves the Serve controller as Prometheus gauges (Ray prefixes them `ray_`); the operator reads
# them from its scrape of the Ray pods into the InferenceDeployment's status (converge/scaling.py there).
DECISION_GAUGES = {
    "replicas": "tokenplane_autoscaler_replicas",
    "decision": "tokenplane_autoscaler_decision_timestamp_seconds",
    "zero_since": "tokenplane_autoscaler_zero_since_timestamp_seconds",
}
_gauges: dict[str, Any] = {}


def publish_decision(ctx: Any, current: int, desired: int, state: Mapping[str, Any]) -> None:
    """Export the decision from the Serve controller: replicas running and wanted, the reason, time at zero.

    `tokenplane_autoscaler_replicas{kind=current|desired}`; `..._decision_timestamp_seconds{reason}` is the Unix
    time the decision last changed for the reason in force, 0 for the other reasons; `..._zero_since_timestamp_
    seconds` is when the deployment reached zero replicas (0 while it has some). Outside a Ray process (the
    simulator) there is nowhere to export to, and nothing is done.
    """
    import ray

    if not ray.is_initialized():
        return
    from ray.util.metrics import Gauge

    if not _gauges:
        keys = ("application", "deployment")
        _gauges["replicas"] = Gauge(DECISION_GAUGES["replicas"], "Replicas running / wanted by the policy.",
                                    tag_keys=(*keys, "kind"))  # fmt: skip
        _gauges["decision"] = Gauge(DECISION_GAUGES["decision"], "When the decision in force was taken, by reason.",
                                    tag_keys=(*keys, "reason"))  # fmt: skip
        _gauges["zero_since"] = Gauge(DECISION_GAUGES["zero_since"], "When the deployment reached zero replicas.",
                                      tag_keys=keys)  # fmt: skip
    tags = {"application": str(ctx.app_name), "deployment": str(ctx.deployment_name)}
    _gauges["replicas"].set(current, tags={**tags, "kind": "current"})
    _gauges["replicas"].set(desired, tags={**tags, "kind": "desired"})
    for reason in REASONS:
        value = float(state.get("decided_at") or 0.0) if reason == state.get("reason") else 0.0
        _gauges["decision"].set(value, tags={**tags, "reason": reason})
    _gauges["zero_since"].set(float(state.get("zero_since") or 0.0), tags=tags)
