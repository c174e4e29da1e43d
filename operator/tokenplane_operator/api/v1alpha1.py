"""InferenceDeployment v1alpha1: spec and status models; they parse CR bodies and generate the CRD."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from tokenplane_operator.api.conditions import ConditionType, Phase, Reason

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "VERSION",
    "AcceleratorKind",
    "AuthMode",
    "AuthSpec",
    "Condition",
    "CpuSpec",
    "DisaggregationSpec",
    "Dtype",
    "EndpointSpec",
    "EndpointStatus",
    "EngineSpec",
    "ExistingNodePoolSpec",
    "HardwareSpec",
    "InferenceDeployment",
    "InferenceDeploymentSpec",
    "InferenceDeploymentStatus",
    "LatencyMetric",
    "LatencyTargetSpec",
    "LoraAdapterSpec",
    "LoraSpec",
    "ManagedNodePoolSpec",
    "MetricsStatus",
    "MigProfile",
    "ModelSpec",
    "NodePoolSpec",
    "NodePoolStatus",
    "PlanStatus",
    "Quantization",
    "RateLimitSpec",
    "ReplicaStatus",
    "RoutingPolicy",
    "RoutingSpec",
    "ScaleToZeroSpec",
    "ScalingSpec",
    "SecretKeyRef",
    "SourceScheme",
    "SpeculativeDecodingSpec",
    "SpeculativeMethod",
    "SpotSpec",
    "UpgradeSpec",
    "UpgradeStrategy",
    "Visibility",
    "parse_source",
]

GROUP = "tokenplane.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceDeployment"
PLURAL = "inferencedeployments"
SHORT_NAME = "infd"


def _problem(field: str, message: str) -> PydanticCustomError:
    """Build a validation error that names a field relative to the model that raised it."""
    return PydanticCustomError("tokenplane", "{message}", {"field": field, "message": message})


class _Model(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
    )


# --- enums -----------------------------------------------------------------------------------------------


class Dtype(StrEnum):
    """Weight and activation dtype handed to vLLM."""

    AUTO = "auto"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class Quantization(StrEnum):
    """Weight quantization; the seeds' first cost lever (quantize before sharding)."""

    NONE = "none"
    FP8 = "fp8"
    AWQ = "awq"
    GPTQ = "gptq"
    INT8 = "int8"
    BITSANDBYTES = "bitsandbytes"


class SpeculativeMethod(StrEnum):
    """How draft tokens are proposed."""

    NGRAM = "ngram"
    DRAFT_MODEL = "draftModel"
    EAGLE = "eagle"
    MTP = "mtp"


class AcceleratorKind(StrEnum):
    """Where replicas run: GPUs on AKS, or CPU for local runs and tests."""

    GPU = "gpu"
    CPU = "cpu"


class MigProfile(StrEnum):
    """AKS `gpuInstanceProfile` values; the slice size is the GPU model's plain `xg` profile."""

    MIG1G = "MIG1g"
    MIG2G = "MIG2g"
    MIG3G = "MIG3g"
    MIG4G = "MIG4g"
    MIG7G = "MIG7g"


class LatencyMetric(StrEnum):
    """Which latency a P95 target applies to."""

    TTFT = "ttft"
    E2E = "e2e"


class RoutingPolicy(StrEnum):
    """How requests pick a replica."""

    POWER_OF_TWO = "powerOfTwo"
    PREFIX_AFFINITY = "prefixAffinity"
    SESSION_AFFINITY = "sessionAffinity"


class AuthMode(StrEnum):
    """How callers authenticate to the endpoint."""

    NONE = "none"
    API_KEY = "apiKey"
    ENTRA_ID = "entraId"


class Visibility(StrEnum):
    """Who can reach the endpoint."""

    CLUSTER = "cluster"  # ClusterIP, reachable inside the cluster only
    PRIVATE = "private"  # Azure internal load balancer: the VNet, never the internet


class SourceScheme(StrEnum):
    """Where model weights (and adapters) come from."""

    HUGGING_FACE = "hf"
    AZURE_BLOB = "azureBlob"
    PVC = "pvc"
    LOCAL = "local"


