"""Run every policy on one trace, the oracle included, and score them.

Oracle (offline, perfect knowledge of the trace, the same physics: the same replica model, the same cold start,
the same node pool). It is the fewest replica-seconds found that meet the SLO: at least 99% of minutes with
P95 within the target, every minute where that is physically possible. Computed in four steps:
1. A per-minute lower bound: the fewest warm replicas whose P95 meets the target for the requests arriving in
   that minute, by binary search, each candidate simulated on that minute's requests after the previous
   minute's (so the work carried over is on the replicas). A minute no count meets (prompts whose own prefill
   exceeds the target, requests beyond the context window) gets the fewest within 5% of the P95 `maxReplicas`
   reach, and is left out of the repair below: more replicas would only cost.
2. A schedule for those counts: a replica needed from minute k on is started one start-up before minute k:
   model loading alone when the pool still holds a node freed within the autoscaler's idle time (a node
   lives on that long after its replica stops), node provisioning + model loading otherwise. A dip shorter
   than that start-up is bridged (the replica could not be stopped and back in time).
3. Repair: the schedule is simulated in full; every minute over the target gets one more replica, and again,
   until every minute meets it or runs at `maxReplicas` (then the target is not physically reachable there).
4. Trim: each minute repair raised is lowered again, one replica at a time, wherever the full simulation
   still meets the target in every minute that met it; in passes, each trying together minutes too far apart to
   affect each other's (`_trim_pass`), until a pass trims nothing.
Only the last step's plan is scored, simulated in full like every other policy: its attainment is measured,
not assumed. It is a search, not a proof of the optimum: a cheaper plan may exist that keeps a replica
through a minute to absorb the next one's burst, or that the per-minute bound misses. It is the reference of
every GPU-hours ratio.

Schedules: the CR's schedule windows are read on the wall clock, from `--start` (the time of the trace's t=0;
1970-01-01 00:00 UTC, a Thursday, without it). tokenplane's policy holds their minimum, and so does the oracle
(it is a constraint of the deployment, not of a policy); the baselines, which have no schedule, do not.

Warm start: the trace is a window of a deployment's life, not its birth. Every policy starts with the replicas
the oracle plans at t=0 (the most any minute within one cold start needs), ready; static starts at its peak.
Nothing is excluded from scoring. (Starting every policy at one replica into full-rate traffic with a 5-minute
node cold start measured the start-up, not the policy.)

Scores: `requestAttainment` is the share of requests meeting the target (rejected ones fail);
`minuteAttainment` the share of minutes with arrivals whose P95 (rejected counted as infinite) meets it; a request
longer than the context window (vLLM's 400, a client error no fleet can serve) is left out of both;
`gpuHours` counts each replica from its start (cold start included) to its stop, times its GPUs (one per
replica on CPU); the line under the table adds what the cloud bills for the same run (not in the JSON contract):
each node from its order until the cluster autoscaler removes it, 10 minutes (`NODE_IDLE_S`, AKS's default
`scale-down-unneeded-time`) after its last replica stopped, whether a replica ever ran on it or not, times the
node's GPUs (every ratio, and the oracle's search, use `gpuHours`); `goodputPerGpu` is SLO-meeting requests per
second per average GPU held (= good requests / GPU-seconds); `scaleEvents` counts target changes; `coldStartWaits`
requests that arrived with no replica ready (held by Ray's fallback proxy); `rejected` the requests refused:
Serve's queue full, more than `scaleToZero.maxHeldRequests` held (429), held past `scaleToZero.holdSeconds` with no
replica running (503), or longer than the context window (400).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ray.serve.config import AutoscalingConfig

from tokenplane_cli.simulate.engine import Controller, SimConfig, SimResult, Simulation, percentile
from tokenplane_cli.simulate.physics import ReplicaPhysics
from tokenplane_cli.simulate.policies import (
    FixedController,
    HpaController,
    RayController,
    ScheduleController,
    TtftStepPolicy,
)
from tokenplane_cli.simulate.traces import Request, reference_mix
from tokenplane_operator.api.v1alpha1 import InferenceDeployment
from tokenplane_operator.desired.serveconfig import build_serving_args
from tokenplane_serving.autoscale import NODE_IDLE_S
from tokenplane_serving.mapping import build_llm_config
from tokenplane_serving.schedule import ScheduleWindow, schedule_minimum

__all__ = [
    "POLICIES",
    "Progress",
    "Scenario",
    "Score",
    "idle_p95_ms",
    "oracle_plan",
    "replica_capacity",
    "run_policies",
    "scenario_for",
    "score",
]

# Told what the simulator is doing, a line at a time.
Progress = Callable[[str], None]

POLICIES = ("tokenplane", "static", "ray-default", "ttft-step", "keda", "slo-keda", "oracle")
_MINUTE = 60.0
# Where no fleet meets the target, a P95 within this factor of the best reachable one counts as met (more would cost).
_UNREACHABLE_SLACK = 1.05
DEFAULT_TARGET_MS = 1000.0


@dataclass(frozen=True)
class Scenario:
    """A deployment, as the simulator needs it."""

    sim: SimConfig
    autoscaling: dict[str, Any]  # the autoscaling_config the operator writes (tokenplane's policy)
    plain_autoscaling: dict[str, Any]  # Serve's built-in policy with the CR's own delays (the baselines)
    target_queue: float
    scale_to_zero: bool


def scenario_for(deployment: InferenceDeployment, physics: ReplicaPhysics, epoch_s: float = 0.0) -> Scenario:
    """Derive the simulated deployment from an InferenceDeployment through the operator's own mapping.

    `epoch_s` is the wall-clock time (Unix seconds) of the trace's t=0, which the CR's schedule windows read.
    """
    args = build_serving_args(deployment)
    scaling = deployment.spec.scaling
    autoscaling = dict(build_llm_config(args)["deployment_config"]["autoscaling_config"])
    autoscaling["policy"]["policy_kwargs"]["max_ongoing_requests"] = physics.batch_cap
    # Without tokenplane's policy, Serve's own downscale delay is the only scale-in hysteresis: the CR's.
    plain = {k: v for k, v in autoscaling.items() if k != "policy"}
    plain["downscale_delay_s"] = args.scaling.downscale_delay_s
    latency = scaling.latency_target
    windows = autoscaling["policy"]["policy_kwargs"].get("schedule", [])
    sim = SimConfig(
        physics=physics,
        metric=latency.metric.value if latency else "ttft",
        target_ms=float(latency.p95_milliseconds) if latency else DEFAULT_TARGET_MS,
        min_replicas=args.scaling.min_replicas,
        max_replicas=args.scaling.max_replicas,
        initial_replicas=args.scaling.initial_replicas or max(1, args.scaling.min_replicas),
        max_queued=physics.batch_cap * args.scaling.max_replicas,
        hold_s=float(scaling.scale_to_zero.hold_seconds),
        max_held=scaling.scale_to_zero.max_held_requests,
        epoch_s=epoch_s,
        schedule=tuple(ScheduleWindow.model_validate(w) for w in windows),
    )
    return Scenario(sim, autoscaling, plain, float(scaling.target_queue_depth), scaling.scale_to_zero.enabled)


def _latency(job: Any, metric: str) -> float:
    if job.rejected or job.first_token is None:
        return math.inf
    end = job.first_token if metric == "ttft" else (job.done if job.done is not None else math.inf)
    return float(end - job.req.t) * 1000.0


@dataclass(frozen=True)
class Score:
    """One policy's numbers on one trace (the JSON contract's fields)."""

    request_attainment: float
    minute_attainment: float
    gpu_hours: float
    billed_gpu_hours: float
    goodput_per_gpu: float
    scale_events: int
    cold_start_waits: int
    rejected: int

    def as_json(self) -> dict[str, float | int]:
        """Return the stable JSON shape automation reads."""
        return {
            "requestAttainment": round(self.request_attainment, 5),
            "minuteAttainment": round(self.minute_attainment, 5),
            "gpuHours": round(self.gpu_hours, 4),
            "goodputPerGpu": round(self.goodput_per_gpu, 5),
            "scaleEvents": self.scale_events,
            "coldStartWaits": self.cold_start_waits,
            "rejected": self.rejected,
        }


@dataclass(frozen=True)
class Spread:
    """A number over several seeds: its mean, least and most."""

    mean: float
    least: float
    most: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        """Return the spread of `values` (at least one)."""
        return cls(sum(values) / len(values), min(values), max(values))

    def as_json(self, digits: int) -> dict[str, float]:
        """Return `{"mean", "min", "max"}`, rounded like the contract's field."""
        return {"mean": round(self.mean, digits), "min": round(self.least, digits), "max": round(self.most, digits)}


