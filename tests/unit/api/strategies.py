"""Hypothesis strategies that generate InferenceDeployment bodies from the API models themselves.

Every field of every spec model is drawn from its annotation and constraints (enums, literals, bounds, lengths,
patterns, nested models, lists, maps), so a field added to the models is generated without touching this file.
A few fields whose values must mean something to render (model sources, VM sizes, taints) draw from realistic
sets instead of their regex. `mutated_bodies` then breaks a random field (wrong type, out of range, junk), so the
property tests see both sides of every rule.
"""

from __future__ import annotations

import enum
import functools
import types
import typing
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tokenplane_operator.api.names import MAX_NAME_LENGTH
from tokenplane_operator.api.v1alpha1 import InferenceDeploymentSpec
from tokenplane_operator.plan.catalog import all_skus
from tokenplane_operator.plan.modelinfo import builtin_model_names
from tokenplane_serving.args import MANAGED_ENGINE_KEYS

__all__ = ["deployment_bodies", "mutated_bodies"]

_MODELS = [f"hf://{name}" for name in builtin_model_names()]
_SOURCES = st.sampled_from(_MODELS) | st.sampled_from(
    ["/models/llama", "file:///models/llama", "pvc://models/llama-8b", "az://acct01/models/llama", "Qwen/Qwen3-8B"]
)
_TAINTS = st.sampled_from(
    ["sku=gpu:NoSchedule", "dedicated:NoExecute", "kubernetes.azure.com/scalesetpriority=spot:NoSchedule"]
)
_OVERRIDES: dict[str, st.SearchStrategy[Any]] = {
    "source": _SOURCES,
    "draftModel": _SOURCES,
    "vmSize": st.sampled_from(["auto", *(s.vm_size for s in all_skus())]),
    "tolerationsForTaints": st.lists(_TAINTS, max_size=2),
    "nodeSelector": st.dictionaries(
        st.sampled_from(["agentpool", "tokenplane.io/gpu"]), st.sampled_from(["gpu", "a"]), min_size=1, max_size=2
    ),
    "extraArgs": st.dictionaries(
        st.sampled_from(["block_size", "kv_cache_dtype", "seed", *sorted(MANAGED_ENGINE_KEYS)[:3]]),
        st.integers(0, 8) | st.sampled_from(["fp8", "auto"]),
        max_size=2,
    ),
    "sessionHeader": st.sampled_from(["x-session-id", "x-user"]),
    "kvConnector": st.just("NixlConnector"),
    "revision": st.sampled_from(["main", "v1.0"]),
    "servedName": st.sampled_from(["chat", "llama-8b", "org/model:v1"]),
    "entraTenantId": st.just("00000000-0000-0000-0000-000000000000"),
    "entraAudience": st.just("api://tokenplane"),
    "allowedNamespaces": st.lists(st.sampled_from(["frontend", "team-a"]), max_size=2),
}  # fmt: skip


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(item, attr, None)
            if value is not None:
                out[attr] = value
    return out


def _int(bounds: dict[str, Any]) -> st.SearchStrategy[int]:
    low = bounds.get("ge", bounds.get("gt", -1) + 1 if "gt" in bounds else 0)
    high = bounds.get("le", bounds.get("lt", 10**6) - 1 if "lt" in bounds else 10**6)
    # Mostly small, realistic values; the bounds themselves too.
    return st.integers(low, min(high, low + 16)) | st.sampled_from(sorted({low, high}))


def _float(bounds: dict[str, Any]) -> st.SearchStrategy[float]:
    low = bounds.get("ge", bounds.get("gt", 0.0))
    high = bounds.get("le", bounds.get("lt", 1e6))
    return st.floats(low, high, exclude_min="gt" in bounds, exclude_max="lt" in bounds, allow_nan=False)


def _for(annotation: Any, metadata: list[Any], alias: str) -> st.SearchStrategy[Any]:
    if alias in _OVERRIDES:
        return _OVERRIDES[alias]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        more = [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        return _for(inner, [*metadata, *more], alias)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return st.none() | _for(options[0], metadata, alias)
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return st.lists(_for(item, [], alias), max_size=2)
    if origin is dict:
        _, value = typing.get_args(annotation)
        return st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), _for(value, [], alias), max_size=2)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_bodies(annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return st.sampled_from([member.value for member in annotation])
    bounds = _bounds(metadata)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return _int(bounds)
    if annotation is float:
        return _float(bounds)
    if annotation is str:
        if "pattern" in bounds:
            size = bounds.get("max_length", 40)
            return st.from_regex(bounds["pattern"], fullmatch=True).filter(lambda s: 0 < len(s) <= size)
        return st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)
    return st.just({})  # Any: a free-form value


@functools.cache  # built once per model: strategies are reused across draws
def model_bodies(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies of one model: required fields always, optional ones sometimes (left to their defaults otherwise)."""
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in model.model_fields.items():
        alias = info.alias or name
        strategy = _for(info.annotation, list(info.metadata), alias)
        (required if info.is_required() else optional)[alias] = strategy
    return st.fixed_dictionaries(required, optional=optional)


_NAMES = st.from_regex(r"[a-z]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True) | st.just("a" * MAX_NAME_LENGTH)


@st.composite
def _deployments(draw: st.DrawFn) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": draw(_NAMES)}
    if draw(st.booleans()):
        metadata["namespace"] = draw(st.sampled_from(["ai", "default", "team-a"]))
    return {
        "apiVersion": "tokenplane.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": metadata,
        "spec": draw(model_bodies(InferenceDeploymentSpec)),
    }


_JUNK = st.sampled_from(["8", "", "auto", "MIG9g", -1, 0, 10**9, 1.5, True, None, [], {}, {"x": 1}, "ümlaut", "a/b"])


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [path] + [p for k, v in node.items() for p in _leaves(v, (*path, k))]
    if isinstance(node, list):
        return [path] + [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))]
    return [path]


def deployment_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """A whole InferenceDeployment whose spec is drawn from the models (valid or not: the rules decide)."""
    return _DEPLOYMENTS


_DEPLOYMENTS = _deployments()


@st.composite
def _mutated(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(_DEPLOYMENTS)
    paths = [p for p in _leaves(body) if p and p[0] in ("spec", "metadata")]
    path = draw(st.sampled_from(paths))
    node = body
    for part in path[:-1]:
        node = node[part]
    if draw(st.booleans()) and isinstance(node, dict):
        node[draw(st.sampled_from(["replicas", "maxReplica", "gpu"]))] = draw(_JUNK)
    else:
        node[path[-1]] = draw(_JUNK | st.text(max_size=8))
    return body


_MUTATED = _mutated()


def mutated_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """A generated deployment with one field (or metadata.name) replaced by junk, or an unknown field added."""
    return _MUTATED
