"""TokenplanePolicy on real Ray Serve `AutoscalingContext`s, alone and wrapped the way Serve wraps it."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID, TimeStampedValue
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from tokenplane_serving.autoscale import (
    BUCKET_BOUNDS_MS,
    TokenplanePolicy,
    latency_histogram,
    merge_replica_reports,
    quantile_from_histogram,
)

DEPLOYMENT = DeploymentID(name="LLMServer:tiny", app_name="llm")
NOW = 1_800_000_000.0
TARGET_MS = 1000.0


def replica(i: int) -> ReplicaID:
    return ReplicaID(unique_id=f"r{i}", deployment_id=DEPLOYMENT)


def report(
    ttft_ms: list[float],
    waiting: float = 0.0,
    running: float = 0.0,
    replica_waiting: float = 0.0,
    *,
    wait_ms: Sequence[float] = (),
    prefill_ms: Sequence[float] = (),
) -> dict[str, float]:
    """What `TokenplaneLLMServer.record_autoscaling_stats` returns for these latencies."""
    return {
        "replica_waiting": replica_waiting,
        "engine_waiting": waiting,
        "engine_running": running,
        **latency_histogram("ttft", ttft_ms),
        **latency_histogram("wait", wait_ms),
        **latency_histogram("prefill", prefill_ms),
    }


def context(
    reports: list[dict[str, float]],
    *,
    ongoing: float,
    queued: float = 0.0,
    target: int | None = None,
    current: int | None = None,
    state: dict[str, Any] | None = None,
    age_s: list[float] | None = None,
    now: float = NOW,
    config: AutoscalingConfig | None = None,
) -> AutoscalingContext:
    """A context as Serve's controller builds it: each replica's report is its latest time-stamped point."""
    ids = [replica(i) for i in range(len(reports))]
    raw: dict[str, dict[ReplicaID, list[TimeStampedValue]]] = {}
    for rid, values, age in zip(ids, reports, age_s or [2.0] * len(reports), strict=True):
        for name, value in values.items():
            raw.setdefault(name, {})[rid] = [TimeStampedValue(now - age - 10, 0.0), TimeStampedValue(now - age, value)]
    current = len(reports) if current is None else current
    return AutoscalingContext(
        deployment_id=DEPLOYMENT,
        deployment_name=DEPLOYMENT.name,
        app_name=DEPLOYMENT.app_name,
        current_num_replicas=current,
        target_num_replicas=current if target is None else target,
        running_replicas=ids[:current],
        total_num_requests=ongoing,
        total_queued_requests=queued,
        aggregated_metrics=None,
        raw_metrics=raw,
        capacity_adjusted_min_replicas=0,
        capacity_adjusted_max_replicas=16,
        policy_state=dict(state or {}),
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=now,
        config=config or AutoscalingConfig(min_replicas=0, max_replicas=16, upscale_delay_s=0, downscale_delay_s=0),
    )


def stable(replicas: int, **state: Any) -> dict[str, Any]:
    """Policy state of a fleet that has had `replicas` for 10 minutes (its latency window is its own)."""
    return {"fleet_size": replicas, "fleet_changed": NOW - 600, **seen(**state)}


def seen(**state: Any) -> dict[str, Any]:
    """Policy state of a policy that has watched the deployment for an hour (a whole downscale window)."""
    return {"since": NOW - 3600, **state}


def policy(**kwargs: Any) -> TokenplanePolicy:
    return TokenplanePolicy(**{"max_ongoing_requests": 32, "target_queue_depth": 4, "p95_ms": TARGET_MS, **kwargs})


def bucket_counts(metric: str, samples_ms: list[float]) -> dict[int, float]:
    """The samples' histogram as the policy keeps it in its state: bucket index -> count."""
    return {int(key.split("_h")[1]): count for key, count in latency_histogram(metric, samples_ms).items()}


def test_histogram_quantile_is_within_a_bucket_of_the_exact_one() -> None:
    rng = random.Random(7)
    samples = [rng.lognormvariate(6, 1) for _ in range(5000)]
    counts = bucket_counts("ttft", samples)
    exact = sorted(samples)[int(0.95 * len(samples))]
    assert quantile_from_histogram(counts, 0.95) == pytest.approx(exact, rel=0.08)
    assert quantile_from_histogram({}, 0.95) is None
    assert BUCKET_BOUNDS_MS[-1] > 600_000


def test_breach_scales_out_in_proportion_and_says_why() -> None:
    # 4 replicas, all slow (P95 ~2.5 s against 1 s): the ratio is capped at 2x per tick.
    slow = [report([2500.0] * 30, running=8) for _ in range(4)]
    desired, state = policy()(context(slow, ongoing=32, state=stable(4)))
    assert desired == 8
    assert state["reason"] == "LatencyBreach"
    assert state["p95_ms"] == pytest.approx(2500, rel=0.08)
    # One unlucky latency window scales out but teaches nothing: the knee is not where one window breached.
    assert state["capacity"] == 32
    # Over the target for a minute (the window before this one breached too) is remembered as capacity: 8 running
    # per replica; the window before that is out of the merge.
    before = {40: 120.0}  # bucket 40 is about 1.3 s
    windows = [(NOW - 90, {10: 120.0}), (NOW - 35, before)]
    desired, state = policy()(context(slow, ongoing=32, state=stable(4, windows=windows)))
    assert (desired, state["capacity"]) == (8, pytest.approx(8))
    # A breach a window long after a gap (the last window is two windows old): one window, nothing learned.
    gap = [(NOW - 90, before)]
    assert policy()(context(slow, ongoing=32, state=stable(4, windows=gap)))[1]["capacity"] == 32
    # ... never below a load already proven well within the target.
    assert policy()(context(slow, ongoing=32, state=stable(4, windows=windows, proven=10.0)))[1]["capacity"] == 10
    # A fleet that just changed size learns nothing: its latency window still holds the old fleet's requests.
    assert policy()(context(slow, ongoing=32))[1]["capacity"] == 32
    # A mild breach (1.3x) grows by 1.3x, not by a fixed step.
    mild = [report([1300.0] * 30, running=8) for _ in range(10)]
    assert policy()(context(mild, ongoing=50, state=stable(10)))[0] in (13, 14)  # 1.3x within the bucket resolution


