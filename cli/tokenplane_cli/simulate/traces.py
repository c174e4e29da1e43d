"""Request traces: the built-in ones (seeded, reproducible) and trace files (`tokenplane_cli.tracefile`).

A JSONL trace file has one request per line: `{"t": seconds, "input_tokens": n, "output_tokens": m, "session":
"id"}` (`session` optional); Azure's public LLM trace CSV is read too. Arrivals are open-loop: each request arrives at
its own `t`, whatever the server does.

Built-in traces are sized for the default deployment (Llama-3.1-8B on one A100 80GB per replica, P95 TTFT 1 s,
up to 16 replicas): prompts around 2,000 tokens and answers around 150, so a replica holds about 2 requests/s
within target and peaks need several replicas. For another deployment, `fit` scales every rate by what its fleet
serves against the default's, so a trace loads it as much as it loads the default; `rate_scale` multiplies on
top. `max_model_len` is the deployment's context window: no built-in request asks for more (an agent compacts its
context to fit).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenplane_cli.tracefile import MAX_TRACE_SECONDS, read_trace_lines

__all__ = [
    "BUILTIN_TRACES",
    "MAX_TRACE_SECONDS",
    "Request",
    "TraceError",
    "builtin_trace",
    "load_trace_file",
    "reference_mix",
]


@dataclass(frozen=True)
class Request:
    """One request of a trace."""

    t: float
    input_tokens: int
    output_tokens: int
    session: str | int | None = None


class TraceError(ValueError):
    """A trace file line that is not a request."""


def _tokens(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return int(min(high, max(low, rng.lognormvariate(math.log(median), sigma))))


def _poisson(rng: random.Random, rate: Callable[[float], float], duration: float, peak: float) -> list[float]:
    """Arrival times of a non-homogeneous Poisson process (thinning against the peak rate)."""
    times: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            return times
        if rng.random() * peak <= rate(t):
            times.append(t)


def _requests(rng: random.Random, times: list[float], max_len: int, prompt: float = 2000) -> list[Request]:
    out = []
    for t in times:
        n_in, n_out = _tokens(rng, prompt, 0.6, 64, 7000), _tokens(rng, 150, 0.7, 8, 1000)
        out.append(Request(t, max(1, min(n_in, max_len - n_out)), n_out))
    return out


def reference_mix(rate: float, duration_s: float, max_model_len: int) -> list[Request]:
    """Steady Poisson arrivals at `rate` requests/s of the built-in traces' usual request (prompt ~2,000, answer ~150).

    The yardstick the built-in traces are fitted to a deployment with (`tokenplane_cli.simulate.run.replica_capacity`).
    """
    rng = random.Random("reference-mix")
    return _requests(rng, _poisson(rng, lambda t: rate, duration_s, rate), max_model_len)


def _steady(rng: random.Random, k: float, max_len: int) -> list[Request]:
    return _requests(rng, _poisson(rng, lambda t: 12 * k, 1800, 12 * k), max_len)


def _diurnal(rng: random.Random, k: float, max_len: int) -> list[Request]:
    # A day compressed into an hour: night trough 1 req/s, afternoon peak 24 req/s.
    def rate(t: float) -> float:
        return k * (1 + 23 * 0.5 * (1 - math.cos(2 * math.pi * t / 3600)))

    return _requests(rng, _poisson(rng, rate, 3600, 24 * k), max_len)


def _spike(rng: random.Random, k: float, max_len: int) -> list[Request]:
    # 2 req/s, then 10x within 30 s at minute 10, held 5 minutes, back down within 30 s.
    def rate(t: float) -> float:
        if t < 600 or t > 930:
            return 2 * k
        if t < 630:
            return k * (2 + 18 * (t - 600) / 30)
        return k * (20 - 18 * max(0.0, t - 900) / 30)

    return _requests(rng, _poisson(rng, rate, 2400, 20 * k), max_len)


def _ramp(rng: random.Random, k: float, max_len: int) -> list[Request]:
    # 2 -> 10 -> 1 requests/s in stages of 10 minutes.
    stages = [2, 4, 6, 8, 10, 10, 6, 3, 1]

    def rate(t: float) -> float:
        return k * stages[min(len(stages) - 1, int(t // 600))]

    return _requests(rng, _poisson(rng, rate, 600 * len(stages), 10 * k), max_len)


def _bursty(rng: random.Random, k: float, max_len: int) -> list[Request]:
    # On/off bursts: 1 req/s background, bursts of 16 req/s lasting 1-3 minutes every 5-15 minutes.
    bursts, t = [], 120.0
    while t < 3600:
        length = rng.uniform(60, 180)
        bursts.append((t, t + length))
        t += length + rng.uniform(300, 900)

    def rate(x: float) -> float:
        return k * (16 if any(a <= x < b for a, b in bursts) else 1)

    return _requests(rng, _poisson(rng, rate, 3600, 16 * k), max_len)


def _sawtooth(rng: random.Random, k: float, max_len: int) -> list[Request]:
    # Batch-like waves: the rate climbs from 1 to 10 req/s over each 10-minute period, then falls back at once;
    # prompts around 3,000 tokens (documents), so each request costs half as much prefill again as elsewhere.
    def rate(t: float) -> float:
        return k * (1 + 9 * (t % 600) / 600)

    return _requests(rng, _poisson(rng, rate, 3600, 10 * k), max_len, prompt=3000)


def _agentic(rng: random.Random, k: float, max_len: int) -> list[Request]:
    # Agent sessions: chains of 4-16 dependent calls; each call's prompt is the previous context plus the
    # last answer and a tool result, so contexts grow. The next call starts when the previous one would
    # finish on an unloaded replica plus a tool time (open-loop: the times are fixed in the trace).
    out: list[Request] = []
    starts = _poisson(rng, lambda t: 0.4 * k * (1 + 0.5 * math.sin(2 * math.pi * t / 1800)), 2400, 0.6 * k)
    for n, start in enumerate(starts):
        context, t = _tokens(rng, 1500, 0.5, 200, 4000), start
        for _ in range(rng.randint(4, 16)):
            answer = _tokens(rng, 120, 0.6, 8, 600)
            # Past the window the agent keeps the most recent context that fits (truncation or compaction).
            out.append(Request(t, max(1, min(context, max_len - answer)), answer, session=f"s{n}"))
            context += answer + _tokens(rng, 400, 0.8, 20, 4000)
            t += 0.2 + answer * 0.02 + rng.uniform(0.5, 4.0)
    return sorted(out, key=lambda r: r.t)


BUILTIN_TRACES: dict[str, Callable[[random.Random, float, int], list[Request]]] = {
    "steady": _steady,
    "diurnal": _diurnal,
    "spike": _spike,
    "agentic": _agentic,
    "ramp": _ramp,
    "bursty": _bursty,
    "sawtooth": _sawtooth,
}


# The busiest built-in trace peaks at 24 requests/s: 100x is about 9 million requests an hour, already minutes of
# simulation per policy; beyond, a trace file says what load is meant.
_MAX_RATE_SCALE = 100.0


def builtin_trace(
    name: str, *, rate_scale: float = 1.0, seed: int = 1, max_model_len: int = 8192, fit: float = 1.0
) -> list[Request]:
    """Generate a built-in trace.

    Args:
        name: One of `BUILTIN_TRACES`.
        rate_scale: Multiplies every arrival rate (the user's `--rate-scale`).
        seed: The random seed (the same seed gives the same trace).
        max_model_len: The deployment's context window; every request's prompt + output fits it.
        fit: What the deployment's fleet serves against the default deployment's, which the traces are sized
            for (`tokenplane_cli.simulate.run.replica_capacity`); multiplies every rate too.

    Returns:
        The requests in arrival order.

    Raises:
        TraceError: `rate_scale` is not above 0, beyond what a built-in trace is for, or so small that the
            trace holds no request.
    """
    if not 0 < rate_scale <= _MAX_RATE_SCALE:
        raise TraceError(
            f"--rate-scale must be above 0 and at most {_MAX_RATE_SCALE:g} (got {rate_scale!r}); "
            "replay a larger load with --trace-file"
        )
    fitted = f" on a fleet fitted at {fit:.3g}x the default deployment's" if fit != 1.0 else ""
    if rate_scale * fit > _MAX_RATE_SCALE:
        raise TraceError(
            f"--rate-scale {rate_scale!r}{fitted} asks for {rate_scale * fit:.3g}x the built-in rates, beyond "
            f"{_MAX_RATE_SCALE:g}x; lower it, or replay that load with --trace-file"
        )
    requests = BUILTIN_TRACES[name](random.Random(f"{name}-{seed}"), rate_scale * fit, max_model_len)
    if not requests:  # every policy would score 100% on it, at no cost
        raise TraceError(f"--rate-scale {rate_scale!r}{fitted} leaves trace {name} without a request; raise it")
    return requests


def load_trace_file(path: Path) -> list[Request]:
    """Read a trace file: JSONL (`{"t", "input_tokens", "output_tokens", "session"?}` per line) or Azure's CSV.

    Raises:
        TraceError: With the file, line and field of the first bad line (`tokenplane_cli.tracefile`).
    """
    lines = read_trace_lines(path, TraceError)
    out = [Request(line.t, line.input_tokens, line.output_tokens, line.session) for line in lines]
    return sorted(out, key=lambda r: r.t)
