"""The `-o/--output` option of every command that prints a report: one definition, checked by typer."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

__all__ = ["Output", "OutputFormat"]


class OutputFormat(StrEnum):
    """What a report is printed as; typer refuses any other value before the command runs (exit 2)."""

    table = "table"
    json = "json"


Output = Annotated[OutputFormat, typer.Option("-o", "--output", help="table or json.")]
