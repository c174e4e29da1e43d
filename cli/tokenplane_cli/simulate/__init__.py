"""`tokenplane simulate`: the autoscaling policies on request traces, in a discrete-event simulator.

The policy simulated is the one Ray Serve runs (`tokenplane_serving.autoscale.TokenplanePolicy`, resolved from
the `autoscaling_config` the operator writes and wrapped by Serve's own post-processing); baselines and the
oracle run on the same physics. See `engine`, `physics`, `policies`, `run` and `traces` for the model.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status

from tokenplane_cli.files import load_one_document
from tokenplane_cli.plan import model_override
from tokenplane_cli.simulate.physics import ReplicaPhysics, physics_for
from tokenplane_cli.simulate.report import billed, plot, seeds_table, table
from tokenplane_cli.simulate.run import (
    DEFAULT_TARGET_MS,
    POLICIES,
    Progress,
    Scenario,
    Score,
    idle_p95_ms,
    replica_capacity,
    run_policies,
    scenario_for,
    score,
    summarize,
)
from tokenplane_cli.simulate.traces import BUILTIN_TRACES, Request, TraceError, builtin_trace, load_trace_file
from tokenplane_operator.api.v1alpha1 import InferenceDeployment
from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment
from tokenplane_operator.plan.errors import PlanError
from tokenplane_operator.plan.validation import check_deployment

__all__ = ["DEFAULT_DEPLOYMENT", "simulate_command"]

# Without -f: Llama-3.1-8B, one A100 80GB per replica, P95 TTFT 1 s, 0..16 replicas, scale-to-zero after 5 min.
DEFAULT_DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "tokenplane.io/v1alpha1",
    "kind": "InferenceDeployment",
    "metadata": {"name": "simulated", "namespace": "default"},
    "spec": {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192},
        "hardware": {"vmSize": "Standard_NC24ads_A100_v4", "gpusPerReplica": 1},
        "scaling": {
            "minReplicas": 0,
            "maxReplicas": 16,
            "targetQueueDepth": 8,
            "latencyTarget": {"metric": "ttft", "p95Milliseconds": 1000},
            "scaleToZero": {"enabled": True, "idleSeconds": 300},
            "upscaleDelaySeconds": 0,
            "downscaleDelaySeconds": 300,
        },
    },
}


def _deployment(file: Path | None) -> InferenceDeployment:
    if file is None:
        return parse_inference_deployment(DEFAULT_DEPLOYMENT)
    body = load_one_document(file, "simulate").body  # a ManifestError is a ValueError, with the file's name
    try:
        deployment = parse_inference_deployment(body, document=True)
    except InvalidSpecError as err:
        raise ValueError(f"{file}: {err}") from None
    # What `tokenplane validate` refuses is refused here in its words (field path, what to change): a deployment
    # that cannot run has no autoscaling to simulate.
    problems = check_deployment(deployment)
    if problems:
        raise ValueError(f"{file}: {'; '.join(map(str, problems))}")
    return deployment


def _physics(
    deployment: InferenceDeployment, file: Path | None, vm_size: str | None, model_config: Path | None
) -> ReplicaPhysics:
    """Model the replicas; an error names where the problem is: the CR, or --model-config."""
    source = str(file) if file is not None else "the default deployment"
    try:
        model = model_override(model_config, None)
        return physics_for(deployment, vm_size, model)
    except PlanError as exc:
        raise ValueError(f"{source}: {exc}") from None
    except (TypeError, ValueError) as exc:
        if model_config is None:
            raise
        # A config.json with a wrong type where the planner reads a count (a list of experts, "x" for a size).
        raise ValueError(f"--model-config {model_config}: cannot read it as a model ({exc})") from None


@functools.cache
def _default_fleet_rate() -> float:
    """Requests/s of the built-in traces' usual request the default deployment's whole fleet serves within target."""
    deployment = parse_inference_deployment(DEFAULT_DEPLOYMENT)
    sim = scenario_for(deployment, physics_for(deployment)).sim
    return sim.max_replicas * replica_capacity(sim)[0]


def _fit_note(scenario: Scenario) -> tuple[float, str]:
    """How much to scale the built-in traces for this deployment's fleet (they are sized for the default's), and why."""
    sim = scenario.sim
    per_replica, bar_ms = replica_capacity(sim)
    fit = sim.max_replicas * per_replica / _default_fleet_rate()
    within = (
        f"within P95 {sim.metric} {sim.target_ms:,.0f} ms"
        if bar_ms <= sim.target_ms
        else f"within 5% of its idle P95 {sim.metric} ({bar_ms:,.0f} ms): the {sim.target_ms:,.0f} ms target is "
        "out of reach"
    )
    note = (
        f"built-in traces fitted to this deployment: rates x{fit:.3g} (a replica serves {per_replica:.3g} requests/s "
        f"of their usual request {within}, up to {sim.max_replicas} "
        f"replica{'s' if sim.max_replicas != 1 else ''}; the default deployment's 16: {_default_fleet_rate():.3g} "
        "requests/s)"
    )
    return fit, note


def _check_plots_folder(plots: Path, names: list[str]) -> None:
    """Refuse, before minutes of simulation, a folder the plots and results.json cannot be written into."""
    if not os.access(plots, os.W_OK | os.X_OK):
        raise ValueError(f"--plots {plots}: cannot write into that folder")
    for name in names:
        if (plots / name).is_dir():
            raise ValueError(f"--plots {plots}: {name} there is a folder; remove it or choose another folder")


def simulate_command(
    *,
    trace: list[str],
    trace_file: Path | None,
    file: Path | None,
    vm_size: str | None,
    model_config: Path | None = None,
    rate_scale: float,
    seed: str,
    output: str,
    plots: Path | None,
    console: Console,
    err: Console,
    start: str | None = None,
) -> int:
    """Run every policy on each trace; print a table per trace (or the JSON contract); write plots and JSON.

    With `plots`, each trace's PNG and `results.json` (the contract per trace name) go into that folder; with
    `model_config`, that config.json stands for the model of a CR whose source the planner cannot read here;
    `start` (ISO 8601) is the wall-clock time of every trace's t=0, which the CR's schedule windows read. `seed`
    is one seed of the built-in traces, or several (`1-8`, `1,3,5`): then each built-in trace runs once per seed,
    in parallel processes, and prints one table of means and ranges over the seeds (`seeds_table`); its JSON is
    `{"seeds": {"<seed>": contract}, "summary": {"<policy>": SeedSummary}}` and its plots `<trace>-seed<n>.png`.

    Returns:
        The exit code: 0, or 2 for bad input (printed as one line, never a traceback).
    """
    try:
        if plots is not None:
            try:  # before minutes of simulation, not after them
                plots.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"--plots {plots}: cannot make that folder ({exc.strerror or exc})") from None
        epoch = _start_time(start)
        seeds = parse_seeds(seed)
        deployment = _deployment(file)
        physics = _physics(deployment, file, vm_size, model_config)
        scenario = scenario_for(deployment, physics, epoch.timestamp())
        limit = physics.max_model_len
        # Built-in traces are sized for the default deployment: another one gets the same load relative to its fleet.
        fit, fit_note = _fit_note(scenario) if trace and (file is not None or vm_size is not None) else (1.0, "")
        drawn = {
            (t, s): builtin_trace(t, rate_scale=rate_scale, seed=s, max_model_len=limit, fit=fit)
            for t in dict.fromkeys(trace)
            for s in seeds
        }
        several = len(seeds) > 1 and bool(drawn)
        # One seed: the traces run one by one as before; several: the built-in ones run apart, in `_run_seeds`.
        traces = {} if several else {t: requests for (t, _), requests in drawn.items()}
        if trace_file is not None:
            # steady.jsonl next to --trace steady: both run, the file under its full name (its path if that too).
            taken = {*traces, *(t for t, _ in drawn)}
            name = next(n for n in (trace_file.stem, trace_file.name, str(trace_file)) if n not in taken)
            traces[name] = load_trace_file(trace_file)
        for name, requests in traces.items():
            if not any(map(physics.fits, requests)):
                raise ValueError(
                    f"{name}: every request exceeds maxModelLen {limit:,} (vLLM refuses them all); raise "
                    "spec.model.maxModelLen or replay shorter requests"
                )
        if plots is not None:
            per_seed = [f"{t}-seed{s}.png" for t, s in drawn] if several else []
            _check_plots_folder(plots, [*per_seed, *(f"{name}.png" for name in traces), "results.json"])
    except (ValueError, PlanError, TraceError, KeyError, OSError) as exc:
        unknown = f"unknown trace {exc}; built in: {', '.join(BUILTIN_TRACES)}" if isinstance(exc, KeyError) else exc
        err.print(f"[red]error:[/] {escape(str(unknown))}")
        return 2
    if not traces and not drawn:
        err.print(f"[red]error:[/] give --trace NAME (built in: {', '.join(BUILTIN_TRACES)}) or --trace-file FILE")
        return 2
    if file is not None and deployment.spec.scaling.latency_target is None:
        err.print(
            f"[yellow]warning:[/] {escape(str(file))} sets no spec.scaling.latencyTarget: its policy scales on queue "
            f"depth alone, and attainment is judged against a P95 TTFT of {DEFAULT_TARGET_MS:,.0f} ms it does not aim "
            "for; set latencyTarget to simulate the target you mean"
        )
    if fit_note:  # before the run and in either output, so -o json says it too (stderr)
        err.print(f"[dim]{escape(fit_note)}[/]")
    document: dict[str, Any] = {}
    try:
        if several:
            document.update(_run_seeds(scenario, drawn, seeds, output, plots, console, err))
        for name, requests in traces.items():
            # A spinner on a terminal only (a day's trace takes minutes, mostly the oracle's search); gone before
            # the trace's table prints.
            _warn_unreachable(scenario, name, requests, err)
            with err.status(f"{name}: starting") as status:
                plot_path = plots / f"{name}.png" if plots else None
                scores = _run_one(scenario, name, requests, plot_path, partial(_show_step, status, name))
            document[name] = _contract(scores)
            if output != "json":
                console.print(table(name, scores, scenario.sim.target_ms, scenario.sim.metric))
                console.print(billed(scores), soft_wrap=False)
        if plots is not None:
            (plots / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    except OSError as exc:  # the folder was checked, but a file system may still refuse (read-only, /sys)
        reason = escape(exc.strerror or str(exc))
        err.print(f"[red]error:[/] --plots {escape(str(plots))}: cannot write there ({reason})")
        return 2
    if output == "json":
        # One trace: exactly the contract. Several: the contract per trace name.
        console.print_json(json.dumps(next(iter(document.values())) if len(document) == 1 else document))
    else:
        err.print(f"[dim]replica model: {physics.source}[/]")
        if scenario.sim.schedule:
            err.print(f"[dim]schedule windows read from t=0 = {epoch:%a %Y-%m-%d %H:%M %Z} (--start sets it)[/]")
    return 0


# Each seed is seven simulations of a trace; a hundred seeds of one trace is already an hour on two cores.
_MAX_SEEDS = 100


def parse_seeds(text: str) -> list[int]:
    """Parse `--seed`: a number, a range (`1-8`) or a comma list of either; the seeds in order, each once."""
    seeds: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        low, dash, high = part.partition("-")
        if not (low.strip().isdigit() and (not dash or high.strip().isdigit())):
            raise ValueError(f"--seed {text!r}: give a number, a range such as 1-8, or a list such as 1,3,5")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"--seed {text!r}: the range {part} runs backwards; write {last}-{first}")
        if last - first >= _MAX_SEEDS:
            raise ValueError(f"--seed {text!r}: at most {_MAX_SEEDS} seeds")
        seeds.extend(range(first, last + 1))
    unique = sorted(set(seeds))
    if len(unique) > _MAX_SEEDS:
        raise ValueError(f"--seed {text!r}: at most {_MAX_SEEDS} seeds")
    return unique


def _run_seeds(
    scenario: Scenario,
    drawn: dict[tuple[str, int], list[Request]],
    seeds: list[int],
    output: str,
    plots: Path | None,
    console: Console,
    err: Console,
) -> dict[str, Any]:
    """Run every (built-in trace, seed) in parallel processes; print and return each trace's summary over seeds."""
    for name in dict.fromkeys(t for t, _ in drawn):
        _warn_unreachable(scenario, name, drawn[name, seeds[0]], err)
    scores: dict[tuple[str, int], dict[str, Score]] = {}
    # Spawned, not forked: the parent may hold a spinner's thread. A run is minutes of pure Python: one per core.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS: none
    workers = min(len(drawn), cores)
    context = multiprocessing.get_context("spawn")
    with (
        err.status(f"{len(drawn)} runs on {workers} processes") as status,
        ProcessPoolExecutor(workers, mp_context=context) as pool,
    ):
        futures = {
            pool.submit(_run_one, scenario, name, requests, plots / f"{name}-seed{s}.png" if plots else None): (name, s)
            for (name, s), requests in drawn.items()
        }
        for done in as_completed(futures):
            name, s = futures[done]
            scores[name, s] = done.result()
            status.update(f"{len(scores)} of {len(drawn)} runs done (last: {name}, seed {s})")
    document: dict[str, Any] = {}
    for name in dict.fromkeys(t for t, _ in drawn):
        by_seed = {s: scores[name, s] for s in seeds}
        summary = summarize(by_seed)
        document[name] = {
            "seeds": {str(s): _contract(run) for s, run in by_seed.items()},
            "summary": {p: v.as_json() for p, v in summary.items()},
        }
        if output != "json":
            console.print(seeds_table(name, seeds, summary, scenario.sim.target_ms, scenario.sim.metric))
    return document