def test_an_end_to_end_breach_the_fleet_size_does_not_move_is_a_floor_not_a_reason_to_grow() -> None:
    # P95 end-to-end target 1 s. 6 replicas running 1 request each are over it (P95 ~2 s) for a minute; 3 replicas
    # showed about the same P95 at 2 requests each 100 s ago. The latency follows the requests (long answers decode
    # about as long on any replica), not the load: no growth, the knee read from those breaches is dropped, and only
    # the excess over that floor is judged from now on.
    def slow(ms: float, running: float = 1.0) -> list[dict[str, float]]:
        return [{**report([300.0] * 30, running=running), **latency_histogram("e2e", [ms] * 30)} for _ in range(6)]

    e2e = policy(metric="e2e")
    previous = [(NOW - 35, bucket_counts("e2e", [1800.0] * 180))]
    seen = {"3": (NOW - 100, 1950.0, 2.0)}
    state = stable(6, windows=previous, minute_p95=seen, learned=True, capacity=1.0)
    desired, after = e2e(context(slow(1800.0), ongoing=6, state=state))
    assert after["latency_floor"] == pytest.approx(2000, rel=0.08)
    assert desired <= 6 and after["reason"] != "LatencyBreach"
    assert after["capacity"] == 32 and not after.get("learned")
    # Alone (no other size seen), the same breach grows the fleet by its ratio.
    assert e2e(context(slow(1800.0), ongoing=6, state={**state, "minute_p95": {}}))[0] == 12
    # So it does when the smaller fleet ran about the same load each (a rising load: the breach follows it) ...
    rising = {"3": (NOW - 100, 1950.0, 1.3)}
    assert e2e(context(slow(1800.0), ongoing=6, state={**state, "minute_p95": rising}))[0] == 12
    # ... or was much slower (twice the replicas took the P95 half the way to the target: more would take it further),
    # or was seen longer ago than a node stays.
    slower = {"3": (NOW - 100, 3000.0, 2.0)}
    assert e2e(context(slow(1800.0), ongoing=6, state={**state, "minute_p95": slower}))[0] == 12
    old = {"3": (NOW - 700, 1950.0, 2.0)}
    assert e2e(context(slow(1800.0), ongoing=6, state={**state, "minute_p95": old}))[0] == 12
    # Past the floor by more than a quarter with more load per replica than the smaller fleet carried (a load-driven
    # rise), it is a breach again; at the same light load, the answers grew longer: a higher floor.
    rise = e2e(context(slow(3000.0, 3.0), ongoing=18, state={**after, "windows": previous}))[1]
    assert rise["reason"] == "LatencyBreach" and rise["latency_floor"] == after["latency_floor"]
    longer = e2e(context(slow(3000.0), ongoing=6, state={**after, "windows": previous}))[1]
    assert longer["reason"] != "LatencyBreach" and longer["latency_floor"] > 1.2 * after["latency_floor"]
    # A TTFT's floor is the prompts' prefill, which the judged P95 takes out: the same evidence finds none.
    ttft = [report([1800.0] * 30, running=1) for _ in range(6)]
    assert "latency_floor" not in policy()(context(ttft, ongoing=6, state=state))[1]


def long_answers(long: int) -> list[dict[str, float]]:
    """4 replicas running 2 each, whose last window finished 120 answers end to end: `long` at 3 s, the rest 400 ms."""
    latencies = [3000.0] * long + [400.0] * (120 - long)
    return [{**report([300.0] * 30, running=2), **latency_histogram("e2e", latencies[i::4])} for i in range(4)]


def test_an_end_to_end_breach_must_stand_out_of_the_windows_sampling_noise() -> None:
    # P95 end-to-end target 1 s; 4 replicas, 120 answers in the window, 7 of them long (3 s): the P95 (rank 114) is
    # a long one, but 1.645 standard errors lower (the 91.7th percentile, rank 110) it is a short one (400 ms). One
    # long answer more or less moves such a P95 across the target: no growth.
    e2e = policy(metric="e2e")
    assert e2e(context(long_answers(7), ongoing=8, state=stable(4)))[1]["reason"] != "LatencyBreach"
    # 12 long answers in 120 (the 91.7th percentile is long too): a breach, and the fleet grows.
    desired, state = e2e(context(long_answers(12), ongoing=8, state=stable(4)))
    assert (desired, state["reason"]) == (8, "LatencyBreach")
    # A TTFT target reads the point P95 (its judged P95 reads queue waits, which do not swing so).
    slow_tail = [report(([3000.0] * 7 + [400.0] * 113)[i::4], running=2) for i in range(4)]
    assert policy()(context(slow_tail, ongoing=8, state=stable(4)))[1]["reason"] == "LatencyBreach"


def test_an_end_to_end_knee_is_learned_only_from_a_minute_that_breaches_beyond_its_sampling_noise() -> None:
    # P95 end-to-end target 1 s; 4 replicas running 2 each. Two windows of 120 answers with 7 long ones (3 s) each:
    # the minute's P95 (rank 228 of 240) is a long answer, but its lower 95% bound (the 92.7th percentile) is a
    # short one. Such a minute swings across the target: no knee, as no growth.
    def before(long: int) -> list[tuple[float, dict[int, float]]]:
        return [(NOW - 35, bucket_counts("e2e", [3000.0] * long + [400.0] * (120 - long)))]

    e2e = policy(metric="e2e")
    noisy = e2e(context(long_answers(7), ongoing=8, state=stable(4, windows=before(7))))[1]
    assert noisy["capacity"] == 32 and not noisy.get("learned")
    # 12 long answers in each window: a breach beyond the noise, and the knee is this load (2 requests a replica).
    clear = e2e(context(long_answers(12), ongoing=8, state=stable(4, windows=before(12))))[1]
    assert clear["learned"] and clear["capacity"] == pytest.approx(2.0)


