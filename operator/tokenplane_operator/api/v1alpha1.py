"""InferenceDeployment v1alpha1: spec and status models; they parse CR bodies and generate the CRD."""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, cast

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from tokenplane_operator.api.conditions import ConditionType, Phase, Reason
from tokenplane_operator.api.names import DNS1035_LABEL, DNS1123_LABEL, MAX_NAME_LENGTH
from tokenplane_serving.args import (
    MANAGED_ENGINE_KEYS,
    MIN_MAX_MODEL_LEN,
    KvConnector,
    LoraRank,
    managed_keys_in,
    server_engine_args,
    unknown_engine_args,
)
from tokenplane_serving.blob_uri import BLOB_URI_FORMS, BLOB_URI_REGEXES, is_blob_uri, parse_blob_uri
from tokenplane_serving.schedule import ScheduleWindow

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "ROOT_RULES",
    "SHORT_NAME",
    "TAINT_PATTERN",
    "VERSION",
    "AcceleratorKind",
    "AuthMode",
    "AuthSpec",
    "BatchSpec",
    "CelRule",
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
    "ScalingStatus",
    "ScheduleWindowSpec",
    "SecretKeyRef",
    "SourceScheme",
    "SpeculativeDecodingSpec",
    "SpeculativeMethod",
    "SpotSpec",
    "UpgradeSpec",
    "UpgradeStrategy",
    "Visibility",
    "cel_rules",
    "parse_source",
    "pattern_hint",
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


@dataclass(frozen=True)
class CelRule:
    """A cross-field rule the API server enforces by itself (`x-kubernetes-validations` in the CRD).

    Each rule sits next to the pydantic validator that enforces the same thing for `tokenplane validate` and
    the operator; tests evaluate both on the same cases and require the same verdict. `self` is the object the
    rule is declared on, after the API server pruned nulls and applied the schema's defaults.
    """

    rule: str
    message: str
    field_path: str | None = None  # relative to the object, e.g. `.minReplicas`

    def schema(self) -> dict[str, str]:
        """Return the CRD form: rule, message and fieldPath."""
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


def _cel(*rules: CelRule) -> ConfigDict:
    schemas: list[Any] = [rule.schema() for rule in rules]
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": schemas})


def cel_rules(model: type[BaseModel]) -> list[CelRule]:
    """Return the CEL rules declared on a model (not those of its fields' models)."""
    extra = model.model_config.get("json_schema_extra")
    declared = cast(
        "list[dict[str, str]]", extra.get("x-kubernetes-validations", []) if isinstance(extra, dict) else []
    )
    return [CelRule(r["rule"], r["message"], r.get("fieldPath")) for r in declared]


def _or_default(parent: str, model: type[BaseModel], field: str) -> str:
    """CEL for `self.<parent>.<field>` that falls back to the field's default when the parent block is absent.

    Sub-blocks with a default_factory have no schema default, so the API server leaves them absent.
    """
    info = model.model_fields[field]
    default = info.default.value if isinstance(info.default, StrEnum) else info.default
    literal = f"'{default}'" if isinstance(default, str) else str(default).lower()
    alias = info.alias or field
    return f"(has(self.{parent}) ? self.{parent}.{alias} : {literal})"


_PATTERN_HINTS: dict[str, str] = {}


def _pattern(regex: str, what: str) -> str:
    """Register a human description of a pattern, shown instead of the regex when a value does not match."""
    _PATTERN_HINTS[regex] = what
    return regex


def pattern_hint(regex: str) -> str | None:
    """Return what a field pattern means, in words (None for an unregistered pattern)."""
    return _PATTERN_HINTS.get(regex)


