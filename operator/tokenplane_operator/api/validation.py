"""Turn CR bodies into InferenceDeployments, or into field-path problems a human can act on."""

from __future__ import annotations

import difflib
import json
import math
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tokenplane_operator.api.names import OBJECT_MAX_BYTES, metadata_problems
from tokenplane_operator.api.v1alpha1 import API_VERSION, KIND, InferenceDeployment, pattern_hint

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


def parse_inference_deployment(body: Mapping[str, Any], *, document: bool = False) -> InferenceDeployment:
    """Parse a CR body (from the API server or a YAML file).

    Args:
        body: the whole object: apiVersion, kind, metadata, spec (and maybe status).
        document: `body` is a document as written in a file, which kubectl refuses without apiVersion or kind;
            the API server's list items carry neither.

    Returns:
        The typed InferenceDeployment.

    Raises:
        InvalidSpecError: with every problem found, each naming its field path.
    """
    problems: list[Problem] = []
    for field, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
        if field not in body:
            if document:
                problems.append(Problem(field, f"missing: add `{field}: {expected}` at the top of the document"))
        elif body[field] != expected:
            problems.append(Problem(field, f"expected {expected}, got {body[field]!r}"))
    if problems:
        raise InvalidSpecError(problems)
    problems = list(_non_json_values(body, ""))
    if problems:  # the rest assumes a JSON document, as the API server stores
        raise InvalidSpecError(problems)
    text = json.dumps(_plain(body), allow_nan=False, separators=(",", ":"))
    if len(text.encode()) > OBJECT_MAX_BYTES:
        size = len(text.encode())
        message = f"{size:,} bytes as JSON; Kubernetes stores at most {OBJECT_MAX_BYTES:,} per object"
        raise InvalidSpecError([Problem("(document)", message)])
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        problems.append(Problem("metadata", f"must be a mapping (name: ..., namespace: ...), got {_kind_of(metadata)}"))
    else:
        problems += [Problem(f"metadata.{field}", message) for field, message in metadata_problems(metadata or {})]
    try:
        # Strict JSON validation types values as the API server does: "8" is not an integer, 1.5 is not one either.
        deployment = InferenceDeployment.model_validate_json(text, strict=True)
    except ValidationError as err:
        problems += problems_from_validation_error(err)
    if problems:
        raise InvalidSpecError(problems)
    return deployment


def _plain(value: object) -> object:
    """Copy a body made of mappings (kopf hands out its own Mapping types) into plain dicts and lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _non_json_values(value: object, path: str) -> Iterator[Problem]:
    """Values JSON (and so Kubernetes) cannot hold: NaN, infinities, and what YAML tags turn into other types."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                yield Problem(path or "(document)", f"key {key!r} is not a string; quote it")
                continue
            yield from _non_json_values(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _non_json_values(item, f"{path}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        yield Problem(
            path or "(document)",
            f"{value} is not a finite number (.nan, .inf and values beyond 1.8e308 have no JSON form); "
            "write a plain number",
        )
    elif value is not None and not isinstance(value, str | int | float | bool):
        yield Problem(path or "(document)", f"a {type(value).__name__} value has no JSON form; quote it as a string")


def problems_from_validation_error(err: ValidationError) -> list[Problem]:
    """Rewrite pydantic errors as field-path problems with a hint on what to do."""
    return [_problem_from_error(error) for error in err.errors()]


# What a value of the wrong type should have been, in YAML terms.
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping of fields (field: value)",
    "model_attributes_type": "a mapping of fields (field: value)",
}


def _problem_from_error(error: ErrorDetails) -> Problem:
    loc = [str(part) if isinstance(part, str) else f"[{part}]" for part in error["loc"]]
    ctx = error.get("ctx") or {}
    kind, value = error["type"], error["input"]
    if kind == "tokenplane":
        loc.append(str(ctx["field"]))
        return Problem(_join(loc), str(ctx["message"]))
    if kind == "extra_forbidden":
        return Problem(_join(loc), _unknown_field_message(error["loc"]))
    if kind == "missing":
        return Problem(_join(loc), "required field is missing; add it")
    if kind in ("enum", "literal_error"):
        return Problem(_join(loc), f"{value!r} is not allowed; {_lower(error['msg'])}")
    if kind in _EXPECTED:
        quoted = isinstance(value, str) and kind in ("int_type", "float_type", "bool_type")
        hint = "; remove the quotes" if quoted else ""
        return Problem(_join(loc), f"expected {_EXPECTED[kind]}, got {_kind_of(value)}{hint}")
    if kind == "string_pattern_mismatch":
        what = pattern_hint(str(ctx.get("pattern"))) or "the documented format (see `kubectl explain`)"
        return Problem(_join(loc), f"{value!r} is not valid: expected {what}")
    if kind == "finite_number":
        return Problem(_join(loc), "expected a finite number")
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    return Problem(_join(loc), f"{message} (got {value!r})" if _is_scalar(value) else message)


def _lower(message: str) -> str:
    return message[0].lower() + message[1:] if message else message


def _kind_of(value: object) -> str:
    """Describe a value by its YAML type, e.g. `the string '8'`, `a list`."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _join(parts: list[str]) -> str:
    path = ""
    for part in parts:
        path += part if part.startswith("[") or not path else f".{part}"
    return path or "(document)"


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _unknown_field_message(loc: tuple[int | str, ...]) -> str:
    known = _known_fields(loc[:-1])
    # A field typed one level off (spec.cache for spec.endpoint.cache) is named exactly elsewhere: say where.
    homes = [path for path in _paths_of(str(loc[-1])) if len(path) > 1 and path[0] == loc[0]]
    if homes:
        nearest = [list(path) for path in homes if len(path) == len(homes[0])]
        return "unknown field here; move it to " + " or ".join(_join(path) for path in nearest)
    name = str(loc[-1]).lower()
    hint = (
        difflib.get_close_matches(str(loc[-1]), known, n=1)
        or [k for k in sorted(known) if len(name) >= 3 and (k.lower().startswith(name) or name.startswith(k.lower()))][
            :1
        ]
    )
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


def _paths_of(name: str) -> list[tuple[str, ...]]:
    """Every path from the top-level model to a field whose alias is `name`, shortest first."""
    found: list[tuple[str, ...]] = []
    queue: list[tuple[type[BaseModel], tuple[str, ...]]] = [(InferenceDeployment, ())]
    seen: set[type[BaseModel]] = set()
    while queue:
        model, path = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        for field_name, field in model.model_fields.items():
            alias = field.alias or field_name
            if alias == name:
                found.append((*path, alias))
            nested = _model_in(field.annotation)
            if nested is not None:
                queue.append((nested, (*path, alias)))
    return found


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
