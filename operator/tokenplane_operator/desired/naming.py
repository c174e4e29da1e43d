"""Deterministic names, standard labels and the spec-hash annotation of the objects an InferenceDeployment owns."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tokenplane_operator.api.names import (
    API_KEYS_SECRET_SUFFIX,
    MAX_NAME_LENGTH,
    NETWORK_POLICY_SUFFIX,
    SERVICE_SUFFIX,
)

__all__ = [
    "API_KEYS_SECRET_SUFFIX",
    "CLUSTER_HASH_ANNOTATION",
    "DASHBOARD_PORT",
    "DEPLOYMENT_LABEL",
    "GCS_PORT",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "MAX_NAME_LENGTH",
    "METRICS_PORT",
    "NETWORK_POLICY_SUFFIX",
    "PART_OF",
    "SERVE_PORT",
    "SERVICE_SUFFIX",
    "SPEC_HASH_ANNOTATION",
    "api_keys_secret_name",
    "network_policy_name",
    "rayservice_name",
    "selector_labels",
    "service_name",
    "spec_hash",
    "standard_labels",
]

PART_OF = "tokenplane"
MANAGED_BY = "tokenplane-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"  # the operator watches only RayServices carrying it
DEPLOYMENT_LABEL = "tokenplane.io/deployment"
SPEC_HASH_ANNOTATION = "tokenplane.io/spec-hash"
CLUSTER_HASH_ANNOTATION = "tokenplane.io/cluster-hash"
SERVE_PORT = 8000  # KubeRay's default serve port; its -serve-svc and our Service both target it
DASHBOARD_PORT = 8265
GCS_PORT = 6379
METRICS_PORT = 8080


def rayservice_name(deployment_name: str) -> str:
    """Return the RayService name: the InferenceDeployment's own, so `kubectl get rayservice` reads naturally."""
    return deployment_name


def service_name(deployment_name: str) -> str:
    """Return the name of the Service clients call (`<name>-openai`)."""
    return f"{deployment_name}{SERVICE_SUFFIX}"


def network_policy_name(deployment_name: str) -> str:
    """Return the name of the NetworkPolicy guarding the Ray pods (`<name>-ingress`)."""
    return f"{deployment_name}{NETWORK_POLICY_SUFFIX}"


def api_keys_secret_name(deployment_name: str) -> str:
    """Return the default API-key Secret name (`<name>-api-keys`) used when the CR names none."""
    return f"{deployment_name}{API_KEYS_SECRET_SUFFIX}"


def selector_labels(deployment_name: str) -> dict[str, str]:
    """Return the labels that select every pod of one InferenceDeployment.

    Only our own label: KubeRay overwrites `app.kubernetes.io/name` (and may set other well-known labels) on
    the pods it creates, so selectors must not rely on them.

    Args:
        deployment_name: metadata.name of the InferenceDeployment.

    Returns:
        `{tokenplane.io/deployment: <name>}`.
    """
    return {DEPLOYMENT_LABEL: deployment_name}


def standard_labels(deployment_name: str) -> dict[str, str]:
    """Return the labels every object tokenplane renders carries.

    Args:
        deployment_name: metadata.name of the InferenceDeployment.

    Returns:
        The `app.kubernetes.io/*` recommended labels plus `tokenplane.io/deployment`.
    """
    return {
        "app.kubernetes.io/name": PART_OF,
        "app.kubernetes.io/instance": deployment_name,
        MANAGED_BY_LABEL: MANAGED_BY,
        **selector_labels(deployment_name),
    }


def spec_hash(obj: Any) -> str:
    """Return a short, stable digest of a JSON-able value, for drift annotations.

    The JSON is canonical (sorted keys, no whitespace), so equal values hash equally whatever the dict order.

    Args:
        obj: Any JSON-serializable value (typically an object's `spec`).

    Returns:
        The first 16 hex digits of the SHA-256 of the canonical JSON.
    """
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