_DNS_LABEL = _pattern(
    DNS1123_LABEL, "a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"
)
_DNS_SUBDOMAIN = _pattern(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    "a Kubernetes object name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
)
_LABEL_KEY = (
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
_LABEL_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?"
_LABEL_KEY_MAX_LENGTH = 253 + 1 + 63  # DNS subdomain prefix, '/', name
TAINT_PATTERN = _pattern(
    rf"^{_LABEL_KEY}(={_LABEL_VALUE})?:(NoSchedule|PreferNoSchedule|NoExecute)$",
    "a taint written key=value:Effect or key:Effect, with Effect NoSchedule, PreferNoSchedule or NoExecute "
    "(for example sku=gpu:NoSchedule)",
)
_LABEL_VALUE_PATTERN = _pattern(
    rf"^{_LABEL_VALUE}$",
    "a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
)


class _Model(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown fields rejected, finite numbers only."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
        allow_inf_nan=False,
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


class CacheQualify(StrEnum):
    """Which requests the response cache answers."""

    DETERMINISTIC = "deterministic"  # temperature 0 or a fixed seed: the same request gets the same answer
    ALL = "all"  # every request, sampled ones too (the user accepts one answer per distinct request)


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

# One regex per accepted form, by scheme; the fields' pattern (and so the CRD) is their union, and parse_source
# classifies with the same regexes. ASCII classes only: the API server's RE2 and pydantic's regex agree on them.
_HF_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+"
_SOURCE_REGEXES: tuple[tuple[SourceScheme, str, str], ...] = (  # scheme, regex, prefix to strip for the location
    (SourceScheme.HUGGING_FACE, rf"hf://{_HF_ID}", "hf://"),
    *((SourceScheme.AZURE_BLOB, regex, "") for regex in BLOB_URI_REGEXES),  # one grammar with the serving loader
    (SourceScheme.PVC, r"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?", "pvc://"),
    (SourceScheme.LOCAL, r"file:///.*", "file://"),
    (SourceScheme.LOCAL, r"(/|\./|\.\./).*", ""),
    (SourceScheme.HUGGING_FACE, _HF_ID, ""),
)
SOURCE_FORMS = (
    f"hf://ORG/NAME or ORG/NAME (Hugging Face), {BLOB_URI_FORMS} (Azure Blob), pvc://CLAIM/PATH, "
    "or an absolute local path (/models/x or file:///models/x)"
)
SOURCE_PATTERN = _pattern("^(" + "|".join(regex for _, regex, _ in _SOURCE_REGEXES) + ")$", SOURCE_FORMS)
# The serving contract loads an adapter from a directory only (vLLM's LoRA loader does not download from the Hub):
# the same forms without Hugging Face.
_ADAPTER_SOURCE_FORMS = (
    f"{BLOB_URI_FORMS} (Azure Blob), pvc://CLAIM/PATH, or an absolute local path (/adapters/x or file:///adapters/x); "
    "not Hugging Face: copy the adapter to one of those"
)
_ADAPTER_SOURCE_PATTERN = _pattern(
    "^(" + "|".join(regex for scheme, regex, _ in _SOURCE_REGEXES if scheme is not SourceScheme.HUGGING_FACE) + ")$",
    _ADAPTER_SOURCE_FORMS,
)
_SOURCE_MAX_LENGTH = 2048


def _blob_details(value: str) -> str:
    # What the pattern cannot say about an Azure Blob source: the container's length, no '..' in the path.
    if is_blob_uri(value):
        parse_blob_uri(value)
    return value


# A model, adapter or draft model source: the pattern (also in the CRD), then the blob details.
Source = Annotated[str, AfterValidator(_blob_details)]


def parse_source(uri: str) -> tuple[SourceScheme, str]:
    """Classify a model or adapter source URI.

    Args:
        uri: the `source` string from the spec.

    Returns:
        The scheme and the location within it (HF id, blob URL, `claim/path`, or local path).

    Raises:
        ValueError: when the URI matches none of the supported forms.
    """
    for scheme, regex, prefix in _SOURCE_REGEXES:
        if re.fullmatch(regex, uri):
            return scheme, uri.removeprefix(prefix)
    raise ValueError(f"unsupported source {uri!r}; use {SOURCE_FORMS}")


# vLLM's CPU backend runs unquantized (and some int8/AWQ paths); fp8/gptq/bitsandbytes kernels are GPU-only.
_GPU_ONLY_QUANTIZATION = (Quantization.FP8, Quantization.GPTQ, Quantization.BITSANDBYTES)


class SecretKeyRef(_Model):
    """A key in a Secret in the InferenceDeployment's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN, description="Name of the Secret.")
    key: str = Field(
        default="token",
        min_length=1,
        max_length=253,
        pattern=_pattern(r"^[-._a-zA-Z0-9]+$", "a Secret key: letters, digits, '-', '_' or '.'"),
        description="Key within the Secret.",
    )


# pvc:// and local sources are read from volumes; a secret has nothing to authenticate there.
_NO_SECRET_PREFIXES = ("pvc://", "file://", "/", "./", "../")


class ModelSpec(_Model):
    """What to serve."""

    model_config = _cel(
        CelRule(
            "!has(self.accessSecretRef) || !("
            + " || ".join(f"self.source.startsWith('{prefix}')" for prefix in _NO_SECRET_PREFIXES)
            + ")",
            "accessSecretRef is for Hugging Face and Azure Blob sources; remove it for pvc:// and local ones",
            ".accessSecretRef",
        ),
    )

    source: Source = Field(
        min_length=1,
        max_length=_SOURCE_MAX_LENGTH,
        pattern=SOURCE_PATTERN,
        description=f"Where the weights come from: {SOURCE_FORMS}.",
    )
    served_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=_pattern(
            r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$", "a model name: letters, digits, '.', '_', ':', '/' or '-', no spaces"
        ),
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
        ge=MIN_MAX_MODEL_LEN,  # the serving contract's minimum (one KV block)
        le=10_485_760,
        description="Longest context (prompt + output tokens) a request may use; sizes the KV cache.",
    )
    access_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret key holding the credential to read the weights: a Hugging Face token for hf sources; for "
            "an Azure Blob source, a SAS token or a connection string, used for every Azure Blob source of the "
            "deployment (adapters and draft model too, which must then be in the same account). Without it, "
            "Azure Blob sources are read as the pods' Azure identity (see serviceAccountName)."
        ),
    )

    @model_validator(mode="after")
    def _secret_reads_the_source(self) -> ModelSpec:
        if self.access_secret_ref is not None and self.source.startswith(_NO_SECRET_PREFIXES):
            raise _problem(
                "accessSecretRef",
                "accessSecretRef is for Hugging Face and Azure Blob sources; remove it for pvc:// and local ones",
            )
        return self


_NEEDS_DRAFT = (SpeculativeMethod.DRAFT_MODEL, SpeculativeMethod.EAGLE)


class SpeculativeDecodingSpec(_Model):
    """Speculative decoding: a cheap proposer drafts tokens the target model verifies."""

    model_config = _cel(
        CelRule(
            f"!(self.method in {[m.value for m in _NEEDS_DRAFT]}) || has(self.draftModel)",
            "methods draftModel and eagle need a draftModel source",
            ".draftModel",
        ),
        CelRule(
            "!has(self.promptLookupMax) || self.method == 'ngram'",
            "promptLookupMax applies only to method ngram; remove it or use method ngram",
            ".promptLookupMax",
        ),
    )

    method: SpeculativeMethod = Field(description="ngram, draftModel, eagle or mtp.")
    draft_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=_SOURCE_MAX_LENGTH,
        pattern=SOURCE_PATTERN,
        description=f"Draft model source for draftModel and eagle ({SOURCE_FORMS}).",
    )
    num_speculative_tokens: int = Field(default=4, ge=1, le=16, description="Tokens drafted per step.")
    prompt_lookup_max: int | None = Field(default=None, ge=1, le=16, description="ngram: longest n-gram to match.")

    @field_validator("draft_model")
    @classmethod
    def _draft_blob_details(cls, value: str | None) -> str | None:
        return None if value is None else _blob_details(value)

    @model_validator(mode="after")
    def _draft_model_when_needed(self) -> SpeculativeDecodingSpec:
        if self.method in _NEEDS_DRAFT and self.draft_model is None:
            raise _problem("draftModel", f"method {self.method.value} needs a draftModel source")
        if self.prompt_lookup_max is not None and self.method is not SpeculativeMethod.NGRAM:
            raise _problem(
                "promptLookupMax",
                f"promptLookupMax applies only to method ngram, not {self.method.value}; remove it or use ngram",
            )
        return self


_MANAGED_KEYS_CEL = ", ".join(f"'{key}'" for key in sorted(MANAGED_ENGINE_KEYS))


class EngineSpec(_Model):
    """vLLM engine settings."""

    model_config = _cel(
        CelRule(
            f"!has(self.extraArgs) || ![{_MANAGED_KEYS_CEL}].exists(k, k in self.extraArgs)",
            "extraArgs may not set an engine argument tokenplane derives from a typed field "
            f"({', '.join(sorted(MANAGED_ENGINE_KEYS))}); set the typed field instead",
            ".extraArgs",
        ),
    )

    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="GPUs a replica's layers are split over.")
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64, description="Stages across nodes.")
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0.0,
        le=0.99,
        description=(
            "Fraction of GPU memory one vLLM engine may use (weights + KV cache). With gpuFraction, the "
            "floor(1/gpuFraction) replicas on one GPU each get at most 0.9 divided by their number, so that all of "
            "them pass vLLM's startup free-memory check."
        ),
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
        max_length=256,
        description="Extra vLLM engine arguments passed through as-is (snake_case AsyncEngineArgs names).",
    )

    @model_validator(mode="after")
    def _extra_args_known_and_not_managed(self) -> EngineSpec:
        # The serving contract owns the list of keys it derives from typed fields.
        clash = managed_keys_in(self.extra_args)
        if clash:
            owners = [f"{key} (set by {_TYPED_OWNER[key]})" if key in _TYPED_OWNER else key for key in clash]
            raise _problem(
                "extraArgs",
                f"extraArgs may not set {', '.join(owners)}: tokenplane derives "
                f"{'it' if len(clash) == 1 else 'them'} from typed fields; use those and remove the key",
            )
        unknown = unknown_engine_args(self.extra_args) or server_engine_args(self.extra_args)
        if unknown:
            raise _problem("extraArgs", unknown)
        return self


class LoraAdapterSpec(_Model):
    """One LoRA adapter served by name on the base model."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=_pattern(
            r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$",
            "an adapter name: lowercase letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        ),
        description="Model name clients send.",
    )
    source: Source = Field(
        min_length=1,
        max_length=_SOURCE_MAX_LENGTH,
        pattern=_ADAPTER_SOURCE_PATTERN,
        description=f"Where the adapter comes from: {_ADAPTER_SOURCE_FORMS}.",
    )


class LoraSpec(_Model):
    """Multi-LoRA: one base model, many adapters loaded on demand."""

    adapters: list[LoraAdapterSpec] = Field(
        default_factory=list,
        max_length=1000,
        # The API server keeps adapter names unique by itself: a list keyed by name.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Adapters served by name.",
    )
    max_adapters_per_replica: int = Field(default=8, ge=1, le=256, description="LRU cap of loaded adapters.")
    # The serving contract owns the ranks vLLM accepts.
    max_rank: LoraRank = Field(default=16, description="Largest adapter rank: 1, 8, 16, 32, 64, 128, 256, 320 or 512.")

    @model_validator(mode="after")
    def _unique_names(self) -> LoraSpec:
        seen: set[str] = set()
        for index, adapter in enumerate(self.adapters):
            if adapter.name in seen:
                raise _problem(f"adapters[{index}].name", f"adapter name {adapter.name!r} is used twice")
            seen.add(adapter.name)
        return self


class SpotSpec(_Model):
    """Azure Spot VMs: cheaper, evictable."""

    model_config = _cel(
        CelRule(
            "!has(self.maxPrice) || self.maxPrice == -1.0 || self.maxPrice > 0.0",
            "maxPrice is a price > 0 in USD per hour, or -1 for up to the on-demand price",
            ".maxPrice",
        ),
        CelRule(
            "!has(self.maxPrice) || (has(self.enabled) && self.enabled)",
            "maxPrice applies only to Spot VMs: set enabled: true, or remove maxPrice for on-demand VMs",
            ".maxPrice",
        ),
    )

    enabled: bool = Field(default=False, description="Use Spot priority for the node pool.")
    max_price: float | None = Field(
        default=None, description="Highest hourly USD price; -1 (default) means up to the on-demand price."
    )

    @model_validator(mode="after")
    def _price_is_positive_or_minus_one(self) -> SpotSpec:
        if self.max_price is not None and self.max_price != -1 and self.max_price <= 0:
            raise _problem("maxPrice", f"{self.max_price:g} is invalid: use a price > 0, or -1 for on-demand")
        # A price without Spot would be ignored: the pool runs on-demand VMs at the full price, silently.
        if self.max_price is not None and not self.enabled:
            raise _problem(
                "maxPrice", "maxPrice applies only to Spot VMs: set enabled: true, or remove maxPrice for on-demand VMs"
            )
        return self


class ManagedNodePoolSpec(_Model):
    """An AKS agent pool tokenplane creates, shares by hardware class, and deletes when unused."""

    model_config = _cel(
        CelRule(
            "!has(self.maxNodes) || self.minNodes <= self.maxNodes",
            "minNodes exceeds maxNodes; lower minNodes or raise maxNodes",
            ".minNodes",
        ),
    )

    min_nodes: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Cluster-autoscaler lower bound; at most the nodes maxReplicas can use.",
    )
    max_nodes: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Cluster-autoscaler upper bound; derived from maxReplicas if unset; must hold maxReplicas.",
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

    node_selector: dict[str, Annotated[str, Field(max_length=63, pattern=_LABEL_VALUE_PATTERN)]] = Field(
        min_length=1, max_length=64, description="Node labels that select the pool, e.g. {agentpool: gpu}."
    )
    tolerations_for_taints: list[Annotated[str, Field(max_length=317, pattern=TAINT_PATTERN)]] = Field(
        default_factory=list,
        max_length=64,
        description="Taints (key=value:Effect or key:Effect) the pool carries, tolerated by the workers.",
    )

    @model_validator(mode="after")
    def _label_keys(self) -> ExistingNodePoolSpec:
        # A key Kubernetes refuses passes the CR and leaves every worker pod rejected, so nothing ever schedules.
        # Checked here, not in the CRD: a regex per map key does not fit the CEL cost budget.
        for key in self.node_selector:
            if len(key) > _LABEL_KEY_MAX_LENGTH or not re.fullmatch(_LABEL_KEY, key):
                raise _problem(
                    f"nodeSelector.{key}",
                    f"{key!r} is not a label key: an optional DNS prefix and '/', then at most 63 letters, digits, "
                    "'-', '_' or '.', starting and ending with a letter or digit (e.g. agentpool)",
                )
        return self


