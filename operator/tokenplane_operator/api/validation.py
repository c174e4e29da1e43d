"""Turn CR bodies into InferenceDeployments, or into field-path problems a human can act on."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tokenplane_operator.api.v1alpha1 import API_VERSION, KIND, InferenceDeployment

__all__ = ["InvalidSpecError", "Problem", "parse_inference_deployment", "problems_from_validation_error"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where (a field path such as `spec.scaling.minReplicas`) and what to do."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidSpecError(ValueError):
    """A CR body breaks one or more rules; `problems` lists each with its field path."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def parse_inference_deployment(body: Mapping[str, Any]) -> InferenceDeployment:
    """Parse a CR body (from the API server or a YAML file).

    Args:
        body: the whole object: apiVersion, kind, metadata, spec (and maybe status).

    Returns:
        The typed InferenceDeployment.

    Raises:
        InvalidSpecError: with every problem found, each naming its field path.
    """
    problems: list[Problem] = []
    if body.get("apiVersion", API_VERSION) != API_VERSION:
        problems.append(Problem("apiVersion", f"expected {API_VERSION}, got {body.get('apiVersion')!r}"))
    if body.get("kind", KIND) != KIND:
        problems.append(Problem("kind", f"expected {KIND}, got {body.get('kind')!r}"))
    if problems:
        raise InvalidSpecError(problems)
    try:
        return InferenceDeployment.model_validate(dict(body))
    except ValidationError as err:
        raise InvalidSpecError(problems_from_validation_error(err)) from None


def problems_from_validation_error(err: ValidationError) -> list[Problem]:
    """Rewrite pydantic errors as field-path problems with a hint on what to do."""
    return [_problem_from_error(error) for error in err.errors()]


def _problem_from_error(error: ErrorDetails) -> Problem:
    loc = [str(part) if isinstance(part, str) else f"[{part}]" for part in error["loc"]]
    ctx = error.get("ctx") or {}
    if error["type"] == "tokenplane":
        loc.append(str(ctx["field"]))
        return Problem(_join(loc), str(ctx["message"]))
    if error["type"] == "extra_forbidden":
        return Problem(_join(loc), _unknown_field_message(error["loc"]))
    if error["type"] == "missing":
        return Problem(_join(loc), "required field is missing; add it")
    if error["type"] in ("enum", "literal_error"):
        return Problem(_join(loc), f"{error['input']!r} is not allowed; {error['msg'][0].lower()}{error['msg'][1:]}")
    message = error["msg"].removeprefix("Value error, ")
    return Problem(_join(loc), f"{message} (got {error['input']!r})" if _is_scalar(error["input"]) else message)


def _join(parts: list[str]) -> str:
    path = ""
    for part in parts:
        path += part if part.startswith("[") or not path else f".{part}"
    return path or "(document)"


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _unknown_field_message(loc: tuple[int | str, ...]) -> str:
    known = _known_fields(loc[:-1])
    hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if hint:
        return f"unknown field; did you mean {hint[0]!r}?"
    return "unknown field; remove it" + (f" (allowed: {', '.join(sorted(known))})" if known else "")


def _known_fields(parent: tuple[int | str, ...]) -> list[str]:
    """Aliases of the model at `parent`, found by walking the annotations from the top-level model."""
    model: Any = InferenceDeployment
    for part in parent:
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if (f.alias or name) == part), None)
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
