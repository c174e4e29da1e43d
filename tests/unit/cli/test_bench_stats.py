"""`tokenplane bench` statistics on known inputs: vLLM's definitions, goodput, rates, cost, saturation, frontier."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tokenplane_cli.bench.compare import pair_ratios
from tokenplane_cli.bench.cost import resolve_cost
from tokenplane_cli.bench.stats import (
    Cost,
    RequestRecord,
    SweepPoint,
    latency_summary,
    pareto_frontier,
    parse_goodput,
    percentile,
    saturation_index,
    summarize,
    sweep_stop,
)
from tokenplane_cli.bench.workload import BenchInputError, PromptMaker, poisson_arrivals, read_trace
from tokenplane_operator.plan.catalog import find_sku


def record(index: int, ttft: float, e2el: float, tokens: int, prompt: int = 100, **kw: object) -> RequestRecord:
    gaps = [(e2el - ttft) / (tokens - 1)] * (tokens - 1) if tokens > 1 else []
    return RequestRecord(
        index=index,
        session=None,
        turn=0,
        start=0.0,
        input_tokens_target=prompt,
        output_tokens_target=tokens,
        success=True,
        ttft=ttft,
        e2el=e2el,
        itl=gaps,
        prompt_tokens=prompt,
        completion_tokens=tokens,
        chunks=tokens,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("p", [0, 1, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy_linear(p: float) -> None:
    sample = [0.31, 0.02, 1.7, 0.5, 0.5, 0.9, 0.11, 3.2, 0.45, 0.07, 0.66]
    assert percentile(sample, p) == pytest.approx(float(np.percentile(sample, p)))


def test_percentile_known_values_and_empty() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20], 95) == pytest.approx(19.5)
    assert percentile([], 99) == 0.0  # vLLM reports np.percentile(x or 0, p)
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 101)


def test_latency_summary_uses_vllm_keys_in_ms() -> None:
    summary = latency_summary("ttft", [0.1, 0.2, 0.3, 0.4], [50, 99])
    assert summary == pytest.approx(
        {
            "mean_ttft_ms": 250.0,
            "median_ttft_ms": 250.0,
            "std_ttft_ms": float(np.std([100, 200, 300, 400])),
            "p50_ttft_ms": 250.0,
            "p99_ttft_ms": 397.0,
        }
    )


def test_tpot_excludes_the_first_token_and_itl_pools_gaps() -> None:
    # 10 tokens: TTFT 0.5 s, then 9 gaps of 0.1 s -> E2EL 1.4 s, TPOT (1.4 - 0.5) / 9 = 0.1 s.
    a = record(0, ttft=0.5, e2el=1.4, tokens=10)
    one = record(1, ttft=0.2, e2el=0.2, tokens=1)
    assert a.tpot == pytest.approx(0.1)
    assert one.tpot is None
    report = summarize([a, one], duration_s=2.0)
    assert report["mean_tpot_ms"] == pytest.approx(100.0)  # the one-token request has no TPOT
    assert report["mean_itl_ms"] == pytest.approx(100.0)
    assert report["p99_itl_ms"] == pytest.approx(100.0)
    assert report["mean_ttft_ms"] == pytest.approx(350.0)
    assert report["mean_e2el_ms"] == pytest.approx(800.0)


def test_rates_token_totals_and_errors_by_kind() -> None:
    good = [record(i, ttft=0.1, e2el=1.0, tokens=50, prompt=200) for i in range(4)]
    bad = [
        RequestRecord(index=9, session=None, turn=0, start=0, input_tokens_target=200, output_tokens_target=50,
                      error_kind="http_429", error="busy"),
        RequestRecord(index=10, session=None, turn=0, start=0, input_tokens_target=200, output_tokens_target=50,
                      error_kind="http_429", error="busy"),
        RequestRecord(index=11, session=None, turn=0, start=0, input_tokens_target=200, output_tokens_target=50,
                      error_kind="timeout", error="slow"),
    ]  # fmt: skip
    report = summarize(good + bad, duration_s=4.0)
    assert report["completed"] == 4
    assert report["failed"] == 3
    assert report["errors_by_kind"] == {"http_429": 2, "timeout": 1}
    assert report["total_input_tokens"] == 800  # failed requests count no tokens, as in vLLM
    assert report["total_output_tokens"] == 200
    assert report["request_throughput"] == 1.0
    assert report["output_throughput"] == 50.0
    assert report["total_token_throughput"] == 250.0
    assert report["output_input_ratio"] == 0.25
    assert report["request_goodput"] is None


def test_the_table_shows_answers_longer_than_asked() -> None:
    """over_max_tokens was in the JSON report only: the table's token figures counted the extra tokens unexplained."""
    from rich.console import Console

    from tokenplane_cli.bench.report import render_report

    records = [record(i, ttft=0.1, e2el=1.0, tokens=8) for i in range(3)]
    for r in records[:2]:
        r.output_tokens_target = 4  # asked for 4, answered 8
    screen = Console(record=True, width=200)
    render_report(summarize(records, duration_s=1.0), screen)
    assert re.search(r"answers longer than the max tokens asked\s*│\s*2 ", screen.export_text())
    quiet = Console(record=True, width=200)
    render_report(summarize(records[2:], duration_s=1.0), quiet)
    assert "longer than" not in quiet.export_text()