# --- model source ----------------------------------------------------------------------------------------

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_BLOB_HTTPS = re.compile(r"^https://[a-z0-9]{3,24}\.blob\.core\.(windows\.net|chinacloudapi\.cn|usgovcloudapi\.net)/.+")
_AZ = re.compile(r"^az://[a-z0-9]{3,24}/[a-z0-9][a-z0-9-]{2,62}(/.*)?$")
_PVC = re.compile(r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$")
SOURCE_FORMS = (
    "hf://ORG/NAME or ORG/NAME (Hugging Face), az://ACCOUNT/CONTAINER/PATH or "
    "https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH (Azure Blob), pvc://CLAIM/PATH, "
    "or an absolute local path (/models/x or file:///models/x)"
)


def parse_source(uri: str) -> tuple[SourceScheme, str]:
    """Classify a model or adapter source URI.

    Args:
        uri: the `source` string from the spec.

    Returns:
        The scheme and the location within it (HF id, blob URL, `claim/path`, or local path).

    Raises:
        ValueError: when the URI matches none of the supported forms.
    """
    if uri.startswith("hf://"):
        rest = uri.removeprefix("hf://")
        if _HF_ID.match(rest):
            return SourceScheme.HUGGING_FACE, rest
    elif uri.startswith(("az://", "https://")):
        if _AZ.match(uri) or _BLOB_HTTPS.match(uri):
            return SourceScheme.AZURE_BLOB, uri
    elif uri.startswith("pvc://"):
        if _PVC.match(uri):
            return SourceScheme.PVC, uri.removeprefix("pvc://")
    elif uri.startswith("file://"):
        path = uri.removeprefix("file://")
        if path.startswith("/"):
            return SourceScheme.LOCAL, path
    elif uri.startswith(("/", "./", "../")):
        return SourceScheme.LOCAL, uri
    elif _HF_ID.match(uri) and "://" not in uri:
        return SourceScheme.HUGGING_FACE, uri
    raise ValueError(f"unsupported source {uri!r}; use {SOURCE_FORMS}")


def _quantization_needs_gpu(quantization: Quantization) -> bool:
    # vLLM's CPU backend runs unquantized (and some int8/AWQ paths); fp8/gptq/bitsandbytes kernels are GPU-only.
    return quantization in (Quantization.FP8, Quantization.GPTQ, Quantization.BITSANDBYTES)


class SecretKeyRef(_Model):
    """A key in a Secret in the InferenceDeployment's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret.")
    key: str = Field(default="token", min_length=1, description="Key within the Secret.")


class ModelSpec(_Model):
    """What to serve."""

    source: str = Field(
        min_length=1,
        description=f"Where the weights come from: {SOURCE_FORMS}.",
    )
    served_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="Model name clients send in requests; defaults to the InferenceDeployment's name.",
    )
    revision: str | None = Field(default=None, description="Git revision (branch, tag or commit) for HF sources.")
    dtype: Dtype = Field(default=Dtype.AUTO, description="Weight dtype; auto takes the checkpoint's.")
    quantization: Quantization = Field(
        default=Quantization.NONE,
        description="Weight quantization: none, fp8, awq, gptq, int8 or bitsandbytes. Quantize before sharding.",
    )
    max_model_len: int | None = Field(
        default=None,
        gt=0,
        le=10_485_760,
        description="Longest context (prompt + output tokens) a request may use; sizes the KV cache.",
    )
    access_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret holding a token to read the weights (HF token or blob SAS)."
    )

    @model_validator(mode="after")
    def _source_is_supported(self) -> ModelSpec:
        try:
            parse_source(self.source)
        except ValueError as err:
            raise _problem("source", str(err)) from None
        return self


class SpeculativeDecodingSpec(_Model):
    """Speculative decoding: a cheap proposer drafts tokens the target model verifies."""

    method: SpeculativeMethod = Field(description="ngram, draftModel, eagle or mtp.")
    draft_model: str | None = Field(
        default=None, description=f"Draft model source for draftModel and eagle ({SOURCE_FORMS})."
    )
    num_speculative_tokens: int = Field(default=4, ge=1, le=16, description="Tokens drafted per step.")
    prompt_lookup_max: int | None = Field(default=None, ge=1, le=16, description="ngram: longest n-gram to match.")

    @model_validator(mode="after")
    def _draft_model_when_needed(self) -> SpeculativeDecodingSpec:
        needs_draft = self.method in (SpeculativeMethod.DRAFT_MODEL, SpeculativeMethod.EAGLE)
        if needs_draft and not self.draft_model:
            raise _problem("draftModel", f"method {self.method.value} needs a draftModel source")
        if self.draft_model:
            try:
                parse_source(self.draft_model)
            except ValueError as err:
                raise _problem("draftModel", str(err)) from None
        return self


class EngineSpec(_Model):
    """vLLM engine settings."""

    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="GPUs a replica's layers are split over.")
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64, description="Stages across nodes.")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0.0, le=0.99, description="Fraction of GPU memory vLLM may use (weights + KV cache)."
    )
    enable_prefix_caching: bool = Field(default=True, description="Reuse KV cache of shared prompt prefixes.")
    enable_chunked_prefill: bool = Field(default=True, description="Interleave long prefills with decode steps.")
    max_num_seqs: int = Field(
        default=64, ge=1, le=4096, description="Most sequences a replica decodes at once; sizes backpressure."
    )
    speculative_decoding: SpeculativeDecodingSpec | None = Field(default=None, description="Speculative decoding.")
    enforce_eager: bool = Field(default=False, description="Disable CUDA graphs (faster start, slower decode).")
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra vLLM engine arguments passed through as-is (snake_case AsyncEngineArgs names).",
    )


class LoraAdapterSpec(_Model):
    """One LoRA adapter served by name on the base model."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$",
        description="Model name clients send.",
    )
    source: str = Field(min_length=1, description=f"Where the adapter comes from: {SOURCE_FORMS}.")

    @model_validator(mode="after")
    def _source_is_supported(self) -> LoraAdapterSpec:
        try:
            parse_source(self.source)
        except ValueError as err:
            raise _problem("source", str(err)) from None
        return self


