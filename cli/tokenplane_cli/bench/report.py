"""Show a run: a rich table for people, JSON for tools, one JSON line per request for analysis."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tokenplane_cli.bench.stats import METRICS, RequestRecord

__all__ = ["render_report", "write_requests"]

_TITLES = {"ttft": "TTFT", "tpot": "TPOT (excl. 1st)", "itl": "ITL", "e2el": "E2EL"}


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_report(report: dict[str, Any], console: Console, title: str = "tokenplane bench") -> None:
    """Print the run's figures: totals and rates, latencies (ms) by percentile, cost and errors."""
    load = f"concurrency {report.get('max_concurrency') or 'unbounded'}, rate {report.get('request_rate')}"
    head = Table(title=f"{title}: {report.get('model')} at {report.get('base_url')} ({load})", show_header=False)
    head.add_column(style="bold")
    head.add_column(justify="right")
    rows = [
        ("successful requests", f"{report['completed']} of {report['num_prompts']}"),
        ("duration (s)", _num(report["duration"])),
        ("input tokens", _num(report["total_input_tokens"])),
        ("output tokens", _num(report["total_output_tokens"])),
        ("output / input", _num(report["output_input_ratio"], 3)),
        ("request throughput (req/s)", _num(report["request_throughput"])),
        ("output throughput (tok/s)", _num(report["output_throughput"])),
        ("total token throughput (tok/s)", _num(report["total_token_throughput"])),
    ]
    if report.get("request_goodput") is not None:
        slos = ", ".join(f"{k}<={v:g}ms" for k, v in report["goodput_slos_ms"].items())
        rows.append((f"goodput (req/s, {slos})", _num(report["request_goodput"])))
    if report.get("gpus") is not None:
        rows += [
            ("cost basis", str(report["cost_source"])),
            ("output tokens per GPU-hour", _num(report["output_tokens_per_gpu_hour"], 0)),
            ("USD per million output tokens", _num(report["usd_per_million_output_tokens"], 4)),
        ]
    for kind, count in report["errors_by_kind"].items():
        rows.append((f"errors: {kind}", str(count)))
    if report.get("over_max_tokens"):
        # Their tokens are in every figure above: a server that ignored the field bounding answers.
        rows.append(("answers longer than the max tokens asked", str(report["over_max_tokens"])))
    if report.get("not_sent"):
        rows.append(("not sent (after a failed turn, or a stop)", str(report["not_sent"])))
    if report.get("dropped_in_flight"):
        rows.append(("dropped in flight at the stop", str(report["dropped_in_flight"])))
    for key, value in rows:
        head.add_row(key, value)
    console.print(head)
    latencies = Table(title="latency (ms)")
    percentile_keys = sorted(
        {k.split("_")[0] for k in report if k.startswith("p") and k.endswith("_ttft_ms")},
        key=lambda k: float(k[1:]),
    )
    for name in ("metric", "mean", "median", "std", *percentile_keys):
        latencies.add_column(name, justify="right" if name != "metric" else "left")
    for metric in METRICS:
        cells = [report[f"{stat}_{metric}_ms"] for stat in ("mean", "median", "std", *percentile_keys)]
        latencies.add_row(_TITLES[metric], *(_num(c) for c in cells))
    console.print(latencies)


def write_requests(path: Path, records: Sequence[RequestRecord]) -> None:
    """Write one JSON object per request (the `RequestRecord` fields plus tpot and output_tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            row = asdict(record) | {"tpot": record.tpot, "output_tokens": record.output_tokens}
            out.write(json.dumps(row) + "\n")