def test_goodput_counts_requests_meeting_every_slo() -> None:
    records = [
        record(0, ttft=0.1, e2el=1.0, tokens=10),  # TPOT 100 ms
        record(1, ttft=0.6, e2el=1.5, tokens=10),  # TTFT too slow
        record(2, ttft=0.1, e2el=2.8, tokens=10),  # TPOT 300 ms too slow
        record(3, ttft=0.2, e2el=0.2, tokens=1),  # one token: TPOT counts as 0
    ]
    slos = parse_goodput("ttft:500,tpot:150")
    report = summarize(records, duration_s=2.0, goodput_ms=slos)
    assert report["request_goodput"] == 1.0  # requests 0 and 3 in 2 s
    assert report["goodput_slos_ms"] == {"ttft": 500.0, "tpot": 150.0}
    tight = summarize(records, duration_s=2.0, goodput_ms=parse_goodput("e2el:900"))
    assert tight["request_goodput"] == 0.5  # only the one-token request ends within 900 ms


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft=5", "KEY:MS"),
        ("itl:5", "KEY:MS"),
        ("ttft:fast", "not a number"),
        ("tpot:0", "positive"),
        ("ttft:nan", "positive"),
        ("e2el:inf", "positive"),
        ("ttft:1e400", "positive"),  # taken as SLOs before
        ("ttft:500,tpot:50,ttft:200", "ttft is given twice"),
    ],
)
def test_goodput_option_errors_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_goodput(text)


def test_cost_per_gpu_hour_and_per_million_tokens() -> None:
    cost = Cost(gpus=2, usd_per_hour=7.2, source="hand")
    figures = cost.figures(output_tokens_per_s=1000)
    assert figures["output_tokens_per_gpu_hour"] == 1_800_000  # 3.6 M tokens/h over 2 GPUs
    assert figures["usd_per_million_output_tokens"] == pytest.approx(2.0)  # $7.2 / 3.6 M tokens
    assert Cost(gpus=1, usd_per_hour=None, source="x").figures(10)["usd_per_million_output_tokens"] is None
    report = summarize([record(0, 0.1, 1.0, 101)], duration_s=1.0, cost=cost)
    assert report["usd_per_million_output_tokens"] == pytest.approx(7.2 / (101 * 3600) * 1e6)