class LoraSpec(_Model):
    """Multi-LoRA: one base model, many adapters loaded on demand."""

    adapters: list[LoraAdapterSpec] = Field(default_factory=list, description="Adapters served by name.")
    max_adapters_per_replica: int = Field(default=8, ge=1, le=256, description="LRU cap of loaded adapters.")
    max_rank: int = Field(default=16, description="Largest adapter rank: 1, 8, 16, 32, 64, 128, 256, 320 or 512.")

    @model_validator(mode="after")
    def _unique_names_and_rank(self) -> LoraSpec:
        seen: set[str] = set()
        for index, adapter in enumerate(self.adapters):
            if adapter.name in seen:
                raise _problem(f"adapters[{index}].name", f"adapter name {adapter.name!r} is used twice")
            seen.add(adapter.name)
        if self.max_rank not in (1, 8, 16, 32, 64, 128, 256, 320, 512):
            raise _problem("maxRank", f"{self.max_rank} is not a vLLM LoRA rank; use 8, 16, 32, 64 or 128")
        return self


class SpotSpec(_Model):
    """Azure Spot VMs: cheaper, evictable."""

    enabled: bool = Field(default=False, description="Use Spot priority for the node pool.")
    max_price: float | None = Field(
        default=None, description="Highest hourly USD price; -1 (default) means up to the on-demand price."
    )

    @model_validator(mode="after")
    def _price_is_positive_or_minus_one(self) -> SpotSpec:
        if self.max_price is not None and self.max_price != -1 and self.max_price <= 0:
            raise _problem("maxPrice", f"{self.max_price} is invalid: use a price > 0, or -1 for on-demand")
        return self


class ManagedNodePoolSpec(_Model):
    """An AKS agent pool tokenplane creates, shares by hardware class, and deletes when unused."""

    min_nodes: int = Field(default=0, ge=0, le=1000, description="Cluster-autoscaler lower bound.")
    max_nodes: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Cluster-autoscaler upper bound; derived from maxReplicas if unset.",
    )
    os_sku: Literal["AzureLinux", "Ubuntu"] = Field(default="AzureLinux", description="Node OS.")

    @model_validator(mode="after")
    def _min_le_max(self) -> ManagedNodePoolSpec:
        if self.max_nodes is not None and self.min_nodes > self.max_nodes:
            raise _problem(
                "minNodes",
                f"minNodes ({self.min_nodes}) exceeds maxNodes ({self.max_nodes}); lower it or raise maxNodes",
            )
        return self