def test_queue_depth_scales_out_from_rates_not_from_the_backlog_count() -> None:
    # 2 replicas full (32 running each) with 40 waiting in the engines and 24 queued in Serve; each served 30
    # requests in the last 30 s window (1/s). A backlog that does not grow: arrivals are what the fleet serves.
    full = [report([300.0] * 30, waiting=20, running=32) for _ in range(2)]
    desired, state = policy()(context(full, ongoing=128, queued=24, state=stable(2)))
    assert state["reason"] == "QueueDepth"
    assert desired == 4  # 2/s at 85% of 1/s per replica (2.35), + 64 waiting drained within a minute (1.07)
    # The same backlog grown from nothing in 30 s: 2.1/s more arrive than are served.
    growing = stable(2, recent_queue=[(NOW - 30, 0.0)])
    desired, state = policy()(context(full, ongoing=128, queued=24, state=growing))
    assert (desired, state["reason"]) == (6, "QueueDepth")  # (2 + 2.13) / 0.85 + 1.07 -> 6
    # Counting the backlog as load (128 requests at 85% of a 32-request batch) would have asked for 5 either way.


def test_requests_waiting_inside_replicas_are_queue() -> None:
    # Direct streaming: 2 replicas hold their 32 slots and 32 more requests each wait inside them for a slot,
    # a backlog grown from nothing in the last 30 s. Serve counts only the slot holders (64), queues nothing.
    full = [report([300.0] * 30, running=32, replica_waiting=32) for _ in range(2)]
    growing = stable(2, recent_queue=[(NOW - 30, 0.0)])
    desired, state = policy()(context(full, ongoing=64, queued=0, state=growing))
    assert (state["reason"], state["queue"]) == ("QueueDepth", 64)
    assert desired == 6
    # Without the replicas' count the same fleet looks merely full.
    blind = [report([300.0] * 30, running=32) for _ in range(2)]
    assert policy()(context(blind, ongoing=64, queued=0, state=growing))[0] == 3


def test_without_a_latency_target_the_fleet_grows_for_waiting_requests_not_for_record_loads() -> None:
    # No latencyTarget: the policy scales on queue depth alone. A replica that has carried 5 requests runs 10, none
    # waiting: a load it never carried, but no latency knee to look for, so it stays one replica (it used to order a
    # second, at 1.25x the most it had carried, as if exploring for a knee).
    quick = [report([30.0] * 30, running=10)]
    before = [(NOW - 20, 5.0), (NOW - 10, 5.0)]  # the last latency window ran 5
    history = stable(1, proven=5.0, recent_load=before, recent_running=before)
    desired, state = policy(p95_ms=None)(context(quick, ongoing=10, state=history))
    assert (desired, state["reason"]) == (1, "Steady")
    # Near the batch cap (85% of 32 is 27.2 a replica), or with requests waiting beyond targetQueueDepth (4), it grows.
    assert policy(p95_ms=None)(context([report([30.0] * 30, running=30)], ongoing=30, state=stable(1)))[0] == 2
    waiting = [report([30.0] * 30, waiting=12, running=32)]
    assert policy(p95_ms=None)(context(waiting, ongoing=44, state=stable(1, proven=5.0)))[0] >= 2


def test_without_a_latency_target_scale_in_packs_replicas_a_step_beyond_what_they_carried() -> None:
    # No latencyTarget, so no latency watches how dense the batches get. 4 replicas ran 20 requests all window (5
    # a replica, the most they carried): a step beyond that, one replica goes (20 on 3 is 6.7 a replica). Scale-out's
    # 85% of the batch cap (27.2 a replica) would fit the 20 in 1 replica, and half the fleet would go at once.
    load = [(NOW - age, 20.0) for age in range(300, 0, -10)]
    fleet = [report([30.0] * 30, running=5) for _ in range(4)]
    state = stable(4, last_up=NOW - 600, proven=4.0, recent_load=load, recent_running=load[-3:])
    assert policy(p95_ms=None)(context(fleet, ongoing=20, state=state))[0] == 3
    # A busier moment of the window (28 requests, 7 a replica) beyond a step of what they carried keeps all 4.
    busier = [(t, 28.0 if NOW - t == 200 else v) for t, v in load]
    assert policy(p95_ms=None)(context(fleet, ongoing=20, state={**state, "recent_load": busier}))[0] == 4


def test_recovery_holds_then_scales_in_slowly() -> None:
    calm = [report([200.0] * 30, running=2) for _ in range(8)]
    # Right after a scale-out: no scale-in during the cooldown even though the load is low.
    just_grown = {"last_up": NOW - 30, "capacity": 8.0}
    desired, state = policy()(context(calm, ongoing=16, state=just_grown))
    assert (desired, state["reason"]) == (8, "Steady")
    # After it: at most half the fleet per decision, and never below what the load needs (16 / (0.85 x 8) -> 3).
    later = stable(8, last_up=NOW - 600, capacity=8.0, learned=True, proven=8.0)
    desired, state = policy()(context(calm, ongoing=16, state=later))
    assert (desired, state["reason"]) == (4, "Idle")
    assert policy()(context(calm, ongoing=2, state=later))[0] == 4  # half of 8, not 1
    # Right after that scale-in, the latency window still shows the larger fleet: no second step yet.
    assert policy()(context(calm[:4], ongoing=8, state={**state, "fleet_size": 8}))[0] == 4
    # Latency between 70% of the target and the target, the knee unknown: the hysteresis band holds the fleet.
    warm = [report([800.0] * 30, running=2) for _ in range(8)]
    assert policy()(context(warm, ongoing=16, state=stable(8, last_up=NOW - 600)))[0] == 8


def test_flapping_input_does_not_flap_replicas() -> None:
    # Load alternates between 20 and 28 requests every tick (10 s) for 20 minutes; a replica breaches the
    # target above 6 requests. The fleet must settle, not follow the oscillation.
    pol, state, replicas = policy(), {}, 4
    history = []
    for tick in range(120):
        ongoing = 28.0 if tick % 2 == 0 else 20.0
        latency = 1800.0 if ongoing / replicas > 6 else 150.0
        reports = [report([latency] * 30, running=ongoing / replicas) for _ in range(replicas)]
        desired, state = pol(context(reports, ongoing=ongoing, state=state, now=NOW + 10 * tick))
        history.append(desired)
        replicas = desired
    steps = [b - a for a, b in itertools.pairwise(history) if b != a]
    reversals = sum(1 for a, b in itertools.pairwise(steps) if (a > 0) != (b > 0))
    assert reversals <= 1  # up once, then down to a fit, never up and down again
    assert len(set(history[-60:])) == 1  # settled for the last 10 minutes
    assert 28 / history[-1] <= 6  # and settled where the peak load meets the target