def test_cost_from_the_planners_catalog_and_price_overrides(tmp_path: Path) -> None:
    sku = find_sku("Standard_NC24ads_A100_v4")
    assert sku is not None and sku.hourly_usd is not None
    cost = resolve_cost(vm_size="standard_nc24ads_a100_v4", vms=2)
    assert cost is not None
    assert cost.gpus == sku.gpu_count * 2
    assert cost.usd_per_hour == pytest.approx(sku.hourly_usd * 2)
    prices = tmp_path / "values.yaml"
    prices.write_text("prices:\n  Standard_NC24ads_A100_v4: 1.5\n")
    assert resolve_cost(vm_size="Standard_NC24ads_A100_v4", prices_file=prices).usd_per_hour == 1.5  # type: ignore[union-attr]
    assert resolve_cost(gpus=4, usd_per_hour=10.0) == Cost(4, 10.0, "--gpus/--usd-per-hour")
    assert resolve_cost() is None
    with pytest.raises(BenchInputError, match="not in the planner's catalog"):
        resolve_cost(vm_size="Standard_Nope")
    with pytest.raises(BenchInputError, match="needs --gpus"):
        resolve_cost(usd_per_hour=3.0)
    for bad in (float("nan"), float("inf"), 0.0):  # NaN and infinity were taken as a cost basis
        with pytest.raises(BenchInputError, match="--gpus must be a positive number"):
            resolve_cost(gpus=bad)
        if bad:
            with pytest.raises(BenchInputError, match="--usd-per-hour must be a number >= 0"):
                resolve_cost(gpus=1, usd_per_hour=bad)


def test_saturation_is_flat_throughput_with_climbing_ttft() -> None:
    climbing = [SweepPoint(1, 100, 50), SweepPoint(2, 190, 55), SweepPoint(4, 350, 70), SweepPoint(8, 360, 200)]
    assert saturation_index(climbing) == 3
    # Throughput flat but TTFT steady: not saturated yet (e.g. noise).
    assert saturation_index([SweepPoint(1, 100, 50), SweepPoint(2, 101, 52)]) is None
    # TTFT climbing while throughput still grows: not saturated.
    assert saturation_index([SweepPoint(1, 100, 50), SweepPoint(2, 180, 120)]) is None
    # Throughput falling after the peak counts as flat.
    assert saturation_index([SweepPoint(1, 100, 50), SweepPoint(2, 300, 60), SweepPoint(4, 250, 400)]) == 2


def test_steps_closer_than_min_gain_do_not_stop_a_sweep_on_ttft_noise() -> None:
    # Rates 1 and 1.02: 2% more load can buy at most 2% more throughput, under the 5% of --min-gain, so the step
    # counted as flat whatever the server did, and a TTFT 60% up by noise (50 -> 80 ms) stopped the sweep.
    assert saturation_index([SweepPoint(1.0, 100, 50), SweepPoint(1.02, 102, 80)]) is None
    # 5% more load against 5% to gain: throughput noise alone decides "flat"; twice min_gain is needed.
    assert saturation_index([SweepPoint(1.0, 100, 50), SweepPoint(1.05, 104.5, 80)]) is None
    # Fine steps still find a real saturation: against the steps 10% or more below it.
    fine = [SweepPoint(1.0, 100, 50), SweepPoint(1.05, 104, 52), SweepPoint(1.1, 104, 55), SweepPoint(1.2, 104, 90)]
    assert saturation_index(fine) == 3
    stop = sweep_stop(fine)
    assert stop is not None and "not 5% above 104 at 1.05" in stop.message


def test_a_sweep_stops_at_a_step_that_fails_more_than_max_failed() -> None:
    # An endpoint shedding load with 429s serves the requests it admits as fast as ever: TTFT stays flat, so the
    # saturation rule alone never stopped the sweep, however many requests failed.
    shedding = [SweepPoint(1, 100, 50), SweepPoint(2, 190, 50), SweepPoint(4, 200, 51, 0.40)]
    assert saturation_index(shedding) is None
    stop = sweep_stop(shedding)
    assert stop is not None and (stop.index, stop.reason) == (2, "failing")
    assert "40% of its requests failed" in stop.message
    # One stray failure in 64 (1.6%) is not a reason to stop; at the threshold itself neither.
    assert sweep_stop([SweepPoint(1, 100, 50, 1 / 64), SweepPoint(2, 190, 50, 0.05)]) is None
    # A first step that fails is a stop too (there is nothing to compare it with, nor a need to).
    first = sweep_stop([SweepPoint(1, 0, 0, 1.0)])
    assert first is not None and (first.index, first.reason) == (0, "failing")
    # The saturation rule still stops, and says why.
    climbing = [SweepPoint(1, 100, 50), SweepPoint(2, 101, 200)]
    stop = sweep_stop(climbing)
    assert stop is not None and (stop.index, stop.reason) == (1, "saturated") and "50 to 200 ms" in stop.message


