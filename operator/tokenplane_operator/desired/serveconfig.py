"""InferenceDeployment -> ServingArgs: the one mapping used by `tokenplane up` and by the operator."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenplane_operator.api.v1alpha1 import (
    AcceleratorKind,
    AuthMode,
    InferenceDeployment,
    Quantization,
    RoutingPolicy,
    SourceScheme,
    SpeculativeMethod,
    parse_source,
)
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_operator.plan.spec import engine_gpu_memory_utilization
from tokenplane_serving.args import ServingArgs

__all__ = [
    "API_KEYS_DIR",
    "BATCH_REDIS_URL_ENV",
    "BLOB_DOWNLOAD_DIR",
    "MODELS_ROOT",
    "SourceVolume",
    "build_serving_args",
    "has_blob_sources",
    "resolve_source",
    "source_volumes",
]

MODELS_ROOT = "/models"
# Where replicas download Azure Blob sources (an emptyDir on each worker: a restarted pod on the node
# starts from scratch, a restarted replica in the pod skips unchanged files).
BLOB_DOWNLOAD_DIR = f"{MODELS_ROOT}/blob"
API_KEYS_DIR = "/etc/tokenplane/api-keys"
CACHE_REDIS_URL_ENV = "TOKENPLANE_CACHE_REDIS_URL"  # from spec.endpoint.cache.redisSecretRef
BATCH_REDIS_URL_ENV = "TOKENPLANE_BATCH_REDIS_URL"  # from spec.batch.redisSecretRef

_ROUTING = {
    RoutingPolicy.POWER_OF_TWO: "power_of_two",
    RoutingPolicy.PREFIX_AFFINITY: "prefix_affinity",
    RoutingPolicy.SESSION_AFFINITY: "session_affinity",
}
_AUTH = {AuthMode.NONE: "none", AuthMode.API_KEY: "api_key", AuthMode.ENTRA_ID: "entra_id"}
_SPECULATIVE = {
    SpeculativeMethod.NGRAM: "ngram",
    SpeculativeMethod.DRAFT_MODEL: "draft_model",
    SpeculativeMethod.EAGLE: "eagle",
    SpeculativeMethod.MTP: "mtp",
}


@dataclass(frozen=True)
class SourceVolume:
    """A PersistentVolumeClaim the pods mount read-only so a pvc:// source is a local path."""

    claim: str
    mount_path: str


def resolve_source(uri: str, *, local: bool = False) -> tuple[str, SourceVolume | None]:
    """Map a spec source to what ServingArgs carries, and the volume that makes it readable.

    Args:
        uri: a model or adapter source from the spec.
        local: resolve relative local paths against the current directory (for `tokenplane up`).

    Returns:
        The HF id, local path or Azure Blob URI for ServingArgs, and the claim to mount (pvc:// only).
        Azure Blob sources stay URIs: each replica downloads them to `BLOB_DOWNLOAD_DIR` before its
        engine starts, with the pod's workload identity or the `accessSecretRef` credential.

    Raises:
        ValueError: for an unsupported URI (the API model rejects those before this runs).
    """
    scheme, location = parse_source(uri)
    if scheme is SourceScheme.HUGGING_FACE:
        return location, None
    if scheme is SourceScheme.LOCAL:
        return (str(Path(location).resolve()) if local else location), None
    if scheme is SourceScheme.AZURE_BLOB:
        return uri, None
    claim, _, rest = location.partition("/")
    mount = f"{MODELS_ROOT}/pvc-{claim}"
    return f"{mount}/{rest}".rstrip("/"), SourceVolume(claim, mount)


def _sources(deployment: InferenceDeployment) -> list[str]:
    spec = deployment.spec
    uris = [spec.model.source, *(a.source for a in spec.lora.adapters)]
    if spec.engine.speculative_decoding and spec.engine.speculative_decoding.draft_model:
        uris.append(spec.engine.speculative_decoding.draft_model)
    return uris