def test_stale_reports_are_ignored() -> None:
    fresh = report([200.0] * 30, running=2)
    stale_slow = report([9000.0] * 300, waiting=50)
    # One replica's report is 2 minutes old: its old breach and queue do not count.
    desired, state = policy()(context([fresh, stale_slow], ongoing=4, age_s=[2, 120], state={"last_up": NOW - 900}))
    assert state["stale_replicas"] == 1
    assert state["queue"] == 0
    assert state["reason"] != "LatencyBreach"
    # All reports stale: no scale-in on missing information, even at low load.
    desired, state = policy()(context([fresh, fresh], ongoing=1, age_s=[120, 120], state={"last_up": NOW - 900}))
    assert desired == 2


def test_pending_replicas_are_discounted_then_reported_as_waiting_for_capacity() -> None:
    slow = [report([2500.0] * 30, running=8) for _ in range(2)]
    pol = policy(cold_start_s=300)
    # Two replicas already starting (target 4, 2 running): the breach is covered, add no more.
    learned = {"capacity": 8.0, "learned": True}
    desired, state = pol(context(slow, ongoing=16, target=4, state=learned))
    assert desired == 4
    # Load that needs 7 grows past the pending ones while they are younger than a cold start.
    busy = [report([2500.0] * 30, running=22) for _ in range(2)]  # 44 running at 85% of 8 each
    desired, state = pol(context(busy, ongoing=44, target=4, state={**learned, "pending_since": NOW - 60}))
    assert desired == 7
    # Pending longer than a cold start: no nodes. Hold at the target and say so.
    desired, state = pol(context(busy, ongoing=44, target=4, state={**learned, "pending_since": NOW - 400}))
    assert (desired, state["reason"]) == (4, "WaitingForCapacity")


def test_zero_replicas_with_traffic() -> None:
    # Called at zero, the policy sizes the cold start from the queue, not one replica at a time.
    desired, state = policy()(context([], ongoing=100, queued=100))
    assert desired == 4  # 100 requests at 85% of a 32-request batch
    assert state["reason"] == "QueueDepth"
    # Serve's wrapper (what Ray runs) takes its own cold-start path at zero: at least one replica, at once.
    wrapped = _apply_autoscaling_config(policy())
    assert wrapped(context([], ongoing=1, queued=1))[0] >= 1
    # No traffic at all: zero, reason Idle.
    idle = [report([], running=0)]
    assert policy()(context(idle, ongoing=0, state=seen(last_up=NOW - 900)))[:1] == (0,)
    # ... but only once a whole downscale window has been seen idle: a policy just (re)started knows nothing.
    assert policy()(context(idle, ongoing=0, state={"last_up": NOW - 900}))[0] == 1


def test_fleet_p95_merges_samples_instead_of_taking_the_worst_replica() -> None:
    # Nine replicas answer in 300 ms; one unlucky replica's P95 is 5 s, on 5% of the fleet's requests.
    fast = [report([300.0] * 100, running=4) for _ in range(9)]
    unlucky = report([300.0] * 40 + [5000.0] * 10, running=4)
    reports = [*fast, unlucky]
    worst_replica_p95 = 5000.0  # what a max over per-replica P95s reports: a breach
    fleet = merge_replica_reports(context(reports, ongoing=40).raw_metrics, "ttft", NOW, 30)
    assert fleet.samples == 950
    assert fleet.p95_ms() == pytest.approx(300, rel=0.15)  # within a bucket: 10 slow of 950 (1%)
    assert worst_replica_p95 > TARGET_MS > fleet.p95_ms()  # type: ignore[operator]
    desired, state = policy()(context(reports, ongoing=40, state=seen(last_up=NOW - 900)))
    assert state["reason"] != "LatencyBreach"
    assert desired <= 10
    # And the other way: one replica of ten is all slow (10% of requests); the mean of the per-replica P95s
    # ((5000 + 9 x 200) / 10 = 680 ms) hides the breach the fleet's P95 shows.
    skewed = [*(report([200.0] * 100, running=4) for _ in range(9)), report([5000.0] * 100, running=4)]
    mean_of_p95s = (5000.0 + 9 * 200.0) / 10
    fleet = merge_replica_reports(context(skewed, ongoing=40).raw_metrics, "ttft", NOW, 30)
    assert mean_of_p95s < TARGET_MS < fleet.p95_ms()  # type: ignore[operator]
    assert policy()(context(skewed, ongoing=40, state=stable(10)))[1]["reason"] == "LatencyBreach"


def test_bucket_missing_from_the_latest_report_counts_zero() -> None:
    # The replica reported a slow bucket 10 s ago; its latest report has only fast samples.
    rid = replica(0)
    raw = {
        "engine_waiting": {rid: [TimeStampedValue(NOW - 12, 0.0), TimeStampedValue(NOW - 2, 0.0)]},
        "ttft_h60": {rid: [TimeStampedValue(NOW - 12, 50.0)]},
        "ttft_h10": {rid: [TimeStampedValue(NOW - 2, 30.0)]},
    }
    fleet = merge_replica_reports(raw, "ttft", NOW, 30)
    assert fleet.histogram == {10: 30.0}


def test_schedule_keeps_a_floor_in_its_window() -> None:
    # 2027-01-15 09:00 UTC is a Friday, 10:00 in Berlin; 21:00 UTC is after the window.
    window = {"days": "1-5", "start": "08:00", "end": "18:00", "timeZone": "Europe/Berlin", "minReplicas": 3}
    pol = policy(schedule=[window], min_replicas=0)
    idle = [report([], running=0)]
    inside = 1_800_003_600.0  # 2027-01-15 09:00 UTC
    desired, state = pol(context(idle, ongoing=0, now=inside))
    assert (desired, state["reason"]) == (3, "Schedule")
    outside = inside + 12 * 3600
    desired, state = pol(context(idle, ongoing=0, now=outside, state={"since": outside - 3600}))
    assert (desired, state["reason"]) == (0, "Idle")


