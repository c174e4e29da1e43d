"""Discrete-event simulation of a Ray Serve LLM deployment under an autoscaling controller.

Events: arrivals (open-loop, at the trace's times), prefill completions, decode completions, replica ready,
metric pushes and controller ticks. Each replica admits up to its batch cap; a request beyond every replica's
cap waits in Serve's queue (bounded: past it, rejected). A replica prefills prompts one at a time and decodes
its running sequences together; decoding is tracked on a per-replica virtual token clock that advances at
`1 / step_s(batch)` tokens per second, so a finish is one event whatever the batch. Replicas push their
autoscaling report (engine queue, arrivals and latency histograms over 30 s, exactly what `TokenplaneLLMServer`
reports: TTFT and end-to-end; of the finished requests, their wait before prefill and their prefill) every push
interval: vLLM's waiting count is the requests admitted whose prefill has not started, its running count the
others. A request counts as an arrival at the replica HAProxy sends it to: the one that admits it, or the least
busy ready one, where it waits for a slot (or is refused); at zero replicas, none: Ray's fallback
proxy holds it (`tokenplane_serving.hold`), at most `max_held` requests at once (one more is answered 429 at
once), each until a replica runs or, at most, the hold time (then 503; once a replica runs, the request is no
longer held and waits in Serve's queue like any other). A request longer than the context window is a client error,
not an arrival. Serve's request counts are averaged over `look_back_period_s` as the controller does. A node stays
in the pool `NODE_IDLE_S` after its last replica stops (a replica cancelled while its node provisions leaves that
node once provisioned); a replica started on a node with room (such a node, or one running fewer replicas than it
holds: MIG slices, a multi-GPU VM) loads the model only.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ray.serve._private.common import DeploymentID, ReplicaID, TimeStampedValue
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from tokenplane_cli.simulate.physics import ReplicaPhysics
from tokenplane_cli.simulate.traces import Request
from tokenplane_serving.autoscale import LATENCY_SERIES, NODE_IDLE_S, latency_histogram
from tokenplane_serving.schedule import ScheduleWindow

__all__ = ["Controller", "Job", "SimConfig", "SimResult", "Simulation"]

_DEPLOYMENT = DeploymentID(name="LLMServer:sim", app_name="llm")
_LATENCY_WINDOW_S = 30.0  # the replica's histogram window (tokenplane_serving.server)


@dataclass
class Job:
    """One request's life."""

    req: Request
    first_token: float | None = None
    done: float | None = None  # when its answer ended: the last token, or the error status of a refused request
    rejected: bool = False
    cold: bool = False  # arrived while no replica was ready (held)
    client_error: bool = False  # longer than the context window: vLLM's 400, which no fleet can serve
    prefill_start: float | None = None


@dataclass
class Replica:
    """One replica: cold start, then prefill server + decode batch."""

    rid: ReplicaID
    started: float
    ready_at: float
    state: str = "starting"  # starting, ready, draining, stopped
    stopped: float | None = None
    active: int = 0
    prefill_free: float = 0.0
    v: float = 0.0
    v_time: float = 0.0
    decoding: list[tuple[float, int, Job]] = field(default_factory=list)
    version: int = 0
    ttft: deque[tuple[float, float]] = field(default_factory=deque)
    e2e: deque[tuple[float, float]] = field(default_factory=deque)
    wait: deque[tuple[float, float]] = field(default_factory=deque)  # finished requests' wait before prefill
    prefill: deque[tuple[float, float]] = field(default_factory=deque)  # ... and their prefill
    prefill_starts: deque[float] = field(default_factory=deque)  # admitted requests' prefill start times
    arrivals: deque[float] = field(default_factory=deque)
    node: Node | None = None  # the node it runs on


@dataclass(eq=False)  # nodes are told apart by identity
class Node:
    """A GPU node of the pool: ordered at `ordered_at`, up at `ready_at`, running `replicas` (at most a node's)."""

    ready_at: float
    ordered_at: float = 0.0
    replicas: int = 0
    idle_since: float = 0.0  # when its last replica stopped, or when it comes up if that is later

    def free_at(self) -> float:
        """When a replica could start on it (it has room): once provisioned, and once emptied if it is empty."""
        return self.ready_at if self.replicas else self.idle_since