def source_volumes(deployment: InferenceDeployment) -> list[SourceVolume]:
    """Every distinct claim the model, draft model and adapters need, in a stable order."""
    volumes: dict[str, SourceVolume] = {}
    for uri in _sources(deployment):
        _, volume = resolve_source(uri)
        if volume is not None:
            volumes.setdefault(volume.mount_path, volume)
    return list(volumes.values())


def has_blob_sources(deployment: InferenceDeployment) -> bool:
    """Whether any source (model, draft model, adapter) is in Azure Blob, so the pods download it."""
    return any(parse_source(uri)[0] is SourceScheme.AZURE_BLOB for uri in _sources(deployment))


def build_serving_args(deployment: InferenceDeployment, *, local: bool = False) -> ServingArgs:
    """Build the serving contract from an InferenceDeployment.

    The operator writes the result into the RayService's serveConfigV2; `tokenplane up` hands it to Ray
    directly. Both go through here, so a CR means the same thing locally and in the cluster.

    Args:
        deployment: a validated InferenceDeployment.
        local: resolve relative local paths against the current directory.

    Returns:
        The ServingArgs, validated by the serving package's own rules.
    """
    spec = deployment.spec
    engine, hardware, scaling = spec.engine, spec.hardware, spec.scaling
    cpu = hardware.accelerator is AcceleratorKind.CPU
    model_source, _ = resolve_source(spec.model.source, local=local)
    speculative: dict[str, Any] | None = None
    if engine.speculative_decoding is not None:
        draft = engine.speculative_decoding
        speculative = {
            "method": _SPECULATIVE[draft.method],
            "model": resolve_source(draft.draft_model, local=local)[0] if draft.draft_model else None,
            "num_speculative_tokens": draft.num_speculative_tokens,
            "prompt_lookup_max": draft.prompt_lookup_max,
        }
    scale_to_zero = scaling.scale_to_zero
    auth = spec.endpoint.auth
    args: dict[str, Any] = {
        "app_name": "llm",
        "model": {"id": deployment.served_name, "source": model_source, "revision": spec.model.revision},
        "engine": {
            "dtype": spec.model.dtype.value,
            "quantization": None if spec.model.quantization is Quantization.NONE else spec.model.quantization.value,
            "max_model_len": spec.model.max_model_len,
            "tensor_parallel_size": engine.tensor_parallel_size,
            "pipeline_parallel_size": engine.pipeline_parallel_size,
            "gpu_memory_utilization": None if cpu else engine_gpu_memory_utilization(deployment),
            "enable_prefix_caching": engine.enable_prefix_caching,
            "enable_chunked_prefill": engine.enable_chunked_prefill,
            "max_num_seqs": engine.max_num_seqs,
            "speculative": speculative,
            "enforce_eager": engine.enforce_eager,
            "extra_engine_args": dict(engine.extra_args),
        },
        "lora": {
            "adapters": [
                {"name": a.name, "source": resolve_source(a.source, local=local)[0]} for a in spec.lora.adapters
            ],
            "max_adapters_per_replica": spec.lora.max_adapters_per_replica,
            "max_lora_rank": spec.lora.max_rank,
        },
        "accelerator": _accelerator(deployment),
        "scaling": {
            "min_replicas": 0 if scale_to_zero.enabled else scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "initial_replicas": max(1, scaling.min_replicas) if scale_to_zero.enabled else None,
            "target_queue_depth": scaling.target_queue_depth,
            "schedule": [w.model_dump(by_alias=True) for w in scaling.schedule],
            "latency_target": (
                {
                    "metric": scaling.latency_target.metric.value,
                    "p95_ms": scaling.latency_target.p95_milliseconds,
                }
                if scaling.latency_target
                else None
            ),
            "upscale_delay_s": scaling.upscale_delay_seconds,
            "downscale_delay_s": scaling.downscale_delay_seconds,
            "downscale_to_zero_delay_s": scale_to_zero.idle_seconds if scale_to_zero.enabled else None,
            "hold": (
                {"seconds": scale_to_zero.hold_seconds, "max_requests": scale_to_zero.max_held_requests}
                if scale_to_zero.enabled
                else None
            ),
        },
        "routing": {"policy": _ROUTING[spec.routing.policy], "session_header": spec.routing.session_header},
        "auth": {
            "mode": _AUTH[auth.mode],
            "api_keys_dir": API_KEYS_DIR if auth.mode is AuthMode.API_KEY else None,
            "entra_tenant_id": auth.entra_tenant_id,
            "entra_audience": auth.entra_audience,
        },
        # Left out when off, so that deployments without a cache keep their serve config (and spec hash).
        "cache": {
            "enabled": True,
            "ttl_s": spec.endpoint.cache.ttl_seconds,
            "qualify": spec.endpoint.cache.qualify.value,
            "shared": spec.endpoint.cache.shared,
            "redis_url_env": CACHE_REDIS_URL_ENV,
            "scope": f"{deployment.namespace}/{deployment.name}",
        }
        if spec.endpoint.cache.enabled
        else None,
        "batch": _batch(deployment, local=local),
        "download_dir": None if local or not has_blob_sources(deployment) else BLOB_DOWNLOAD_DIR,
        "rate_limits": {
            "requests_per_minute": spec.endpoint.rate_limits.requests_per_minute,
            "tokens_per_minute": spec.endpoint.rate_limits.tokens_per_minute,
        },
        "disaggregation": {
            "enabled": spec.disaggregation.enabled,
            "prefill_replicas": spec.disaggregation.prefill_replicas,
            "decode_replicas": spec.disaggregation.decode_replicas,
            "kv_connector": spec.disaggregation.kv_connector,
        },
    }
    return ServingArgs.model_validate(_drop_none(args))