def test_batch_requests_fill_the_fleet_but_never_grow_it_past_their_budget() -> None:
    # One replica full of low-priority batch requests (and waiting ones): without batch, this load would scale out.
    busy = [{**report([50.0] * 30, waiting=20, running=32), "batch_running": 40.0}]
    assert policy()(context([report([50.0] * 30, waiting=20, running=32)], ongoing=40, state=stable(1)))[0] > 1
    desired, state = policy(batch_max_replicas=1)(context(busy, ongoing=40, state=stable(1)))
    assert (desired, state["reason"]) == (1, "Batch")  # kept for the batch, not grown for it
    # Interactive demand on top still grows the fleet as before.
    mixed = [{**report([50.0] * 30, waiting=20, running=32), "batch_running": 10.0}]
    assert policy(batch_max_replicas=1)(context(mixed, ongoing=70, state=stable(1)))[0] > 1
    # A budget of 0: batch alone holds nothing, the fleet may go to its floor.
    assert policy(batch_max_replicas=0)(context(busy, ongoing=40, state=stable(1)))[0] == 0
    # A larger budget lets batch alone keep more replicas, never more than the budget.
    big = [{**report([50.0] * 30, running=32), "batch_running": 200.0}] * 2
    assert policy(batch_max_replicas=3)(context(big, ongoing=400, state=stable(2)))[0] == 3


def test_replicas_still_starting_beyond_what_the_load_needed_for_a_window_are_cancelled() -> None:
    calm = [report([300.0] * 30, running=2) for _ in range(2)]
    pol = policy()
    # 2 running, 6 wanted a while ago; the load now fits the 2 running ones.
    ordered = stable(2, last_up=NOW - 60, recent_need=[(NOW - 10, 6)])
    desired, state = pol(context(calm, ongoing=4, target=6, state=ordered))
    assert desired == 6  # needed within the window: they may be needed again, keep them coming
    desired, state = pol(context(calm, ongoing=4, target=6, state={**ordered, "recent_need": [(NOW - 40, 6)]}))
    assert (desired, state["reason"]) == (2, "Steady")  # a window without need: they serve nobody yet, cancel
    # Needed only in part over the window: the replicas beyond the most it needed are cancelled, not all.
    desired, state = pol(context(calm, ongoing=4, target=6, state={**ordered, "recent_need": [(NOW - 10, 4)]}))
    assert (desired, state["reason"]) == (4, "Steady")
    # Ordered less than a window ago: kept, whatever the load says now.
    fresh = {**ordered, "last_up": NOW - 10, "recent_need": [(NOW - 40, 6)]}
    assert pol(context(calm, ongoing=4, target=6, state=fresh))[0] == 6


def test_a_trend_is_extrapolated_a_step_is_not() -> None:
    from tokenplane_serving.autoscale import _forecast

    ramp = [(NOW - 180 + s, 10.0 + 0.1 * s) for s in range(181)]  # +0.1 request/s, for 3 minutes
    assert _forecast(ramp, NOW, 28.0, 60.0) == pytest.approx(34.0, rel=0.01)
    step = [(NOW - 180 + s, 10.0 if s < 120 else 28.0) for s in range(181)]  # a burst, flat since
    assert _forecast(step, NOW, 28.0, 60.0) == 28.0


def test_after_an_overload_the_backlog_being_served_is_not_demand() -> None:
    # Overloaded: 2 replicas serve 1/s each (slowly) and the queue grew by 60 in 30 s.
    full = [report([2500.0] * 30, waiting=40, running=8) for _ in range(2)]
    state = stable(2, recent_queue=[(NOW - 30, 20.0)], capacity=8.0, learned=True)
    _, state = policy()(context(full, ongoing=96, state=state))
    arrivals = state["arrival_need"]
    assert arrivals == pytest.approx((2 + 2) / 0.85)  # served + growth, at 85% of a saturated replica
    # 20 s later the queue is gone, and the replicas run the backlog: 30 each. The demand is the arrivals'.
    drained = [report([300.0] * 30, running=30) for _ in range(2)]
    state["fleet_changed"] = NOW - 600
    _, after = policy()(context(drained, ongoing=60, state=state, now=NOW + 20))
    assert after["recent_load"][-1][1] <= arrivals * 0.85 * 8.0 + 1e-9


def test_a_clear_fall_scales_in_before_the_downscale_window_ends() -> None:
    # 8 replicas grown 90 s ago, in time, for a wave of 40 requests; for the last minute the load has been 6 (15%
    # of it). The wave no longer sizes the fleet, nor does the 5-minute window hold it: half goes at once.
    calm = [report([200.0] * 30, running=0.75) for _ in range(8)]
    burst = [(NOW - 200, 40.0), (NOW - 150, 40.0)]
    after = stable(8, last_up=NOW - 90, capacity=8.0, learned=True, proven=8.0, recent_load=[*burst, (NOW - 50, 6.0)])
    desired, state = policy()(context(calm, ongoing=6, state=after))
    assert (desired, state["reason"]) == (4, "Idle")
    # Half the burst is no clear fall, and a burst 30 s ago is not a minute of low load: the window holds.
    halved = {**after, "recent_load": [*burst, (NOW - 50, 20.0)]}
    assert policy()(context(calm, ongoing=6, state=halved))[0] == 8
    just_ended = {**after, "recent_load": [(NOW - 200, 40.0), (NOW - 30, 40.0)]}
    assert policy()(context(calm, ongoing=6, state=just_ended))[0] == 8
    # A burst that overloaded the fleet (or breached the target) outran its start-up: the window holds for it.
    assert policy()(context(calm, ongoing=6, state={**after, "overloaded_at": NOW - 150}))[0] == 8
    assert policy()(context(calm, ongoing=6, state={**after, "breached_at": NOW - 150}))[0] == 8