class NodePoolSpec(_Model):
    """Which nodes serve: a managed pool (default) or an existing one."""

    model_config = _cel(
        CelRule(
            "!(has(self.managed) && has(self.existing))",
            "set either managed or existing, not both",
            ".existing",
        ),
    )

    managed: ManagedNodePoolSpec | None = Field(default=None, description="A pool tokenplane manages.")
    existing: ExistingNodePoolSpec | None = Field(default=None, description="An existing pool, selected by label.")

    @model_validator(mode="after")
    def _one_of(self) -> NodePoolSpec:
        if self.managed is not None and self.existing is not None:
            raise _problem(
                "existing",
                "nodePool.managed and nodePool.existing are both set: keep managed for a pool tokenplane creates, "
                "or existing to run on your own nodes",
            )
        return self


class CpuSpec(_Model):
    """CPU replicas, for local runs and tests."""

    cpus_per_replica: float = Field(
        default=1.0, ge=0.01, le=256, description="Ray CPUs reserved per replica (0.01 to 256)."
    )
    kv_cache_gib: int = Field(
        default=1,
        ge=1,
        le=1024,
        alias="kvCacheGiB",
        description="KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE).",
    )


_ZONES_NEED_A_MANAGED_POOL = (
    "zones place the node pool tokenplane creates; existing nodes are already placed: remove zones and select "
    "zonal nodes in nodePool.existing.nodeSelector (topology.kubernetes.io/zone: <region>-<zone>)"
)


