"""What `tokenplane bench` commands do once their arguments are parsed (see cli.py)."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from tokenplane_cli.bench.client import Endpoint, max_tokens_hint
from tokenplane_cli.bench.compare import RATIOS, SweepInterrupted, compare_runs, sweep_runs
from tokenplane_cli.bench.cost import resolve_cost
from tokenplane_cli.bench.plots import plot_cdfs, plot_curves, plot_frontier
from tokenplane_cli.bench.report import render_report, write_requests
from tokenplane_cli.bench.runner import (
    RunResult,
    WorkloadSpec,
    check_load,
    check_rate_span,
    resolve_endpoint,
    run_sync,
)
from tokenplane_cli.bench.stats import RequestRecord, SweepStop, parse_goodput
from tokenplane_cli.bench.workload import BenchInputError

__all__ = ["compare_command", "plot_command", "run_command", "sweep_command"]

err = Console(stderr=True, highlight=False, soft_wrap=True)


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _spec(o: dict[str, Any]) -> WorkloadSpec:
    return WorkloadSpec(
        num_prompts=o["num_prompts"],
        input_tokens=o["input_tokens"],
        output_tokens=o["output_tokens"],
        turns=o.get("turns", 1),
        prefix_tokens=o.get("prefix_tokens", 0),
        prefix_groups=o.get("prefix_groups", 1),
        trace_file=o.get("trace_file"),
        tokenizer=o.get("tokenizer"),
        seed=o["seed"],
    )


def _endpoint(url: str, o: dict[str, Any], api_key: str | None) -> Endpoint:
    """Resolve an endpoint (its model from GET /v1/models unless --model); bad options are refused before that."""
    if not (o["timeout"] > 0 and math.isfinite(o["timeout"])):
        # 0 or less timed every request out at once, each counted as failed; nan did so too ("within nans").
        raise BenchInputError(f"--timeout must be a positive number of seconds per request, not {o['timeout']:g}")
    try:
        return asyncio.run(
            resolve_endpoint(
                url,
                o.get("model"),
                api_key,
                ignore_eos=o["ignore_eos"],
                timeout_s=o["timeout"],
                content_parts=o.get("content_parts", True),
                insecure=o["insecure"],
                ca_bundle=o["ca_bundle"],
                max_tokens_field=str(o["max_tokens_field"]),
            )
        )
    except ValueError as error:
        raise BenchInputError(str(error)) from None


@contextmanager
def _progress(description: str) -> Iterator[tuple[Any, Any, Any]]:
    """Show progress bars on stderr; yield (on_prepare(made, total), on_start(total), on_done(record)) callbacks.

    Prompts are made before the first request (a 200,000-line trace takes about 30 s): a bar of their own.
    """
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=None, note="")
        prompts: list[TaskID] = []
        failed = 0

        def on_prepare(made: int, total: int) -> None:
            if not prompts:
                prompts.append(progress.add_task("making prompts", total=total, note=""))
                progress.refresh()
            progress.update(prompts[0], completed=made, total=total)

        def on_start(total: int) -> None:
            if prompts:
                progress.remove_task(prompts[0])
            progress.update(task, total=total, note="0 failed")

        def on_done(record: RequestRecord) -> None:
            nonlocal failed
            failed += 0 if record.success else 1
            progress.update(task, advance=1, note=f"{failed} failed")

        yield on_prepare, on_start, on_done


def _fail(error: Exception) -> int:
    err.print(f"[red]✗[/] {escape(str(error))}")
    return 2


def _folder(option: str, path: Path) -> Path:
    """Make an output folder before measuring, so a path that cannot be one fails now, not after the runs."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BenchInputError(f"{option} {path}: cannot make that folder ({error.strerror or error})") from None
    return path


def _file(option: str, path: Path) -> Path:
    """Check an output file's place before measuring: not a folder, in a folder that can be made."""
    if path.is_dir():
        raise BenchInputError(f"{option} {path}: a folder; give the file to write, e.g. {path / 'requests.jsonl'}")
    _folder(option, path.parent)
    return path