@dataclass(frozen=True)
class SimConfig:
    """What the simulated deployment is."""

    physics: ReplicaPhysics
    metric: str  # ttft or e2e
    target_ms: float
    min_replicas: int
    max_replicas: int
    initial_replicas: int
    max_queued: int
    hold_s: float  # a request held at zero replicas gets 503 after this long (CR scaleToZero.holdSeconds)
    max_held: int = 100  # requests held at zero replicas at once; one more gets 429 (CR scaleToZero.maxHeldRequests)
    # The wall-clock time (Unix seconds) of the trace's t=0: the clock the policy and its schedule windows read.
    epoch_s: float = 0.0
    schedule: tuple[ScheduleWindow, ...] = ()  # the CR's windows: the policy holds their minimum, the oracle too
    push_interval_s: float = 10.0
    look_back_s: float = 30.0
    tick_s: float = 1.0


class Controller(Protocol):
    """Decides the target replica count; called every tick with the simulation.

    A controller whose class sets `reads_reports = False` never reads the replicas' autoscaling reports
    (`Simulation.raw`), and the run skips building them: most of a fixed fleet's run time, which the oracle's
    search repeats hundreds of times.
    """

    def decide(self, sim: Simulation, now: float) -> int | None:
        """Return a new target replica count, or None to keep the current one."""


@dataclass
class SimResult:
    """What happened."""

    jobs: list[Job]
    replicas: list[Replica]
    timeline: list[tuple[float, int, int, float]]  # (t, target, ready, arrivals/s over the last minute)
    scale_events: int
    end: float
    node_seconds: float  # what the cloud bills: each node from its order until NODE_IDLE_S after it emptied


