"""Operator settings from the environment (prefix TOKENPLANE_), validated once at start-up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tokenplane_operator.converge.quota import QuotaPolicy
from tokenplane_operator.desired.config import CPU_QUANTITY, MEMORY_QUANTITY, RenderConfig
from tokenplane_operator.desired.naming import METRICS_PORT
from tokenplane_operator.plan.allocatable import NodeOverhead
from tokenplane_operator.plan.catalog import host_size

__all__ = ["OperatorSettings"]


class OperatorSettings(BaseSettings):
    """Where the cluster is, what to run in it, and how often to look again.

    Every field reads from ``TOKENPLANE_<FIELD>`` (e.g. ``TOKENPLANE_SUBSCRIPTION_ID``); lists take JSON.
    Azure credentials are never settings: the operator uses ``DefaultAzureCredential`` (workload identity).
    """

    # Empty variables mean "not set": the chart renders every variable, set or not.
    model_config = SettingsConfigDict(env_prefix="TOKENPLANE_", env_ignore_empty=True, extra="ignore", frozen=True)

    subscription_id: str = Field(default="", description="Azure subscription of the AKS cluster.")
    resource_group: str = Field(default="", description="Resource group of the AKS cluster.")
    cluster_name: str = Field(default="", description="Name of the AKS managed cluster.")
    arm_endpoint: str | None = Field(
        default=None, description="ARM base URL override (sovereign clouds, emulators); None is public Azure."
    )
    arm_ca_bundle: str | None = Field(default=None, description="CA bundle to trust for ARM TLS (tests).")
    serving_image: str = Field(default="", description="Ray serving image; empty keeps the renderer's default.")
    ray_version: str = Field(default="", description="Ray version; empty keeps the renderer's default.")
    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch.")
    all_namespaces: bool = Field(default=False, description="Watch every namespace.")
    poll_interval_s: float = Field(default=30.0, gt=0, description="Timer: re-observe Azure and the RayService.")
    pool_cache_ttl_s: float = Field(
        default=10.0, ge=0, description="Share one agent-pool read between deployments for this long."
    )
    backoff_base_s: float = Field(default=15.0, gt=0, description="First retry delay after a 5xx or failed LRO.")
    backoff_max_s: float = Field(default=600.0, gt=0, description="Longest retry delay after repeated failures.")
    throttle_default_s: float = Field(default=30.0, gt=0, description="Delay after a 429 without Retry-After.")
    rejected_retry_s: float = Field(
        default=900.0, gt=0, description="Slow retry after QuotaExceeded/SkuNotAvailable, until a human acts."
    )
    metrics_interval_s: float = Field(
        default=60.0, gt=0, description="Timer: scrape the serving pods and update status.metrics."
    )
    metrics_port: int = Field(default=METRICS_PORT, ge=1, le=65535, description="Ray metrics port on serving pods.")
    max_concurrent_reconciles: int = Field(
        default=32, ge=1, le=1024, description="Reconciles (and scrapes) in flight at once; bounds memory and API load."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    health_port: int = Field(default=8080, ge=1, le=65535, description="Port of the /healthz liveness endpoint.")
    operator_metrics_port: int = Field(
        default=8081, ge=1, le=65535, description="Port of the operator's own Prometheus /metrics endpoint."
    )
    max_pool_nodes: int = Field(default=1000, ge=1, le=1000, description="Cap on a shared pool's maxCount.")
    peering_name: str = Field(
        default="",
        description="kopf peering object (ClusterKopfPeering, or KopfPeering per watched namespace) the replicas "
        "share; only the highest-priority live one reconciles. Empty: kopf's `default` object if present, else none.",
    )
    peering_priority: int | None = Field(
        default=None,
        ge=0,
        description="This replica's peering priority; unset: from its start time, the oldest replica highest.",
    )
    kuberay_namespace: str = Field(
        default="kuberay-system", description="Namespace of the KubeRay operator; NetworkPolicies admit it."
    )
    operator_namespace: str = Field(
        default="tokenplane", description="Namespace of this operator (the chart sets its release namespace)."
    )
    metrics_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces of the Prometheus that scrapes the serving pods (JSON list); every deployment's "
        "NetworkPolicy admits them to the metrics port.",
    )
    private_source_ranges: list[str] = Field(
        default_factory=lambda: ["10.224.0.0/12"],
        description="CIDRs admitted to private endpoints' serve port (JSON list); never 0.0.0.0/0.",
    )
    quota_policy: QuotaPolicy = Field(
        default=QuotaPolicy.BOUND,
        description="When the vCPU quota cannot cover maxCount: bound (create/grow the pool up to what fits) "
        "or block (create/grow nothing).",
    )
    node_daemonset_cpu_millis: int = Field(
        default=NodeOverhead.daemonset_cpu_millis,
        ge=0,
        description="CPU (millicores) the DaemonSets of a GPU node request; kept from the workers' requests.",
    )
    node_daemonset_memory_mib: int = Field(
        default=NodeOverhead.daemonset_memory_mib,
        ge=0,
        description="Memory (MiB) the DaemonSets of a GPU node request; kept from the workers' requests.",
    )
    node_os_disk_gib: int = Field(
        default=NodeOverhead.os_disk_gib,
        ge=30,
        le=2048,
        description="OS disk of GPU nodes (GiB): the kubelet's ephemeral storage, which holds downloaded weights.",
    )
    head_cpu: str = Field(
        default=RenderConfig.model_fields["head_cpu"].default,
        pattern=CPU_QUANTITY,
        description="CPU request of every Ray head (a Kubernetes quantity); the heads run on the system pool.",
    )
    head_memory: str = Field(
        default=RenderConfig.model_fields["head_memory"].default,
        pattern=MEMORY_QUANTITY,
        description="Memory request and limit of every Ray head (a Kubernetes quantity).",
    )
    system_node_vm_size: str = Field(
        default=RenderConfig.model_fields["system_node_vm_size"].default,
        description="VM size of the system pool the Ray heads run on; the head's requests must fit its allocatable.",
    )
    orphan_sweep_interval_s: float = Field(
        default=300.0,
        gt=0,
        description="How often the cluster's tokenplane-tagged agent pools are compared with the InferenceDeployments "
        "that use them, to release the ones none does (a crash between creating a pool and recording it).",
    )
    orphan_grace_s: float = Field(
        default=900.0,
        ge=0,
        description="How long a tagged pool must stay unused by every InferenceDeployment before the sweep frees it.",
    )
    quota_cache_ttl_s: float = Field(
        default=60.0, ge=0, description="Reuse one read of the region's vCPU quota and usage for this long."
    )

    @field_validator("system_node_vm_size")
    @classmethod
    def _known_system_size(cls, vm_size: str) -> str:
        host_size(vm_size)  # here, not only in RenderConfig, so the error names TOKENPLANE_SYSTEM_NODE_VM_SIZE
        return vm_size

    @model_validator(mode="after")
    def _scope(self) -> OperatorSettings:
        if self.all_namespaces and self.namespaces:
            raise ValueError("set either namespaces or all_namespaces, not both")
        if self.operator_metrics_port == self.health_port:
            raise ValueError(
                f"TOKENPLANE_OPERATOR_METRICS_PORT and TOKENPLANE_HEALTH_PORT are both {self.health_port}: "
                "give them different ports"
            )
        self.render_config()  # the render settings' own checks (e.g. no 0.0.0.0/0), at start-up
        return self

    @property
    def azure_configured(self) -> bool:
        """Whether enough is set to manage AKS agent pools (otherwise only BYO and local deployments work)."""
        return bool(self.subscription_id and self.resource_group and self.cluster_name)

    def render_config(self) -> RenderConfig:
        """Return the renderer's settings, keeping its defaults for whatever is unset here."""
        overrides = {"serving_image": self.serving_image, "ray_version": self.ray_version}
        return RenderConfig.model_validate(
            {key: value for key, value in overrides.items() if value}
            | {
                "kuberay_namespace": self.kuberay_namespace,
                "operator_namespace": self.operator_namespace,
                "metrics_namespaces": tuple(self.metrics_namespaces),
                "private_source_ranges": tuple(self.private_source_ranges),
                "node_daemonset_cpu_millis": self.node_daemonset_cpu_millis,
                "node_daemonset_memory_mib": self.node_daemonset_memory_mib,
                "node_os_disk_gib": self.node_os_disk_gib,
                "head_cpu": self.head_cpu,
                "head_memory": self.head_memory,
                "system_node_vm_size": self.system_node_vm_size,
            }
        )
