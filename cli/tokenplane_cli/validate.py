"""`tokenplane validate`: check InferenceDeployment files and print field-path problems."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tokenplane_cli.files import ManifestError, load_documents
from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment
from tokenplane_operator.plan.validation import check_deployment

__all__ = ["validate_files"]


def validate_files(files: list[Path], out: Console, err: Console) -> int:
    """Validate each document of each file.

    Args:
        files: YAML files holding InferenceDeployments.
        out: where OK lines go.
        err: where problems go.

    Returns:
        0 when every document is valid, 1 otherwise.
    """
    failed = 0
    for path in files:
        try:
            documents = load_documents(path)
        except ManifestError as exc:
            err.print(f"[red]✗[/] {escape(str(exc))}")
            failed += 1
            continue
        for document in documents:
            try:
                deployment = parse_inference_deployment(document.body)
                problems = check_deployment(deployment)
            except InvalidSpecError as exc:
                problems = exc.problems
            if problems:
                failed += 1
                err.print(f"[red]✗[/] {escape(document.label)}")
                for problem in problems:
                    err.print(f"    {escape(str(problem))}")
            else:
                out.print(f"[green]✓[/] {escape(document.label)}: {deployment.name} is valid")
    return 1 if failed else 0
