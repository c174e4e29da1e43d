"""The desired Service clients call and the NetworkPolicy admitting only the namespaces the CR allows."""

from __future__ import annotations

from typing import Any

from tokenplane_operator.api.v1alpha1 import InferenceDeployment, Visibility
from tokenplane_operator.desired.naming import (
    DASHBOARD_PORT,
    GCS_PORT,
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


def build_network_policy(
    deployment: InferenceDeployment,
    *,
    kuberay_namespace: str = "kuberay-system",
    operator_namespace: str = "tokenplane",
    metrics_namespaces: tuple[str, ...] = (),
    private_source_ranges: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Build the NetworkPolicy guarding the Ray pods of one deployment: exactly the flows the system needs.

    Admitted:
    - the Ray pods of the same deployment, on every port (GCS, object store, Ray workers);
    - pods of the CR's namespace and of `allowedNamespaces`, on the serve port only;
    - the KubeRay operator's namespace on the dashboard (KubeRay submits serveConfigV2 and reads application
      status there), GCS and serve ports (KubeRay checks the head's Serve proxy health on the serve port:
      `updateHeadPodServeLabel`, ray-operator/controllers/ray/rayservice_controller.go);
    - the tokenplane operator's namespace on the metrics port (status.metrics scrapes), and Prometheus'
      namespaces (`metrics_namespaces`: the chart's PodMonitor, the dashboard and the alerts read that port);
    - for a `private` endpoint, `private_source_ranges` (the VNet clients behind the internal load balancer)
      on the serve port. Never 0.0.0.0/0: that would void `allowedNamespaces`.

    Args:
        deployment: A validated InferenceDeployment.
        kuberay_namespace: Namespace the KubeRay operator runs in.
        operator_namespace: Namespace the tokenplane operator runs in.
        metrics_namespaces: Namespaces of the Prometheus scraping the serving pods.
        private_source_ranges: CIDRs admitted to the serve port of private endpoints.

    Returns:
        A `networking.k8s.io/v1` NetworkPolicy.
    """
    name = deployment.name
    callers = sorted({deployment.namespace, *deployment.spec.endpoint.allowed_namespaces})
    serve = _ports(SERVE_PORT)
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": selector_labels(name)}}]},
        {"from": [_namespaces(callers)], "ports": serve},
        {"from": [_namespaces([kuberay_namespace])], "ports": _ports(DASHBOARD_PORT, GCS_PORT, SERVE_PORT)},
        {"from": [_namespaces(sorted({operator_namespace, *metrics_namespaces}))], "ports": _ports(METRICS_PORT)},
    ]
    if deployment.spec.endpoint.visibility is Visibility.PRIVATE and private_source_ranges:
        ingress.append({"from": [{"ipBlock": {"cidr": cidr}} for cidr in private_source_ranges], "ports": serve})
    spec = {"podSelector": {"matchLabels": selector_labels(name)}, "policyTypes": ["Ingress"], "ingress": ingress}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(deployment, network_policy_name(name), spec),
        "spec": spec,
    }


def _ports(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


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
