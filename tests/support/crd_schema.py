"""Validate custom resources against the openAPIV3Schema of their published CRD, as an API server would."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

__all__ = ["crd_validator", "strict_schema"]


def strict_schema(node: Any) -> Any:
    """OpenAPI v3 (structural) -> JSON Schema: int-or-string as anyOf; unknown fields rejected, not pruned."""
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict_schema(value) for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    # The API server silently prunes unknown fields; failing on them here catches misplaced keys.
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


@cache
def crd_validator(path: Path, kind: str, version: str) -> jsonschema.Draft7Validator:
    """The validator of `kind` at `version` from a CRD file (one or several YAML documents)."""
    for crd in yaml.safe_load_all(path.read_text()):
        if crd and crd["spec"]["names"]["kind"] == kind:
            (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
            schema = strict_schema(served["schema"]["openAPIV3Schema"])
            schema.setdefault("properties", {})["metadata"] = {"type": "object"}  # the API server's, not the CRD's
            schema["properties"].setdefault("apiVersion", {"type": "string"})
            schema["properties"].setdefault("kind", {"type": "string"})
            return jsonschema.Draft7Validator(schema)
    raise KeyError(f"{kind} is not defined in {path}")