def test_pareto_frontier_keeps_points_nothing_beats_on_both_axes() -> None:
    # (P95 latency ms, USD per M tokens)
    points = [(100.0, 5.0), (200.0, 2.0), (150.0, 6.0), (300.0, 1.0), (250.0, 2.5), (100.0, 5.0)]
    assert pareto_frontier(points) == [0, 5, 1, 3]  # the duplicate ties, it is not beaten
    assert pareto_frontier([(1.0, 1.0), (2.0, 2.0)]) == [0]


def test_pair_ratios_min_median_max() -> None:
    pairs = [
        ({"output_throughput": 90, "p95_ttft_ms": 110, "p95_itl_ms": 10, "mean_ttft_ms": 1, "median_itl_ms": 1},
         {"output_throughput": 100, "p95_ttft_ms": 100, "p95_itl_ms": 10, "mean_ttft_ms": 1, "median_itl_ms": 1}),
        ({"output_throughput": 80, "p95_ttft_ms": 150, "p95_itl_ms": 12, "mean_ttft_ms": 1, "median_itl_ms": 1},
         {"output_throughput": 100, "p95_ttft_ms": 100, "p95_itl_ms": 10, "mean_ttft_ms": 1, "median_itl_ms": 1}),
        ({"output_throughput": 100, "p95_ttft_ms": 100, "p95_itl_ms": 9, "mean_ttft_ms": 1, "median_itl_ms": 1},
         {"output_throughput": 100, "p95_ttft_ms": 100, "p95_itl_ms": 10, "mean_ttft_ms": 1, "median_itl_ms": 1}),
    ]  # fmt: skip
    ratios = pair_ratios(pairs)
    assert ratios["throughputRatio"] == pytest.approx({"min": 0.8, "median": 0.9, "max": 1.0})
    assert ratios["p95TtftRatio"] == pytest.approx({"min": 1.0, "median": 1.1, "max": 1.5})
    assert ratios["p95ItlRatio"] == pytest.approx({"min": 0.9, "median": 1.0, "max": 1.2})


def test_poisson_arrivals_mean_rate_and_rescaling() -> None:
    times = poisson_arrivals(1000, rate=4.0, seed=3)
    assert times == sorted(times)
    assert times[-1] == pytest.approx(250.0)  # rescaled like vLLM: count / rate
    gaps = np.diff([0.0, *times])
    assert 0.2 < float(np.mean(gaps)) < 0.3
    assert float(np.std(gaps)) == pytest.approx(float(np.mean(gaps)), rel=0.15)  # exponential: std == mean
    assert poisson_arrivals(3, 1.0, draw=lambda rate: 1 / rate) == [1.0, 2.0, 3.0]


