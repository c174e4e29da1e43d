"""The simulator's output: a rich table, the JSON contract, and PNG plots."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table

from tokenplane_cli.simulate.engine import SimResult
from tokenplane_cli.simulate.run import Score, SeedSummary

__all__ = ["plot", "seeds_table", "table"]


def table(trace: str, scores: dict[str, Score], target_ms: float, metric: str) -> Table:
    """One row per policy, with GPU-hours relative to the oracle."""
    oracle = scores.get("oracle")
    # Two-line headers, separated by one space: the nine columns fit an 80-column terminal or pipe (78 wide), and
    # a narrower one folds a cell rather than cutting it to an ellipsis.
    title = f"{trace}: P95 {metric.upper()} target {target_ms:g} ms"
    out = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
    out.add_column("policy", no_wrap=True)
    for column in ("requests\nin SLO", "minutes\nin SLO", "GPU-h", "x\noracle", "goodput\n/GPU-s", "scale\nevents",
                   "cold-start\nwaits", "rejected"):  # fmt: skip
        out.add_column(column, justify="right", overflow="fold")
    for name, s in scores.items():
        ratio = f"{s.gpu_hours / oracle.gpu_hours:.2f}" if oracle and oracle.gpu_hours else "-"
        cells = (f"{s.request_attainment:.1%}", f"{s.minute_attainment:.1%}", f"{s.gpu_hours:.2f}", ratio,
                 f"{s.goodput_per_gpu:.3f}", str(s.scale_events), str(s.cold_start_waits), str(s.rejected))  # fmt: skip
        out.add_row(name, *cells)
    return out


def seeds_table(trace: str, seeds: list[int], summary: dict[str, SeedSummary], target_ms: float, metric: str) -> Table:
    """One row per policy over several seeds: means and ranges, and the seeds on which a baseline beats tokenplane."""
    title = f"{trace}, {len(seeds)} seeds ({_seed_list(seeds)}): P95 {metric.upper()} target {target_ms:g} ms"
    out = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
    out.add_column("policy", no_wrap=True)
    for column in ("minutes\nin SLO", "least-\nmost", "x\noracle", "least-\nmost", "requests\nin SLO",
                   "goodput\nx static", "beats\ntokenplane"):  # fmt: skip
        out.add_column(column, justify="right", overflow="fold")
    for name, s in summary.items():
        minutes, ratio = s.minute_attainment, s.over_oracle
        beats = "-" if s.beats_tokenplane is None else f"{s.beats_tokenplane}/{len(seeds)}"
        cells = (f"{minutes.mean:.1%}", f"{minutes.least * 100:.3g}-{minutes.most * 100:.3g}%",
                 f"{ratio.mean:.2f}" if ratio else "-", f"{ratio.least:.2f}-{ratio.most:.2f}" if ratio else "-",
                 f"{s.request_attainment.mean:.1%}",
                 f"{s.goodput_over_static.mean:.2f}" if s.goodput_over_static else "-", beats)  # fmt: skip
        out.add_row(name, *cells)
    return out


def _seed_list(seeds: list[int]) -> str:
    """`1-8` for a run of seeds, else the list."""
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def billed(scores: dict[str, Score]) -> str:
    """Return the cloud's bill per policy, a line under the table: GPU-hours of the nodes until their removal.

    Scale-in stops paying only when the cluster autoscaler removes the emptied node, 10 minutes later, and a
    cancelled start still brings its node up; the table's GPU-hours (what the ratios compare) count replicas.
    """
    return "billed GPU-h (nodes until removed): " + ", ".join(
        f"{n} {s.billed_gpu_hours:.2f}" for n, s in scores.items()
    )


def plot(trace: str, results: dict[str, SimResult], scores: dict[str, Score], path: Path) -> None:
    """Replicas and load over time for every policy, and attainment against GPU-hours (one point per policy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [2.2, 1]})
    load_axis = left.twinx()
    for name, result in results.items():
        times = [t / 60 for t, *_ in result.timeline]
        left.step(times, [ready for _, _, ready, _ in result.timeline], where="post", label=name,
                  linewidth=2.2 if name == "tokenplane" else 1.0)  # fmt: skip
    any_result = next(iter(results.values()))
    load_axis.fill_between([t / 60 for t, *_ in any_result.timeline], [r for *_, r in any_result.timeline],
                           color="grey", alpha=0.2, step="post")  # fmt: skip
    load_axis.set_ylabel("arrivals / s (grey)")
    left.set_xlabel("minutes")
    left.set_ylabel("ready replicas")
    left.set_title(f"{trace}: ready replicas per policy")
    left.legend(loc="upper left", fontsize=8)
    for name, s in scores.items():
        right.scatter(s.gpu_hours, s.minute_attainment * 100, s=60 if name == "tokenplane" else 30)
        right.annotate(name, (s.gpu_hours, s.minute_attainment * 100), fontsize=8, xytext=(4, 3),
                       textcoords="offset points")  # fmt: skip
    right.set_xlabel("GPU-hours")
    right.set_ylabel("minutes with P95 in target (%)")
    right.set_title("attainment vs cost")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