def test_a_small_fleet_steps_in_by_one_replica_past_proven_loads() -> None:
    # 4 replicas, well inside the target; the window's busiest moment was 24 requests, 6 per replica, the most
    # proven. A 25% step (7.5 per replica) cannot remove a replica from 4 (24 / 7.5 -> 4); one replica (8) can.
    calm = [report([200.0] * 30, running=4.5) for _ in range(4)]
    state = stable(4, last_up=NOW - 900, proven=6.0, recent_load=[(NOW - 200, 24.0)])
    desired, state = policy()(context(calm, ongoing=18, state=state))
    assert (desired, state["reason"]) == (3, "Idle")


def test_scale_in_sizes_at_a_load_carried_within_the_target_as_scale_out_does() -> None:
    # 10 replicas on a slowly falling load (a diurnal evening): 56 requests 200 s ago, 35 now. A replica has carried
    # 8 within the target for a minute; well within it only 4. Scale-out sizes at 8 (below 85% of the knee,
    # 8.5); scale-in must too, or it keeps a fleet (56 / (1.25 * 4) -> 12, all 10) scale-out would never choose.
    calm = [report([600.0] * 30, running=3.5) for _ in range(10)]
    falling = stable(10, last_up=NOW - 900, capacity=10.0, learned=True, proven=4.0, within=8.0,
                     recent_load=[(NOW - 200, 56.0), (NOW - 100, 45.0)])  # fmt: skip
    desired, state = policy()(context(calm, ongoing=35, state=falling))
    assert (desired, state["reason"]) == (7, "Idle")
    # A load that breached the target within the window outran the fleet: the step beyond proven loads sizes it.
    assert policy()(context(calm, ongoing=35, state={**falling, "breached_at": NOW - 250}))[0] == 10


def test_scale_in_to_a_fleet_that_carried_a_window_as_busy_within_the_target() -> None:
    # 6 replicas on a flat, noisy load for a whole downscale window, well within the target throughout; the 30-s
    # load averages swung 24-34, and their least per replica (within, 4.0) is far below their busiest (34 / 6).
    flat = [(NOW - 290 + 10 * s, 34.0 if s == 9 else 24.0 + s % 3) for s in range(29)]
    calm = [report([600.0] * 30, running=29 / 6) for _ in range(6)]
    state = stable(6, last_up=NOW - 900, proven=4.0, within=4.0, recent_load=flat)
    assert policy()(context(calm, ongoing=29, state=state))[1]["carried"] == {"6": 34.0}
    # A 7th replica later, on the same load: the window's busiest moment (33) is one 6 replicas carried; sized
    # at the least of a window instead (33 / (1.25 * 4) -> 7), the 7th would stay for good.
    seven = [report([600.0] * 30, running=29 / 7) for _ in range(7)]
    peaked = [(t, 33.0 if v == 34.0 else v) for t, v in flat]
    held = stable(7, last_up=NOW - 900, proven=4.0, within=4.0, carried={"6": 34.0}, recent_load=peaked)
    desired, after = policy()(context(seven, ongoing=29, state=held))
    assert (desired, after["reason"]) == (6, "Idle") and after["carried_used_at"] == NOW
    # A busier window than 6 carried (35) is no such evidence; nor is a window that breached the target or held
    # another fleet for part of it.
    busier = [(t, 35.0 if v == 34.0 else v) for t, v in flat]
    assert policy()(context(seven, ongoing=29, state={**held, "recent_load": busier}))[0] == 7
    breached = policy()(context(calm, ongoing=29, state={**state, "breached_at": NOW - 100}))[1]
    changed = policy()(context(calm, ongoing=29, state={**state, "fleet_changed": NOW - 200}))[1]
    assert "carried" not in breached and "carried" not in changed


def test_a_fleet_sized_by_what_it_once_carried_that_breaches_soon_after_forgets_it() -> None:
    # 6 replicas, sized by what 6 carried an hour ago, breach 100 s later at a lighter load: the requests are
    # heavier now, and the old evidence would shrink the fleet into the same breach after every downscale window.
    hot = [report([1600.0] * 30, running=4.5) for _ in range(6)]
    old = stable(6, last_up=NOW - 900, proven=4.0, within=4.0, carried={"6": 34.0, "9": 50.0})
    after = policy()(context(hot, ongoing=27, state={**old, "carried_used_at": NOW - 100}))[1]
    assert after["carried"] == {"9": 50.0}
    # A breach long after the evidence was last used (noise on a load 6 replicas carry) leaves it.
    assert (
        policy()(context(hot, ongoing=27, state={**old, "carried_used_at": NOW - 900}))[1]["carried"] == old["carried"]
    )


def test_arrivals_beyond_what_is_served_are_demand_a_saturated_replica_cannot_show() -> None:
    # One replica at its knee: 10 running, 3 waiting for prefill (within targetQueueDepth), 120 first tokens in the
    # last window at 800 ms; 12 requests a replica is sized for (1.25 x the 9.6 proven). Its counts are the same
    # whether 120 or 240 requests arrived: only the arrivals tell them apart.
    def saturated(arrived: float | None) -> dict[str, float]:
        values = report([800.0] * 120, waiting=3, running=10)
        return values if arrived is None else {**values, "arrivals": arrived}

    state = stable(1, proven=9.6, last_up=NOW - 900)
    assert policy()(context([saturated(120.0)], ongoing=13, state=state))[0] == 2  # 13 / 12
    desired, after = policy()(context([saturated(240.0)], ongoing=13, state=state))
    assert (desired, after["reason"]) == (3, "QueueDepth")  # twice the arrivals: 26 / 12
    assert after["recent_load"][-1][1] == pytest.approx(26.0)
    # The knee is learned from what the replica carried (13), never from the demand beyond it.
    slow = {**report([2500.0] * 120, waiting=3, running=10), "arrivals": 240.0}
    breached = stable(1, windows=[(NOW - 35, {40: 120.0})])
    assert policy()(context([slow], ongoing=13, state=breached))[1]["capacity"] == pytest.approx(13.0)
    # No ratio from a replica that does not count arrivals (an older version), nor from too few to count.
    mixed = [saturated(240.0), saturated(None)]
    assert merge_replica_reports(context(mixed, ongoing=26).raw_metrics, "ttft", NOW, 30).arrivals is None
    quiet = {**report([800.0] * 10, waiting=3, running=10), "arrivals": 19.0}
    assert policy()(context([quiet], ongoing=13, state=state))[1]["recent_load"][-1][1] == pytest.approx(13.0)


