"""The desired Service clients call and the NetworkPolicy admitting only the namespaces the CR allows."""

from __future__ import annotations

from typing import Any

from tokenplane_operator.api.v1alpha1 import InferenceDeployment, Visibility
from tokenplane_operator.desired.naming import (
    DASHBOARD_PORT,
    METRICS_PORT,
    SERVE_PORT,
    SPEC_HASH_ANNOTATION,
    network_policy_name,
    selector_labels,
    service_name,
    spec_hash,
    standard_labels,
)

__all__ = ["INTERNAL_LB_ANNOTATION", "SERVE_LABEL", "build_network_policy", "build_service", "endpoint_url"]

INTERNAL_LB_ANNOTATION = "service.beta.kubernetes.io/azure-load-balancer-internal"
# KubeRay sets this label to "true" on pods whose Serve proxy is healthy (its own -serve-svc selects it).
SERVE_LABEL = "ray.io/serve"


def _metadata(deployment: InferenceDeployment, name: str, spec: dict[str, Any], **annotations: str) -> Any:
    return {
        "name": name,
        "namespace": deployment.namespace,
        "labels": standard_labels(deployment.name),
        "annotations": {**annotations, SPEC_HASH_ANNOTATION: spec_hash(spec)},
    }


def build_service(deployment: InferenceDeployment) -> dict[str, Any]:
    """Build the Service clients call: `<name>-openai`, on `spec.endpoint.port`, to the Serve proxies.

    It selects our deployment label plus KubeRay's `ray.io/serve=true`, rather than pointing users at
    KubeRay's `<name>-serve-svc`: the name, port, type and Azure annotations stay ours, and the selector
    survives RayCluster replacement (the cluster name changes, our pod label does not).

    Args:
        deployment: A validated InferenceDeployment.

    Returns:
        A `v1` Service: ClusterIP for `visibility: cluster`, an Azure internal LoadBalancer for `private`.
    """
    private = deployment.spec.endpoint.visibility is Visibility.PRIVATE
    spec: dict[str, Any] = {
        "type": "LoadBalancer" if private else "ClusterIP",
        "selector": {**selector_labels(deployment.name), SERVE_LABEL: "true"},
        "ports": [{"name": "http", "port": deployment.spec.endpoint.port, "targetPort": SERVE_PORT, "protocol": "TCP"}],
    }
    annotations = {INTERNAL_LB_ANNOTATION: "true"} if private else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(deployment, service_name(deployment.name), spec, **annotations),
        "spec": spec,
    }


def build_network_policy(deployment: InferenceDeployment, *, system_namespaces: tuple[str, ...] = ()) -> dict[str, Any]:
    """Build the NetworkPolicy guarding the Ray pods of one deployment.

    Admitted: the Ray pods of the same deployment on every port (GCS, object store, workers); pods of the
    CR's namespace and `allowedNamespaces` on the serve port only; the system namespaces (KubeRay polls the
    dashboard and proxies, the operator reads metrics) on serve, dashboard and metrics ports. A `private`
    endpoint also admits the serve port from any address, since VNet clients arrive through the internal
    load balancer with addresses outside the cluster.

    Args:
        deployment: A validated InferenceDeployment.
        system_namespaces: Namespaces of KubeRay and the tokenplane operator.

    Returns:
        A `networking.k8s.io/v1` NetworkPolicy.
    """
    name = deployment.name
    callers = sorted({deployment.namespace, *deployment.spec.endpoint.allowed_namespaces})
    serve = [{"protocol": "TCP", "port": SERVE_PORT}]
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": selector_labels(name)}}]},
        {"from": [_namespaces(callers)], "ports": serve},
    ]
    if system_namespaces:
        control = [{"protocol": "TCP", "port": port} for port in (SERVE_PORT, DASHBOARD_PORT, METRICS_PORT)]
        ingress.append({"from": [_namespaces(sorted(set(system_namespaces)))], "ports": control})
    if deployment.spec.endpoint.visibility is Visibility.PRIVATE:
        ingress.append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": serve})
    spec = {"podSelector": {"matchLabels": selector_labels(name)}, "policyTypes": ["Ingress"], "ingress": ingress}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(deployment, network_policy_name(name), spec),
        "spec": spec,
    }


def endpoint_url(deployment: InferenceDeployment, *, cluster_domain: str = "cluster.local") -> str:
    """Return the in-cluster base URL of the OpenAI-compatible API (for status.endpoint.url).

    Args:
        deployment: A validated InferenceDeployment.
        cluster_domain: The cluster's DNS domain.

    Returns:
        `http://<name>-openai.<namespace>.svc.<domain>:<port>/v1`.
    """
    host = f"{service_name(deployment.name)}.{deployment.namespace}.svc.{cluster_domain}"
    return f"http://{host}:{deployment.spec.endpoint.port}/v1"


def _namespaces(names: list[str]) -> dict[str, Any]:
    # kubernetes.io/metadata.name is set by the API server on every namespace (1.22+), so it cannot be spoofed.
    return {
        "namespaceSelector": {
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": names}]
        }
    }