class ExistingNodePoolSpec(_Model):
    """Bring your own nodes: schedule on an existing pool selected by label; no pool is managed."""

    node_selector: dict[str, str] = Field(
        min_length=1, description="Node labels that select the pool, e.g. {agentpool: gpu}."
    )
    tolerations_for_taints: list[str] = Field(
        default_factory=list,
        description="Taints (key=value:Effect) the pool carries, tolerated by the workers.",
    )


class NodePoolSpec(_Model):
    """Which nodes serve: a managed pool (default) or an existing one."""

    managed: ManagedNodePoolSpec | None = Field(default=None, description="A pool tokenplane manages.")
    existing: ExistingNodePoolSpec | None = Field(default=None, description="An existing pool, selected by label.")

    @model_validator(mode="after")
    def _one_of(self) -> NodePoolSpec:
        if self.managed is not None and self.existing is not None:
            raise _problem("existing", "set either managed or existing, not both")
        return self


class CpuSpec(_Model):
    """CPU replicas, for local runs and tests."""

    cpus_per_replica: float = Field(default=1.0, gt=0, le=256, description="Ray CPUs reserved per replica.")
    kv_cache_gib: int = Field(
        default=1,
        ge=1,
        le=1024,
        alias="kvCacheGiB",
        description="KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE).",
    )


class HardwareSpec(_Model):
    """Where replicas run."""

    accelerator: AcceleratorKind = Field(default=AcceleratorKind.GPU, description="gpu (AKS) or cpu (local runs).")
    vm_size: str = Field(
        default="auto",
        pattern=r"^(auto|Standard_[A-Za-z0-9_]+)$",
        description="AKS VM size such as Standard_NC40ads_H100_v5, or auto to let the capacity planner choose.",
    )
    gpus_per_replica: int = Field(default=1, ge=1, le=64, description="Whole GPUs per replica (TP x PP).")
    mig_profile: MigProfile | None = Field(
        default=None,
        description="MIG slice per replica (MIG1g..MIG7g); the pool is created with this profile.",
    )
    gpu_fraction: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Share one GPU between replicas (Ray fractional GPU: packing, not isolation).",
    )
    spot: SpotSpec = Field(default_factory=SpotSpec, description="Spot VMs.")
    zones: list[Literal["1", "2", "3"]] = Field(default_factory=list, description="Availability zones.")
    node_pool: NodePoolSpec = Field(default_factory=NodePoolSpec, description="Managed or existing nodes.")
    cpu: CpuSpec = Field(default_factory=CpuSpec, description="CPU replica settings (accelerator cpu).")

    @model_validator(mode="after")
    def _consistent(self) -> HardwareSpec:
        if self.mig_profile is not None and self.gpu_fraction is not None:
            raise _problem("gpuFraction", "use either migProfile (isolated slice) or gpuFraction (shared), not both")
        if self.mig_profile is not None and self.gpus_per_replica != 1:
            raise _problem("gpusPerReplica", "a MIG replica uses exactly one slice; set gpusPerReplica to 1")
        if self.gpu_fraction is not None and self.gpus_per_replica != 1:
            raise _problem("gpusPerReplica", "a fractional replica shares one GPU; set gpusPerReplica to 1")
        if self.accelerator is AcceleratorKind.CPU:
            for field, value in (("migProfile", self.mig_profile), ("gpuFraction", self.gpu_fraction)):
                if value is not None:
                    raise _problem(field, f"{field} needs accelerator gpu; remove it for a CPU run")
            if self.vm_size != "auto":
                raise _problem("vmSize", "a CPU run provisions no VM; remove vmSize or set accelerator gpu")
            if self.node_pool.managed is not None or self.node_pool.existing is not None:
                raise _problem("nodePool", "a CPU run uses no node pool; remove nodePool")
        return self


