"""Charts (matplotlib, Agg): throughput vs latency, latency CDFs, and the cost/latency Pareto frontier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenplane_cli.bench.stats import RequestRecord, pareto_frontier
from tokenplane_cli.bench.workload import BenchInputError

__all__ = ["plot_cdfs", "plot_curves", "plot_frontier"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise BenchInputError("charts need matplotlib: pip install 'tokenplane[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(sweeps: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, load_name: str) -> Path:
    """Throughput against P95 TTFT and P95 ITL, one line per sweep, each point labelled with its load.

    Args:
        sweeps: Step reports keyed by the sweep's name.
        path: The PNG to write.
        load_name: "concurrency" or "rate", for the point labels.

    Returns:
        The path written.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for name, steps in sweeps.items():
        x = [s["output_throughput"] for s in steps]
        for ax, key in zip(axes, ("p95_ttft_ms", "p95_itl_ms"), strict=True):
            y = [s[key] for s in steps]
            (line,) = ax.plot(x, y, marker="o", label=name)
            for step, xi, yi in zip(steps, x, y, strict=True):
                load = step.get("max_concurrency") if load_name == "concurrency" else step.get("request_rate")
                ax.annotate(
                    str(load), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7, color=line.get_color()
                )
    for ax, title in zip(axes, ("P95 time to first token", "P95 inter-token latency"), strict=True):
        ax.set_xlabel("output throughput (tokens/s)")
        ax.set_ylabel("ms")
        ax.set_title(f"{title} vs throughput (labels: {load_name})")
        ax.grid(alpha=0.3)
        ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cdfs(runs: Mapping[str, Sequence[RequestRecord]], path: Path) -> Path:
    """Empirical CDFs of TTFT, ITL and E2EL (ms), one line per run.

    Args:
        runs: Request records keyed by run name.
        path: The PNG to write.

    Returns:
        The path written.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    for name, records in runs.items():
        done = [r for r in records if r.success]
        samples = {
            "TTFT": [r.ttft * 1000 for r in done if r.ttft is not None],
            "ITL": [gap * 1000 for r in done for gap in r.itl],
            "E2EL": [r.e2el * 1000 for r in done if r.e2el is not None],
        }
        for ax, (metric, values) in zip(axes, samples.items(), strict=True):
            values.sort()
            if values:
                ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=name)
            ax.set_title(f"{metric} CDF")
    # Streamed chunks that arrive together have ~0 ms gaps and batching windows tens of ms: a log axis shows both.
    axes[1].set_xscale("symlog", linthresh=1.0)
    for ax in axes:
        ax.set_xlabel("ms")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        if ax.get_lines():  # no completed request, no curve: matplotlib warned on stderr of an empty legend
            ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_frontier(points: Sequence[tuple[str, float, float]], path: Path, latency_key: str) -> Path:
    """Cost per million output tokens against a latency, every run a point, the Pareto frontier drawn.

    Args:
        points: (label, latency ms, USD per million output tokens) per run.
        path: The PNG to write.
        latency_key: The report key of the latency axis, for the label.

    Returns:
        The path written.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    xy = [(x, y) for _, x, y in points]
    front = pareto_frontier(xy)
    ax.scatter([x for x, _ in xy], [y for _, y in xy], color="tab:gray", label="runs")
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], color="tab:red", marker="o", label="Pareto frontier")
    for label, x, y in points:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(latency_key.replace("_", " "))
    ax.set_ylabel("USD per million output tokens")
    ax.set_title("cost vs latency (lower left is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