# Options of a synthetic workload, which a trace replaces: it gives each request's tokens and its session.
_SYNTHETIC = ("input_tokens", "output_tokens", "turns", "prefix_tokens", "prefix_groups")


def _given(o: dict[str, Any], name: str) -> bool:
    """Tell whether option `name` was given (command line or environment), not left at its default."""
    ctx = o.get("ctx")
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return source is not None and source.name != "DEFAULT"


def run_command(o: dict[str, Any]) -> int:
    """`tokenplane bench URL`: one run, a table or JSON on stdout; exit 1 when any request failed."""
    try:
        if o["trace_file"] is not None and (ignored := [n for n in _SYNTHETIC if _given(o, n)]):
            flags = ", ".join("--" + n.replace("_", "-") for n in ignored)
            raise BenchInputError(
                f"{flags} with --trace-file: the trace gives each request's input and output tokens and its session; "
                "leave them out (-n N replays its first N requests)"
            )
        goodput = parse_goodput(o["goodput"])
        cost = resolve_cost(
            vm_size=o["vm_size"], vms=o["vms"], prices_file=o["prices"], gpus=o["gpus"], usd_per_hour=o["usd_per_hour"]
        )
        _spec(o).check()
        if o["concurrency"] is None and o["rate"] is None and o["trace_file"] is None:
            raise BenchInputError("give --concurrency N (closed loop), --rate R (open loop) or --trace-file FILE")
        check_load(o["concurrency"], o["rate"])  # before reaching the endpoint, which may be down too
        check_rate_span(_spec(o).synthetic_sessions(), o["rate"])  # a trace's, once it is read
        if o["save_requests"] is not None:
            _file("--save-requests", o["save_requests"])
        endpoint = _endpoint(o["url"], o, o["api_key"])
        with _progress(f"{endpoint.model} @ {endpoint.base_url}") as (on_prepare, on_start, on_done):

            def starting(total: int) -> None:
                on_start(total)
                asked = o["num_prompts"]
                if o["trace_file"] is not None and asked is not None and total < asked:
                    # -n caps a trace; above its length the whole trace went, as if -n had not been given.
                    err.print(f"[yellow]-n {asked} is more than the trace's {total} requests[/]: replaying all {total}")

            result = run_sync(
                endpoint,
                _spec(o),
                concurrency=o["concurrency"],
                rate=o["rate"],
                goodput_ms=goodput,
                cost=cost,
                on_prepare=on_prepare,
                on_start=starting,
                on_done=on_done,
            )
    except ValueError as error:  # BenchInputError and the option parsers' ValueErrors: bad input, one line
        return _fail(error)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/] before any request was sent")
        return 130
    if result.report["over_max_tokens"]:
        err.print(
            f"[yellow]{result.report['over_max_tokens']} answers were longer than the {endpoint.max_tokens_field} "
            f"asked for[/]: {max_tokens_hint(endpoint.max_tokens_field)}"
        )
    if o["output"] == "json":
        sys.stdout.write(json.dumps(result.report, indent=2) + "\n")
    else:
        render_report(result.report, _out())
        if result.report["failed"]:
            first = next(r for r in result.records if not r.success)
            err.print(f"[yellow]first failure[/] ({first.error_kind}): {escape(str(first.error))}")
    if o["save_requests"] is not None:
        try:
            write_requests(o["save_requests"], result.records)
        except OSError as error:  # after the report, so a full disk does not cost the run's figures
            return _fail(BenchInputError(f"--save-requests {o['save_requests']}: {error.strerror or error}"))
    if result.report["interrupted"]:
        err.print(
            f"[yellow]interrupted[/]: the report covers the {len(result.records)} requests that finished; "
            f"{result.report['dropped_in_flight']} in flight were dropped"
        )
        return 130
    return 1 if result.report["failed"] else 0


def _numbers(option: str, text: str, kind: type, *, increasing: bool) -> list[Any]:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BenchInputError(f"{option}: expected a comma-separated list of numbers, not {text!r}") from None
    # inf and nan parse as floats: a step of them failed only when its turn came, and the steps before were lost.
    if not values or not all(v > 0 and math.isfinite(v) for v in values) or (increasing and values != sorted(values)):
        order = "increasing " if increasing else ""
        raise BenchInputError(f"{option}: expected {order}positive numbers, e.g. 1,2,4,8, not {text!r}")
    return values


