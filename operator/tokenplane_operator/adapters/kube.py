"""Kubernetes objects through `kubernetes.aio`: get, create-or-merge-patch, list; API errors become domain errors."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

import aiohttp
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config
from kubernetes.aio.client.exceptions import ApiException

from tokenplane_operator.adapters.exporter import count_api_error
from tokenplane_operator.api.v1alpha1 import GROUP, PLURAL, VERSION
from tokenplane_operator.errors import TokenplaneError

__all__ = ["KubeObjects", "KubeRejectedError", "TransientKubeError"]

# Plural resource names of the kinds we own (no discovery round-trip for three fixed kinds).
_PLURALS = {
    "Service": "services",
    "NetworkPolicy": "networkpolicies",
    "RayService": "rayservices",
    "InferenceDeployment": PLURAL,
}
_MERGE_PATCH = "application/merge-patch+json"


class TransientKubeError(TokenplaneError):
    """The API server failed in a way that goes away (409 conflict, 429, 5xx, network); retry soon.

    Attributes:
        retry_after_s: Seconds the server asked us to wait, if it said.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class KubeRejectedError(TokenplaneError):
    """The API server refused the object (400/403/404/422); retrying the same request will not help."""


class KubeObjects:
    """Read and write the namespaced objects an InferenceDeployment owns, plus list InferenceDeployments.

    Writes are create-or-merge-patch rather than PUT or server-side apply: it works on every API server
    (and on kmock, which has no PUT), and the spec-hash annotation tells when a write is needed at all.

    Args:
        api_client: A configured `kubernetes.aio` ApiClient; `close` closes it.
    """

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._api = api_client

    @classmethod
    async def from_environment(cls) -> KubeObjects:
        """Connect in-cluster (service account), falling back to the local kubeconfig."""
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            await k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(_client(configuration))

    @classmethod
    def for_host(cls, host: str) -> KubeObjects:
        """Connect to an API server URL without credentials (local emulators and proxies)."""
        return cls(_client(k8s.Configuration(host=host.rstrip("/"))))

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._api.close()  # type: ignore[no-untyped-call]

    async def get(self, kind: str, api_version: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Read one object, or None when it does not exist.

        Raises:
            TransientKubeError: Retry soon.
            KubeRejectedError: The request is wrong.
        """
        try:
            return await self._request("GET", _path(kind, api_version, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _convert(exc) from exc

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create the object, or merge-patch it when it exists; returns what the server stored.

        Raises:
            TransientKubeError: Retry soon (including a 409 from a concurrent writer).
            KubeRejectedError: The server refused the object.
        """
        meta = obj["metadata"]
        kind, api_version, namespace, name = obj["kind"], obj["apiVersion"], meta["namespace"], meta["name"]
        try:
            return await self._request("POST", _path(kind, api_version, namespace), obj)
        except ApiException as exc:
            if exc.status != 409:
                raise _convert(exc) from exc
        try:
            return await self._request("PATCH", _path(kind, api_version, namespace, name), obj, _MERGE_PATCH)
        except ApiException as exc:
            raise _convert(exc) from exc

    async def delete(self, obj: Mapping[str, Any]) -> None:
        """Delete an object (already gone is fine); its dependents go with it (background propagation).

        Raises:
            TransientKubeError: Retry soon.
            KubeRejectedError: The server refused.
        """
        meta = obj["metadata"]
        try:
            await self._request("DELETE", _path(obj["kind"], obj["apiVersion"], meta["namespace"], meta["name"]))
        except ApiException as exc:
            if exc.status != 404:
                raise _convert(exc) from exc

    async def patch_status(
        self, kind: str, api_version: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch an object's `status` subresource.

        Raises:
            TransientKubeError: Retry soon.
            KubeRejectedError: The server refused the patch (e.g. the object is gone).
        """
        path = _path(kind, api_version, namespace, name) + "/status"
        try:
            return await self._request("PATCH", path, {"status": dict(status)}, _MERGE_PATCH)
        except ApiException as exc:
            raise _convert(exc) from exc

    async def list_inference_deployments(self) -> list[dict[str, Any]]:
        """List every InferenceDeployment in the cluster (pool sharing crosses namespaces).

        Raises:
            TransientKubeError: Retry soon.
            KubeRejectedError: The request is wrong (e.g. RBAC).
        """
        try:
            listing = await self._request("GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}")
        except ApiException as exc:
            raise _convert(exc) from exc
        return list(listing.get("items") or [])

    async def list_peerings(self, namespaces: list[str]) -> list[dict[str, Any]]:
        """List the kopf peering objects an operator watching these namespaces (none: every one) overlaps with.

        Every ClusterKopfPeering (a cluster-wide operator's), and the KopfPeerings of these namespaces (of every
        namespace when none are named). List items carry no kind of their own here: each gets its kind set.

        Raises:
            TransientKubeError: Retry soon.
            KubeRejectedError: The request is wrong (e.g. RBAC, or kopf's peering CRDs are not installed).
        """
        paths = [("ClusterKopfPeering", "/apis/kopf.dev/v1/clusterkopfpeerings")]
        paths += [("KopfPeering", f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings") for ns in namespaces] or [
            ("KopfPeering", "/apis/kopf.dev/v1/kopfpeerings")
        ]
        found = []
        for kind, path in paths:
            try:
                listing = await self._request("GET", path)
            except ApiException as exc:
                raise _convert(exc) from exc
            found += [{**item, "kind": kind} for item in listing.get("items") or []]
        return found

    async def list_pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """List the pods in a namespace that carry all these labels.

        Raises:
            TransientKubeError: Retry soon.
            KubeRejectedError: The request is wrong (e.g. RBAC).
        """
        selector = urllib.parse.quote(",".join(f"{key}={value}" for key, value in sorted(labels.items())))
        try:
            listing = await self._request("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")
        except ApiException as exc:
            raise _convert(exc) from exc
        return list(listing.get("items") or [])

    async def _request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        _, url, headers, body, _ = await self._api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = await self._api.call_api(method, url, header_params=headers, body=body)
            data = await response.read()  # type: ignore[no-untyped-call]
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            count_api_error("kubernetes", "Transient")
            raise TransientKubeError(f"Kubernetes API unreachable: {exc}") from exc
        if response.status >= 400:
            raise ApiException(status=response.status, reason=response.reason, body=data.decode(errors="replace"))
        return dict(json.loads(data)) if data else {}


def _client(configuration: k8s.Configuration) -> k8s.ApiClient:
    """Build an ApiClient that reaches the API server directly, or through the kubeconfig's proxy-url.

    The client's aiohttp session trusts the environment by default: every request then looks up ~/.netrc and the
    proxy variables in a worker thread, two thread hops per call (a fifth of the operator's CPU with 1,000 CRs).
    """
    configuration.client_session_kwargs = {"trust_env": False}
    return k8s.ApiClient(configuration)


def _path(kind: str, api_version: str, namespace: str, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{_PLURALS[kind]}"
    return f"{path}/{name}" if name else path


def _convert(exc: ApiException) -> TokenplaneError:
    """Map an API error to retry semantics (conflicts, throttling and server errors pass; the rest need a fix).

    Every call of this counts one failed Kubernetes call; a 404 that means "absent" never gets here.
    """
    status = exc.status or 0
    message = f"Kubernetes API {status} {exc.reason}: {exc.body or ''}".strip()
    if status in (409, 429) or status >= 500 or status == 0:
        count_api_error("kubernetes", "Throttled" if status == 429 else "Transient")
        headers = exc.headers or {}
        retry_after = headers.get("Retry-After") if hasattr(headers, "get") else None
        return TransientKubeError(message, retry_after_s=float(retry_after) if retry_after else None)
    count_api_error("kubernetes", "Rejected")
    return KubeRejectedError(message)