class Simulation:
    """One run of one controller on one trace."""

    def __init__(self, config: SimConfig, requests: list[Request], controller: Controller) -> None:
        """Prepare a run; `run()` executes it."""
        self.cfg = config
        self.phys = config.physics
        self.controller = controller
        self.jobs = [Job(r) for r in requests]
        self.replicas: list[Replica] = []
        self.queue: deque[tuple[float, Job]] = deque()
        self.events: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._ids = itertools.count()
        self.target = config.initial_replicas
        self.scale_events = 0
        self.nodes: list[Node] = []  # the pool: nodes running replicas, and emptied ones for NODE_IDLE_S
        self.ordered_nodes: list[Node] = []  # every node the run ordered, for its bill
        self.raw: dict[str, dict[ReplicaID, list[TimeStampedValue]]] = {}
        self.load_samples: deque[tuple[float, float, float]] = deque()  # (t, ongoing+queued, queued)
        self.policy_state: dict[str, Any] = {}
        self.timeline: list[tuple[float, int, int, float]] = []
        self._recent_arrivals: deque[float] = deque()
        self._held: set[int] = set()  # ids of the jobs held now: arrived at zero replicas, no replica ran since
        self._reports = bool(getattr(controller, "reads_reports", True))

    # -- events ---------------------------------------------------------------------------------------------
    def _at(self, t: float, kind: int, payload: Any = None) -> None:
        heapq.heappush(self.events, (t, next(self._seq), kind, payload))

    def run(self) -> SimResult:
        """Run until the last request is served; past 15 minutes after the last arrival the policy stops deciding."""
        for _ in range(self.cfg.initial_replicas):
            self._start_replica(0.0, warm=True)
        for job in self.jobs:
            self._at(job.req.t, _ARRIVAL, job)
        last = self.jobs[-1].req.t if self.jobs else 0.0
        self._at(0.0, _TICK)
        self._at(0.0, _PUSH)
        handlers: dict[int, Callable[[float, Any], None]] = {
            _ARRIVAL: self._arrival,
            _PREFILL_DONE: self._prefill_done,
            _DECODE: self._decode,
            _READY: self._ready,
            _TICK: self._tick,
            _PUSH: self._push,
            _HOLD_EXPIRED: self._hold_expired,
        }
        now = 0.0
        while self.events:
            at, _, kind, payload = heapq.heappop(self.events)
            if at > last and self._idle():
                # Nothing left to serve: the run ends with the last event handled (the last request's answer).
                # Replicas still starting stop there, not billed until they would have run, for nobody.
                break
            now = at
            if kind in (_TICK, _PUSH) and now > last + 900:
                continue  # a backlog past 15 minutes: let the requests finish, the policy no longer decides
            handlers[kind](now, payload)
        for rep in self.replicas:
            if rep.stopped is None:
                rep.stopped = now
        # An emptied node is billed until the cluster autoscaler removes it, whether or not a replica ever ran on
        # it (one ordered for a replica cancelled while it provisioned comes up anyway).
        billed = sum(
            (now if node.replicas else min(now, node.idle_since + NODE_IDLE_S)) - node.ordered_at
            for node in self.ordered_nodes
        )
        return SimResult(self.jobs, self.replicas, self.timeline, self.scale_events, now, billed)

    def _idle(self) -> bool:
        return not self.queue and all(r.active == 0 for r in self.replicas)

    # -- requests -------------------------------------------------------------------------------------------
    def _ready_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == "ready"]

    def _arrival(self, now: float, job: Job) -> None:
        self._recent_arrivals.append(now)
        if not self.phys.fits(job.req):
            job.client_error = True
            self._refuse(job, now)  # vLLM answers 400: the request cannot fit the context window
            return
        ready = self._ready_replicas()
        if ready:
            least = min(ready, key=lambda r: r.active)
            least.arrivals.append(now)
            if least.active < self.phys.batch_cap:
                self._admit(least, job, now)
                return
        if len(self.queue) >= self.cfg.max_queued or (not ready and len(self._held) >= self.cfg.max_held):
            self._refuse(job, now)  # Serve's queue is full (503), or the hold's bound is reached (429)
            return
        if not ready:
            job.cold = True
            self._held.add(id(job))
            self._at(now + self.cfg.hold_s, _HOLD_EXPIRED, job)
        self.queue.append((now, job))

    def _refuse(self, job: Job, now: float) -> None:
        job.rejected, job.done = True, now

    def _hold_expired(self, now: float, job: Job) -> None:
        if id(job) in self._held:
            # Still no replica: 503 with Retry-After, and the request is cancelled in Serve's queue.
            self._held.discard(id(job))
            self.queue = deque(entry for entry in self.queue if entry[1] is not job)
            self._refuse(job, now)

    def _admit(self, rep: Replica, job: Job, now: float) -> None:
        rep.active += 1
        start = job.prefill_start = max(now, rep.prefill_free)
        rep.prefill_starts.append(start)
        rep.prefill_free = start + self.phys.prefill_s(job.req.input_tokens)
        self._at(rep.prefill_free, _PREFILL_DONE, (rep, job))

    def _prefill_done(self, now: float, payload: tuple[Replica, Job]) -> None:
        rep, job = payload
        job.first_token = now
        rep.ttft.append((now, (now - job.req.t) * 1000.0))
        self._advance(rep, now)
        heapq.heappush(rep.decoding, (rep.v + max(0, job.req.output_tokens - 1), next(self._seq), job))
        self._reschedule(rep, now)

    def _advance(self, rep: Replica, now: float) -> None:
        if rep.decoding:
            rep.v += (now - rep.v_time) / self.phys.step_s(len(rep.decoding))
        rep.v_time = now

    def _reschedule(self, rep: Replica, now: float) -> None:
        rep.version += 1
        if rep.decoding:
            dt = max(0.0, rep.decoding[0][0] - rep.v) * self.phys.step_s(len(rep.decoding))
            self._at(now + dt, _DECODE, (rep, rep.version))

    def _decode(self, now: float, payload: tuple[Replica, int]) -> None:
        rep, version = payload
        if version != rep.version:
            return
        self._advance(rep, now)
        while rep.decoding and rep.decoding[0][0] <= rep.v + 1e-9:
            _, _, job = heapq.heappop(rep.decoding)
            job.done = now
            rep.e2e.append((now, (now - job.req.t) * 1000.0))
            # vLLM reports a request's queued and prefill time when it finishes (FinishedRequestStats).
            if job.prefill_start is not None and job.first_token is not None:
                rep.wait.append((now, (job.prefill_start - job.req.t) * 1000.0))
                rep.prefill.append((now, (job.first_token - job.prefill_start) * 1000.0))
            rep.active -= 1
        self._reschedule(rep, now)
        self._fill(rep, now)
        if rep.state == "draining" and rep.active == 0:
            self._stop(rep, now)

    def _fill(self, rep: Replica, now: float) -> None:
        if rep.state != "ready":
            return
        while self.queue and rep.active < self.phys.batch_cap:
            _, job = self.queue.popleft()
            self._admit(rep, job, now)

    # -- replicas -------------------------------------------------------------------------------------------
    def _start_replica(self, now: float, *, warm: bool = False) -> None:
        rid = ReplicaID(unique_id=f"r{next(self._ids)}", deployment_id=_DEPLOYMENT)
        # Emptied nodes leave the pool NODE_IDLE_S after their last replica stopped.
        self.nodes = [n for n in self.nodes if n.replicas or now - n.idle_since < NODE_IDLE_S]
        roomy = [n for n in self.nodes if n.replicas < self.phys.replicas_per_node]
        if warm:  # the deployment was serving before the trace: its nodes are up
            node, delay = next((n for n in roomy if n.free_at() <= now), None) or Node(ready_at=now), 0.0
            if node not in self.nodes:
                self.nodes.append(node)
                self.ordered_nodes.append(node)
        elif roomy:
            # A node with room (a free slice or GPU, an emptied node, or one still provisioning for a replica
            # cancelled meanwhile: it comes up anyway): the model loads once the node is up.
            node = min(roomy, key=Node.free_at)
            delay = max(0.0, node.free_at() - now) + self.phys.load_s
        else:
            node = Node(ready_at=now + self.phys.provision_s, ordered_at=now)
            delay = self.phys.provision_s + self.phys.load_s
            self.nodes.append(node)
            self.ordered_nodes.append(node)
        node.replicas += 1
        rep = Replica(rid, started=now, ready_at=now + delay, v_time=now, node=node)
        self.replicas.append(rep)
        if warm:
            rep.state = "ready"
        else:
            self._at(now + delay, _READY, rep)

    def _ready(self, now: float, rep: Replica) -> None:
        if rep.state != "starting":
            return
        rep.state = "ready"
        self._held.clear()  # a replica runs: the held requests go to Serve's queue, and the hold time no longer applies
        self._fill(rep, now)

    def _stop(self, rep: Replica, now: float) -> None:
        rep.state, rep.stopped = "stopped", now
        if rep.node is not None:
            rep.node.replicas -= 1
            if not rep.node.replicas:
                rep.node.idle_since = max(now, rep.node.ready_at)
        for series in self.raw.values():
            series.pop(rep.rid, None)

    def _reconcile(self, now: float) -> None:
        live = [r for r in self.replicas if r.state in ("starting", "ready")]
        for _ in range(self.target - len(live)):
            self._start_replica(now)
        surplus = len(live) - self.target
        if surplus <= 0:
            return
        # Serve stops starting replicas first, then the least loaded running ones (they drain).
        order = sorted(live, key=lambda r: (r.state == "ready", r.active, -r.started))
        for rep in order[:surplus]:
            if rep.state == "starting" or rep.active == 0:
                self._stop(rep, now)
            else:
                rep.state = "draining"

    # -- metrics and control --------------------------------------------------------------------------------
    def _push(self, now: float, _: Any) -> None:
        cutoff = now - _LATENCY_WINDOW_S
        for rep in self._ready_replicas():
            for samples in (getattr(rep, which) for which in LATENCY_SERIES):
                while samples and samples[0][0] < cutoff:
                    samples.popleft()
            while rep.prefill_starts and rep.prefill_starts[0] <= now:
                rep.prefill_starts.popleft()
            while rep.arrivals and rep.arrivals[0] < cutoff:
                rep.arrivals.popleft()
            if not self._reports:
                continue
            # vLLM's num_requests_waiting: admitted, not yet scheduled (here: waiting for the prefill server).
            waiting = float(len(rep.prefill_starts))
            report = {
                "engine_waiting": waiting,
                "engine_running": float(rep.active) - waiting,
                "arrivals": float(len(rep.arrivals)),
            }
            for which in LATENCY_SERIES:  # the replica's deques are named after the series
                report.update(latency_histogram(which, [v for _, v in getattr(rep, which)]))
            for name, value in report.items():
                series = self.raw.setdefault(name, {}).setdefault(rep.rid, [])
                series.append(TimeStampedValue(self.cfg.epoch_s + now, value))
                del series[:-2]
        ongoing = sum(r.active for r in self.replicas if r.state in ("ready", "draining"))
        self.load_samples.append((now, ongoing + len(self.queue), float(len(self.queue))))
        while self.load_samples and self.load_samples[0][0] < now - self.cfg.look_back_s:
            self.load_samples.popleft()
        self._at(now + self.cfg.push_interval_s, _PUSH)

    def context(self, now: float, config: AutoscalingConfig) -> AutoscalingContext:
        """Build the AutoscalingContext Serve's controller would build now."""
        ready = self._ready_replicas()
        samples = self.load_samples or deque([(now, 0.0, 0.0)])
        return AutoscalingContext(
            deployment_id=_DEPLOYMENT,
            deployment_name=_DEPLOYMENT.name,
            app_name=_DEPLOYMENT.app_name,
            current_num_replicas=len(ready),
            target_num_replicas=self.target,
            running_replicas=[r.rid for r in ready],
            total_num_requests=sum(s[1] for s in samples) / len(samples),
            total_queued_requests=sum(s[2] for s in samples) / len(samples),
            aggregated_metrics=None,
            raw_metrics=self.raw,
            capacity_adjusted_min_replicas=self.cfg.min_replicas,
            capacity_adjusted_max_replicas=self.cfg.max_replicas,
            policy_state=self.policy_state,
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=self.cfg.epoch_s + now,
            config=config,
        )

    def fleet_latencies(self, now: float, window_s: float, metric: str = "ttft") -> list[float]:
        """Latencies (ms) of the ready replicas in the last window (what a Prometheus histogram shows)."""
        out: list[float] = []
        for rep in self.replicas:
            if rep.state in ("ready", "draining"):
                out.extend(v for t, v in (rep.ttft if metric == "ttft" else rep.e2e) if t >= now - window_s)
        return out

    def waiting(self) -> int:
        """Count requests waiting for a batch slot (vLLM's num_requests_waiting plus Serve's queue)."""
        return len(self.queue)

    def ready_count(self) -> int:
        """Count the replicas serving."""
        return len(self._ready_replicas())

    def _tick(self, now: float, _: Any) -> None:
        decision = self.controller.decide(self, now)
        if decision is not None:
            decision = max(self.cfg.min_replicas, min(self.cfg.max_replicas, int(decision)))
            if decision != self.target:
                self.target = decision
                self.scale_events += 1
        self._reconcile(now)
        while self._recent_arrivals and self._recent_arrivals[0] < now - 60:
            self._recent_arrivals.popleft()
        if int(now) % 10 == 0:
            self.timeline.append((now, self.target, self.ready_count(), len(self._recent_arrivals) / 60))
        self._at(now + self.cfg.tick_s, _TICK)


_ARRIVAL, _PREFILL_DONE, _DECODE, _READY, _TICK, _PUSH, _HOLD_EXPIRED = range(7)


def percentile(values: list[float], q: float) -> float:
    """Return the q-quantile of a list (nearest rank); inf for an empty list."""
    if not values:
        return math.inf
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