class HardwareSpec(_Model):
    """Where replicas run."""

    model_config = _cel(
        CelRule(
            "!(has(self.migProfile) && has(self.gpuFraction))",
            "use either migProfile (an isolated slice) or gpuFraction (a shared GPU), not both",
            ".gpuFraction",
        ),
        CelRule(
            "!has(self.migProfile) || self.gpusPerReplica == 1",
            "a MIG replica runs on one slice: set gpusPerReplica to 1, or remove migProfile to use whole GPUs",
            ".gpusPerReplica",
        ),
        CelRule(
            "!has(self.gpuFraction) || self.gpusPerReplica == 1",
            "a fractional replica shares one GPU: set gpusPerReplica to 1, or remove gpuFraction",
            ".gpusPerReplica",
        ),
        CelRule(
            "self.accelerator != 'cpu' || (!has(self.migProfile) && !has(self.gpuFraction))",
            "migProfile and gpuFraction need accelerator gpu; remove them for a CPU run",
            ".accelerator",
        ),
        CelRule(
            "self.accelerator != 'cpu' || self.gpusPerReplica == 1",
            "a CPU run uses no GPU; remove gpusPerReplica or set accelerator gpu",
            ".gpusPerReplica",
        ),
        CelRule(
            "self.accelerator != 'cpu' || self.vmSize == 'auto'",
            "a CPU run provisions no VM; remove vmSize or set accelerator gpu",
            ".vmSize",
        ),
        CelRule(
            "self.accelerator != 'cpu' || !has(self.nodePool) || (!has(self.nodePool.managed) && "
            "!has(self.nodePool.existing))",
            "a CPU run uses no node pool; remove nodePool or set accelerator gpu",
            ".nodePool",
        ),
        CelRule(
            "self.accelerator != 'cpu' || !has(self.zones) || size(self.zones) == 0",
            "a CPU run uses no availability zones; remove zones or set accelerator gpu",
            ".zones",
        ),
        CelRule(
            "!has(self.zones) || size(self.zones) == 0 || !has(self.nodePool) || !has(self.nodePool.existing)",
            _ZONES_NEED_A_MANAGED_POOL,
            ".zones",
        ),
    )

    accelerator: AcceleratorKind = Field(default=AcceleratorKind.GPU, description="gpu (AKS) or cpu (local runs).")
    vm_size: str = Field(
        default="auto",
        max_length=64,
        pattern=_pattern(
            r"^(auto|Standard_[A-Za-z0-9_]+)$", "auto, or an Azure VM size such as Standard_NC40ads_H100_v5"
        ),
        description="AKS VM size such as Standard_NC40ads_H100_v5, or auto to let the capacity planner choose.",
    )
    gpus_per_replica: int = Field(default=1, ge=1, le=64, description="Whole GPUs per replica (TP x PP).")
    mig_profile: MigProfile | None = Field(
        default=None,
        description="MIG slice per replica (MIG1g..MIG7g); the pool is created with this profile.",
    )
    gpu_fraction: float | None = Field(
        default=None,
        # Ray counts resources in steps of 0.0001; below 0.01 (100 replicas on one GPU) nothing useful fits.
        ge=0.01,
        lt=1.0,
        description="Share one GPU between replicas (Ray fractional GPU: packing, not isolation); 0.01 to 0.99.",
    )
    spot: SpotSpec = Field(default_factory=SpotSpec, description="Spot VMs.")
    zones: list[Literal["1", "2", "3"]] = Field(
        default_factory=list,
        max_length=3,
        # The API server refuses a zone listed twice by itself: a list of unique values.
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Availability zones, as strings: '1', '2', '3'.",
    )
    node_pool: NodePoolSpec = Field(default_factory=NodePoolSpec, description="Managed or existing nodes.")
    cpu: CpuSpec = Field(default_factory=CpuSpec, description="CPU replica settings (accelerator cpu).")

    @model_validator(mode="after")
    def _consistent(self) -> HardwareSpec:
        for index, zone in enumerate(self.zones):
            if zone in self.zones[:index]:
                raise _problem(f"zones[{index}]", f"zone {zone!r} is listed twice: list each zone once")
        if self.mig_profile is not None and self.gpu_fraction is not None:
            raise _problem(
                "gpuFraction",
                "migProfile and gpuFraction are both set: use either migProfile (an isolated slice) or gpuFraction "
                "(a shared GPU), not both",
            )
        if self.mig_profile is not None and self.gpus_per_replica != 1:
            raise _problem(
                "gpusPerReplica",
                f"migProfile {self.mig_profile.value} gives a replica exactly one slice, but gpusPerReplica is "
                f"{self.gpus_per_replica}: set gpusPerReplica to 1, or remove migProfile to use whole GPUs",
            )
        if self.gpu_fraction is not None and self.gpus_per_replica != 1:
            raise _problem(
                "gpusPerReplica",
                f"gpuFraction {self.gpu_fraction:g} shares one GPU, but gpusPerReplica is {self.gpus_per_replica}: "
                "set gpusPerReplica to 1, or remove gpuFraction",
            )
        if self.accelerator is AcceleratorKind.CPU:
            for field, value in (("migProfile", self.mig_profile), ("gpuFraction", self.gpu_fraction)):
                if value is not None:
                    raise _problem(field, f"{field} needs accelerator gpu; remove it for a CPU run")
            if self.gpus_per_replica != 1:  # ignored on CPU before: the file said 4 GPUs, the replica had none
                raise _problem("gpusPerReplica", "a CPU run uses no GPU; remove gpusPerReplica or set accelerator gpu")
            if self.vm_size != "auto":
                raise _problem("vmSize", "a CPU run provisions no VM; remove vmSize or set accelerator gpu")
            if self.node_pool.managed is not None or self.node_pool.existing is not None:
                raise _problem("nodePool", "a CPU run uses no node pool; remove nodePool")
            if self.zones:  # ignored before: nothing is placed in a zone on a laptop
                raise _problem("zones", "a CPU run uses no availability zones; remove zones or set accelerator gpu")
        if self.zones and self.node_pool.existing is not None:  # ignored before: no pool is created to place
            raise _problem("zones", _ZONES_NEED_A_MANAGED_POOL)
        return self


