"""`tokenplane validate`: check InferenceDeployment files and print field-path problems.

A document is valid when the API models accept it, the GPU catalog agrees, and the operator could render it: the
same pipeline `tokenplane render` and the operator run, so what validate accepts, they accept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from tokenplane_cli.files import ManifestError, load_documents, manifest_files
from tokenplane_operator.api.v1alpha1 import InferenceDeployment
from tokenplane_operator.api.validation import InvalidSpecError, Problem, parse_inference_deployment
from tokenplane_operator.desired.bundle import DesiredState, build_desired_state
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_operator.desired.schedulable import check_head_fits
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_operator.plan.validation import check_deployment

__all__ = ["Checked", "check_document", "operator_render_config", "print_problems", "render_checked", "validate_files"]

# Where a planning failure points in the spec, by reason, when it names no field itself.
_PLAN_FIELD = {
    PlanErrorReason.DOES_NOT_FIT: "spec.hardware.vmSize",
    PlanErrorReason.UNKNOWN_MODEL: "spec.model.source",
    PlanErrorReason.UNKNOWN_VM_SIZE: "spec.hardware.vmSize",
    PlanErrorReason.CONTEXT_TOO_LONG: "spec.model.maxModelLen",
    PlanErrorReason.INVALID_MODEL_CONFIG: "spec.model.source",
    PlanErrorReason.INVALID_WORKLOAD: "spec.hardware",
}


@dataclass
class Checked:
    """The outcome of checking one document: the deployment, what it renders to, and its problems."""

    deployment: InferenceDeployment | None = None
    state: DesiredState | None = None
    problems: list[Problem] = field(default_factory=list)
    unplanned: PlanError | None = None  # auto with a model only the cluster can read: valid, not renderable here
    refused: PlanError | None = None  # the renderer's refusal behind `problems`, with its reason


def check_document(body: Mapping[str, Any], config: RenderConfig | None = None) -> Checked:
    """Check one InferenceDeployment the way the operator treats it, without contacting anything.

    Args:
        body: the document.
        config: rendering settings; None reads the operator's (`operator_render_config`).

    Returns:
        The outcome; `problems` is empty when the document is valid.
    """
    checked = Checked()
    try:
        checked.deployment = deployment = parse_inference_deployment(body, document=True)
    except InvalidSpecError as exc:
        checked.problems = exc.problems
        return checked
    return render_checked(deployment, config)


def operator_render_config() -> RenderConfig:
    """Return the render settings the operator uses, read from the same ``TOKENPLANE_*`` environment (chart values).

    Unset variables keep the renderer's defaults, so the CLI and the operator render one CR the same way.

    Raises:
        SystemExit: a variable is invalid; the message names it and what is wrong, on one line each.
    """
    from tokenplane_operator.settings import OperatorSettings

    try:
        return OperatorSettings().render_config()
    except ValidationError as exc:
        problems = "; ".join(
            f"TOKENPLANE_{str(e['loc'][0]).upper()}: {_one_line(e['msg'])}" if e["loc"] else _one_line(e["msg"])
            for e in exc.errors()
        )
        raise SystemExit(f"error: invalid operator settings in the environment: {problems}") from None


def render_checked(deployment: InferenceDeployment, config: RenderConfig | None = None) -> Checked:
    """Check a parsed deployment against the catalog and the model, then render it as the operator would.

    `tokenplane plan FILE` calls this too, so plan and validate refuse the same CRs with the same words.

    Args:
        deployment: a deployment the API models accepted.
        config: rendering settings; None reads the operator's (`operator_render_config`).

    Returns:
        The outcome: `state`, or `problems` naming the field to change (and `refused`, the renderer's PlanError),
        or `unplanned` when only the cluster can read the model.
    """
    checked = Checked(deployment=deployment, problems=check_deployment(deployment))
    if checked.problems:
        return checked
    try:
        # Resolves `vmSize: auto` too.
        config = config or operator_render_config()
        checked.state = build_desired_state(deployment, config)
        # The head's size is the operator's setting, not the CR's: a head too big for a system node never starts.
        checked.problems = [Problem(p.where, p.message) for p in check_head_fits(checked.state, config)]
    except PlanError as exc:
        if exc.reason is PlanErrorReason.UNKNOWN_MODEL and deployment.spec.hardware.vm_size == "auto":
            checked.unplanned = exc  # the operator reads the checkpoint's config.json in the cluster
        else:
            checked.refused = exc
            checked.problems = [Problem(exc.field or _PLAN_FIELD[exc.reason], exc.message)]
    except ValidationError as exc:
        # The serving contract's own check; the API models enforce its rules, so reaching this is a bug to report.
        details = "; ".join(_one_line(e["msg"]) for e in exc.errors())
        checked.problems = [Problem("spec", f"the serving contract rejects the rendered arguments: {details}")]
    return checked


def print_problems(problems: list[Problem], console: Console) -> None:
    """Print each problem on its own indented line: its field path, then what is wrong and what to do."""
    for problem in problems:
        console.print(f"    {escape(str(problem))}")


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def validate_files(files: list[Path], out: Console, err: Console) -> int:
    """Validate each document of each file.

    Args:
        files: YAML files holding InferenceDeployments, folders of them (their .yaml, .yml and .json files), or
            `-` for standard input.
        out: where OK lines go.
        err: where problems go.

    Returns:
        0 when every document is valid, 1 otherwise.
    """
    failed = 0
    for path in files:
        try:
            documents = [document for file in manifest_files([path]) for document in load_documents(file)]
        except ManifestError as exc:
            err.print(f"[red]✗[/] {escape(str(exc))}")
            failed += 1
            continue
        for document in documents:
            checked = check_document(document.body)
            if checked.problems or checked.deployment is None:
                failed += 1
                err.print(f"[red]✗[/] {escape(document.label)}")
                print_problems(checked.problems, err)
            else:
                out.print(f"[green]✓[/] {escape(document.label)}: {escape(checked.deployment.name)} is valid")
    return 1 if failed else 0