def test_trace_file_sessions_and_errors(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    rows = [
        {"t": 0.5, "input_tokens": 10, "output_tokens": 4, "session": "a"},
        {"t": 0.0, "input_tokens": 20, "output_tokens": 8},
        {"t": 2.0, "input_tokens": 30, "output_tokens": 4, "session": "a"},
    ]
    trace.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sessions = read_trace(trace, PromptMaker(tokens_per_word=1.0))
    assert [s.start for s in sessions] == [0.0, 0.5]
    assert [t.input_tokens for t in sessions[1].turns] == [10, 30]
    assert [len(t.text.split()) for t in sessions[1].turns] == [10, 30]
    trace.write_text('{"t": 0, "input_tokens": 2.5, "output_tokens": 4}\n')
    with pytest.raises(BenchInputError, match=r"trace.jsonl:1: input_tokens must be a whole number"):
        read_trace(trace, PromptMaker())
    trace.write_text('{"t": 0, "input_tokens": 3}\n')
    with pytest.raises(BenchInputError, match=r":1: no output_tokens \(the line has t, input_tokens\); a trace line"):
        read_trace(trace, PromptMaker())
    # Refused when read, not after minutes of writing 100 billion words of prompt.
    trace.write_text('{"t": 0, "input_tokens": 100000000000, "output_tokens": 5}\n')
    with pytest.raises(BenchInputError, match=r":1: input_tokens is 100,000,000,000, beyond the 10,485,760 tokens"):
        read_trace(trace, PromptMaker())


def test_a_traces_session_ids_are_kept_as_written_by_both_readers(tmp_path: Path) -> None:
    """Both readers took str() of the id: `1` and `"1"` were one session (bench resent one's conversation in the
    other's turns), `true` was the session "True", and bench merged a session "line2" into the line 2 that names none.
    """
    from tokenplane_cli.simulate.traces import TraceError, load_trace_file

    trace = tmp_path / "trace.jsonl"
    rows = [
        {"t": 0.0, "input_tokens": 1, "output_tokens": 1, "session": 1},
        {"t": 0.1, "input_tokens": 2, "output_tokens": 1},
        {"t": 0.2, "input_tokens": 3, "output_tokens": 1, "session": "1"},
        {"t": 0.3, "input_tokens": 4, "output_tokens": 1, "session": "line2"},
        {"t": 0.4, "input_tokens": 5, "output_tokens": 1, "session": 1.0},  # the number 1, written another way
    ]
    trace.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sessions = read_trace(trace, PromptMaker(tokens_per_word=1.0))
    assert [(s.id, [t.input_tokens for t in s.turns]) for s in sessions] == [
        (1, [1, 5]),
        ("line2", [2]),
        ("1", [3]),
        ("line2", [4]),
    ]
    assert [r.session for r in load_trace_file(trace)] == [1, None, "1", "line2", 1]
    for bad, shown in (("true", "true"), ("[1]", "[1]"), ("1.5", "1.5")):
        trace.write_text(f'{{"t": 0, "input_tokens": 1, "output_tokens": 1, "session": {bad}}}\n')
        message = f":1: session must be a string or a whole number, not {shown}"
        with pytest.raises(BenchInputError, match=re.escape(message)):
            read_trace(trace, PromptMaker())
        with pytest.raises(TraceError, match=re.escape(message)):
            load_trace_file(trace)


def test_making_a_traces_prompts_reports_progress(tmp_path: Path) -> None:
    # A 200,000-line trace's prompts took 27 s to make before the first request, with nothing on screen.
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        "".join(json.dumps({"t": i / 100, "input_tokens": 3, "output_tokens": 1}) + "\n" for i in range(1200))
    )
    calls: list[tuple[int, int]] = []
    sessions = read_trace(trace, PromptMaker(), on_progress=lambda made, total: calls.append((made, total)))
    assert len(sessions) == 1200
    assert calls == [(500, 1200), (1000, 1200), (1200, 1200)]
    calls.clear()
    read_trace(trace, PromptMaker(), limit=700, on_progress=lambda made, total: calls.append((made, total)))
    assert calls == [(500, 700), (700, 700)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"t": 0, "input_tokens": Infinity, "output_tokens": 4}', ":1: input_tokens must be a number >= 1, not inf"),
        (b'{"t": 0, "input_tokens": 3, "output_tokens": 1e400}', ":1: output_tokens must be a number >= 1, not inf"),
        (b'{"t": NaN, "input_tokens": 3, "output_tokens": 4}', ":1: t must be a number >= 0, not nan"),
        (b'{"t": 1764254400, "input_tokens": 3, "output_tokens": 4}', "not a Unix time"),  # a wait of decades
        (b'{"t": 0, "input_tokens": 3, "output_tokens": 4, "session": "caf\xe9"}', "not UTF-8 text"),
    ],
)
def test_a_trace_line_no_benchmark_can_replay_is_refused(tmp_path: Path, line: bytes, message: str) -> None:
    # A traceback (OverflowError, UnicodeDecodeError) or an endless wait before.
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(line + b"\n")
    with pytest.raises(BenchInputError, match=re.escape(message)):
        read_trace(trace, PromptMaker())
