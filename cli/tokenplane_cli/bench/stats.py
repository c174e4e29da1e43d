"""Benchmark statistics with the names and definitions of vLLM's `vllm bench serve` (vllm/benchmarks/serve.py, 0.32).

Per request, timed from just before the request is sent (after the client's concurrency limit let it go, so time
queued in the client is not in it; the connection, if a new one is needed, is):

- TTFT: to the first streamed SSE event with a choice, except a role-only chunk (`delta.role` and no output),
  which carries no token. (vLLM's client counts that one too; vLLM's chat server sends it together with the
  first token, so against it the two agree, while against a server that sends it on accepting the request
  vLLM's client reads a TTFT of ~0.) An empty-content chunk is a token: vLLM sends one per token and holds back
  the text of a token that ends inside a character.
- ITL: the gaps between consecutive such events, pooled over all requests. A gap is per event, not per token: an
  event holding several tokens is one gap, and events that arrive in one network read are stamped microseconds
  apart (a server that sends tokens in clumps shows near-zero gaps and a long one per clump).
- E2EL: to the last such event (the trailing `usage` event carries no token).
- Success: the stream ended with a `finish_reason` or `data: [DONE]` (SSE line ends CRLF, LF or CR); one cut
  short (`incomplete_stream`), not streamed (`not_streaming`) or malformed (`bad_stream`) is a failure, by kind.
- Output tokens: the server's `usage.completion_tokens`; without usage, the served model's tokenizer's count of
  the answer when the run has the tokenizer (vLLM's fallback, which counts the content only; here the reasoning
  and tool calls' names and arguments too, each kind encoded on its own), else the number of token events.
- Input tokens: the server's `usage.prompt_tokens`; without usage, the prompt tokens the workload asked for.
- TPOT: (E2EL - TTFT) / (output tokens - 1) per request with more than one output token; the first token is excluded.

Per run:

- Duration: from the first request's dispatch to the last answer's end; the untimed initial request before it
  (vLLM's "initial single prompt test run") is not in it. Rates are completed requests or tokens over it.
- Percentiles interpolate linearly between order statistics (numpy's default), std is the population std.
- Goodput: completed requests per second whose TTFT, TPOT and E2EL all meet the SLOs given; a one-token request
  counts TPOT as 0, as vLLM does.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GOODPUT_METRICS",
    "METRICS",
    "PERCENTILES",
    "Cost",
    "RequestRecord",
    "SweepPoint",
    "SweepStop",
    "latency_summary",
    "pareto_frontier",
    "parse_goodput",
    "percentile",
    "saturation_index",
    "summarize",
    "sweep_stop",
]

METRICS = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = (50.0, 90.0, 95.0, 99.0)
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


@dataclass
class RequestRecord:
    """What one request did, in seconds since the run started (one line of `--save-requests`).

    Attributes:
        index: Position in the workload.
        session: Session id (multi-turn and traces: a trace's as written, a string or a number), or None.
        turn: Turn within the session (0 for single-turn).
        start: When it was sent, seconds since the run started.
        input_tokens_target: Prompt content tokens the workload asked for.
        output_tokens_target: max_tokens asked for.
        success: Whether a streamed answer arrived in full.
        error_kind: A short class of failure (`http_429`, `timeout`, `connection`, `no_tokens`...), or None.
        error: The failure message, or None.
        ttft: Time to the first chunk with tokens, or None.
        e2el: Time to the last chunk with tokens, or None.
        itl: Gaps between chunks with tokens.
        prompt_tokens: The server's `usage.prompt_tokens`, or None when it sent no usage.
        completion_tokens: The server's `usage.completion_tokens`, or None when it sent no usage.
        chunks: How many chunks carried `choices`.
        text_tokens: The tokenizer's count of the answer text, when the server sent no usage and the run had the
            served model's tokenizer; else None.
    """

    index: int
    session: str | int | None
    turn: int
    start: float
    input_tokens_target: int
    output_tokens_target: int
    success: bool = False
    error_kind: str | None = None
    error: str | None = None
    ttft: float | None = None
    e2el: float | None = None
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    chunks: int = 0
    text_tokens: int | None = None

    @property
    def output_tokens(self) -> int:
        """Output tokens as the server counted them (usage), else the tokenizer's count, else token chunks."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return self.text_tokens if self.text_tokens is not None else self.chunks

    @property
    def input_tokens(self) -> int:
        """Prompt tokens as the server counted them (usage), else as the workload asked for."""
        return self.prompt_tokens if self.prompt_tokens is not None else self.input_tokens_target

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first, or None for a request with at most one token."""
        if not self.success or self.ttft is None or self.e2el is None or self.output_tokens <= 1:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)


def percentile(values: Sequence[float], p: float) -> float:
    """Compute the p-th percentile with linear interpolation between order statistics (numpy's default method).

    Args:
        values: The sample; empty counts as [0] like vLLM's `np.percentile(x or 0, p)`.
        p: Percentile in [0, 100].

    Returns:
        The interpolated value.
    """
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within [0, 100], not {p}")
    ordered = sorted(values) or [0.0]
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(
    name: str, seconds: Sequence[float], percentiles: Iterable[float] = PERCENTILES
) -> dict[str, float]:
    """Mean, median, std and percentiles of one latency, in milliseconds, under vLLM's keys.

    Args:
        name: ttft, tpot, itl or e2el.
        seconds: The sample, in seconds.
        percentiles: Which percentiles to add as `p<N>_<name>_ms`.

    Returns:
        e.g. {"mean_ttft_ms": ..., "median_ttft_ms": ..., "std_ttft_ms": ..., "p99_ttft_ms": ...}.
    """
    values = list(seconds) or [0.0]
    out = {
        f"mean_{name}_ms": statistics.fmean(values) * 1000,
        f"median_{name}_ms": percentile(values, 50) * 1000,
        f"std_{name}_ms": statistics.pstdev(values) * 1000,
    }
    for p in percentiles:
        word = str(int(p)) if int(p) == p else str(p)
        out[f"p{word}_{name}_ms"] = percentile(values, p) * 1000
    return out


def parse_goodput(text: str | None) -> dict[str, float]:
    """Parse `--goodput ttft:MS,tpot:MS,e2el:MS` (vLLM's syntax; any subset, milliseconds).

    Args:
        text: The option's value, or None.

    Returns:
        SLOs in milliseconds keyed by metric name; empty when no SLO was given.

    Raises:
        ValueError: for an unknown metric, a missing colon or a non-positive number, naming what to write.
    """
    slos: dict[str, float] = {}
    for part in (text or "").replace(" ", ",").split(","):
        if not part:
            continue
        name, sep, value = part.partition(":")
        if not sep or name not in GOODPUT_METRICS:
            raise ValueError(f"--goodput: {part!r} is not KEY:MS with KEY one of {', '.join(GOODPUT_METRICS)}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"--goodput: {part!r}: {value!r} is not a number of milliseconds") from None
        if not (math.isfinite(ms) and ms > 0):  # nan would make every request miss, inf every request meet it
            raise ValueError(f"--goodput: {part!r}: the SLO must be a positive number of milliseconds")
        if name in slos:
            raise ValueError(f"--goodput: {name} is given twice ({slos[name]:g} and {ms:g} ms); keep one")
        slos[name] = ms
    return slos


def _meets(record: RequestRecord, slos_ms: Mapping[str, float]) -> bool:
    measured = {"ttft": record.ttft or 0.0, "tpot": record.tpot or 0.0, "e2el": record.e2el or 0.0}
    return all(measured[name] * 1000 <= slo for name, slo in slos_ms.items())


@dataclass(frozen=True)
class Cost:
    """What the measured endpoint costs to run.

    Attributes:
        gpus: GPUs behind the endpoint.
        usd_per_hour: What those GPUs' VMs cost per hour, or None when unknown.
        source: Where the figures come from, e.g. "Standard_NC24ads_A100_v4 list price".
    """

    gpus: float
    usd_per_hour: float | None
    source: str

    def figures(self, output_tokens_per_s: float) -> dict[str, float | None]:
        """Tokens per GPU-hour and USD per million output tokens at a measured output throughput.

        Args:
            output_tokens_per_s: Output tokens per second of the whole endpoint.

        Returns:
            `output_tokens_per_gpu_hour` and `usd_per_million_output_tokens` (None without a price or throughput).
        """
        per_hour = output_tokens_per_s * 3600
        usd = self.usd_per_hour / per_hour * 1e6 if self.usd_per_hour is not None and per_hour > 0 else None
        return {
            "output_tokens_per_gpu_hour": per_hour / self.gpus if self.gpus > 0 else None,
            "usd_per_million_output_tokens": usd,
        }


def summarize(
    records: Sequence[RequestRecord],
    duration_s: float,
    *,
    goodput_ms: Mapping[str, float] | None = None,
    cost: Cost | None = None,
    percentiles: Iterable[float] = PERCENTILES,
) -> dict[str, Any]:
    """Summarize a run: vLLM's keys and definitions, plus goodput, errors by kind, token mix and cost.

    Args:
        records: Every request of the run.
        duration_s: Wall time from the first request sent to the last one finished.
        goodput_ms: SLOs in milliseconds (see `parse_goodput`); request_goodput is None without them.
        cost: GPUs and price behind the endpoint, for tokens per GPU-hour and USD per million output tokens.
        percentiles: Percentiles to report for each latency.

    Returns:
        A flat JSON-ready dict.
    """
    done = [r for r in records if r.success]
    failed = [r for r in records if not r.success]
    total_input = sum(r.input_tokens for r in done)
    total_output = sum(r.output_tokens for r in done)
    duration = max(duration_s, 1e-9)
    report: dict[str, Any] = {
        "duration": duration_s,
        "num_prompts": len(records),
        "completed": len(done),
        "failed": len(failed),
        "errors_by_kind": dict(sorted(Counter(r.error_kind or "unknown" for r in failed).items())),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(done) / duration,
        "request_goodput": (sum(_meets(r, goodput_ms) for r in done) / duration) if goodput_ms else None,
        "goodput_slos_ms": dict(goodput_ms or {}),
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
        "output_input_ratio": total_output / total_input if total_input else None,
        # Answers longer than asked for: a server that ignores the field bounding them (see --max-tokens-field).
        "over_max_tokens": sum(r.output_tokens > r.output_tokens_target for r in done),
    }
    pct = tuple(percentiles)
    samples: dict[str, list[float]] = {
        "ttft": [r.ttft for r in done if r.ttft is not None],
        "tpot": [t for r in done if (t := r.tpot) is not None],
        "itl": [gap for r in done for gap in r.itl],
        "e2el": [r.e2el for r in done if r.e2el is not None],
    }
    for name in METRICS:
        report.update(latency_summary(name, samples[name], pct))
    if cost is not None:
        report.update(
            {"gpus": cost.gpus, "usd_per_hour": cost.usd_per_hour, "cost_source": cost.source}
            | cost.figures(report["output_throughput"])
        )
    return report


@dataclass(frozen=True)
class SweepPoint:
    """One step of a sweep, enough to judge saturation.

    Attributes:
        load: The concurrency or rate of the step.
        output_throughput: Output tokens per second.
        ttft_ms: A TTFT statistic of the step (the sweep uses the median).
        failed_share: The share of the step's requests that failed (0 to 1).
    """

    load: float
    output_throughput: float
    ttft_ms: float
    failed_share: float = 0.0


@dataclass(frozen=True)
class SweepStop:
    """Where a sweep stopped, and why.

    Attributes:
        index: The step it stopped at.
        reason: `failing` (too many of the step's requests failed) or `saturated` (flat throughput, climbing TTFT).
        message: The reason in words, with the figures.
    """

    index: int
    reason: str
    message: str


def saturation_index(points: Sequence[SweepPoint], *, min_gain: float = 0.05, ttft_growth: float = 0.5) -> int | None:
    """Find the first step past saturation: more load bought no throughput but TTFT climbed (guidellm's stop rule).

    A step is past saturation when its output throughput is less than `min_gain` above the best of the earlier
    steps it had room to beat, while its TTFT is more than `ttft_growth` above the TTFT of the step that gave that
    best throughput. A step has room to beat an earlier one whose load is at least `2 * min_gain` below its own:
    if throughput still grew with load, it would gain twice `min_gain` over that step, so a gain below `min_gain`
    is more than throughput noise. Against a closer step (rates 1, 1.02, 1.04...) even a server far from
    saturation gains less than `min_gain`, and TTFT noise alone decided the stop.

    Args:
        points: The sweep so far, in order of increasing load.
        min_gain: Relative throughput gain below which throughput counts as flat.
        ttft_growth: Relative TTFT increase above which TTFT counts as climbing.

    Returns:
        The index of the first saturated step, or None.
    """
    for i in range(1, len(points)):
        if _saturated(points, i, min_gain, ttft_growth) is not None:
            return i
    return None


def _saturated(points: Sequence[SweepPoint], i: int, min_gain: float, ttft_growth: float) -> SweepPoint | None:
    """Return the step that step i failed to beat while its TTFT climbed over that step's, or None."""
    room = [p for p in points[:i] if p.load * (1 + 2 * min_gain) <= points[i].load]
    if not room:
        return None
    best = max(room, key=lambda p: p.output_throughput)
    flat = points[i].output_throughput < best.output_throughput * (1 + min_gain)
    climbing = points[i].ttft_ms > max(best.ttft_ms, 1e-9) * (1 + ttft_growth)
    return best if flat and climbing else None


def sweep_stop(
    points: Sequence[SweepPoint], *, min_gain: float = 0.05, ttft_growth: float = 0.5, max_failed: float = 0.05
) -> SweepStop | None:
    """Find the first step a sweep should stop at: failing, or past saturation (see `saturation_index`).

    A step fails when more than `max_failed` of its requests failed. An endpoint that sheds load (429, 503, a
    proxy's timeouts) keeps the TTFT of the requests it does serve low, so the saturation rule alone never fires
    while every further step only measures how much it refuses.

    Args:
        points: The sweep so far, in order of increasing load.
        min_gain: See `saturation_index`.
        ttft_growth: See `saturation_index`.
        max_failed: Share of a step's requests (0 to 1) that may fail before the sweep stops there.

    Returns:
        The first step to stop at, or None.
    """
    for i, point in enumerate(points):
        if point.failed_share > max_failed:
            return SweepStop(
                i, "failing", f"{point.failed_share:.0%} of its requests failed (more than --max-failed {max_failed:g})"
            )
        if (best := _saturated(points, i, min_gain, ttft_growth)) is not None:
            return SweepStop(
                i,
                "saturated",
                f"output throughput {point.output_throughput:,.0f} tok/s, not {min_gain:.0%} above "
                f"{best.output_throughput:,.0f} at {best.load:g}, while median TTFT climbed from "
                f"{best.ttft_ms:,.0f} to {point.ttft_ms:,.0f} ms",
            )
    return None


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Find the points no other point beats on both axes (both minimized: latency and cost).

    Args:
        points: (x, y) pairs, e.g. (P95 latency ms, USD per million output tokens).

    Returns:
        Indices of the frontier, sorted by x.
    """
    frontier = []
    for i, (x, y) in enumerate(points):
        dominated = any((ox <= x and oy <= y) and (ox < x or oy < y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            frontier.append(i)
    return sorted(frontier, key=lambda i: (points[i][0], points[i][1]))
