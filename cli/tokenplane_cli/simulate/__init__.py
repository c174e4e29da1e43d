"""`tokenplane simulate`: the autoscaling policies on request traces, in a discrete-event simulator.

The policy simulated is the one Ray Serve runs (`tokenplane_serving.autoscale.TokenplanePolicy`, resolved from
the `autoscaling_config` the operator writes and wrapped by Serve's own post-processing); baselines and the
oracle run on the same physics. See `engine`, `physics`, `policies`, `run` and `traces` for the model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rich.console import Console

from tokenplane_cli.files import load_one_document
from tokenplane_cli.plan import model_override
from tokenplane_cli.simulate.physics import physics_for
from tokenplane_cli.simulate.report import plot, table
from tokenplane_cli.simulate.run import POLICIES, run_policies, scenario_for, score
from tokenplane_cli.simulate.traces import BUILTIN_TRACES, TraceError, builtin_trace, load_trace_file
from tokenplane_operator.api.v1alpha1 import InferenceDeployment
from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment
from tokenplane_operator.plan.errors import PlanError

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
        return parse_inference_deployment(body, document=True)
    except InvalidSpecError as err:
        raise ValueError(f"{file}: {err}") from None


def simulate_command(
    *,
    trace: list[str],
    trace_file: Path | None,
    file: Path | None,
    vm_size: str | None,
    model_config: Path | None = None,
    rate_scale: float,
    seed: int,
    output: str,
    plots: Path | None,
    console: Console,
    err: Console,
) -> int:
    """Run every policy on each trace; print a table per trace (or the JSON contract); write plots and JSON.

    With `plots`, each trace's PNG and `results.json` (the contract per trace name) go into that folder; with
    `model_config`, that config.json stands for the model of a CR whose source the planner cannot read here.

    Returns:
        The exit code: 0, or 2 for bad input (printed as one line, never a traceback).
    """
    try:
        if plots is not None:
            try:  # before minutes of simulation, not after them
                plots.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"--plots {plots}: cannot make that folder ({exc.strerror or exc})") from None
        deployment = _deployment(file)
        physics = physics_for(deployment, vm_size, model_override(model_config, None))
        scenario = scenario_for(deployment, physics)
        limit = physics.max_model_len
        traces = {t: builtin_trace(t, rate_scale=rate_scale, seed=seed, max_model_len=limit) for t in trace}
        if trace_file is not None:
            # steady.jsonl next to --trace steady: both run, the file under its full name.
            traces[trace_file.stem if trace_file.stem not in traces else trace_file.name] = load_trace_file(trace_file)
    except (ValueError, PlanError, TraceError, KeyError, OSError) as exc:
        unknown = f"unknown trace {exc}; built in: {', '.join(BUILTIN_TRACES)}" if isinstance(exc, KeyError) else exc
        err.print(f"[red]error:[/] {unknown}")
        return 2
    if not traces:
        err.print(f"[red]error:[/] give --trace NAME (built in: {', '.join(BUILTIN_TRACES)}) or --trace-file FILE")
        return 2
    document: dict[str, Any] = {}
    # Serve logs each policy it instantiates at INFO, which here is every policy run on every trace.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    for name, requests in traces.items():
        results = run_policies(scenario, requests, POLICIES)
        scores = {policy: score(result, scenario.sim) for policy, result in results.items()}
        document[name] = {"policies": {p: s.as_json() for p, s in scores.items()}}
        if output != "json":
            console.print(table(name, scores, scenario.sim.target_ms, scenario.sim.metric))
        if plots is not None:
            plot(name, results, scores, plots / f"{name}.png")
    if plots is not None:
        (plots / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    if output == "json":
        # One trace: exactly the contract. Several: the contract per trace name.
        console.print_json(json.dumps(next(iter(document.values())) if len(document) == 1 else document))
    else:
        err.print(f"[dim]replica model: {physics.source}[/]")
    return 0