@dataclass(frozen=True)
class SeedSummary:
    """One policy on several seeds of one built-in trace."""

    minute_attainment: Spread
    request_attainment: Spread
    over_oracle: Spread | None  # GPU-hours over the oracle's on the same seed (None: the oracle ran no replica)
    goodput_over_static: Spread | None  # goodput per GPU over static's on the same seed (None: static served none)
    beats_tokenplane: int | None  # seeds where it meets the target in as many minutes as tokenplane on fewer GPU-hours

    def as_json(self) -> dict[str, Any]:
        """Return the JSON shape `simulate --seed A-B -o json` prints under each trace's `summary`."""
        return {
            "minuteAttainment": self.minute_attainment.as_json(5),
            "requestAttainment": self.request_attainment.as_json(5),
            "gpuHoursOverOracle": self.over_oracle.as_json(4) if self.over_oracle else None,
            "goodputOverStatic": self.goodput_over_static.as_json(4) if self.goodput_over_static else None,
            "beatsTokenplane": self.beats_tokenplane,
        }


def summarize(by_seed: Mapping[int, Mapping[str, Score]]) -> dict[str, SeedSummary]:
    """Summarize each policy's scores over the seeds of one trace (a seed is one draw of its random arrivals).

    `beats_tokenplane` counts, for a baseline, the seeds on which it meets the target in at least as many minutes as
    tokenplane on fewer GPU-hours (the issue's "no baseline both meeting the SLO at least as often and using fewer
    GPU-hours"); None for tokenplane itself and the oracle, which knows the trace in advance.
    """
    runs = list(by_seed.values())
    summary = {}
    for policy in runs[0]:
        ratios = [r[policy].gpu_hours / r["oracle"].gpu_hours for r in runs if r["oracle"].gpu_hours > 0]
        goodput = [r[policy].goodput_per_gpu / r["static"].goodput_per_gpu for r in runs if r["static"].goodput_per_gpu]
        beats = None
        if policy not in ("tokenplane", "oracle"):
            beats = sum(
                1
                for r in runs
                if r[policy].minute_attainment >= r["tokenplane"].minute_attainment
                and r[policy].gpu_hours < r["tokenplane"].gpu_hours
            )
        summary[policy] = SeedSummary(
            minute_attainment=Spread.of([r[policy].minute_attainment for r in runs]),
            request_attainment=Spread.of([r[policy].request_attainment for r in runs]),
            over_oracle=Spread.of(ratios) if ratios else None,
            goodput_over_static=Spread.of(goodput) if goodput else None,
            beats_tokenplane=beats,
        )
    return summary


