"""`tokenplane up`: serve an InferenceDeployment on this machine's CPU with real Ray Serve + vLLM."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tokenplane_cli.files import ManifestError, load_one_document
from tokenplane_operator.api.v1alpha1 import (
    AcceleratorKind,
    BatchSpec,
    InferenceDeployment,
    SourceScheme,
    parse_source,
)
from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment
from tokenplane_operator.desired.serveconfig import build_serving_args

__all__ = ["up_command"]


def _with_local_batch(deployment: InferenceDeployment, console: Console) -> InferenceDeployment:
    # A local endpoint serves the Batch API unless the file says `batch:` itself: its files go to a local
    # directory and serve_local starts a redis-server for the queue, so there is nothing to set up.
    if "batch" in deployment.spec.model_fields_set:
        return deployment
    if shutil.which("redis-server") is None:
        console.print("[yellow]![/] Batch API off: it needs redis-server on this machine (make redis)")
        return deployment
    spec = deployment.spec.model_copy(update={"batch": BatchSpec(enabled=True)})
    return deployment.model_copy(update={"spec": spec})


def up_command(file: Path, *, host: str, port: int, console: Console) -> int:
    """Serve the one InferenceDeployment in `file` until Ctrl-C.

    Args:
        file: a YAML file holding one InferenceDeployment with `hardware.accelerator: cpu`. Unless it
            sets `spec.batch`, the endpoint also serves the OpenAI Batch API (when redis-server is installed).
        host: address to listen on.
        port: port to listen on.
        console: where progress and errors go.

    Returns:
        The process exit code: 0 after a clean Ctrl-C, 1 when the file cannot be served.
    """
    try:
        deployment = parse_inference_deployment(load_one_document(file, "up").body, document=True)
    except ManifestError as exc:
        console.print(f"[red]✗[/] {escape(str(exc))}")
        return 1
    except InvalidSpecError as exc:
        console.print(f"[red]✗[/] {escape(str(file))} is not a valid InferenceDeployment:")
        for problem in exc.problems:
            console.print(f"    {escape(str(problem))}")
        return 1
    if deployment.spec.hardware.accelerator is not AcceleratorKind.CPU:
        console.print(
            f"[red]✗[/] {escape(str(file))}: spec.hardware.accelerator is gpu; `tokenplane up` runs CPU "
            "deployments on this machine. Set hardware.accelerator: cpu, or apply it to a cluster."
        )
        return 1
    scheme, location = parse_source(deployment.spec.model.source)
    if scheme is SourceScheme.LOCAL and not (Path(location) / "config.json").is_file():
        console.print(
            f"[red]✗[/] spec.model.source: no model at {escape(location)} (no config.json). "
            f"Make the tiny model with `tokenplane model tiny {escape(location)}`, or point source at a model."
        )
        return 1

    deployment = _with_local_batch(deployment, console)
    # Ray and vLLM are heavy; import them only when serving.
    from tokenplane_serving.local import LocalServeError, serve_local

    try:
        serve_local(
            build_serving_args(deployment, local=True), host=host, port=port, console=console, isolate_engine=True
        )
    except LocalServeError as exc:
        console.print(f"[red]✗[/] {escape(str(exc))}")
        return 1
    return 0
