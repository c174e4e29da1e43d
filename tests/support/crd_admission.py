"""A test peer playing the Kubernetes API server admitting a custom resource against its CRD.

It follows the documented order of "Extend the Kubernetes API with CustomResourceDefinitions"
(https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/):
unknown fields are errors (kubectl's default `--validate=strict`, server-side field validation Strict); a null in
a field that is not `nullable` is pruned before defaulting ("Defaulting and Nullable"); defaults are applied,
also inside array items; the object is validated against the OpenAPI v3 schema (types, enums, bounds, patterns,
required, item and property counts); `x-kubernetes-list-type: map` keys and `set` items must be unique; then every
`x-kubernetes-validations` rule is evaluated with `self` bound to its node, a `number` field being a CEL double
and an `integer` a CEL int ("Validation rules", type mapping table). A rule that errors (e.g. a missing field
without `has()`) fails, as in the API server.

CEL runs on `common-expression-language` (PyPI; Python bindings of the Rust cel-interpreter, fast enough for
property tests) or on `cel-python` (PyPI, pure Python): two independent implementations, which the tests hold to
the same verdicts.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import cel
import celpy
import jsonschema

__all__ = ["Admission", "admission_errors"]


class Admission:
    """Admit objects against one CRD version's openAPIV3Schema."""

    def __init__(self, crd: dict[str, Any], *, cel_engine: str = "rust") -> None:
        self.schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        self._openapi = jsonschema.Draft4Validator(_draft4(self.schema))
        self._evaluate = _evaluate_rust if cel_engine == "rust" else _evaluate_python

    def errors(self, body: dict[str, Any]) -> list[str]:
        """Return why the API server would refuse `body` (empty when it admits it)."""
        errors: list[str] = []
        body = copy.deepcopy(body)
        metadata = body.get("metadata")
        if isinstance(metadata, dict) and "name" not in metadata and "generateName" in metadata:
            # The API server names the object before validating it: generateName + 5 random characters
            # (apiserver/pkg/storage/names SimpleNameGenerator).
            metadata["name"] = str(metadata["generateName"]) + "x7k2q"
        obj = _prune_and_default(body, self.schema, "", errors, root=True)
        if errors:
            return errors
        errors += [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in self._openapi.iter_errors(obj)]
        if errors:
            return errors
        errors += _list_map_errors(obj, self.schema, "")
        errors += self._cel_errors(obj, self.schema, "")
        return errors

    def _cel_errors(self, value: Any, schema: dict[str, Any], path: str) -> list[str]:
        errors: list[str] = []
        typed = _typed(value, schema)
        for rule in schema.get("x-kubernetes-validations", []):
            if not self._evaluate(rule["rule"], typed):
                errors.append(f"{path}{rule.get('fieldPath', '')}: {rule['message']}")
        if isinstance(value, dict):
            properties = schema.get("properties", {})
            additional = schema.get("additionalProperties")
            for key, item in value.items():
                child = properties.get(key) or (additional if isinstance(additional, dict) else None)
                if child is not None and key != "metadata":
                    errors += self._cel_errors(item, child, f"{path}.{key}")
        elif isinstance(value, list):
            for item in value:
                errors += self._cel_errors(item, schema.get("items", {}), f"{path}[]")
        return errors


def admission_errors(crd: dict[str, Any], body: dict[str, Any]) -> list[str]:
    """Return why the API server would refuse `body` under `crd`."""
    return Admission(crd).errors(body)


def _prune_and_default(value: Any, schema: dict[str, Any], path: str, errors: list[str], *, root: bool = False) -> Any:
    if isinstance(value, list):
        return [_prune_and_default(item, schema.get("items", {}), f"{path}[]", errors) for item in value]
    if not isinstance(value, dict) or (
        schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema
    ):
        return value
    properties = schema.get("properties", {})
    additional = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    for key, item in value.items():
        child = properties.get(key) if properties else None
        if child is None and isinstance(additional, dict):
            child = additional
        if root and key == "metadata":
            out[key] = item  # ObjectMeta is validated by the API server itself, not by the CRD schema
            continue
        if child is None:
            if schema.get("x-kubernetes-preserve-unknown-fields"):
                out[key] = item
            else:
                errors.append(f"{path}.{key}: field not declared in schema")
            continue
        if item is None and not child.get("nullable"):
            continue  # pruned
        out[key] = _prune_and_default(item, child, f"{path}.{key}", errors)
    for key, child in properties.items():
        if key not in out and "default" in child:
            out[key] = _prune_and_default(copy.deepcopy(child["default"]), child, f"{path}.{key}", errors)
    return out


def _draft4(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI v3 subset as JSON Schema draft 4 (whose boolean exclusiveMinimum OpenAPI v3 shares)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "format", "description", "default"):
            continue
        if key == "properties":
            out[key] = {name: _draft4(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _draft4(value)
        else:
            out[key] = value
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _list_map_errors(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    if isinstance(value, list):
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema["x-kubernetes-list-map-keys"]
            seen = [tuple(item.get(k) for k in keys) for item in value]
            if len(seen) != len(set(seen)):
                errors.append(f"{path}: Duplicate value: list-map keys {keys} must be unique")
        elif schema.get("x-kubernetes-list-type") == "set" and len(value) != len({repr(v) for v in value}):
            errors.append(f"{path}: Duplicate value: the items of a list-type set must be unique")
        for item in value:
            errors += _list_map_errors(item, schema.get("items", {}), f"{path}[]")
    elif isinstance(value, dict):
        for key, item in value.items():
            child = schema.get("properties", {}).get(key)
            if child is not None:
                errors += _list_map_errors(item, child, f"{path}.{key}")
    return errors


def _typed(value: Any, schema: dict[str, Any]) -> Any:
    """Values as CEL sees them: a schema `number` is a double even when written as 1."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        fallback = additional if isinstance(additional, dict) else {}
        return {k: _typed(v, properties.get(k, fallback)) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v, schema.get("items", {})) for v in value]
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@functools.cache
def _rust_program(rule: str) -> Any:
    return cel.compile(rule)


def _evaluate_rust(rule: str, self_value: Any) -> bool:
    try:
        return _rust_program(rule).execute({"self": self_value}) is True
    except Exception:
        return False


@functools.cache
def _python_program(rule: str) -> celpy.Runner:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def _evaluate_python(rule: str, self_value: Any) -> bool:
    try:
        result = _python_program(rule).evaluate({"self": celpy.json_to_cel(self_value)})
    except celpy.CELEvalError:
        return False
    return isinstance(result, celpy.celtypes.BoolType) and bool(result)