def _served(jobs: list[Any]) -> list[Any]:
    """Return the requests a fleet could serve: not those beyond the context window (vLLM's 400)."""
    return [job for job in jobs if not job.client_error]


def _minute_p95s(jobs: list[Any], metric: str) -> dict[int, float]:
    minutes: dict[int, list[float]] = {}
    for job in _served(jobs):
        minutes.setdefault(int(job.req.t // _MINUTE), []).append(_latency(job, metric))
    return {m: percentile(v, 0.95) for m, v in minutes.items()}


def score(result: SimResult, cfg: SimConfig) -> Score:
    """Score one run."""
    latencies = [_latency(j, cfg.metric) for j in _served(result.jobs)]
    good = sum(1 for v in latencies if v <= cfg.target_ms)
    minutes = _minute_p95s(result.jobs, cfg.metric)
    per_replica = cfg.physics.gpus or 1.0
    gpu_s = sum(((result.end if r.stopped is None else r.stopped) - r.started) * per_replica for r in result.replicas)
    return Score(
        request_attainment=good / len(latencies) if latencies else 1.0,
        minute_attainment=sum(1 for v in minutes.values() if v <= cfg.target_ms) / len(minutes) if minutes else 1.0,
        gpu_hours=gpu_s / 3600.0,
        billed_gpu_hours=result.node_seconds * per_replica * cfg.physics.replicas_per_node / 3600.0,
        goodput_per_gpu=good / gpu_s if gpu_s else 0.0,
        scale_events=result.scale_events,
        cold_start_waits=sum(1 for j in result.jobs if j.cold),
        rejected=sum(1 for j in result.jobs if j.rejected),
    )


def _fixed_run(cfg: SimConfig, requests: list[Request], replicas: int) -> SimResult:
    fixed = SimConfig(**{**cfg.__dict__, "initial_replicas": replicas, "min_replicas": replicas,
                         "max_replicas": replicas, "max_queued": 10**9})  # fmt: skip
    return Simulation(fixed, requests, FixedController(replicas)).run()


def idle_p95_ms(cfg: SimConfig, requests: list[Request]) -> float:
    """Return the P95 latency `requests` would have each alone on an idle replica: the floor no fleet lowers."""
    physics = cfg.physics
    e2e = cfg.metric == "e2e"
    alone = [
        physics.prefill_s(r.input_tokens) + (max(0, r.output_tokens - 1) * physics.step_s(1) if e2e else 0.0)
        for r in requests
        if physics.fits(r)
    ]
    return percentile(alone, 0.95) * 1000.0


# Requests in a capacity probe: enough for a steady P95, few enough for a second's search.
_PROBE_REQUESTS = 4000


def replica_capacity(cfg: SimConfig) -> tuple[float, float]:
    """Return the rate (requests/s) of the built-in traces' usual request one warm replica serves within target.

    Bisection over steady Poisson loads (`reference_mix`) on one replica of this physics. When even an idle
    replica misses the target, "within" means within 5% of that idle P95, as the oracle's per-minute bound reads it.

    Returns:
        The rate, and the P95 (ms) it was held to: the target, or 1.05x the idle P95 when that is above it.
    """

    def probe(rate: float) -> list[Request]:
        return reference_mix(rate, min(7200.0, max(300.0, _PROBE_REQUESTS / rate)), cfg.physics.max_model_len)

    idle = idle_p95_ms(cfg, probe(1.0))
    if math.isinf(idle):  # no request of the mix fits the context window: nothing to measure
        raise ValueError(f"maxModelLen {cfg.physics.max_model_len:,} holds none of the built-in traces' requests")
    bar = cfg.target_ms if idle <= cfg.target_ms else _UNREACHABLE_SLACK * idle

    def meets(rate: float) -> bool:
        jobs = _served(_fixed_run(cfg, probe(rate), 1).jobs)
        return percentile([_latency(j, cfg.metric) for j in jobs], 0.95) <= bar

    low, high = 0.0, 1.0
    while high < 1e4 and meets(high):
        low, high = high, 2 * high
    for _ in range(10):
        mid = (low + high) / 2
        low, high = (mid, high) if meets(mid) else (low, mid)
    return low or high, bar


def _minute_need(cfg: SimConfig, previous: list[Request], current: list[Request], start: float) -> tuple[int, bool]:
    """Return the fewest warm replicas whose P95 meets the target for a minute's requests, and whether any does.

    When none does (prompts whose own prefill exceeds the target, requests beyond the context window), it is the
    fewest whose P95 is within 5% of what `maxReplicas` reach: more would cost without helping.
    """
    shifted = [Request(r.t - start + _MINUTE, r.input_tokens, r.output_tokens) for r in previous] + [
        Request(r.t - start + _MINUTE, r.input_tokens, r.output_tokens) for r in current
    ]
    judged = len(previous)

    def p95(n: int) -> float:
        jobs = _served(_fixed_run(cfg, shifted, n).jobs[judged:])
        return percentile([_latency(j, cfg.metric) for j in jobs], 0.95)

    best = p95(cfg.max_replicas)
    reachable = best <= cfg.target_ms
    bar = cfg.target_ms if reachable else best * _UNREACHABLE_SLACK
    low, high = 1, cfg.max_replicas
    while low < high:
        mid = (low + high) // 2
        if p95(mid) <= bar:
            high = mid
        else:
            low = mid + 1
    return low, reachable


def oracle_plan(cfg: SimConfig, requests: list[Request], progress: Progress | None = None) -> list[int]:
    """Compute the oracle's target per second (see the module docstring); `progress` hears of each step."""
    report = progress or (lambda _: None)
    if not requests:
        return [cfg.min_replicas]
    buckets: dict[int, list[Request]] = {}
    for r in requests:
        buckets.setdefault(int(r.t // _MINUTE), []).append(r)
    last = max(buckets)
    need: list[int] = []
    unreachable: set[int] = set()
    for k in range(last + 1):
        report(f"oracle: replicas each minute needs, minute {k + 1}/{last + 1}")
        previous = [r for r in buckets.get(k - 1, []) if r.t >= k * _MINUTE - _MINUTE]
        n, reachable = _minute_need(cfg, previous, buckets[k], k * _MINUTE) if k in buckets else (0, True)
        need.append(n)
        if not reachable:
            unreachable.add(k)
    bound = list(need)
    misses = _oracle_misses(cfg, requests, need)
    for round_ in range(4 * len(need)):
        # A minute no fleet meets alone gets no more replicas: they would cost without meeting it.
        raisable = [k for k in misses - unreachable if need[k] < cfg.max_replicas]
        if not raisable:
            break
        report(f"oracle: repair round {round_ + 1}, {len(raisable)} minute(s) over the target")
        for k in raisable:
            need[k] += 1
        misses = _oracle_misses(cfg, requests, need)
    # Trim what repair added beyond the per-minute bound, a replica a minute per pass, until a pass trims nothing.
    kept: set[int] = set()
    for pass_ in itertools.count(1):
        report(f"oracle: trim, pass {pass_}")
        misses, trimmed = _trim_pass(cfg, requests, need, bound, misses, kept)
        if not trimmed:
            break
    return _oracle_schedule(cfg, need)


# A replica less in minute k leaves a backlog that can spill this many minutes past it.
_SPILL_MINUTES = 3


def _trim_pass(
    cfg: SimConfig, requests: list[Request], need: list[int], bound: list[int], misses: set[int], kept: set[int]
) -> tuple[set[int], int]:
    """Take a replica off each minute above its own bound where that adds no minute over the target.

    A replica less in minute k changes the plan from one cold start before it (its replicas start that early) and
    its latencies to `_SPILL_MINUTES` after it, so minutes further apart than that are tried together, in one full
    run; a minute over the target that was not before is blamed on the tried minutes whose reach covers it, which
    keep their replica for good (`kept`, as a minute tried alone would), and the rest are tried again without
    them. A pass costs at most two full runs per minute of spacing instead of one per minute, which on a day-long
    trace (hundreds of raised minutes, each full run seconds long) is the difference between minutes and hours.

    Returns:
        The minutes over the target after the pass, and how many replica-minutes it trimmed.
    """
    reach = math.ceil((cfg.physics.provision_s + cfg.physics.load_s) / _MINUTE) + 1
    spacing = reach + _SPILL_MINUTES + 1
    trimmed = 0
    for offset in range(spacing):
        group = [k for k in range(offset, len(need), spacing) if need[k] > bound[k] and k not in kept]
        while group:
            for k in group:
                need[k] -= 1
            trial = _oracle_misses(cfg, requests, need)
            new = trial - misses
            if not new:
                misses, trimmed = trial, trimmed + len(group)
                break
            for k in group:
                need[k] += 1
            blamed = {k for k in group if any(k - reach <= m <= k + _SPILL_MINUTES for m in new)} or {group[0]}
            kept |= blamed
            group = [k for k in group if k not in blamed]
    return misses, trimmed


def _oracle_misses(cfg: SimConfig, requests: list[Request], need: list[int]) -> set[int]:
    """Minutes over the target when the schedule for `need` is simulated in full."""
    plan = _oracle_schedule(cfg, need)
    run_cfg = SimConfig(**{**cfg.__dict__, "initial_replicas": max(1, plan[0])})
    result = Simulation(run_cfg, requests, ScheduleController(plan)).run()
    return {m for m, p95 in _minute_p95s(result.jobs, cfg.metric).items() if p95 > cfg.target_ms}


def _oracle_schedule(cfg: SimConfig, need: list[int]) -> list[int]:
    """Targets per second that have `need[k]` replicas ready through minute k, each started one start-up early.

    The start-up is model loading when the pool holds enough nodes (a node stays this long after its
    replica stops: the nodes of the most replicas of the last `NODE_IDLE_S` before the start, each holding
    `replicas_per_node`), provisioning + loading otherwise. Replicas needed within the first cold start are the
    warm start's (ready at t=0).
    """
    warm, cold = cfg.physics.load_s, cfg.physics.provision_s + cfg.physics.load_s
    per_node = cfg.physics.replicas_per_node
    horizon = int(len(need) * _MINUTE) + 1
    plan = [cfg.min_replicas] * horizon
    initial = max([cfg.min_replicas, *(n for k, n in enumerate(need) if k * _MINUTE <= cold)])
    for k, n in enumerate(need):
        begin, end = k * _MINUTE, min(horizon, int((k + 1) * _MINUTE))
        start = begin - warm
        window = plan[max(0, int(start - NODE_IDLE_S)) : max(0, int(start)) + 1]
        pool = max([*window, initial if start - NODE_IDLE_S < 0 else 0])
        room = math.ceil(pool / per_node) * per_node  # the replicas those replicas' nodes hold
        lead = warm if room >= n else cold
        for t in range(max(0, math.ceil(begin - lead)), end):
            plan[t] = max(plan[t], n)
    plan[0] = max(plan[0], initial)
    if cfg.schedule:
        floors = _schedule_floors(cfg.schedule, cfg.epoch_s, horizon)
        plan = [max(n, floor) for n, floor in zip(plan, floors, strict=True)]
    return plan


@functools.lru_cache(maxsize=4)
def _schedule_floors(windows: tuple[ScheduleWindow, ...], epoch_s: float, horizon: int) -> list[int]:
    """Return the replicas the CR's schedule windows hold at least, per second of the trace."""
    floors, floor = [], 0
    for t in range(horizon):
        if t == 0 or (epoch_s + t) % _MINUTE == 0:
            floor = schedule_minimum(windows, epoch_s + t)[0] or 0
        floors.append(floor)
    return floors


def run_policies(
    scenario: Scenario, requests: list[Request], policies: tuple[str, ...] = POLICIES, progress: Progress | None = None
) -> dict[str, SimResult]:
    """Simulate each policy on the trace, each from the same warm start (see the module docstring).

    `progress` is told what runs, step by step (the oracle's search takes most of a long trace's time).
    """
    plan = oracle_plan(scenario.sim, requests, progress)
    peak = max(plan)
    # Warm start: the deployment was serving before the trace began, so every policy starts with the replicas
    # the trace's first minutes need (the oracle's plan at t=0, which looks one cold start ahead), ready.
    cfg = SimConfig(**{**scenario.sim.__dict__, "initial_replicas": max(1, plan[0])})
    results: dict[str, SimResult] = {}
    for name in policies:
        if progress is not None:
            progress(f"policy {name}")
        run_cfg, controller = cfg, _controller(name, scenario)
        if name == "static":
            run_cfg = SimConfig(**{**cfg.__dict__, "initial_replicas": peak, "min_replicas": peak})
            controller = FixedController(peak)
        elif name == "oracle":
            controller = ScheduleController(plan)
        results[name] = Simulation(run_cfg, requests, controller).run()
    return results


def _controller(name: str, scenario: Scenario) -> Controller:
    cfg = scenario.sim
    if name == "tokenplane":
        return RayController(AutoscalingConfig(**scenario.autoscaling))
    if name == "ray-default":
        return RayController(AutoscalingConfig(**scenario.plain_autoscaling))
    if name == "ttft-step":
        return RayController(AutoscalingConfig(**scenario.plain_autoscaling), TtftStepPolicy(cfg.target_ms))
    if name in ("keda", "slo-keda"):
        return HpaController(
            slo=name == "slo-keda",
            target_queue=scenario.target_queue,
            target_ms=cfg.target_ms,
            metric=cfg.metric,
            scale_to_zero=scenario.scale_to_zero,
        )
    return FixedController(cfg.max_replicas)