def sweep_command(o: dict[str, Any]) -> int:
    """`tokenplane bench sweep URL`: steps until past saturation; JSON and PNGs under --out-dir."""
    try:
        if (o["concurrency"] is None) == (o["rate"] is None):
            raise BenchInputError("give exactly one of --concurrency 1,2,4,... and --rate 0.5,1,2,...")
        _folder("--out-dir", o["out_dir"])
        name = o["name"]
        if not name.strip() or name.startswith(".") or any(sep in name for sep in ("/", "\\")):
            # "." wrote hidden files (..json), "a/b" into a folder of --out-dir that may not exist
            raise BenchInputError(
                f"--name {name!r} names the sweep's files under --out-dir: a plain name such as 'prefix-on', "
                "without a leading dot or a path separator"
            )
        _spec(o).check()
        by = "concurrency" if o["concurrency"] is not None else "rate"
        loads = (
            _numbers("--concurrency", o["concurrency"], int, increasing=True)
            if by == "concurrency"
            else _numbers("--rate", o["rate"], float, increasing=True)
        )
        for flag, key in (("--min-gain", "min_gain"), ("--ttft-growth", "ttft_growth")):
            if not (o[key] >= 0 and math.isfinite(o[key])):  # below 0 a step never counted as flat, or as climbing
                raise BenchInputError(f"{flag} is a relative growth, 0 or more (0.05 = 5%), not {o[key]:g}")
        if not 0 <= o["max_failed"] < 1:
            raise BenchInputError(
                f"--max-failed is a share of a step's requests, from 0 to below 1, not {o['max_failed']}"
            )
        if by == "rate":
            check_rate_span(_spec(o).synthetic_sessions(), loads[0])  # the slowest step
        goodput = parse_goodput(o["goodput"])
        cost = resolve_cost(
            vm_size=o["vm_size"], vms=o["vms"], prices_file=o["prices"], gpus=o["gpus"], usd_per_hour=o["usd_per_hour"]
        )
        endpoint = _endpoint(o["url"], o, o["api_key"])

        def on_step(load: float, result: RunResult) -> None:
            r = result.report
            err.print(
                f"  {by} {load:g}: {r['output_throughput']:,.0f} tok/s, median TTFT {r['median_ttft_ms']:,.0f} ms, "
                f"P95 ITL {r['p95_itl_ms']:,.1f} ms, {r['failed']} failed"
            )

        steps, stop = sweep_runs(
            endpoint,
            _spec(o),
            loads=loads,
            by=by,
            min_gain=o["min_gain"],
            ttft_growth=o["ttft_growth"],
            max_failed=o["max_failed"],
            goodput_ms=goodput,
            cost=cost,
            on_step=on_step,
            watch=lambda load: _progress(f"{by} {load:g}"),
        )
        doc = write_sweep(o["out_dir"], o["name"], by, steps, stop)
    except ValueError as error:  # BenchInputError and the option parsers' ValueErrors: bad input, one line
        return _fail(error)
    except SweepInterrupted as stopped:  # between steps: the ones measured are written
        steps = stopped.steps
        doc = write_sweep(o["out_dir"], o["name"], by, steps, None, interrupted=True)
        err.print(f"[yellow]interrupted[/] after step {len(steps)}; wrote " + ", ".join(doc["files"].values()))
        return 130
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/] before a step was measured; nothing written")
        return 130
    if o["output"] == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        table = Table(title=f"sweep {o['name']} ({by})")
        for column in (by, "out tok/s", "median TTFT ms", "P95 TTFT ms", "P95 ITL ms", "failed"):
            table.add_column(column, justify="right")
        for load, r in zip(doc["loads"], doc["steps"], strict=False):
            table.add_row(
                f"{load:g}",
                f"{r['output_throughput']:,.0f}",
                f"{r['median_ttft_ms']:,.0f}",
                f"{r['p95_ttft_ms']:,.0f}",
                f"{r['p95_itl_ms']:,.1f}",
                str(r["failed"]),
            )
        _out().print(table)
        if stop is not None:
            what = "failing" if stop.reason == "failing" else "past saturation"
            _out().print(f"{what} at {by} {doc['loads'][stop.index]:g}: stopped there ({escape(stop.message)})")
        _out().print("wrote " + ", ".join(doc["files"].values()))
    if doc["interrupted"]:
        err.print(f"[yellow]interrupted[/] in step {len(steps)}: its figures cover the requests that finished")
        return 130
    if stop is not None and stop.reason == "failing" and stop.index == 0:
        # No step measured the endpoint below its limit: a wrong model, key or URL path, or an endpoint that is down.
        first = next(r for r in steps[0].records if not r.success)
        err.print(
            f"[red]✗[/] the first step failed ({escape(stop.message)}); first failure ({first.error_kind}): "
            f"{escape(str(first.error))}"
        )
        return 1
    return 0


