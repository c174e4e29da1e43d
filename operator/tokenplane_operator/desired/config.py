"""Operator-wide render settings: what shapes every rendered object but belongs to no single CR."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RenderConfig"]


class RenderConfig(BaseModel):
    """Operator-wide settings that shape rendered objects but are not part of any CR."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    serving_image: str = Field(default="ghcr.io/tokenplane/serving:0.1.0", description="Ray head and worker image.")
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    ray_version: str = Field(default="2.60.0", description="Ray version inside serving_image.")
    cluster_domain: str = Field(default="cluster.local", description="DNS domain for the endpoint URL.")
    os_sku: Literal["AzureLinux", "Ubuntu"] = Field(
        default="AzureLinux", description="Node OS of managed pools whose CR has no nodePool.managed block."
    )
    head_cpu: str = Field(default="2", description="Ray head CPU request.")
    head_memory: str = Field(default="8Gi", description="Ray head memory request and limit.")
    worker_cpu_per_gpu: int = Field(default=6, ge=1, description="Worker CPU request per whole GPU held.")
    worker_memory_gib_per_gpu: int = Field(default=48, ge=1, description="Worker memory (GiB) per whole GPU held.")
    cpu_worker_base_memory_gib: int = Field(
        default=4, ge=1, description="CPU workers: memory on top of the KV cache (weights, Ray, Python)."
    )
    system_namespaces: tuple[str, ...] = Field(
        default=("kuberay-system", "tokenplane-system"),
        description="Namespaces of KubeRay and the operator, admitted to dashboard, metrics and serve ports.",
    )
