"""The `tokenplane` command line: validate, plan, render, up, bench, crd, model, and the operator itself.

This package sits above both halves: it may import the operator's pure layers and the serving package; neither imports
it back (import-linter checks it). Client-side tools that are neither operator nor serving runtime live here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from tokenplane_cli.bench.cli import bench_app
from tokenplane_cli.output import Output, OutputFormat
from tokenplane_operator.main import run_operator

__all__ = ["app", "main"]

app = typer.Typer(
    name="tokenplane",
    help="LLM inference on AKS: InferenceDeployment -> GPU node pool + Ray Serve + vLLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Make models for local runs and tests.", no_args_is_help=True)
app.add_typer(model_app, name="model")
# Parsing only; each bench command imports its work (aiohttp, matplotlib) when it runs.
app.add_typer(bench_app, name="bench")

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def _one_line_errors(run: Callable[[], int]) -> int:
    """Run a file-reading command; an error nobody anticipated still prints one line, never a traceback."""
    try:
        return run()
    except Exception as exc:
        err.print(f"[red]✗[/] internal error ({escape(str(exc)) or 'no detail'}); please report it with the input")
        return 2


@app.command()
def crd() -> None:
    """Print the InferenceDeployment CRD generated from the API models."""
    from tokenplane_operator.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())


# kubectl's habit, and `tokenplane simulate`'s option: the file-reading commands take their file as `-f` too.
_FILENAME = ("-f", "--filename", "--file")


def _the_file(command: str, positional: Path | None, option: Path | None) -> Path | None:
    """Return the one file a command was given, as an argument or with -f; two different ones end the command."""
    if positional is not None and option is not None and positional != option:
        err.print(f"[red]error:[/] {command} takes one file: {escape(str(positional))} or {escape(str(option))}")
        raise typer.Exit(2)
    return positional if positional is not None else option


def _required(command: str, file: Path | None) -> Path:
    if file is None:
        err.print(f"[red]error:[/] give the InferenceDeployment: tokenplane {command} FILE (or -f FILE; - reads stdin)")
        raise typer.Exit(2)
    return file


@app.command()
def validate(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="InferenceDeployment YAML files (multi-document allowed), folders of them, or - for stdin.",
            show_default=False,
        ),
    ] = None,
    filenames: Annotated[
        list[Path] | None, typer.Option(*_FILENAME, help="The same, as kubectl takes them (repeatable).")
    ] = None,
) -> None:
    """Check InferenceDeployment files; print each problem with its field path and exit 1 if any."""
    from tokenplane_cli.validate import validate_files

    given = [*(files or []), *(filenames or [])]
    if not given:
        err.print(
            "[red]error:[/] give InferenceDeployment files: tokenplane validate FILE... (or -f FILE; - reads stdin)"
        )
        raise typer.Exit(2)
    raise typer.Exit(_one_line_errors(lambda: validate_files(given, out, err)))


@app.command()
def plan(
    file: Annotated[Path | None, typer.Argument(help="An InferenceDeployment YAML file (- reads stdin).")] = None,
    filename: Annotated[Path | None, typer.Option(*_FILENAME, help="The same, as kubectl takes it.")] = None,
    model_config: Annotated[
        Path | None, typer.Option("--model-config", help="A Hugging Face config.json (or its directory).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="A well-known model name, e.g. llama-3.1-8b.")] = None,
    max_model_len: Annotated[int | None, typer.Option("--max-model-len", help="Context length (tokens).")] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="Concurrent max-length sequences for the whole deployment.")
    ] = 1,
    quantization: Annotated[str | None, typer.Option("--quantization", help="none, fp8, int8, awq, gptq...")] = None,
    vm_size: Annotated[str | None, typer.Option("--vm-size", help="Plan for this AKS VM size.")] = None,
    output: Output = OutputFormat.table,
    explain: Annotated[bool, typer.Option("--explain", help="Show the formulas behind the estimates.")] = False,
    prices: Annotated[
        Path | None, typer.Option("--prices", help="A values file whose `prices:` map overrides hourly list prices.")
    ] = None,
) -> None:
    """Answer which GPU, how many, at what precision and at what cost per token, before provisioning."""
    from tokenplane_cli.plan import plan_command

    the_file = _the_file("plan", file, filename)
    raise typer.Exit(
        _one_line_errors(
            lambda: plan_command(
                file=the_file,
                model_config=model_config,
                model=model,
                max_model_len=max_model_len,
                concurrency=concurrency,
                quantization=quantization,
                vm_size=vm_size,
                output=output,
                explain=explain,
                prices_file=prices,
            )
        )
    )


@app.command()
def up(
    file: Annotated[
        Path | None,
        typer.Argument(help="An InferenceDeployment with hardware.accelerator: cpu.", show_default=False),
    ] = None,
    filename: Annotated[Path | None, typer.Option(*_FILENAME, help="The same, as kubectl takes it.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve an InferenceDeployment locally on CPU (Ray Serve + vLLM) until Ctrl-C.

    With endpoint.auth.mode apiKey, the key is $TOKENPLANE_API_KEY, or one generated and printed for the run.
    """
    from tokenplane_cli.up import up_command

    the_file = _required("up", _the_file("up", file, filename))
    raise typer.Exit(up_command(the_file, host=host, port=port, console=err))