class ScaleToZeroSpec(_Model):
    """Scale to zero replicas when idle; the first request waits for a cold start."""

    enabled: bool = Field(default=False, description="Allow zero replicas.")
    idle_seconds: int = Field(default=900, ge=0, le=86_400, description="Idle time before the last replica goes.")


class LatencyTargetSpec(_Model):
    """A P95 latency objective the autoscaler adds replicas to meet."""

    metric: LatencyMetric = Field(default=LatencyMetric.TTFT, description="ttft or e2e.")
    p95_milliseconds: int = Field(gt=0, le=600_000, description="Target P95 in milliseconds.")


class ScalingSpec(_Model):
    """Autoscaling on queue depth and P95 latency."""

    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas (0 needs scaleToZero).")
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Most replicas; bounds the node pool too.")
    target_queue_depth: int = Field(
        default=8,
        ge=1,
        le=10_000,
        description="Waiting requests (Serve-queued + engine-waiting) per replica before scaling out.",
    )
    latency_target: LatencyTargetSpec | None = Field(default=None, description="Optional P95 latency target.")
    scale_to_zero: ScaleToZeroSpec = Field(default_factory=ScaleToZeroSpec, description="Scale to zero when idle.")
    upscale_delay_seconds: int = Field(default=30, ge=0, le=3600, description="Sustained demand before scaling up.")
    downscale_delay_seconds: int = Field(default=600, ge=0, le=86_400, description="Idle time before scaling down.")

    @model_validator(mode="after")
    def _bounds(self) -> ScalingSpec:
        if self.min_replicas > self.max_replicas:
            raise _problem(
                "minReplicas",
                f"minReplicas ({self.min_replicas}) exceeds maxReplicas ({self.max_replicas}); "
                "raise maxReplicas or lower minReplicas",
            )
        if self.min_replicas == 0 and not self.scale_to_zero.enabled:
            raise _problem("minReplicas", "minReplicas 0 needs scaleToZero.enabled: true (or set minReplicas >= 1)")
        return self


class RoutingSpec(_Model):
    """Request routing between replicas."""

    policy: RoutingPolicy = Field(
        default=RoutingPolicy.POWER_OF_TWO, description="powerOfTwo, prefixAffinity or sessionAffinity."
    )
    session_header: str = Field(
        default="x-session-id",
        pattern=r"^[A-Za-z0-9-]+$",
        description="Header whose value pins a session to a replica (sessionAffinity).",
    )


class DisaggregationSpec(_Model):
    """Prefill/decode disaggregation: separate replica pools for each phase (GPU KV connector needed)."""

    enabled: bool = Field(default=False, description="Split prefill and decode.")
    prefill_replicas: int = Field(default=1, ge=1, le=1000, description="Prefill replicas.")
    decode_replicas: int = Field(default=1, ge=1, le=1000, description="Decode replicas.")
    kv_connector: str = Field(default="NixlConnector", description="vLLM KV transfer connector.")


class AuthSpec(_Model):
    """Endpoint authentication."""

    mode: AuthMode = Field(default=AuthMode.API_KEY, description="apiKey, entraId or none.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret whose values are accepted API keys (several keys allow rotation); "
        "defaults to the Secret <name>-api-keys.",
    )
    entra_tenant_id: str | None = Field(default=None, description="Entra ID tenant whose tokens are accepted.")
    entra_audience: str | None = Field(default=None, description="Audience (aud) the tokens must carry.")

    @model_validator(mode="after")
    def _mode_fields(self) -> AuthSpec:
        if self.mode is AuthMode.ENTRA_ID:
            for field, value in (
                ("entraTenantId", self.entra_tenant_id),
                ("entraAudience", self.entra_audience),
            ):
                if not value:
                    raise _problem(field, f"mode entraId needs {field}")
        return self


class RateLimitSpec(_Model):
    """Per-caller limits."""

    requests_per_minute: int | None = Field(default=None, ge=1, description="Requests per minute per caller.")
    tokens_per_minute: int | None = Field(default=None, ge=1, description="Tokens per minute per caller.")