def long_prompts(wait_ms: float, prefill_ms: float, running: float = 2.0) -> dict[str, float]:
    """A replica serving prompts whose own prefill takes `prefill_ms`, each after `wait_ms` in the queue."""
    return report([wait_ms + prefill_ms] * 30, running=running, wait_ms=[wait_ms] * 30, prefill_ms=[prefill_ms] * 30)


def test_the_latency_judged_is_what_more_replicas_can_remove() -> None:
    # 3k-token prompts: each one's own prefill takes 800 ms of the 1 s target; they wait 40 ms before it. The P95
    # (840 ms) is above 70% of the target, but the waits are 20% of the 200 ms the prompts leave: well within.
    calm = [long_prompts(40.0, 800.0) for _ in range(8)]
    state = stable(8, last_up=NOW - 600, recent_load=[(NOW - 200, 16.0)])
    desired, after = policy()(context(calm, ongoing=16, state=state))
    assert after["p95_ms"] == pytest.approx(840, rel=0.08)
    assert after["judged_p95_ms"] == pytest.approx(200, rel=0.1)
    assert after["proven"] == pytest.approx(2.0)  # this load is proven
    assert (desired, after["reason"]) == (7, "Idle")  # and the fleet scales in: 16 at 1.25x the 2 proven
    # Prompts longer than the target breach it whatever the fleet size: not a breach more replicas can remove,
    # and nothing learned about the knee from it, even over a minute.
    long = [long_prompts(20.0, 1150.0) for _ in range(4)]
    windows = [(NOW - 35, {40: 120.0}, {0: 120.0}, {40: 120.0})]
    desired, after = policy()(context(long, ongoing=8, state=stable(4, windows=windows)))
    assert (desired, after["reason"], after["capacity"]) == (4, "Steady", 32)
    # Requests that queue behind each other do breach: 600 ms waits against the 300 ms a 700 ms prefill leaves,
    # growing by the P95's ratio (1.3 s: 4 -> 6), never by more than the raw latency shows.
    queued = [long_prompts(600.0, 700.0, running=8) for _ in range(4)]
    desired, after = policy()(context(queued, ongoing=32, state=stable(4)))
    assert (desired, after["reason"]) == (6, "LatencyBreach")
    # Replicas that report no waits (an older version) are judged on the raw P95, as before.
    older = [report([840.0] * 30, running=2) for _ in range(8)]
    assert policy()(context(older, ongoing=16, state=state))[0] == 8


def test_replicas_record_each_finished_requests_wait_and_prefill_from_vllm() -> None:
    # vLLM's per-step stats, as its engine hands them to stat loggers: one request finished after 300 ms queued
    # and a 700 ms prefill. The replica keeps both for its report, beside the end-to-end latency.
    from vllm.v1.engine import FinishReason
    from vllm.v1.metrics.stats import FinishedRequestStats, IterationStats

    from tokenplane_serving.occupancy import Occupancy
    from tokenplane_serving.server import EngineStats, _StatsLogger

    stats = EngineStats(0, "tiny", Occupancy())
    step = IterationStats()
    step.finished_requests.append(
        FinishedRequestStats(FinishReason.LENGTH, e2e_latency=2.0, queued_time=0.3, prefill_time=0.7)
    )
    _StatsLogger(stats).record(None, step)
    assert (stats.recent_ms("wait"), stats.recent_ms("prefill"), stats.recent_ms("e2e")) == ([300.0], [700.0], [2000.0])


def test_a_load_carried_within_the_target_for_a_minute_is_not_grown_for() -> None:
    # 7 replicas proven only on a light load (0.4 each, so 0.5 a replica before the knee is known); a burst of 40
    # running (5.7 each) has been served at 850 ms, within the 1 s target but not well within it, for a minute.
    busy = [report([850.0] * 10, running=40 / 7) for _ in range(7)]
    state = stable(7, proven=0.4, last_up=NOW - 900, recent_load=[(NOW - 60 + s, 40.0) for s in range(60)])
    first = policy()(context(busy, ongoing=40, state=state, now=NOW - 31))[1]
    assert first["desired"] == 80  # one window: not yet a minute within the target, sized at 0.5 a replica
    desired, after = policy()(context(busy, ongoing=40, state=first))
    assert (desired, after["within"]) == (7, pytest.approx(40 / 7))  # the fleet that carried it holds it
    # A minute over the target is no such proof: the fleet grows.
    slow = [report([1500.0] * 10, running=40 / 7) for _ in range(7)]
    first = policy()(context(slow, ongoing=40, state=state, now=NOW - 31))[1]
    assert policy()(context(slow, ongoing=40, state=first))[0] > 7


