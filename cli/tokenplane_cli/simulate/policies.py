"""The controllers compared: tokenplane's policy and the published baselines, all on the same simulated physics.

- `tokenplane`: `TokenplanePolicy`, resolved from the `autoscaling_config` the operator writes (import path and
  `policy_kwargs`) and wrapped by Ray Serve's own `_apply_autoscaling_config` (delays, cold start), exactly as
  Serve's controller runs it.
- `ray-default`: Ray Serve's `replica_queue_length_autoscaling_policy` with the same config but no custom
  policy: `target_ongoing_requests` per replica (3/4 of the batch cap), upscale 30 s, downscale 600 s (Serve's
  defaults; the CR's delays when it sets them).
- `ttft-step`: the rule of Ray Serve LLM's TTFT policy (not shipped in Ray 2.60): fleet P99 TTFT above the target
  adds one replica; below it with under one ongoing request per replica removes one; through Serve's wrapper.
- `keda`: KEDA + HPA on `vllm:num_requests_waiting` (AverageValue = targetQueueDepth per replica), polled every
  30 s, HPA sync 15 s, 10% tolerance, scale-up max(100%, 4 pods) per 15 s, scale-down stabilization 300 s;
  to zero after KEDA's 300 s cooldown when the CR allows it.
- `slo-keda`: llm-d's SLO loop: s = P90 latency / target (clamped at 2) averaged over 45 s; up when s > 0.55 to
  ceil(ready x s / 0.55) (pending replicas count towards it), by at most max(100%, 4 pods) per 60 s; down one
  replica per 120 s when s < 0.40.
- `static`: the oracle's peak replica count, all the time, warm from the start.
- `oracle`: see `oracle.py`.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from ray.serve._private.autoscaling_state import _resolve_policy_callable
from ray.serve.autoscaling_policy import (
    _apply_delay_logic,
    _apply_scaling_factors,
    _extract_internal_policy_state,
    _get_cold_start_scale_up_replicas,
)
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from tokenplane_cli.simulate.engine import Simulation, percentile
from tokenplane_serving.autoscale import merge_replica_reports

__all__ = ["FixedController", "HpaController", "RayController", "ScheduleController", "TtftStepPolicy"]


class RayController:
    """Runs a Ray Serve autoscaling policy the way Serve's controller does."""

    def __init__(self, config: AutoscalingConfig, policy: Any = None) -> None:
        """Resolve `config.policy` (the built-in policy when unset) as Serve does, or take `policy`."""
        self.config = config
        self.policy = policy or _resolve_policy_callable(config.policy)

    def decide(self, sim: Simulation, now: float) -> int | None:
        """Apply Serve's `_apply_autoscaling_config` wrapper, step by step with Ray's own helpers, on simulated time.

        Ray's wrapper times `upscale_delay_s`/`downscale_delay_s` with `time.time()`; the same helpers take the
        clock as `_now`, which is all that differs here.
        """
        ctx = sim.context(now, self.config)
        cold = _get_cold_start_scale_up_replicas(ctx)
        if cold is not None:
            return cold
        internal = _extract_internal_policy_state(ctx.policy_state)
        desired, user_state = self.policy(ctx)
        desired = _apply_scaling_factors(desired, ctx.current_num_replicas, self.config)
        if ctx.current_num_replicas == 0 and desired > 0:
            sim.policy_state = {**user_state, **internal}
            return desired
        clock = now if ctx.current_time is None else ctx.current_time
        final, internal = _apply_delay_logic(
            max(0, desired), ctx.target_num_replicas, self.config, internal, _now=clock
        )
        sim.policy_state = {**user_state, **internal}
        return math.ceil(final)


class TtftStepPolicy:
    """Ray Serve LLM's TTFT rule: +1 on a P99 breach; -1 when under target and under 1 request per replica."""

    def __init__(self, target_ms: float) -> None:
        """Target for the fleet's P99 TTFT."""
        self.target_ms = target_ms

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        """One tick of the rule."""
        current = ctx.current_num_replicas
        fleet = merge_replica_reports(ctx.raw_metrics or {}, "ttft", float(ctx.current_time or 0.0), 30.0)
        p99 = fleet.p95_ms(0.99)
        if p99 is not None and p99 > self.target_ms:
            return current + 1, {}
        if ctx.total_num_requests < max(current, 1) and (p99 is None or p99 < self.target_ms):
            return max(0, current - 1), {}
        return ctx.target_num_replicas, {}