class EndpointSpec(_Model):
    """How clients reach the OpenAI-compatible API."""

    auth: AuthSpec = Field(default_factory=AuthSpec, description="Authentication.")
    visibility: Visibility = Field(
        default=Visibility.CLUSTER,
        description="cluster (ClusterIP) or private (Azure internal load balancer).",
    )
    allowed_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces whose pods may call the endpoint (NetworkPolicy); empty = own.",
    )
    rate_limits: RateLimitSpec = Field(default_factory=RateLimitSpec, description="Rate limits.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the Service.")


class UpgradeStrategy(StrEnum):
    """How a change that needs a new Ray cluster (image, resources, nodes) is rolled out."""

    IN_PLACE = "inPlace"  # recreate: a short outage, never more GPUs than the spec asks for
    BLUE_GREEN = "blueGreen"  # a second cluster takes over: no outage, twice the GPUs while both run


class UpgradeSpec(_Model):
    """Rollout of changes. Engine, scaling and routing changes always apply in place without a new cluster."""

    strategy: UpgradeStrategy = Field(
        default=UpgradeStrategy.IN_PLACE,
        description="inPlace (recreate, no extra GPUs) or blueGreen (no downtime, twice the GPUs during the switch).",
    )


class InferenceDeploymentSpec(_Model):
    """Desired state of an InferenceDeployment."""

    model: ModelSpec = Field(description="The model to serve.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engine settings.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapters.")
    hardware: HardwareSpec = Field(default_factory=HardwareSpec, description="Where replicas run.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Autoscaling.")
    routing: RoutingSpec = Field(default_factory=RoutingSpec, description="Routing policy.")
    disaggregation: DisaggregationSpec = Field(
        default_factory=DisaggregationSpec, description="Prefill/decode disaggregation."
    )
    endpoint: EndpointSpec = Field(default_factory=EndpointSpec, description="Endpoint.")
    upgrade: UpgradeSpec = Field(default_factory=UpgradeSpec, description="How changes roll out.")

    @model_validator(mode="after")
    def _cross_field(self) -> InferenceDeploymentSpec:
        engine, hardware = self.engine, self.hardware
        shards = engine.tensor_parallel_size * engine.pipeline_parallel_size
        if hardware.accelerator is AcceleratorKind.CPU:
            if shards != 1:
                raise _problem("engine.tensorParallelSize", "a CPU replica runs unsharded; set TP and PP to 1")
            if self.disaggregation.enabled:
                raise _problem("disaggregation.enabled", "prefill/decode split needs GPUs and a KV connector")
            if _quantization_needs_gpu(self.model.quantization):
                raise _problem("model.quantization", f"{self.model.quantization.value} needs a GPU; use none")
        elif shards != hardware.gpus_per_replica:
            raise _problem(
                "hardware.gpusPerReplica",
                f"gpusPerReplica ({hardware.gpus_per_replica}) must equal tensorParallelSize x "
                f"pipelineParallelSize ({engine.tensor_parallel_size} x {engine.pipeline_parallel_size} = {shards})",
            )
        if self.disaggregation.enabled and self.scaling.scale_to_zero.enabled:
            raise _problem("scaling.scaleToZero.enabled", "scale-to-zero is not supported with disaggregation")
        return self


# --- status ----------------------------------------------------------------------------------------------


