"""Generate the InferenceDeployment CRD (a structural openAPIV3Schema) from the pydantic models."""

from __future__ import annotations

from typing import Any

import yaml

from tokenplane_operator.api.names import MAX_NAME_LENGTH
from tokenplane_operator.api.v1alpha1 import (
    GROUP,
    KIND,
    PLURAL,
    ROOT_RULES,
    SHORT_NAME,
    VERSION,
    InferenceDeploymentSpec,
    InferenceDeploymentStatus,
)

__all__ = ["ARGOCD_SYNC_OPTIONS", "KEEP_CRD", "build_crd", "crd_yaml", "structural_schema"]

# Argo CD's per-resource sync options: never delete or prune the CRD (argo-cd docs/user-guide/sync-options.md,
# "No Resource Deletion" and "No Prune Resources"); Helm itself never deletes what crds/ installed.
ARGOCD_SYNC_OPTIONS = "argocd.argoproj.io/sync-options"
KEEP_CRD = "Delete=false,Prune=false"

# JSON Schema keywords Kubernetes structural schemas accept; anything else pydantic emits is dropped.
_KEPT = {
    "type", "description", "properties", "items", "required", "enum", "default", "format", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems",
    "maxItems", "uniqueItems", "additionalProperties", "minProperties", "maxProperties",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}  # fmt: skip


def structural_schema(model: type[Any], *, nullable: bool = True) -> dict[str, Any]:
    """Convert a pydantic model to a Kubernetes structural schema.

    `$ref`s are inlined, `anyOf [X, null]` becomes `X` (with `nullable: true` when asked; without it, the API
    server prunes an explicit null, so CEL's `has()` and the models both read it as unset), titles go,
    free-form values get `x-kubernetes-preserve-unknown-fields`, and every node has a `type`. A model's CEL
    rules (`x-kubernetes-validations`) come with it.

    Args:
        model: a pydantic model class.
        nullable: mark optional fields `nullable` (status) instead of letting the API server prune nulls (spec).

    Returns:
        The openAPIV3Schema node for it.
    """
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(schema, schema.get("$defs", {}), nullable)


def _convert(node: dict[str, Any], defs: dict[str, Any], nullable: bool) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs, nullable)
    if "allOf" in node and len(node["allOf"]) == 1:
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return _convert({**node["allOf"][0], **rest}, defs, nullable)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"union without a single non-null type cannot be structural: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        converted = _convert({**options[0], **rest}, defs, nullable)
        if nullable and len(options) < len(node["anyOf"]):
            converted["nullable"] = True
        return converted
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEPT and key != "const":
            continue
        if key == "properties":
            out[key] = {name: _convert(child, defs, nullable) for name, child in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, nullable)
        elif key == "additionalProperties":
            # A map's values keep their own schema (free-form ones too), so CEL can still see the map's keys.
            if isinstance(value, dict) and value:
                out[key] = _convert(value, defs, nullable)
            elif value is True or value == {}:
                out[key] = {"x-kubernetes-preserve-unknown-fields": True}
        elif key in ("minLength", "maxLength") and node.get("type") == "object":
            out["minProperties" if key == "minLength" else "maxProperties"] = value
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            # JSON Schema 2020 uses a number; OpenAPI v3 (Kubernetes) a boolean next to minimum.
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        else:
            out[key] = value
    if "type" not in out:
        if "properties" in out:
            out["type"] = "object"
        elif "enum" in out:
            out["type"] = "string"
        else:
            # An `Any` value: free-form, kept as the user wrote it.
            out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "default" in out and out["default"] is None:
        del out["default"]  # "no value" is the absence of the field, not a null default
    if "default" in out and "enum" in out and out["default"] not in out["enum"]:
        raise ValueError(f"default {out['default']!r} not in enum {out['enum']}")
    return out


def build_crd() -> dict[str, Any]:
    """Build the CustomResourceDefinition for InferenceDeployment.

    Returns:
        The CRD as a dict, ready to dump as YAML.
    """
    spec = structural_schema(InferenceDeploymentSpec, nullable=False)
    status = structural_schema(InferenceDeploymentStatus)
    # kopf records handler progress under status; keep what it writes instead of letting the API server prune it.
    status["x-kubernetes-preserve-unknown-fields"] = True
    spec["description"] = "Desired state: the model, engine, hardware, scaling, routing and endpoint."
    status["description"] = "Observed state, computed by the operator from a snapshot."
    columns = [
        ("Model", "string", ".status.endpoint.model", 0),
        ("VMSize", "string", ".status.plan.vmSize", 0),
        ("Replicas", "integer", ".status.replicas.ready", 0),
        ("Phase", "string", ".status.phase", 0),
        ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', 0),
        ("Tokens/GPU-h", "number", ".status.metrics.tokensPerGpuHour", 1),
        ("P95(ms)", "number", ".status.metrics.p95LatencyMs", 1),
        ("Age", "date", ".metadata.creationTimestamp", 0),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "tokenplane", "app.kubernetes.io/component": "crd"},
            # Argo CD deletes what an Application rendered when the Application is deleted (and prunes what left
            # its render): deleting this CRD deletes every InferenceDeployment in the cluster with it.
            "annotations": {ARGOCD_SYNC_OPTIONS: KEEP_CRD},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": [SHORT_NAME],
                "categories": ["tokenplane", "ai"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": n, "type": t, "jsonPath": p, **({"priority": pr} if pr else {})}
                        for n, t, p, pr in columns
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "An LLM served on AKS GPUs (or locally on CPU) through Ray Serve and vLLM.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [rule.schema() for rule in ROOT_RULES],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version."},
                                "kind": {"type": "string", "description": "Kind."},
                                # The root may restrict metadata.name, nothing else of metadata.
                                "metadata": {
                                    "type": "object",
                                    "properties": {"name": {"type": "string", "maxLength": MAX_NAME_LENGTH}},
                                },
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    """Render the CRD as the YAML committed under charts/tokenplane/crds/."""
    header = "# Generated by `tokenplane crd` from operator/tokenplane_operator/api/v1alpha1.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
