"""Interleaved comparisons (A B A B ...) and sweeps that stop past saturation."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from tokenplane_cli.bench.client import Endpoint
from tokenplane_cli.bench.runner import RunResult, WorkloadSpec, run_sync
from tokenplane_cli.bench.stats import Cost, RequestRecord, SweepPoint, SweepStop, sweep_stop

__all__ = ["RATIOS", "StepCallbacks", "SweepInterrupted", "compare_runs", "pair_ratios", "sweep_runs"]

# compare.json key -> report key; each ratio is A over B (above 1 means A is higher: better for throughput only).
RATIOS = {
    "throughputRatio": "output_throughput",
    "p95TtftRatio": "p95_ttft_ms",
    "p95ItlRatio": "p95_itl_ms",
    "meanTtftRatio": "mean_ttft_ms",
    "medianItlRatio": "median_itl_ms",
}
# Raw per-run figures kept in compare.json (the lists of per-request samples stay in --save-requests files).
_FIGURES = (
    "completed",
    "failed",
    "errors_by_kind",
    "duration",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p95_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "p95_tpot_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "p95_itl_ms",
    "p99_itl_ms",
    "mean_e2el_ms",
    "p95_e2el_ms",
)


# run_sync's progress callbacks: (on_prepare(made, total), on_start(total), on_done(record)).
StepCallbacks = tuple[
    Callable[[int, int], None] | None, Callable[[int], None] | None, Callable[[RequestRecord], None] | None
]


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C between two steps of a sweep (in the next step's prompt sizing): the steps measured before it.

    Attributes:
        steps: The steps that finished.
    """

    def __init__(self, steps: list[RunResult]) -> None:
        super().__init__()
        self.steps = steps


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def pair_ratios(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """Min, median and max over pairs of each A/B ratio in `RATIOS`.

    Args:
        pairs: (report A, report B) per pair.

    Returns:
        {"throughputRatio": {"min", "median", "max"}, ...}; None where B's figure was 0.
    """
    out: dict[str, dict[str, float | None]] = {}
    for name, key in RATIOS.items():
        values = [r for a, b in pairs if (r := _ratio(a[key], b[key])) is not None]
        out[name] = (
            {"min": min(values), "median": statistics.median(values), "max": max(values)}
            if values
            else {"min": None, "median": None, "max": None}
        )
    return out


def compare_runs(
    a: Endpoint,
    b: Endpoint,
    spec: WorkloadSpec,
    *,
    levels: Sequence[int],
    pairs: int,
    warmup: int,
    labels: tuple[str, str] = ("tokenplane", "vllm"),
    on_run: Callable[[str, int, int, RunResult], None] | None = None,
    before_run: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], dict[tuple[str, int], list[RunResult]]]:
    """Run the same workload against A and B, interleaved A B A B, at each concurrency level.

    Pair i of a level sends both endpoints the same prompts (seed + i): fresh prompts per pair, so no pair gains
    from prefix-cache hits left by an earlier one, and both sides see the same text.

    Args:
        a: The endpoint under test (numerator of the ratios).
        b: The baseline.
        spec: The workload.
        levels: Concurrency levels, in order; the first one's medians are the top-level ratios.
        pairs: Pairs per level.
        warmup: Unmeasured requests per endpoint before each level.
        labels: Names of A and B.
        on_run: Called after each run with (label, level, pair, result).
        before_run: Called with the label before each run against that endpoint, warm-ups included (the local
            bench resumes that server and pauses the other here).

    Returns:
        The compare.json document and every run's result keyed by (label, level).
    """
    doc: dict[str, Any] = {"labels": {"a": labels[0], "b": labels[1]}, "pairs": pairs, "levels": []}
    results: dict[tuple[str, int], list[RunResult]] = {}
    for level in levels:
        if warmup:
            for label, endpoint in zip(labels, (a, b), strict=True):
                if before_run is not None:
                    before_run(label)
                run_sync(
                    endpoint, replace(spec, num_prompts=warmup, seed=spec.seed + 10_000), concurrency=level, rate=None
                )
        level_pairs = []
        runs = []
        for i in range(pairs):
            pair = []
            for label, endpoint in zip(labels, (a, b), strict=True):
                if before_run is not None:
                    before_run(label)
                result = run_sync(endpoint, replace(spec, seed=spec.seed + i), concurrency=level, rate=None)
                if result.report["interrupted"]:  # Ctrl-C: half a pair has no ratio
                    raise KeyboardInterrupt
                results.setdefault((label, level), []).append(result)
                pair.append(result.report)
                runs.append({"endpoint": label, "pair": i} | {k: result.report[k] for k in _FIGURES})
                if on_run is not None:
                    on_run(label, level, i, result)
            level_pairs.append((pair[0], pair[1]))
        doc["levels"].append({"concurrency": level} | pair_ratios(level_pairs) | {"runs": runs})
    if doc["levels"]:
        first = doc["levels"][0]
        doc.update({name: first[name]["median"] for name in RATIOS})
        doc["ratiosAtConcurrency"] = first["concurrency"]
    return doc, results