class Condition(_Model):
    """A metav1.Condition: one aspect of the deployment's state."""

    type: ConditionType = Field(description="Validated, NodePoolReady, ServingReady, Ready, Reconciling or Stalled.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: Reason = Field(description="PascalCase reason from a closed vocabulary.")
    message: str = Field(default="", description="Human-readable detail, naming fields, quotas and regions.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int = Field(default=0, ge=0, description="metadata.generation this condition describes.")


class PlanStatus(_Model):
    """The placement the capacity planner resolved (what vmSize auto became)."""

    vm_size: str | None = Field(default=None, description="AKS VM size.")
    gpus_per_replica: float | None = Field(default=None, description="GPUs (or slices) per replica.")
    mig_profile: str | None = Field(default=None, description="MIG profile, if any.")
    tensor_parallel_size: int | None = Field(default=None, description="Tensor parallel size.")
    pipeline_parallel_size: int | None = Field(default=None, description="Pipeline parallel size.")
    weights_bytes: int | None = Field(default=None, description="Weight bytes at the chosen precision.")
    kv_bytes_per_token: int | None = Field(default=None, description="KV cache bytes per token.")
    fits: bool | None = Field(default=None, description="Whether weights + KV fit the placement.")
    usd_per_million_output_tokens: float | None = Field(default=None, description="Estimate at list price.")
    reasons: list[str] = Field(default_factory=list, description="Why this placement.")


class NodePoolStatus(_Model):
    """The AKS agent pool serving this deployment."""

    name: str | None = Field(default=None, description="Agent pool name (shared by hardware class).")
    vm_size: str | None = Field(default=None, description="VM size.")
    provisioning_state: str | None = Field(default=None, description="Azure provisioningState.")
    min_count: int | None = Field(default=None, description="Autoscaler lower bound.")
    max_count: int | None = Field(default=None, description="Autoscaler upper bound.")
    managed: bool | None = Field(default=None, description="False when the pool is brought by the user.")


class EndpointStatus(_Model):
    """Where to send requests."""

    url: str | None = Field(default=None, description="Base URL of the OpenAI-compatible API.")
    model: str | None = Field(default=None, description="Model name to send.")


class ReplicaStatus(_Model):
    """Replica counts."""

    desired: int | None = Field(default=None, description="Replicas the autoscaler wants.")
    ready: int | None = Field(default=None, description="Replicas that answered a real completion.")


class MetricsStatus(_Model):
    """The seeds' profitability numbers, from the serving metrics."""

    tokens_per_second_per_gpu: float | None = Field(default=None, description="Output tokens/s per GPU.")
    tokens_per_gpu_hour: float | None = Field(default=None, description="Output tokens per GPU-hour.")
    p95_latency_ms: float | None = Field(default=None, description="P95 end-to-end latency (ms).")
    p99_latency_ms: float | None = Field(default=None, description="P99 end-to-end latency (ms).")
    p95_ttft_ms: float | None = Field(default=None, description="P95 time to first token (ms).")
    gpu_utilization: float | None = Field(default=None, description="GPU utilization, 0..1.")
    output_input_token_ratio: float | None = Field(default=None, description="Output tokens / input tokens.")
    kv_cache_hit_rate: float | None = Field(default=None, description="Prefix-cache hit rate, 0..1.")
    updated_at: datetime | None = Field(default=None, description="When these were computed.")


class InferenceDeploymentStatus(_Model):
    """Observed state of an InferenceDeployment, computed from a snapshot."""

    # kopf keeps its own bookkeeping in status; tolerate what we did not declare rather than fail parsing.
    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(default=None, description="metadata.generation last reconciled.")
    phase: Phase | None = Field(default=None, description="Pending, Provisioning, Deploying, Ready, Degraded, ...")
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")
    plan: PlanStatus | None = Field(default=None, description="Resolved placement.")
    node_pool: NodePoolStatus | None = Field(default=None, description="Node pool state.")
    endpoint: EndpointStatus | None = Field(default=None, description="Endpoint.")
    replicas: ReplicaStatus | None = Field(default=None, description="Replica counts.")
    metrics: MetricsStatus | None = Field(default=None, description="Profitability metrics.")


class InferenceDeployment(_Model):
    """An LLM served on AKS GPUs (or locally on CPU) through Ray Serve and vLLM."""

    model_config = ConfigDict(extra="ignore")  # the API server adds fields to the envelope

    api_version: Annotated[Literal["tokenplane.io/v1alpha1"], Field(alias="apiVersion")] = "tokenplane.io/v1alpha1"
    kind: Literal["InferenceDeployment"] = "InferenceDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: InferenceDeploymentSpec = Field(description="Desired state.")
    status: InferenceDeploymentStatus | None = Field(default=None, description="Observed state.")

    @property
    def name(self) -> str:
        """The object's name (metadata.name), or `default` for an unnamed local file."""
        return str(self.metadata.get("name") or "default")

    @property
    def namespace(self) -> str:
        """The object's namespace, `default` when unset."""
        return str(self.metadata.get("namespace") or "default")

    @property
    def served_name(self) -> str:
        """The model name clients send."""
        return self.spec.model.served_name or self.name