@app.command()
def render(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="An InferenceDeployment YAML file (multi-document allowed; - reads stdin).", show_default=False
        ),
    ] = None,
    filename: Annotated[Path | None, typer.Option(*_FILENAME, help="The same, as kubectl takes it.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write one file per object into this folder.")] = None,
) -> None:
    """Print every object the operator would create (ARM agent pool as JSON, Kubernetes objects as YAML)."""
    from tokenplane_cli.render import render_command

    the_file = _required("render", _the_file("render", file, filename))
    raise typer.Exit(_one_line_errors(lambda: render_command(the_file, out_dir)))


@app.command()
def simulate(
    trace: Annotated[
        list[str] | None,
        typer.Option("--trace", help="Built-in trace: steady, diurnal, spike, agentic, ramp, bursty, sawtooth."),
    ] = None,
    trace_file: Annotated[
        Path | None,
        typer.Option("--trace-file", help="JSONL lines {t, input_tokens, output_tokens}, or an Azure LLM trace CSV."),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("-f", "--file", help="InferenceDeployment whose scaling and hardware to simulate.")
    ] = None,
    vm_size: Annotated[str | None, typer.Option("--vm-size", help="Simulate this GPU VM size (roofline).")] = None,
    model_config: Annotated[
        Path | None,
        typer.Option("--model-config", help="The model's config.json (or its directory), when -f's source is a PVC."),
    ] = None,
    rate_scale: Annotated[
        float,
        typer.Option(
            "--rate-scale", help="Multiply built-in traces' rates (after fitting them to -f's or --vm-size's fleet)."
        ),
    ] = 1.0,
    seed: Annotated[
        str,
        typer.Option(
            "--seed",
            help="Seed of the built-in traces, or several (1-8, 1,3,5): each runs once per seed, and a table per trace "
            "gives means and ranges over them.",
        ),
    ] = "1",
    output: Output = OutputFormat.table,
    plots: Annotated[
        Path | None, typer.Option("--plots", help="Write one PNG per trace and results.json here.")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            help="Wall-clock time of the trace's t=0, for the CR's schedule windows (ISO 8601, UTC without an "
            "offset; default 1970-01-01T00:00Z, a Thursday).",
        ),
    ] = None,
) -> None:
    """Replay request traces against tokenplane's autoscaling policy and the published baselines."""
    from tokenplane_cli.simulate import simulate_command

    raise typer.Exit(
        _one_line_errors(
            lambda: simulate_command(
                trace=trace or [],
                trace_file=trace_file,
                file=file,
                vm_size=vm_size,
                model_config=model_config,
                rate_scale=rate_scale,
                seed=seed,
                output=output,
                plots=plots,
                console=out,
                err=err,
                start=start,
            )
        )
    )


# The operator's own command, registered as is so the in-cluster entry point and this one cannot drift.
app.command("operator")(run_operator)


@model_app.command("tiny")
def model_tiny(
    directory: Annotated[Path, typer.Argument(help="Where to write the model.")],
) -> None:
    """Write the deterministic tiny Llama-architecture model (seeded weights, offline tokenizer)."""
    from tokenplane_serving.tinymodel import write_tiny_model

    with err.status(f"writing tiny model to {directory}"):
        path = write_tiny_model(directory)
    err.print(f"[green]tiny model ready[/] at {path}")


def main() -> None:
    """Entry point of the `tokenplane` console script."""
    app()