def sweep_runs(
    endpoint: Endpoint,
    spec: WorkloadSpec,
    *,
    loads: Sequence[float],
    by: str,
    min_gain: float = 0.05,
    ttft_growth: float = 0.5,
    max_failed: float = 0.05,
    goodput_ms: dict[str, float] | None = None,
    cost: Cost | None = None,
    on_step: Callable[[float, RunResult], None] | None = None,
    watch: Callable[[float], AbstractContextManager[StepCallbacks]] | None = None,
) -> tuple[list[RunResult], SweepStop | None]:
    """Step the load up until a step fails too often or is past saturation, or to the last step.

    Args:
        endpoint: Where to send.
        spec: The workload of each step (the seed moves on per step: no cache hits from the step before).
        loads: Concurrency or rate per step, increasing.
        by: "concurrency" or "rate".
        min_gain: See `stats.saturation_index`.
        ttft_growth: See `stats.saturation_index`.
        max_failed: See `stats.sweep_stop`.
        goodput_ms: SLOs for goodput.
        cost: GPUs and price behind the endpoint.
        on_step: Called after each step.
        watch: Called with each step's load; the context it returns is held while the step runs and gives
            run_sync's (on_prepare, on_start, on_done) callbacks (the progress bar).

    Returns:
        The steps run and where and why the sweep stopped early, or None. A step interrupted by Ctrl-C (its
        report's `interrupted`) ends the sweep.

    Raises:
        SweepInterrupted: Ctrl-C after a step and before the next one sent a request.
    """
    steps: list[RunResult] = []
    points: list[SweepPoint] = []
    for i, load in enumerate(loads):
        try:
            with watch(load) if watch is not None else contextlib.nullcontext(None) as callbacks:
                on_prepare, on_start, on_done = callbacks or (None, None, None)
                result = run_sync(
                    endpoint,
                    replace(spec, seed=spec.seed + i),
                    concurrency=int(load) if by == "concurrency" else None,
                    rate=float(load) if by == "rate" else None,
                    goodput_ms=goodput_ms,
                    cost=cost,
                    on_prepare=on_prepare,
                    on_start=on_start,
                    on_done=on_done,
                )
        except KeyboardInterrupt:  # before the step sent a request: the steps so far are whole
            if steps:
                raise SweepInterrupted(steps) from None
            raise
        steps.append(result)
        if on_step is not None:
            on_step(load, result)
        if result.report["interrupted"]:  # Ctrl-C: keep the steps so far, this one's partial figures marked
            return steps, None
        r = result.report
        failed_share = r["failed"] / r["num_prompts"] if r["num_prompts"] else 0.0
        points.append(SweepPoint(load, r["output_throughput"], r["median_ttft_ms"], failed_share))
        stop = sweep_stop(points, min_gain=min_gain, ttft_growth=ttft_growth, max_failed=max_failed)
        if stop is not None:
            return steps, stop
    return steps, None