def write_sweep(
    out_dir: Path, name: str, by: str, steps: list[RunResult], stop: SweepStop | None, *, interrupted: bool = False
) -> dict[str, Any]:
    """Write `<name>.json`, `<name>-curve.png` and `<name>-cdf.png` under out_dir; return the JSON document.

    `stop`: where and why the sweep stopped before its last step (`saturated_at` is its step, whatever the reason);
    `interrupted`: Ctrl-C ended the sweep between steps (within a step, that step's report says so).
    """
    loads = [s.report["max_concurrency"] if by == "concurrency" else s.report["request_rate"] for s in steps]
    files = {
        "json": str(out_dir / f"{name}.json"),
        "curve": str(plot_curves({name: [s.report for s in steps]}, out_dir / f"{name}-curve.png", by)),
        "cdf": str(
            plot_cdfs(
                {f"{by} {v:g}": s.records for v, s in zip(loads, steps, strict=True)}, out_dir / f"{name}-cdf.png"
            )
        ),
    }
    doc = {
        "name": name,
        "by": by,
        "loads": loads,
        "saturated_at": stop.index if stop is not None else None,
        "stop_reason": stop.reason if stop is not None else None,
        "stop_message": stop.message if stop is not None else None,
        "interrupted": interrupted or (bool(steps) and bool(steps[-1].report.get("interrupted"))),
        "steps": [s.report for s in steps],
        "files": files,
    }
    Path(files["json"]).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