def _run_one(
    scenario: Scenario,
    name: str,
    requests: list[Request],
    plot_path: Path | None,
    progress: Progress | None = None,
) -> dict[str, Score]:
    """Run and score every policy on one trace, and plot it; in a worker process, only the scores come back."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve logs every policy it instantiates at INFO
    results = run_policies(scenario, requests, POLICIES, progress)
    scores = {policy: score(result, scenario.sim) for policy, result in results.items()}
    if plot_path is not None:
        plot(name, results, scores, plot_path)
    return scores


def _contract(scores: dict[str, Score]) -> dict[str, Any]:
    """Return one trace's JSON contract: `{"policies": {"<policy>": {...}}}`."""
    return {"policies": {policy: s.as_json() for policy, s in scores.items()}}


def _warn_unreachable(scenario: Scenario, name: str, requests: list[Request], err: Console) -> None:
    unreachable = _unreachable_target(scenario, requests)
    if unreachable:
        err.print(f"[yellow]warning:[/] {escape(name)}: {unreachable}")


def _unreachable_target(scenario: Scenario, requests: list[Request]) -> str | None:
    """Say what no fleet can serve: requests beyond the context window, or a target they miss even alone."""
    sim = scenario.sim
    physics = sim.physics
    fitting = list(filter(physics.fits, requests))
    notes = []
    if len(fitting) < len(requests):
        notes.append(
            f"{len(requests) - len(fitting):,} request(s) exceed maxModelLen {physics.max_model_len:,}: refused "
            "(vLLM's 400) and left out of attainment"
        )
    floor_ms = idle_p95_ms(sim, fitting)
    if fitting and floor_ms > sim.target_ms:
        notes.append(
            f"these requests' own P95 {sim.metric} on an idle replica is {floor_ms:,.0f} ms, above the "
            f"{sim.target_ms:,.0f} ms target: no replica count meets it (raise the target, or compare GPU-hours only)"
        )
    return "; ".join(notes) or None


def _show_step(status: Status, trace: str, step: str) -> None:
    status.update(f"{escape(trace)}: {step}")


def _start_time(start: str | None) -> dt.datetime:
    """Parse `--start`: an ISO 8601 time, UTC when it names no offset; the Unix epoch without it."""
    if start is None:
        return dt.datetime.fromtimestamp(0, tz=dt.UTC)
    try:
        when = dt.datetime.fromisoformat(start.strip())
    except ValueError:
        raise ValueError(f"--start {start!r}: give an ISO 8601 time such as 2026-11-30T08:00+01:00") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