# Every IANA zone Python knows (tzdata): an enum in the CRD, so the API server refuses what the models refuse.
_TIME_ZONES: list[Any] = sorted(zoneinfo.available_timezones())


_HH_MM = _pattern(r"^([01][0-9]|2[0-3]):[0-5][0-9]$", "a time HH:MM with two-digit hours 00-23, e.g. '08:00'")


class ScheduleWindowSpec(_Model):
    """A recurring time window that keeps a minimum replica count (e.g. business hours)."""

    model_config = _cel(CelRule("self.start != self.end", "start equals end: give the window a length", ".end"))

    days: str = Field(
        default="*",
        pattern=_pattern(
            r"^(\*|[0-7](-[0-7])?(,[0-7](-[0-7])?)*)$",
            "a cron day-of-week field: '*', a day 0-7 (0 and 7 are Sunday), a range '1-5' or a list '0,6'",
        ),
        description="Cron day-of-week field: '*', '1-5', '0,6' (0 and 7 are Sunday).",
    )
    start: str = Field(pattern=_HH_MM, description="Local start time, HH:MM.")
    end: str = Field(
        pattern=_HH_MM,
        description="Local end time, HH:MM; at or before start means the next day (22:00-06:00).",
    )
    time_zone: str = Field(
        default="UTC", json_schema_extra={"enum": _TIME_ZONES}, description="IANA time zone, e.g. Europe/Berlin."
    )
    min_replicas: int = Field(ge=0, le=1000, description="Replicas kept at least inside the window.")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _sexagesimal(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted 18:00 as the base-60 integer 1080: say so instead of "got the number 1080".
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
            written = f"{value // 60:02d}:{value % 60:02d}"
            raise ValueError(
                f"expected a quoted 'HH:MM'; YAML reads an unquoted {written} as {value}: write '{written}'"
            )
        return value

    @model_validator(mode="after")
    def _window(self) -> ScheduleWindowSpec:
        # The serving runtime evaluates the window; its own rules decide what is valid, here as there.
        try:
            ScheduleWindow.model_validate(self.model_dump(by_alias=True))
        except ValidationError as exc:
            first = exc.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else "end"
            field = {"time_zone": "timeZone", "min_replicas": "minReplicas"}.get(name, name)
            raise _problem(field, str(first["msg"]).removeprefix("Value error, ")) from None
        return self


class ScaleToZeroSpec(_Model):
    """Scale to zero replicas when idle; the first request waits for a cold start."""

    enabled: bool = Field(default=False, description="Allow zero replicas.")
    idle_seconds: int = Field(default=900, ge=0, le=86_400, description="Idle time before the last replica goes.")
    hold_seconds: int = Field(
        default=300,
        ge=1,
        le=3600,
        description=(
            "How long a request that arrives at zero replicas waits for one to start; past it the request gets "
            "503 with Retry-After (a streamed one, already answered 200 with keep-alives, an SSE error event)."
        ),
    )
    max_held_requests: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Requests held at zero replicas at once; one more gets 429 with Retry-After.",
    )


class LatencyTargetSpec(_Model):
    """A P95 latency objective the autoscaler adds replicas to meet."""

    metric: LatencyMetric = Field(default=LatencyMetric.TTFT, description="ttft or e2e.")
    p95_milliseconds: int = Field(gt=0, le=600_000, description="Target P95 in milliseconds.")


class ScalingSpec(_Model):
    """Autoscaling on queue depth and P95 latency."""

    model_config = _cel(
        CelRule(
            "self.minReplicas <= self.maxReplicas",
            "minReplicas exceeds maxReplicas; raise maxReplicas or lower minReplicas",
            ".minReplicas",
        ),
        CelRule(
            "self.minReplicas != 0 || (has(self.scaleToZero) && self.scaleToZero.enabled)",
            "minReplicas 0 needs scaleToZero.enabled: true (or set minReplicas >= 1)",
            ".minReplicas",
        ),
        CelRule(
            "!has(self.scaleToZero) || !self.scaleToZero.enabled || self.minReplicas == 0",
            "scaleToZero.enabled needs minReplicas: 0 (set it, or disable scaleToZero)",
            ".scaleToZero.enabled",
        ),
    )

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
    schedule: list[ScheduleWindowSpec] = Field(
        default_factory=list,
        max_length=32,
        description="Time windows with their own minimum replicas (the largest active one applies).",
    )
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
        if self.scale_to_zero.enabled and self.min_replicas != 0:
            raise _problem(
                "scaleToZero.enabled",
                f"scaleToZero.enabled needs minReplicas: 0, but minReplicas is {self.min_replicas}: set minReplicas "
                "to 0 to let the last replica go when idle, or disable scaleToZero",
            )
        # Serve caps every decision at maxReplicas, so a larger window minimum would be dropped without a word.
        # Not a CEL rule: ours iterate only literal lists (the API server's cost estimate).
        for index, window in enumerate(self.schedule):
            if window.min_replicas > self.max_replicas:
                raise _problem(
                    f"schedule[{index}].minReplicas",
                    f"the window's minReplicas ({window.min_replicas}) exceeds maxReplicas ({self.max_replicas}), "
                    "which caps it; raise maxReplicas or lower the window's minReplicas",
                )
        return self