def test_a_trend_is_met_a_model_load_ahead_when_the_pool_still_holds_the_nodes() -> None:
    # A ramp of +0.1 request/s over 3 minutes, 10 requests now, 2 a replica, 5 replicas. A replica has taken
    # 347 s on a new node and 47 s on a node still in the pool.
    ramp = [(NOW - 180 + s, 10.0 - 18.0 + 0.1 * s) for s in range(181)]
    starts = {"startup_s": 347.0, "startup_warm": 47.0}
    forecast = policy()._forecast_load
    # The fleet ran 10 replicas 100 s ago: their nodes are in the pool, the load 77 s ahead (a model load and a
    # latency window: 17.7, 9 replicas) fits them, so it is forecast that far only.
    warm = {**starts, "freed": [(NOW - 100, 10)]}
    assert forecast(warm, ramp, NOW, 10.0, 2.0, 5) == pytest.approx(17.7, rel=0.01)
    # Without those nodes (or once the pool has let them go), the 9 replicas need new nodes: 347 s ahead.
    for state in (starts, {**starts, "freed": [(NOW - 700, 10)]}):
        assert forecast(state, ramp, NOW, 10.0, 2.0, 5) == pytest.approx(20.0)  # at most twice the load
    # The fleet's own start-ups are where the two horizons come from.
    pol, grown = policy(cold_start_s=600), stable(2, orders=[(NOW - 47, 3)], fleet_size=2)
    state = pol(context([report([300.0] * 30, running=2)] * 3, ongoing=6, target=3, state=grown))[1]
    # A quick start-up says how long a model load takes, not a new node: that stays at the prior (half the cold
    # start) until a longer one is seen, or a load beyond the warm pool would be met too late.
    assert (state["startup_warm"], state["startup_s"]) == (47.0, 300.0)
    later = {**state, "orders": [(NOW + 600 - 347, 4)]}
    state = pol(context([report([300.0] * 30, running=2)] * 4, ongoing=8, target=4, state=later, now=NOW + 600))[1]
    assert (state["startup_warm"], state["startup_s"]) == (47.0, 347.0)
    # A fleet that shrinks notes how many replicas' nodes it leaves in the pool.
    state = pol(context([report([300.0] * 30, running=2)] * 2, ongoing=4, target=2, state=state, now=NOW + 700))[1]
    assert state["freed"] == [(NOW + 700, 4)]


def test_the_knee_is_never_below_a_load_carried_within_the_target() -> None:
    # 2 replicas carried 6 each within the target for a minute. Then a burst overloads them at the moment their
    # averaged load is still 1 each (the average lags the burst by its window): that is not where the knee is.
    state = stable(2, within=6.0, recent_running=[(NOW - 29 + s, 2.0) for s in range(29)])
    burst = [report([900.0] * 20, waiting=10, running=1) for _ in range(2)]
    _, after = policy()(context(burst, ongoing=22, state=state))
    assert after["learned"] and after["capacity"] == pytest.approx(6.0)
    # A knee read from a load above it still lowers the capacity to that load.
    loaded = stable(2, within=6.0, recent_running=[(NOW - 29 + s, 20.0) for s in range(29)])
    full = [report([900.0] * 20, waiting=10, running=10) for _ in range(2)]
    # (their load averaged over the window: 20 running, and now 20 running plus 8 waiting within the tolerated 4 each)
    knee = (29 * 20.0 + 28.0) / 30 / 2
    assert policy()(context(full, ongoing=40, state=loaded))[1]["capacity"] == pytest.approx(knee)


def test_a_knee_read_low_is_raised_again_while_the_fleet_is_well_within_the_target() -> None:
    # A queue once set the knee at 7.06 a replica (the fleet is sized at 85% of it: 6 each). Then 4 replicas
    # carry 6 each at a P95 of 200 ms for a minute, a fifth of the target: the knee is above that. It used to
    # stay at 7.06 for good (capacity only rose to the load carried, which sizing keeps at 85% of it), so a fleet
    # sized on a knee read low held its extra replicas (9-10 where 5 sufficed, on a step after a quiet start).
    state = stable(4, capacity=7.06, learned=True, recent_running=[(NOW - 29 + s, 24.0) for s in range(29)])
    calm = [report([200.0] * 20, running=6) for _ in range(4)]
    first = policy()(context(calm, ongoing=24, state=state, now=NOW - 31))[1]
    desired, after = policy()(context(calm, ongoing=24, state=first))
    assert after["capacity"] == pytest.approx(1.25 * 6 / 0.85)
    assert desired == 4


def test_a_window_whose_load_rose_out_of_silence_proves_no_load() -> None:
    # A trace starts: within 30 s the load on 5 replicas rises from 1 to 4.6, served at a fifth of the target.
    # The least load of that window, 0.2 a replica, was proven; the fleet sized a step beyond it (0.25 a replica)
    # ordered 12 replicas for a load 5 carried at 200 ms (on sawtooth: 16 ordered, 12 started, 7 needed).
    ramp = [(NOW - 29 + s, 1.0 + 0.124 * s) for s in range(29)]
    calm = [report([200.0] * 20, running=0.92) for _ in range(5)]
    start = {"since": NOW - 30}  # not yet a downscale window watched: no scale-in
    desired, after = policy()(
        context(calm, ongoing=4.6, state=stable(5, recent_running=ramp, recent_load=ramp, **start))
    )
    assert (desired, after.get("proven", 0.0)) == (5, 0.0)
    # A window whose load held level proves it.
    level = [(NOW - 29 + s, 4.6 + 0.5 * (s % 2)) for s in range(29)]
    desired, after = policy()(
        context(calm, ongoing=4.6, state=stable(5, recent_running=level, recent_load=level, **start))
    )
    assert (desired, after["proven"]) == (5, pytest.approx(4.6 / 5))


def test_scale_in_keeps_the_replicas_a_measured_saturation_rate_says_the_arrivals_need() -> None:
    # 2 replicas at 10 requests each, well within the target, where one replica's batch would hold 20 (27 at the
    # knee's headroom): by load, one replica carries it. But an earlier overload measured what a saturated replica
    # serves (10 requests/s), and 19/s arrived all window: one replica would run the same requests in a batch twice
    # as big, slower, into a queue a whole start-up long (a 235B MoE lost 5 minutes so in the simulator).
    reports = [{**report([600.0] * 285, running=10), "arrivals": 285.0} for _ in range(2)]
    window = [(NOW - 299 + s, 19.0) for s in range(299)]
    state = stable(2, last_up=NOW - 900, capacity=32.0, learned=True, proven=16.0, within=16.0,
                   recent_load=[(t, 20.0) for t, _ in window], recent_rate=window)  # fmt: skip
    assert policy()(context(reports, ongoing=20, state=state))[0] == 1
    desired, after = policy()(context(reports, ongoing=20, state={**state, "saturated_rate": 10.0}))
    assert (desired, after["reason"]) == (2, "Steady")
    # A window not measured throughout (a replica of an older version counted no arrivals) is no such evidence.
    gap = [*window[:100], (NOW - 199, None), *window[101:]]
    assert policy()(context(reports, ongoing=20, state={**state, "saturated_rate": 10.0, "recent_rate": gap}))[0] == 1