def compare_command(o: dict[str, Any]) -> int:
    """`tokenplane bench compare A B`: interleaved runs, ratio table, compare.json and a CDF chart."""
    try:
        levels = _numbers("--concurrency", o["concurrency"], int, increasing=False)
        if o["pairs"] < 1:
            raise BenchInputError("--pairs must be at least 1")
        if o["label_a"] == o["label_b"]:  # the results of both were kept under one name, and one endpoint's URL lost
            raise BenchInputError(
                f"--label-a and --label-b are both {o['label_a']!r}: they name the two endpoints in compare.json "
                "and its chart; give two names"
            )
        if o["warmup"] < 0:
            raise BenchInputError(f"--warmup must be 0 or more unmeasured requests, not {o['warmup']}")
        _spec(o).check()
        _folder("--out", o["out"].parent)
        if o["out"].is_dir():
            raise BenchInputError(
                f"--out {o['out']}: a folder; give the JSON file to write, e.g. {o['out']}/compare.json"
            )
        a = _endpoint(o["url_a"], o, o["api_key"])
        b = _endpoint(o["url_b"], o, o["api_key_b"])
        labels = (o["label_a"], o["label_b"])

        def on_run(label: str, level: int, pair: int, result: RunResult) -> None:
            r = result.report
            err.print(
                f"  c={level} pair {pair + 1}/{o['pairs']} {label}: {r['output_throughput']:,.0f} tok/s, "
                f"P95 TTFT {r['p95_ttft_ms']:,.0f} ms, P95 ITL {r['p95_itl_ms']:,.1f} ms, {r['failed']} failed"
            )

        doc, results = compare_runs(
            a, b, _spec(o), levels=levels, pairs=o["pairs"], warmup=o["warmup"], labels=labels, on_run=on_run
        )
        doc["workload"] = _spec(o).describe()
        doc["endpoints"] = {labels[0]: a.base_url, labels[1]: b.base_url}
        out: Path = o["out"]
        cdf = plot_cdfs(
            {
                f"{label} c={level}": [r for res in runs for r in res.records]
                for (label, level), runs in results.items()
            },
            out.with_name(out.stem + "-cdf.png"),
        )
        doc["files"] = {"json": str(out), "cdf": str(cdf)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    except ValueError as error:  # BenchInputError and the option parsers' ValueErrors: bad input, one line
        return _fail(error)
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted[/]: no ratios without whole pairs; {o['out']} not written")
        return 130
    if o["output"] == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return _compare_failures(results)
    table = Table(title=f"{labels[0]} / {labels[1]} over {o['pairs']} interleaved pairs (min / median / max)")
    table.add_column("concurrency", justify="right")
    for name in RATIOS:
        table.add_column(name, justify="right")
    for level in doc["levels"]:
        cells = [
            "/".join("-" if level[n][s] is None else f"{level[n][s]:.2f}" for s in ("min", "median", "max"))
            for n in RATIOS
        ]
        table.add_row(str(level["concurrency"]), *cells)
    _out().print(table)
    _out().print(f"wrote {out} and {cdf}")
    return _compare_failures(results)


def _compare_failures(results: dict[tuple[str, int], list[RunResult]]) -> int:
    """Name each endpoint and level whose runs had failed requests, with the first failure; 1 if any, else 0.

    Ratios of runs with failures compare what each endpoint chose to serve, not the two endpoints (`bench URL`
    exits 1 on any failed request too).
    """
    code = 0
    for (label, level), runs in results.items():
        failed = [r for run in runs for r in run.records if not r.success]
        if failed:
            code = 1
            total = sum(len(run.records) for run in runs)
            err.print(
                f"[yellow]{label} at concurrency {level}: {len(failed)} of {total} requests failed[/]; first "
                f"({failed[0].error_kind}): {escape(str(failed[0].error))}"
            )
    return code


def plot_command(files: list[Path], out_dir: Path, latency_key: str) -> int:
    """`tokenplane bench plot FILES`: overlay runs on the cost/latency plane with the Pareto frontier."""
    points: list[tuple[str, float, float]] = []
    try:
        for file in files:
            try:
                doc = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8
                raise BenchInputError(f"{file}: cannot read it as JSON ({error})") from None
            reports: list[Any] = doc["steps"] if isinstance(doc, dict) and isinstance(doc.get("steps"), list) else [doc]
            for i, report in enumerate(reports):
                if isinstance(report, dict) and "output_throughput" in report and latency_key not in report:
                    # A report, and the key is what is wrong: it said "is it `tokenplane bench -o json` output?".
                    keys = ", ".join(k for k in report if k.startswith(("p", "median_", "mean_")) and k.endswith("_ms"))
                    raise BenchInputError(f"--latency {latency_key}: not a latency of the report; give one of {keys}")
                if not isinstance(report, dict) or latency_key not in report:
                    raise BenchInputError(f"{file}: no {latency_key} in it; is it `tokenplane bench -o json` output?")
                usd = report.get("usd_per_million_output_tokens")
                if usd is None:
                    raise BenchInputError(
                        f"{file}: no cost figures; run the benchmark with --vm-size or --gpus and --usd-per-hour"
                    )
                label = file.stem if len(reports) == 1 else f"{file.stem}[{i}]"
                figures = (report[latency_key], usd)
                if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in figures):
                    raise BenchInputError(f"{file}: {latency_key} and the cost must be numbers, not {figures!r}")
                points.append((label, float(report[latency_key]), float(usd)))
        path = plot_frontier(points, _folder("--out-dir", out_dir) / "frontier.png", latency_key)
    except ValueError as error:  # BenchInputError and the option parsers' ValueErrors: bad input, one line
        return _fail(error)
    _out().print(f"wrote {path}")
    return 0
