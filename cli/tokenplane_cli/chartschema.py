"""Generate the chart's values.schema.json from values.yaml and its helm-docs `# --` comments.

A `# @schema {...}` line above a key adds JSON-schema constraints the value's type cannot say (enum, minimum,
pattern, items), so a bad value is refused by `helm install` with the value's path named.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["build_values_schema", "main"]

_COMMENT = re.compile(r"^(?P<indent>\s*)# -- (?P<text>.+)$")
_CONSTRAINT = re.compile(r"^\s*# @schema (?P<json>\{.*\})\s*$")
_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_]+):")


def _descriptions(text: str) -> dict[tuple[str, ...], dict[str, Any]]:
    """Map each key path to the `# --` description and `# @schema` constraints right above it."""
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    stack: list[tuple[int, str]] = []
    pending: dict[str, Any] | None = None
    for line in text.splitlines():
        if comment := _COMMENT.match(line):
            pending = (pending or {}) | {"description": comment["text"].strip()}
            continue
        if constraint := _CONSTRAINT.match(line):
            pending = (pending or {}) | json.loads(constraint["json"])
            continue
        key = _KEY.match(line)
        if not key:
            if line.strip() and not line.strip().startswith("#"):
                pending = None
            continue
        indent = len(key["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key["key"]))
        if pending:
            found[tuple(k for _, k in stack)] = pending
        pending = None
    return found


def _schema(value: Any, path: tuple[str, ...], docs: dict[tuple[str, ...], dict[str, Any]]) -> dict[str, Any]:
    node: dict[str, Any]
    if isinstance(value, bool):
        node = {"type": "boolean"}
    elif isinstance(value, int):
        node = {"type": "integer"}
    elif isinstance(value, float):
        node = {"type": "number"}
    elif isinstance(value, str):
        node = {"type": "string"}
    elif isinstance(value, list):
        item_types = {type(v).__name__ for v in value}
        node = {"type": "array"}
        if item_types == {"str"}:
            node["items"] = {"type": "string"}
    elif isinstance(value, dict):
        # An empty map in values.yaml is an open map for the user to fill (labels, selectors, resources).
        node = {"type": "object"}
        if value and path[-1:] != ("resources",):
            node["properties"] = {k: _schema(v, (*path, k), docs) for k, v in value.items()}
            node["additionalProperties"] = False
    else:
        node = {}
    return node | docs.get(path, {})


def build_values_schema(values_path: Path) -> dict[str, Any]:
    """Build a JSON schema that accepts values.yaml and rejects unknown or mistyped keys.

    Args:
        values_path: the chart's values.yaml.

    Returns:
        The JSON schema (draft 7, as Helm validates with).
    """
    text = values_path.read_text(encoding="utf-8")
    root = _schema(yaml.safe_load(text), (), _descriptions(text))
    return {"$schema": "http://json-schema.org/draft-07/schema#", "title": "tokenplane chart values", **root}


def main() -> None:
    """Print the schema for the values.yaml given as the only argument."""
    sys.stdout.write(json.dumps(build_values_schema(Path(sys.argv[1])), indent=2) + "\n")


if __name__ == "__main__":
    main()