class HpaController:
    """KEDA + HPA on a per-replica metric (`keda`), or llm-d's SLO signal (`slo-keda`)."""

    reads_reports = False  # it reads the fleet's latencies and queue directly

    def __init__(self, *, slo: bool, target_queue: float, target_ms: float, metric: str, scale_to_zero: bool) -> None:
        """Configure the HPA behaviour of one baseline."""
        self.slo, self.target_queue, self.target_ms, self.metric = slo, target_queue, target_ms, metric
        self.scale_to_zero = scale_to_zero
        self.poll_s = 15.0 if slo else 30.0
        self.sync_s = 60.0 if slo else 15.0
        self.signal: deque[tuple[float, float]] = deque()
        self.recommendations: deque[tuple[float, int]] = deque()
        self.last_poll = self.last_sync = -math.inf
        self.last_down = -math.inf
        self.last_traffic = 0.0
        self.value = 0.0

    def _poll(self, sim: Simulation, now: float) -> None:
        if self.slo:
            p90 = percentile(sim.fleet_latencies(now, 30.0, self.metric), 0.90)
            s = 0.0 if math.isinf(p90) else min(2.0, p90 / self.target_ms)
            if sim.waiting() and sim.ready_count() == 0:
                s = 2.0
            self.signal.append((now, s))
            while self.signal and self.signal[0][0] < now - 45.0:
                self.signal.popleft()
            self.value = sum(v for _, v in self.signal) / len(self.signal)
        else:
            self.value = float(sim.waiting())

    def decide(self, sim: Simulation, now: float) -> int | None:
        """HPA's sync: recommendation, stabilization, rate limits; KEDA's activation and cooldown."""
        if now - self.last_poll >= self.poll_s:
            self.last_poll = now
            self._poll(sim, now)
        if sim.waiting() or any(r.active for r in sim.replicas):
            self.last_traffic = now
        if now - self.last_sync < self.sync_s and not (sim.target == 0 and sim.waiting()):
            return None
        self.last_sync = now
        current, ready = sim.target, sim.ready_count()
        if not self.recommendations:
            # HPA seeds a new autoscaler's stabilization window with the current replicas (horizontal.go,
            # reconcileAutoscaler: `a.recommendations[key] = {{currentReplicas, time.Now()}}`).
            self.recommendations.append((now, current))
        if current == 0:
            return 1 if sim.waiting() else None  # KEDA activation
        if self.scale_to_zero and now - self.last_traffic >= 300.0:
            return 0  # KEDA cooldownPeriod
        if self.slo:
            return self._slo(current, ready, now)
        raw = math.ceil(self.value / self.target_queue)
        if current and abs(self.value / (self.target_queue * current) - 1) <= 0.1:
            raw = current  # HPA tolerance
        raw = max(1, raw)
        self.recommendations.append((now, raw))
        while self.recommendations and self.recommendations[0][0] < now - 300.0:
            self.recommendations.popleft()
        if raw > current:
            return min(raw, current + max(current, 4))
        return max(r for _, r in self.recommendations)  # scale-down stabilization window

    def _slo(self, current: int, ready: int, now: float) -> int | None:
        if self.value > 0.55:
            wanted = math.ceil(max(ready, 1) * self.value / 0.55)
            return max(current, min(wanted, current + max(current, 4)))
        if self.value < 0.40 and current > 1 and now - self.last_down >= 120.0:
            self.last_down = now
            return current - 1
        return None


class FixedController:
    """`static`: one replica count, all the time."""

    reads_reports = False

    def __init__(self, replicas: int) -> None:
        """Hold `replicas`."""
        self.replicas = replicas

    def decide(self, sim: Simulation, now: float) -> int | None:
        """Return the same count every time."""
        return self.replicas


class ScheduleController:
    """Follows a precomputed target per second (the oracle's plan)."""

    reads_reports = False

    def __init__(self, plan: list[int]) -> None:
        """`plan[s]` is the target at second s; after its end, the last value."""
        self.plan = plan

    def decide(self, sim: Simulation, now: float) -> int | None:
        """Return the planned target now."""
        return self.plan[min(len(self.plan) - 1, int(now))] if self.plan else None