class RoutingSpec(_Model):
    """Request routing between replicas."""

    policy: RoutingPolicy = Field(
        default=RoutingPolicy.POWER_OF_TWO, description="powerOfTwo, prefixAffinity or sessionAffinity."
    )
    session_header: str = Field(
        default="x-session-id",
        max_length=256,
        pattern=_pattern(r"^[A-Za-z0-9-]+$", "an HTTP header name: letters, digits and '-'"),
        description="Header whose value pins a session to a replica (sessionAffinity).",
    )


class DisaggregationSpec(_Model):
    """Prefill/decode disaggregation: separate replica pools for each phase (GPU KV connector needed)."""

    enabled: bool = Field(default=False, description="Split prefill and decode.")
    prefill_replicas: int = Field(default=1, ge=1, le=1000, description="Prefill replicas.")
    decode_replicas: int = Field(default=1, ge=1, le=1000, description="Decode replicas.")
    # The serving contract owns the connectors that work on the serving image.
    kv_connector: KvConnector = Field(
        default="NixlConnector",
        description="vLLM KV transfer connector: NixlConnector, NixlPullConnector or NixlPushConnector.",
    )


class AuthSpec(_Model):
    """Endpoint authentication."""

    model_config = _cel(
        CelRule(
            "self.mode != 'entraId' || (has(self.entraTenantId) && has(self.entraAudience))",
            "mode entraId needs entraTenantId and entraAudience",
            ".mode",
        ),
    )

    mode: AuthMode = Field(default=AuthMode.API_KEY, description="apiKey, entraId or none.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret whose values are accepted API keys (several keys allow rotation); "
        "defaults to the Secret <name>-api-keys.",
    )
    entra_tenant_id: str | None = Field(
        default=None, min_length=1, description="Entra ID tenant whose tokens are accepted."
    )
    entra_audience: str | None = Field(default=None, min_length=1, description="Audience (aud) the tokens must carry.")

    @model_validator(mode="after")
    def _mode_fields(self) -> AuthSpec:
        if self.mode is AuthMode.ENTRA_ID:
            for field, value in (
                ("entraTenantId", self.entra_tenant_id),
                ("entraAudience", self.entra_audience),
            ):
                if value is None:
                    raise _problem(field, f"mode entraId needs {field}")
        return self


class RateLimitSpec(_Model):
    """Per-caller limits."""

    requests_per_minute: int | None = Field(default=None, ge=1, description="Requests per minute per caller.")
    tokens_per_minute: int | None = Field(default=None, ge=1, description="Tokens per minute per caller.")


class CacheSpec(_Model):
    """Response cache (opt-in): repeated requests answered from Redis without reaching the engine."""

    model_config = _cel(
        CelRule(
            "!self.enabled || has(self.redisSecretRef)",
            "an enabled cache needs redisSecretRef (the Redis connection string)",
            ".redisSecretRef",
        ),
    )

    enabled: bool = Field(default=False, description="Answer repeated requests from the cache.")
    ttl_seconds: int = Field(
        default=3600, ge=1, le=2_592_000, description="How long an answer stays valid (how fast model or data change)."
    )
    qualify: CacheQualify = Field(
        default=CacheQualify.DETERMINISTIC,
        description="deterministic (temperature 0 or a seed) or all requests.",
    )
    shared: bool = Field(
        default=False, description="Share answers between callers (API keys, token subjects); off: each has its own."
    )
    redis_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the Redis URL, e.g. "
        "rediss://:<access key>@<name>.redis.cache.windows.net:6380/0 (Azure Cache for Redis, TLS), or the "
        "connection string the Azure portal shows (<name>.redis.cache.windows.net:6380,password=...,ssl=True).",
    )

    @model_validator(mode="after")
    def _needs_redis(self) -> CacheSpec:
        if self.enabled and self.redis_secret_ref is None:
            raise _problem("redisSecretRef", "an enabled cache needs redisSecretRef (the Redis connection string)")
        return self


class EndpointSpec(_Model):
    """How clients reach the OpenAI-compatible API."""

    auth: AuthSpec = Field(default_factory=AuthSpec, description="Authentication.")
    visibility: Visibility = Field(
        default=Visibility.CLUSTER,
        description="cluster (ClusterIP) or private (Azure internal load balancer).",
    )
    allowed_namespaces: list[Annotated[str, Field(max_length=63, pattern=_DNS_LABEL)]] = Field(
        default_factory=list,
        max_length=256,
        description="Namespaces whose pods may call the endpoint (NetworkPolicy); empty = own.",
    )
    rate_limits: RateLimitSpec = Field(default_factory=RateLimitSpec, description="Rate limits.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the Service.")
    cache: CacheSpec = Field(default_factory=CacheSpec, description="Response cache (opt-in).")


_BLOB_STORE_PATTERN = _pattern("^(" + "|".join(BLOB_URI_REGEXES) + ")$", f"an Azure Blob directory: {BLOB_URI_FORMS}")