def _batch(deployment: InferenceDeployment, *, local: bool) -> dict[str, Any] | None:
    # Left out when off, so that deployments without batch keep their serve config (and spec hash).
    batch = deployment.spec.batch
    if not batch.enabled:
        return None
    if not local:
        # Replicas on several nodes share one store and one queue; `tokenplane up` makes its own of both.
        for field, value in (("redisSecretRef", batch.redis_secret_ref), ("store", batch.store)):
            if value is None:
                raise PlanError(
                    PlanErrorReason.INVALID_WORKLOAD,
                    "a cluster deployment with batch enabled needs it "
                    "(redisSecretRef: the Secret key holding the queue's Redis URL; store: an Azure Blob directory)",
                    field=f"spec.batch.{field}",
                )
    return {
        "enabled": True,
        "store": None if local else batch.store,
        "redis_url_env": BATCH_REDIS_URL_ENV,
        "max_consumers": batch.max_consumers,
        "concurrency": batch.concurrency,
        "priority": batch.priority,
        "max_replicas": batch.max_replicas,
        "sweep_interval_s": batch.sweep_interval_seconds,  # unset: left out, the serving default
        # Deployments may share one Redis: the queue and progress keys are the deployment's own.
        "scope": f"{deployment.namespace}/{deployment.name}",
    }


def _accelerator(deployment: InferenceDeployment) -> dict[str, Any]:
    hardware = deployment.spec.hardware
    if hardware.accelerator is AcceleratorKind.CPU:
        return {"kind": "cpu", "cpus_per_replica": hardware.cpu.cpus_per_replica,
                "cpu_kv_cache_gib": hardware.cpu.kv_cache_gib}  # fmt: skip
    # A MIG slice is one device to Ray and vLLM; a fraction packs replicas onto one GPU.
    gpus: float = hardware.gpu_fraction if hardware.gpu_fraction is not None else float(hardware.gpus_per_replica)
    return {"kind": "gpu", "gpus_per_replica": gpus if not math.isclose(gpus, round(gpus)) else int(gpus)}


def _drop_none(value: Any) -> Any:
    """Leave unset fields to the serving defaults instead of sending explicit nulls."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
