"""ServingArgs: the `args:` block of the serveConfigV2 application, shared by operator and serving."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenplane_serving.blob_uri import BLOB_URI_FORMS, is_blob_uri, parse_blob_uri
from tokenplane_serving.engine_arg_rules import engine_arg_problems
from tokenplane_serving.schedule import ScheduleWindow

__all__ = [
    "DEFAULT_SESSION_HEADER",
    "MANAGED_ENGINE_KEYS",
    "MIN_MAX_MODEL_LEN",
    "VLLM_SERVER_KEYS",
    "AcceleratorArgs",
    "AuthArgs",
    "BackpressureArgs",
    "BatchArgs",
    "DisaggregationArgs",
    "EngineArgs",
    "HoldArgs",
    "KvConnector",
    "LatencyTarget",
    "LoraAdapter",
    "LoraArgs",
    "ModelArgs",
    "RateLimitArgs",
    "RoutingArgs",
    "ScalingArgs",
    "ServingArgs",
    "SpeculativeArgs",
    "managed_keys_in",
    "server_engine_args",
    "unknown_engine_args",
    "vllm_engine_args",
]

DEFAULT_SESSION_HEADER = "x-session-id"

# Sources the operator must mount before writing ServingArgs; Azure Blob sources are downloaded by the replica.
_UNRESOLVED_SOURCE = re.compile(r"^pvc://")
# vLLM engine arguments that mapping.py derives from typed fields; extra_engine_args may not override them,
# or two sources of truth would disagree silently.
MANAGED_ENGINE_KEYS = frozenset(
    {
        "model", "served_model_name", "tokenizer", "revision", "dtype", "quantization", "max_model_len",
        "tensor_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization", "enable_prefix_caching",
        "enable_chunked_prefill", "max_num_seqs", "speculative_config", "enforce_eager", "enable_lora",
        "max_lora_rank", "max_loras", "max_cpu_loras", "kv_transfer_config", "distributed_executor_backend",
    }
)  # fmt: skip
# Shortest context the serving contract accepts: one KV block (vLLM's default block size is 16 tokens).
MIN_MAX_MODEL_LEN = 16
# vLLM's accepted LoRA ranks (vllm/config/lora.py).
LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
# vLLM 0.32's KV connectors (vllm/distributed/kv_transfer/kv_connector/factory.py) that move a prefilled cache from
# a prefill replica to a decode replica with what the serving image carries: NIXL (NixlConnector is the pull
# variant under its old name). Mooncake and LMCache need packages the image lacks; the others offload to CPU or
# storage, benchmark, or need per-connector config (MultiConnector) that tokenplane does not render.
KvConnector = Literal["NixlConnector", "NixlPullConnector", "NixlPushConnector"]


def managed_keys_in(extra_engine_args: Mapping[str, Any]) -> list[str]:
    """Return the pass-through engine keys that tokenplane sets from typed fields (sorted); empty when none."""
    return sorted(set(extra_engine_args) & MANAGED_ENGINE_KEYS)


@cache
def vllm_engine_args() -> frozenset[str]:
    """Return the engine argument names of the vLLM the serving image runs (`vllm_engine_args.txt`).

    Generated from vLLM's `AsyncEngineArgs` and `FrontendArgs` by `make engine-args`; a test diffs it against the
    installed vLLM, so the list cannot drift from the release the image pins.
    """
    text = resources.files(__package__).joinpath("vllm_engine_args.txt").read_text(encoding="utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


# vLLM's own HTTP server's settings (its `FrontendArgs`). Under Ray Serve that server never starts: Ray's proxy
# serves HTTP, tokenplane's endpoint authenticates, and Ray reads only the chat-template and tool-call FrontendArgs
# (ray/llm/_internal/serve/engines/vllm/vllm_engine.py). Passed through they would be ignored without a word (an
# `api_key` would leave the endpoint as open as spec.endpoint.auth has it), so each is refused with where its
# setting lives instead.
_SERVE_ELSEWHERE = "Ray Serve's proxy serves HTTP, not vLLM's server"
_TLS = "TLS terminates in front of the Service (an ingress or gateway), not in vLLM"
_CORS = "CORS belongs to the ingress or gateway in front of the Service"
_DP_SUPERVISOR = "tokenplane runs no data-parallel supervisor (data parallelism is replicas: spec.scaling)"
VLLM_SERVER_KEYS: Mapping[str, str] = {
    "api_key": "spec.endpoint.auth sets who may call (mode: apiKey with apiKeySecretRef, or entraId)",
    "host": "spec.endpoint.visibility sets who can reach the endpoint",
    "uds": "spec.endpoint.visibility sets who can reach the endpoint",
    "port": "spec.endpoint.port sets the Service's port",
    "grpc_port": "the endpoint serves HTTP on spec.endpoint.port",
    **dict.fromkeys(
        ("ssl_keyfile", "ssl_certfile", "ssl_ca_certs", "ssl_cert_reqs", "ssl_ciphers", "enable_ssl_refresh"), _TLS
    ),
    **dict.fromkeys(("allow_credentials", "allowed_origins", "allowed_methods", "allowed_headers"), _CORS),
    **dict.fromkeys(
        (
            "root_path",
            "middleware",
            "uvicorn_log_level",
            "disable_uvicorn_access_log",
            "disable_access_log_for_endpoints",
            "enable_request_id_headers",
            "disable_fastapi_docs",
            "enable_offline_docs",
            "h11_max_incomplete_event_size",
            "h11_max_header_count",
        ),
        _SERVE_ELSEWHERE,
    ),
    **dict.fromkeys(
        (
            "data_parallel_supervisor_port",
            "dp_supervisor_probe_interval_s",
            "dp_supervisor_probe_timeout_s",
            "dp_supervisor_probe_failure_threshold",
        ),
        _DP_SUPERVISOR,
    ),
}


def server_engine_args(extra_engine_args: Mapping[str, Any]) -> str | None:
    """Say which pass-through keys do not work under Ray Serve as under `vllm serve`, and why; None if none.

    Those are vLLM's own HTTP server's settings (`VLLM_SERVER_KEYS`), and a `data_parallel_size` above 1: a
    replica's resources are sized for one engine, and tokenplane runs data parallelism as replicas.
    """
    found = [
        f"{key!r} configures vLLM's own HTTP server, which does not run under Ray Serve ({VLLM_SERVER_KEYS[key]})"
        for key in sorted(extra_engine_args)
        if key in VLLM_SERVER_KEYS
    ]
    parallel = extra_engine_args.get("data_parallel_size")
    if isinstance(parallel, int) and not isinstance(parallel, bool) and parallel > 1:
        found.append(
            f"'data_parallel_size' {parallel} would start {parallel} engines in a replica whose GPUs are sized for "
            "one (tokenplane runs data parallelism as replicas: raise spec.scaling.maxReplicas)"
        )
    if not found:
        return None
    return "; ".join(found) + ("; remove the key" if len(found) == 1 else "; remove these keys")


def unknown_engine_args(extra_engine_args: Mapping[str, Any]) -> str | None:
    """Say which pass-through keys vLLM does not have, with the name each was likely meant as; None if all exist.

    A replica given one fails at start-up in the cluster (Ray builds the engine from them), long after `apply`.
    """
    known = vllm_engine_args()
    unknown = sorted(set(extra_engine_args) - known)
    if not unknown:
        return None

    def meant(key: str) -> str:
        snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).replace("-", "_").lower().lstrip("_")
        close = [snake] if snake in known else difflib.get_close_matches(snake, known, n=1, cutoff=0.75)
        return f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)

    return (
        f"vLLM has no engine argument {', '.join(meant(key) for key in unknown)}: keys are the names `vllm serve "
        "--help` lists, in snake_case (max_num_batched_tokens for --max-num-batched-tokens)"
    )


class _Args(BaseModel):
    # Unknown keys are typos in a YAML the operator wrote; failing loudly beats ignoring them.
    model_config = ConfigDict(extra="forbid")


def _check_source(value: str) -> str:
    if _UNRESOLVED_SOURCE.match(value):
        raise ValueError(f"{value!r} is not resolved: the operator mounts pvc:// sources and passes the mount path")
    if is_blob_uri(value):
        parse_blob_uri(value)  # raises ValueError naming the accepted forms
        return value
    return value.removeprefix("hf://")


class ModelArgs(_Args):
    """Which weights to serve and under what name."""

    id: str = Field(min_length=1, description="Model name clients send in the OpenAI `model` field.")
    source: str = Field(
        min_length=1,
        description=(
            "Where the weights are: a local directory (for PVC sources, the path the operator mounted), "
            f"a Hugging Face id (`org/name`; an `hf://` prefix is stripped), or an Azure Blob directory "
            f"({BLOB_URI_FORMS}) that each node downloads to `download_dir` before the engine starts."
        ),
    )
    revision: str | None = Field(default=None, description="Hugging Face revision (branch, tag or commit).")
    tokenizer_source: str | None = Field(
        default=None, description="Tokenizer location if it differs from `source` (same forms as `source`)."
    )

    @field_validator("source", "tokenizer_source")
    @classmethod
    def _resolved_source(cls, value: str | None) -> str | None:
        return None if value is None else _check_source(value)


class SpeculativeArgs(_Args):
    """Speculative decoding (vLLM `speculative_config`)."""

    method: Literal["ngram", "draft_model", "eagle", "mtp"] = Field(
        description="Proposer: prompt n-gram lookup, a draft model, an EAGLE head, or the model's MTP layers."
    )
    model: str | None = Field(
        default=None,
        description=(
            "Draft model or EAGLE head (local path, HF id or Azure Blob directory); required for draft_model/eagle."
        ),
    )
    num_speculative_tokens: int = Field(default=3, ge=1, le=16, description="Tokens proposed per step.")
    prompt_lookup_max: int | None = Field(
        default=None,
        ge=1,
        description="ngram only: longest n-gram matched in the prompt (vLLM default if unset).",
    )

    @field_validator("model")
    @classmethod
    def _model_source(cls, value: str | None) -> str | None:
        return None if value is None else _check_source(value)

    @model_validator(mode="after")
    def _method_needs(self) -> Self:
        if self.method in ("draft_model", "eagle") and not self.model:
            raise ValueError(f"speculative method {self.method!r} needs `model` (the draft model or EAGLE head)")
        if self.method != "ngram" and self.prompt_lookup_max is not None:
            raise ValueError("prompt_lookup_max applies only to speculative method 'ngram'")
        return self


class EngineArgs(_Args):
    """vLLM engine settings; each maps to an `AsyncEngineArgs` field of the same or a documented name."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="Weight and activation dtype; `auto` takes the checkpoint's."
    )
    quantization: Literal["fp8", "awq", "gptq", "int8", "bitsandbytes"] | None = Field(
        default=None,
        description=(
            "Weight quantization. `fp8` quantizes online (or reads an FP8 checkpoint); `awq`/`gptq` need a "
            "checkpoint in that format; `int8` is vLLM's online per-channel weight-only INT8 "
            "(`int8_per_channel_weight_only`), which quantizes MoE experts only (dense layers stay 16-bit); "
            "`bitsandbytes` needs vLLM's bnb plugin (vllm-bnb-plugin, since vLLM 0.28), which the serving image "
            "does not install."
        ),
    )
    max_model_len: int | None = Field(
        default=None,
        ge=MIN_MAX_MODEL_LEN,
        description="Longest prompt + completion in tokens; the model's own limit if unset.",
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one replica shards each layer across.")
    pipeline_parallel_size: int = Field(default=1, ge=1, description="Pipeline stages per replica.")
    gpu_memory_utilization: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="GPU memory fraction vLLM may use (vLLM default 0.92). GPU only.",
    )
    enable_prefix_caching: bool = Field(default=True, description="Reuse KV blocks of shared prompt prefixes.")
    enable_chunked_prefill: bool | None = Field(
        default=None,
        description="Split long prefills into chunks batched with decodes (vLLM default if unset).",
    )
    max_num_seqs: int = Field(
        default=64,
        ge=1,
        description=(
            "Sequences one engine batches at once. A replica takes a quarter more (`max_ongoing_requests`; they "
            "wait in vLLM's queue); requests beyond that wait in Ray Serve, where routing and backpressure act."
        ),
    )
    speculative: SpeculativeArgs | None = Field(default=None, description="Speculative decoding; off if unset.")
    enforce_eager: bool = Field(
        default=False, description="Skip CUDA graph capture: slower decode, faster start and less memory."
    )
    extra_engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Further vLLM engine arguments passed through unchanged. Keys must be vLLM's "
            "`AsyncEngineArgs`/`FrontendArgs` names (`vllm_engine_args`); keys tokenplane sets itself are "
            "rejected here."
        ),
    )

    @field_validator("extra_engine_args")
    @classmethod
    def _not_managed(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = managed_keys_in(value)
        if clash:
            raise ValueError(f"extra_engine_args may not set {clash}: use the typed engine fields instead")
        unknown = unknown_engine_args(value) or server_engine_args(value)
        if unknown:
            raise ValueError(unknown)
        bad = engine_arg_problems(value)
        if bad:
            raise ValueError("; ".join(f"extra_engine_args.{key}: {problem}" for key, problem in bad))
        return value


class LoraAdapter(_Args):
    """One LoRA adapter clients can address as `<model.id>:<name>`."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Adapter name (the part after `:`).")
    source: str = Field(
        min_length=1,
        description=(
            "Adapter directory (PEFT format: adapter_config.json + weights): an absolute path on the "
            "replica's node (local, or where the operator mounted a pvc:// source), or an Azure Blob "
            f"directory ({BLOB_URI_FORMS}) downloaded to `download_dir` before the engine starts."
        ),
    )

    @field_validator("source")
    @classmethod
    def _directory_or_blob(cls, value: str) -> str:
        if is_blob_uri(value):
            parse_blob_uri(value)
            return value
        if "://" in value or not value.startswith("/"):
            raise ValueError(
                f"adapter source {value!r} must be an absolute directory or an Azure Blob directory "
                f"({BLOB_URI_FORMS}); the operator mounts pvc:// sources and passes the mount path"
            )
        return value.rstrip("/") or "/"


class LoraArgs(_Args):
    """Multi-LoRA serving."""

    adapters: list[LoraAdapter] = Field(default_factory=list, description="Adapters served next to the base model.")
    max_adapters_per_replica: int = Field(
        default=16,
        ge=1,
        description="Adapters cached per replica; the least recently used is evicted past this.",
    )
    max_lora_rank: LoraRank = Field(default=16, description="Largest adapter rank accepted (vLLM `max_lora_rank`).")

    @field_validator("adapters")
    @classmethod
    def _unique_names(cls, adapters: list[LoraAdapter]) -> list[LoraAdapter]:
        names = [a.name for a in adapters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate LoRA adapter names: {duplicates}")
        return adapters


class AcceleratorArgs(_Args):
    """What one replica runs on."""

    kind: Literal["cpu", "gpu"] = Field(default="gpu", description="`cpu` for local runs and tests, `gpu` on AKS.")
    gpus_per_replica: float | None = Field(
        default=None,
        gt=0,
        description=(
            "GPUs per replica. Unset means tensor_parallel_size x pipeline_parallel_size. A fraction "
            "(e.g. 0.5) packs replicas of a small model on one GPU and needs both parallel sizes 1. GPU only."
        ),
    )
    accelerator_type: str | None = Field(
        default=None,
        description="Ray accelerator type the replica must land on (e.g. `A100-80G`, `H100`). GPU only.",
    )
    cpus_per_replica: float = Field(default=1.0, gt=0, description="Ray CPUs reserved per engine worker.")
    cpu_kv_cache_gib: int | None = Field(
        default=None,
        ge=1,
        description=(
            "CPU only: KV cache size in GiB, set as VLLM_CPU_KVCACHE_SPACE in the replica's runtime_env "
            "(vLLM reads it as an integer). Defaults to 1 for `cpu`."
        ),
    )

    @model_validator(mode="after")
    def _kind_rules(self) -> Self:
        if self.kind == "cpu":
            if self.accelerator_type is not None:
                raise ValueError("accelerator_type is for GPUs; remove it when kind is 'cpu'")
            if self.gpus_per_replica is not None:
                raise ValueError("gpus_per_replica is for GPUs; remove it when kind is 'cpu'")
            if self.cpu_kv_cache_gib is None:
                # vLLM's CPU default (4 GiB, or a fraction of RAM) is too much for a laptop or a CI runner.
                self.cpu_kv_cache_gib = 1
        elif self.cpu_kv_cache_gib is not None:
            raise ValueError("cpu_kv_cache_gib applies only when kind is 'cpu'")
        return self


class LatencyTarget(_Args):
    """Latency objective for the latency-aware autoscaling policy."""

    metric: Literal["ttft", "e2e"] = Field(description="Time to first token, or end-to-end request latency.")
    p95_ms: float = Field(gt=0, description="Target 95th percentile in milliseconds.")


class HoldArgs(_Args):
    """Requests that arrive at zero replicas: how long they wait for one, and how many wait at once."""

    seconds: float = Field(gt=0, description="Wait for a replica this long, then answer 503 with Retry-After.")
    max_requests: int = Field(ge=1, description="Requests waiting at once; one more is answered 429 with Retry-After.")


class ScalingArgs(_Args):
    """Replica autoscaling (Ray Serve `autoscaling_config`)."""

    min_replicas: int = Field(default=1, ge=0, description="Floor; 0 allows scale to zero.")
    max_replicas: int = Field(default=1, ge=1, description="Ceiling.")
    initial_replicas: int | None = Field(
        default=None, ge=0, description="Replicas at deploy time; `min_replicas` (at least 1) if unset."
    )
    target_ongoing_requests: float | None = Field(
        default=None,
        gt=0,
        description=(
            "In-flight plus queued requests per replica the autoscaler aims for. Unset: 3/4 of "
            "max_ongoing_requests (Ray Serve LLM's own default is 1e9, which never scales)."
        ),
    )
    target_queue_depth: float = Field(
        default=8.0,
        gt=0,
        description="Waiting requests (Serve-queued plus engine-waiting) per replica before the policy scales out.",
    )
    latency_target: LatencyTarget | None = Field(
        default=None, description="Scale on the fleet's latency percentile as well as on queue depth."
    )
    schedule: list[ScheduleWindow] = Field(
        default_factory=list, description="Time windows that keep a minimum replica count."
    )
    upscale_delay_s: float = Field(default=30.0, ge=0, description="How long demand must stay high before adding.")
    downscale_delay_s: float = Field(default=600.0, ge=0, description="How long demand must stay low before removing.")
    downscale_to_zero_delay_s: float | None = Field(
        default=None, ge=0, description="Extra wait before the last replica goes (needs min_replicas 0)."
    )
    hold: HoldArgs | None = Field(
        default=None, description="Hold requests that arrive at zero replicas (needs min_replicas 0); unset: Ray's."
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not (self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError(
                f"initial_replicas ({self.initial_replicas}) must lie between min_replicas "
                f"({self.min_replicas}) and max_replicas ({self.max_replicas})"
            )
        if self.downscale_to_zero_delay_s is not None and self.min_replicas != 0:
            raise ValueError("downscale_to_zero_delay_s needs min_replicas 0")
        if self.hold is not None and self.min_replicas != 0:
            raise ValueError("hold needs min_replicas 0")
        return self


class BackpressureArgs(_Args):
    """What happens when replicas are full."""

    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        description="In-flight requests per replica; unset means engine.max_num_seqs plus a quarter.",
    )
    max_queued_requests: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Requests queued per ingress replica before rejecting with `status_code`. Unset: "
            "max_ongoing_requests x scaling.max_replicas (one full batch per replica the fleet may grow to)."
        ),
    )
    retry_after_s: int | None = Field(
        default=None, ge=0, description="Seconds in the Retry-After header of rejections; unset means 1."
    )
    status_code: Literal[429, 503] = Field(default=503, description="HTTP status of a rejection.")


class RoutingArgs(_Args):
    """How a request picks a replica."""

    policy: Literal["power_of_two", "prefix_affinity", "session_affinity"] = Field(
        default="power_of_two",
        description=(
            "`power_of_two`: less loaded of two random replicas (Serve default). `prefix_affinity`: replica "
            "whose cache holds the longest prompt prefix. `session_affinity`: consistent hash of the session "
            "header."
        ),
    )
    session_header: str = Field(
        default=DEFAULT_SESSION_HEADER,
        pattern=r"^[A-Za-z0-9-]+$",
        description="HTTP header carrying the session id (session_affinity).",
    )


class AuthArgs(_Args):
    """Client authentication at the ingress."""

    mode: Literal["none", "api_key", "entra_id"] = Field(default="none", description="How clients authenticate.")
    api_keys_dir: str | None = Field(default=None, description="Mounted Secret directory, one key per file (api_key).")
    entra_tenant_id: str | None = Field(default=None, description="Microsoft Entra tenant id (entra_id).")
    entra_audience: str | None = Field(default=None, description="Expected `aud` claim (entra_id).")
    entra_jwks_path: str | None = Field(default=None, description="Local JWKS file instead of fetching (entra_id).")
    entra_jwks_url: str | None = Field(default=None, description="JWKS URL; derived from the tenant if unset.")

    @model_validator(mode="after")
    def _mode_needs(self) -> Self:
        if self.mode == "api_key" and not self.api_keys_dir:
            raise ValueError("auth mode 'api_key' needs api_keys_dir")
        if self.mode == "entra_id" and not (self.entra_tenant_id and self.entra_audience):
            raise ValueError("auth mode 'entra_id' needs entra_tenant_id and entra_audience")
        if self.entra_jwks_path and self.entra_jwks_url:
            raise ValueError("set at most one of entra_jwks_path and entra_jwks_url")
        return self


class CacheArgs(_Args):
    """The response cache (`tokenplane_serving.cache`)."""

    enabled: bool = Field(default=False, description="Answer repeated requests from Redis.")
    ttl_s: int = Field(default=3600, ge=1, description="Seconds an answer stays valid.")
    qualify: Literal["deterministic", "all"] = Field(default="deterministic", description="Which requests qualify.")
    shared: bool = Field(default=False, description="Callers share entries (else keyed per API key / subject).")
    redis_url_env: str | None = Field(default=None, description="Environment variable holding the Redis URL.")
    scope: str | None = Field(
        default=None,
        description=(
            "The deployment's identity (`<namespace>/<name>` from the operator): part of every key, so deployments "
            "sharing one Redis never answer from each other's entries (nor their same-named API keys)."
        ),
    )

    @model_validator(mode="after")
    def _needs_redis(self) -> Self:
        if self.enabled and not self.redis_url_env:
            raise ValueError("an enabled cache needs redis_url_env")
        return self


class BatchArgs(_Args):
    """The OpenAI Batch API (`/v1/files`, `/v1/batches`), run at low priority by queue consumers."""

    enabled: bool = Field(default=False, description="Serve the Batch API and run batch consumers.")
    store: str | None = Field(
        default=None,
        description=(
            "Where files, batch records and results live: an absolute directory shared by the replicas, or "
            f"an Azure Blob directory ({BLOB_URI_FORMS}). Unset: `~/.cache/tokenplane/batch/<app_name>` of "
            "each process, for local runs."
        ),
    )
    redis_url_env: str = Field(
        default="TOKENPLANE_BATCH_REDIS_URL",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable holding the Redis URL of the batch queue (the Celery broker).",
    )
    max_consumers: int = Field(
        default=1, ge=1, description="Most consumer replicas (scaled on the queue's length, down to zero)."
    )
    concurrency: int = Field(
        default=4,
        ge=1,
        description="Batch requests one consumer keeps in flight; with max_consumers, the batch's share of the engine.",
    )
    priority: int = Field(
        default=10,
        ge=1,
        description="vLLM priority of batch requests (interactive ones are 0; larger runs later).",
    )
    max_replicas: int = Field(
        default=1,
        ge=0,
        description=(
            "The batch's GPU budget: most LLM replicas batch requests alone may keep running. Batch never makes "
            "the fleet grow for itself; 0 runs it only on replicas interactive traffic keeps."
        ),
    )
    redelivery_timeout_s: int = Field(
        default=300,
        ge=5,
        description="Seconds before a request whose consumer died is handed to another (longer than one request).",
    )
    sweep_interval_s: int = Field(
        default=60,
        ge=1,
        le=3600,
        description=(
            "Seconds between each API replica's sweep of the open batches: a batch nobody reads still expires, closes"
            " after its cancel's grace and recovers from a Redis loss within it. Each sweep reads every open batch's"
            " record from the store once."
        ),
    )
    max_file_mib: int = Field(
        default=200,
        ge=1,
        le=512,
        description=(
            "Largest batch input file accepted, in MiB: 200 holds every file OpenAI accepts (200 MB). An upload is held"
            " in the API replica's memory once (200 MiB), and a batch's start holds the file and its parsed requests"
            " (about 2.2x the file: 450 MiB); both run next to the engine, so lower it on small nodes."
        ),
    )
    scope: str | None = Field(
        default=None,
        description=(
            "The deployment's identity (`<namespace>/<name>` from the operator): names its queue and Redis keys, so "
            "deployments sharing one Redis never take each other's work. Unset: `app_name` (local runs)."
        ),
    )

    @field_validator("store")
    @classmethod
    def _store_location(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if is_blob_uri(value):
            parse_blob_uri(value)  # raises ValueError naming the accepted forms
            return value
        if not value.startswith("/"):
            raise ValueError(
                f"batch store {value!r} must be an absolute directory or an Azure Blob directory ({BLOB_URI_FORMS})"
            )
        return value


class RateLimitArgs(_Args):
    """Per-caller limits: a caller is an API key (its Secret key name), an Entra subject, or a client address."""

    requests_per_minute: int | None = Field(default=None, ge=1, description="Requests per minute per caller.")
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Tokens per minute per caller, charged at admission as OpenAI does: the prompt's estimated "
            "tokens plus the request's max_tokens."
        ),
    )


class DisaggregationArgs(_Args):
    """Prefill/decode disaggregation (GPU only: it needs a KV connector such as NIXL)."""

    enabled: bool = Field(default=False, description="Run prefill and decode in separate replica groups.")
    prefill_replicas: int = Field(default=1, ge=1, description="Prefill replicas.")
    decode_replicas: int = Field(default=1, ge=1, description="Decode replicas.")
    kv_connector: KvConnector = Field(
        default="NixlConnector", description="vLLM KV connector moving the prefilled cache."
    )


class ServingArgs(_Args):
    """Everything `tokenplane_serving.app:build_app` needs; written by the operator into serveConfigV2."""

    app_name: str = Field(
        default="llm", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Ray Serve application name."
    )
    model: ModelArgs = Field(description="Model to serve.")
    engine: EngineArgs = Field(default_factory=EngineArgs, description="vLLM engine settings.")
    lora: LoraArgs = Field(default_factory=LoraArgs, description="LoRA adapters.")
    accelerator: AcceleratorArgs = Field(default_factory=AcceleratorArgs, description="Replica hardware.")
    scaling: ScalingArgs = Field(default_factory=ScalingArgs, description="Autoscaling.")
    backpressure: BackpressureArgs = Field(default_factory=BackpressureArgs, description="Overload behaviour.")
    routing: RoutingArgs = Field(default_factory=RoutingArgs, description="Request routing.")
    auth: AuthArgs = Field(default_factory=AuthArgs, description="Client authentication.")
    cache: CacheArgs = Field(default_factory=CacheArgs, description="Response cache.")
    batch: BatchArgs = Field(default_factory=BatchArgs, description="OpenAI Batch API.")
    rate_limits: RateLimitArgs = Field(default_factory=RateLimitArgs, description="Per-caller rate limits.")
    disaggregation: DisaggregationArgs = Field(
        default_factory=DisaggregationArgs, description="Prefill/decode disaggregation."
    )
    drain_grace_period_s: float = Field(
        default=30.0, ge=0, description="How long a stopping replica may finish in-flight requests."
    )
    download_dir: str | None = Field(
        default=None,
        pattern=r"^/",
        description=(
            "Absolute directory each node downloads Azure Blob sources into (`ACCOUNT/CONTAINER/PATH` below "
            "it; unchanged files are kept across restarts). Unset: `~/.cache/tokenplane/blob` of the process "
            "that builds the app, for local runs; the operator sets a volume's mount path."
        ),
    )

    @model_validator(mode="after")
    def _cross_field(self) -> Self:
        engine, accel = self.engine, self.accelerator
        parallel = engine.tensor_parallel_size * engine.pipeline_parallel_size
        if accel.kind == "cpu":
            if parallel > 1:
                raise ValueError(
                    "tensor_parallel_size and pipeline_parallel_size must be 1 on kind 'cpu' "
                    f"(got {engine.tensor_parallel_size} x {engine.pipeline_parallel_size})"
                )
            if engine.gpu_memory_utilization is not None:
                raise ValueError("gpu_memory_utilization is for GPUs; remove it when kind is 'cpu'")
            if self.disaggregation.enabled:
                raise ValueError("prefill/decode disaggregation needs GPUs and a KV connector; not on kind 'cpu'")
        policy = engine.extra_engine_args.get("scheduling_policy")
        if self.batch.enabled and policy not in (None, "priority"):
            raise ValueError(
                f"batch needs vLLM's priority scheduling; remove scheduling_policy {policy!r} from extra_engine_args"
            )
        gpus = accel.gpus_per_replica
        if gpus is not None:
            if gpus < 1 and parallel > 1:
                raise ValueError(f"fractional gpus_per_replica ({gpus}) needs tensor and pipeline parallel size 1")
            if gpus >= 1 and gpus != parallel:
                raise ValueError(
                    f"gpus_per_replica ({gpus:g}) must equal tensor_parallel_size x pipeline_parallel_size "
                    f"({parallel}); each engine worker takes one GPU"
                )
        max_ongoing = self.effective_max_ongoing_requests
        target = self.scaling.target_ongoing_requests
        if target is not None and target > max_ongoing:
            raise ValueError(
                f"scaling.target_ongoing_requests ({target:g}) exceeds max_ongoing_requests ({max_ongoing}): "
                "replicas would never report enough load to scale up"
            )
        return self

    @property
    def effective_max_ongoing_requests(self) -> int:
        """The batch the policy and the default queue are sized by.

        `backpressure.max_ongoing_requests`, else `engine.max_num_seqs` (`replica_slots` adds a quarter to the latter).
        """
        return self.backpressure.max_ongoing_requests or self.engine.max_num_seqs

    @property
    def replica_slots(self) -> int:
        """Requests Ray lets one replica run at once (its `max_ongoing_requests`).

        `backpressure.max_ongoing_requests` when set; else the engine's batch plus a quarter, rounded up. With
        exactly the batch, a closed loop at the batch size made new requests wait for a slot in the replica while
        the engine had room: `tokenplane up` on the tiny model, c=16, 6 runs each, 565-1,446 against 1,475-1,965
        output tok/s and P95 TTFT up to 4.7 s against 0.13-0.62 s. The spare requests wait in vLLM's queue,
        which the waiting gauges and the autoscaling policy count; the policy still sizes by the batch.
        """
        if self.backpressure.max_ongoing_requests is not None:
            return self.backpressure.max_ongoing_requests
        return self.engine.max_num_seqs + math.ceil(self.engine.max_num_seqs / 4)

    @property
    def effective_max_queued_requests(self) -> int:
        """Per-ingress-replica queue bound: `backpressure.max_queued_requests`, else derived from the batch size."""
        if self.backpressure.max_queued_requests is not None:
            return self.backpressure.max_queued_requests
        return self.effective_max_ongoing_requests * self.scaling.max_replicas

    def to_serve_yaml_args(self) -> dict[str, Any]:
        """Dump for serveConfigV2 `applications[].args`: JSON-able, snake_case, unset options omitted.

        Returns:
            A dict that `ServingArgs.model_validate` turns back into an equal object.
        """
        return self.model_dump(mode="json", exclude_none=True)