class BatchSpec(_Model):
    """The OpenAI Batch API (opt-in): `/v1/files` and `/v1/batches`, run at low priority on the same replicas.

    In a cluster it needs `redisSecretRef` (the queue) and `store` (Azure Blob); `tokenplane up` keeps files in
    a local directory and starts its own redis-server, so there `enabled: true` is all it takes.
    """

    enabled: bool = Field(default=False, description="Serve the Batch API and run its queue consumers.")
    store: Annotated[str, AfterValidator(_blob_details)] | None = Field(
        default=None,
        max_length=_SOURCE_MAX_LENGTH,
        pattern=_BLOB_STORE_PATTERN,
        description=(
            f"Azure Blob directory for batch input, output and error files and batch records ({BLOB_URI_FORMS}); "
            "required in a cluster. The pods' identity (serviceAccountName) needs Storage Blob Data Contributor "
            "on it unless storeSecretRef is set."
        ),
    )
    store_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a connection string or SAS token for the store."
    )
    redis_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the Redis URL of the batch queue (required in a cluster), e.g. "
        "rediss://:<access key>@<name>.redis.cache.windows.net:6380/1 (Azure Cache for Redis, TLS).",
    )
    max_consumers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Most queue consumers (scaled on the queue's length, to zero between batches; they hold no GPU).",
    )
    concurrency: int = Field(
        default=4,
        ge=1,
        le=1024,
        description=(
            "Batch requests one consumer keeps in flight; concurrency x maxConsumers bounds the batch's share of "
            "the engines (vLLM runs interactive requests first)."
        ),
    )
    priority: int = Field(
        default=10,
        ge=1,
        le=1_000_000,
        description="vLLM priority of batch requests (interactive: 0; larger runs later).",
    )
    max_replicas: int = Field(
        default=1,
        ge=0,
        le=1024,
        description=(
            "The batch's GPU budget: most model replicas batch work alone may keep running (e.g. woken from zero). "
            "Batch requests never make the deployment grow for them: they fill the capacity interactive traffic "
            "keeps; 0 runs batch only there."
        ),
    )
    sweep_interval_seconds: int | None = Field(
        default=None,
        ge=1,
        le=3600,
        description=(
            "Seconds between each API replica's sweep of the open batches (unset: 60): a batch nobody reads still "
            "expires, closes after its cancel's grace and recovers from a Redis loss within one interval. Each "
            "sweep reads every open batch's record from the store once."
        ),
    )


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


# Typed CR fields that own the vLLM engine arguments the serving contract derives (for messages only).
_TYPED_OWNER = {
    "model": "spec.model.source",
    "served_model_name": "spec.model.servedName",
    "revision": "spec.model.revision",
    "dtype": "spec.model.dtype",
    "quantization": "spec.model.quantization",
    "max_model_len": "spec.model.maxModelLen",
    "tensor_parallel_size": "spec.engine.tensorParallelSize",
    "pipeline_parallel_size": "spec.engine.pipelineParallelSize",
    "gpu_memory_utilization": "spec.engine.gpuMemoryUtilization",
    "enable_prefix_caching": "spec.engine.enablePrefixCaching",
    "enable_chunked_prefill": "spec.engine.enableChunkedPrefill",
    "max_num_seqs": "spec.engine.maxNumSeqs",
    "speculative_config": "spec.engine.speculativeDecoding",
    "enforce_eager": "spec.engine.enforceEager",
    "enable_lora": "spec.lora.adapters",
    "max_lora_rank": "spec.lora.maxRank",
    "max_loras": "spec.lora.maxAdaptersPerReplica",
    "max_cpu_loras": "spec.lora.maxAdaptersPerReplica",
    "kv_transfer_config": "spec.disaggregation",
}
_TP = _or_default("engine", EngineSpec, "tensor_parallel_size")
_PP = _or_default("engine", EngineSpec, "pipeline_parallel_size")
_ACCELERATOR = _or_default("hardware", HardwareSpec, "accelerator")
_GPUS = _or_default("hardware", HardwareSpec, "gpus_per_replica")
_SLICED = "(has(self.hardware) && (has(self.hardware.migProfile) || has(self.hardware.gpuFraction)))"
_DISAGGREGATED = _or_default("disaggregation", DisaggregationSpec, "enabled")
_SCALE_TO_ZERO = "(has(self.scaling) && has(self.scaling.scaleToZero) && self.scaling.scaleToZero.enabled)"
_QUANTIZATION = "(has(self.model.quantization) ? self.model.quantization : 'none')"


class InferenceDeploymentSpec(_Model):
    """Desired state of an InferenceDeployment."""

    model_config = _cel(
        CelRule(
            f"{_ACCELERATOR} != 'cpu' || ({_TP} == 1 && {_PP} == 1)",
            "a CPU replica runs unsharded: set engine.tensorParallelSize and engine.pipelineParallelSize to 1",
            ".engine",
        ),
        CelRule(
            f"{_ACCELERATOR} != 'cpu' || !{_DISAGGREGATED}",
            "prefill/decode disaggregation needs GPUs and a KV connector; disable it for a CPU run",
            ".disaggregation",
        ),
        CelRule(
            f"{_ACCELERATOR} != 'cpu' || !({_QUANTIZATION} in {[q.value for q in _GPU_ONLY_QUANTIZATION]})",
            f"quantization {', '.join(q.value for q in _GPU_ONLY_QUANTIZATION)} needs a GPU; use none on CPU",
            ".model.quantization",
        ),
        CelRule(
            f"{_ACCELERATOR} == 'cpu' || !{_SLICED} || ({_TP} == 1 && {_PP} == 1)",
            "a MIG slice or a GPU fraction cannot be sharded: set engine.tensorParallelSize and "
            "engine.pipelineParallelSize to 1, or remove hardware.migProfile / hardware.gpuFraction "
            "to shard over whole GPUs",
            ".engine",
        ),
        CelRule(
            f"{_ACCELERATOR} == 'cpu' || {_SLICED} || {_GPUS} == {_TP} * {_PP}",
            "hardware.gpusPerReplica must equal engine.tensorParallelSize x engine.pipelineParallelSize",
            ".hardware",
        ),
        CelRule(
            f"{_or_default('scaling', ScalingSpec, 'target_queue_depth')} <= "
            f"{_or_default('engine', EngineSpec, 'max_num_seqs')}",
            "scaling.targetQueueDepth exceeds engine.maxNumSeqs: a replica never holds more requests than "
            "maxNumSeqs, so it would never scale up; lower targetQueueDepth or raise maxNumSeqs",
            ".scaling",
        ),
        CelRule(
            f"!{_DISAGGREGATED} || !{_SCALE_TO_ZERO}",
            "scale-to-zero is not supported with disaggregation; disable one of them",
            ".disaggregation",
        ),
    )

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
    batch: BatchSpec = Field(default_factory=BatchSpec, description="OpenAI Batch API (opt-in).")
    upgrade: UpgradeSpec = Field(default_factory=UpgradeSpec, description="How changes roll out.")
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=_DNS_SUBDOMAIN,
        description=(
            "ServiceAccount the Ray pods run as, for AKS workload identity: annotate it with "
            "`azure.workload.identity/client-id: <identity client id>` and federate the identity with subject "
            "`system:serviceaccount:<namespace>:<name>`. The pods then carry `azure.workload.identity/use: "
            '"true"` and read Azure Blob sources as that identity (give it Storage Blob Data Reader).'
        ),
    )

    @model_validator(mode="after")
    def _cross_field(self) -> InferenceDeploymentSpec:
        engine, hardware = self.engine, self.hardware
        tp, pp = engine.tensor_parallel_size, engine.pipeline_parallel_size
        shards = tp * pp
        sliced = "migProfile" if hardware.mig_profile else "gpuFraction" if hardware.gpu_fraction is not None else None
        sharded_field = "engine.tensorParallelSize" if tp != 1 else "engine.pipelineParallelSize"
        if hardware.accelerator is AcceleratorKind.CPU:
            if shards != 1:
                raise _problem(
                    sharded_field,
                    f"a CPU replica runs unsharded (tensorParallelSize {tp}, pipelineParallelSize {pp}): set both "
                    "to 1, or use accelerator gpu",
                )
            if self.disaggregation.enabled:
                raise _problem(
                    "disaggregation.enabled",
                    "prefill/decode disaggregation needs GPUs and a KV connector: disable it, or use accelerator gpu",
                )
            if self.model.quantization in _GPU_ONLY_QUANTIZATION:
                raise _problem(
                    "model.quantization",
                    f"{self.model.quantization.value} needs a GPU: use quantization none (or awq/int8) on CPU",
                )
        elif sliced and shards != 1:
            raise _problem(
                sharded_field,
                f"hardware.{sliced} gives a replica part of one GPU, which cannot be sharded (tensorParallelSize "
                f"{tp}, pipelineParallelSize {pp}): set both to 1, or remove hardware.{sliced} to shard over whole "
                "GPUs (then gpusPerReplica = tensorParallelSize x pipelineParallelSize)",
            )
        elif not sliced and shards != hardware.gpus_per_replica:
            raise _problem(
                "hardware.gpusPerReplica",
                f"gpusPerReplica ({hardware.gpus_per_replica}) must equal tensorParallelSize x "
                f"pipelineParallelSize ({tp} x {pp} = {shards}); change gpusPerReplica or the parallel sizes",
            )
        if self.scaling.target_queue_depth > engine.max_num_seqs:
            raise _problem(
                "scaling.targetQueueDepth",
                f"scaling.targetQueueDepth ({self.scaling.target_queue_depth}) exceeds engine.maxNumSeqs "
                f"({engine.max_num_seqs}): a replica never holds more requests than maxNumSeqs, so it would never "
                "scale up; lower targetQueueDepth or raise maxNumSeqs",
            )
        if self.disaggregation.enabled and self.scaling.scale_to_zero.enabled:
            raise _problem(
                "scaling.scaleToZero.enabled",
                "scale-to-zero is not supported with disaggregation.enabled: disable one of them",
            )
        return self


# --- status ----------------------------------------------------------------------------------------------


class Condition(_Model):
    """A metav1.Condition: one aspect of the deployment's state."""

    type: ConditionType = Field(
        description="Validated, NodePoolReady, ServingReady, Ready, Reconciling, Stalled or QuotaInsufficient."
    )
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
    moving_to: str | None = Field(
        default=None,
        description="Agent pool a move is heading to, created before the deployment runs on it: released if an "
        "edit turns away from it.",
    )


class EndpointStatus(_Model):
    """Where to send requests."""

    url: str | None = Field(default=None, description="Base URL of the OpenAI-compatible API.")
    model: str | None = Field(default=None, description="Model name to send.")


class ReplicaStatus(_Model):
    """Replica counts."""

    desired: int | None = Field(default=None, description="Replicas the autoscaler wants.")
    ready: int | None = Field(default=None, description="Replicas that answered a real completion.")


class ScalingStatus(_Model):
    """The autoscaling policy's last decision, as the Serve controller exported it."""

    current: int | None = Field(default=None, description="Replicas running (Ray Serve).")
    desired: int | None = Field(default=None, description="Replicas the policy wants.")
    reason: str | None = Field(
        default=None,
        description="Why: QueueDepth, LatencyBreach, Idle, WaitingForCapacity, Schedule or Steady.",
    )
    last_decision_time: datetime | None = Field(default=None, description="When the decision last changed.")
    zero_since: datetime | None = Field(default=None, description="At zero replicas since then; unset above zero.")
    updated_at: datetime | None = Field(default=None, description="When this was read.")


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
    response_cache_hit_ratio: float | None = Field(
        default=None, description="Response-cache hits / (hits + misses), 0..1 (spec.endpoint.cache)."
    )
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
    scaling: ScalingStatus | None = Field(default=None, description="The autoscaling policy's last decision.")
    metrics: MetricsStatus | None = Field(default=None, description="Profitability metrics.")


# Rules on the whole object: CEL at the root may read metadata.name (and generateName), nothing else of metadata.
ROOT_RULES = (
    CelRule(
        f"self.metadata.name.matches('{DNS1035_LABEL}')",
        "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter), "
        "as KubeRay requires for the RayService of the same name",
        ".metadata.name",
    ),
    CelRule(
        f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
        f"metadata.name has at most {MAX_NAME_LENGTH} characters, so every name derived from it fits 63",
        ".metadata.name",
    ),
)


class InferenceDeployment(_Model):
    """An LLM served on AKS GPUs (or locally on CPU) through Ray Serve and vLLM."""

    # The envelope holds apiVersion, kind, metadata, spec and status, nothing else (kubectl's strict field
    # validation refuses other top-level fields too).

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
