"""ServingArgs -> Ray Serve LLM config dicts; pure functions, importable without Ray or vLLM."""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

from tokenplane_serving.args import DEFAULT_SESSION_HEADER, ServingArgs
from tokenplane_serving.blob_uri import is_blob_uri, local_dir_for, parse_blob_uri

__all__ = [
    "ADMISSION_ENV",
    "AUTOSCALING_POLICY",
    "BLOB_DOWNLOAD_CALLBACK",
    "CONSISTENT_HASH_ROUTER",
    "FAST_PATH_ENV",
    "HOLD_ENV",
    "PREFIX_AFFINITY_ROUTER",
    "QUANTIZATION_TO_VLLM",
    "SKIP_NODE_INIT_CALLBACK",
    "blob_sources",
    "build_llm_config",
    "build_lora_adapter_paths",
    "build_openai_app_args",
    "build_pd_openai_app_args",
    "build_policy_kwargs",
    "check_engine_kwargs",
    "compute_target_ongoing_requests",
    "hold_environment",
    "lora_engine_kwargs",
    "ray_environment",
]

# Ray's prefix-cache and consistent-hash routers, fixed for direct streaming's pick-only routing (routers.py).
PREFIX_AFFINITY_ROUTER = "tokenplane_serving.routers:PrefixAffinityRouter"
# Ray's consistent hash is experimental in Ray 2.60 but the only built-in session router; Ray Serve LLM's ingress
# forwards the session header to the LLMServer handle, so the ring hashes the client's session id.
CONSISTENT_HASH_ROUTER = "tokenplane_serving.routers:SessionAffinityRouter"
# Ray reads the session header's name from this env var, once per process (proxy and ingress replicas).
_SESSION_HEADER_ENV = "RAY_SERVE_SESSION_ID_HEADER_KEY"
# Ray's environment for tokenplane's data plane, on every Ray node before Ray starts (the operator's
# RayService sets it; `serve_local` sets it for its own Ray). HAProxy replaces Ray's Python HTTP proxy;
# direct streaming makes the LLMServer replica the ingress (one hop less, no 50 ms response batching);
# the router gets the request body, so prefix affinity and LoRA routing still see the prompt and model;
# Ray's HTTP callback puts tokenplane's counter in front of each replica's admission, so the requests that
# wait there for a slot are seen (`tokenplane_serving.occupancy`).
FAST_PATH_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
    "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "1",
    # Ray starts worker processes at niceness 15 (ray_config_def.h `worker_niceness`), and the vLLM engine is a
    # child of its replica's worker: any busy process on the node (Ray's agents, a sidecar) would preempt the
    # engine. On a serving node the engine is the workload, so it runs at the default priority.
    "RAY_worker_niceness": "0",
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "tokenplane_serving.occupancy:http_middlewares",
    # The replica's user code (vLLM's app and engine client, tokenplane's features) on the replica's main event
    # loop, as in Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED preset (ray/serve/_private/constants.py), instead of a
    # second loop on its own thread: otherwise every streamed chunk crosses threads (py-spy: Ray's per-chunk
    # `enqueue` was the largest self cost in the replica). Measured at c=1: 176 vs 101 tok/s, mean ITL 6.2 vs 10.6 ms.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
}

# The hold at zero replicas (`ScalingArgs.hold`), for the middleware of Ray's fallback proxy
# (`tokenplane_serving.hold`): the seconds a request waits, how many wait at once, and the application whose
# replicas end the wait. Read once per process, like Ray's own variables, so they are in every pod's env.
HOLD_ENV = ("TOKENPLANE_HOLD_SECONDS", "TOKENPLANE_HOLD_MAX_REQUESTS", "TOKENPLANE_HOLD_APP")

# A replica's admission bound, enforced by `tokenplane_serving.occupancy` in the replica's HTTP server: requests
# running or waiting at most (the replica's slots + max_queued_requests), and the refusal's status and Retry-After.
ADMISSION_ENV = (
    "TOKENPLANE_REPLICA_CAPACITY",
    "TOKENPLANE_BACKPRESSURE_STATUS",
    "TOKENPLANE_BACKPRESSURE_RETRY_AFTER_S",
)

# Our quantization names -> vLLM's `quantization` values (vllm/model_executor/layers/quantization).
QUANTIZATION_TO_VLLM: dict[str, str] = {
    "fp8": "fp8",
    "awq": "awq",  # vLLM upgrades to awq_marlin on GPUs that support it
    "gptq": "gptq",  # likewise gptq_marlin
    # Online per-channel INT8 weight-only, and in vLLM 0.32 on MoE experts only: its config has no `linear` spec
    # (vllm/config/quantization.py), so a dense model loads unquantized. `tokenplane validate` refuses int8 on a
    # dense model, and the planner counts 1 byte only for routed-expert parameters (plan/memory.py).
    "int8": "int8_per_channel_weight_only",
    # vLLM 0.28 moved bitsandbytes out of tree into vllm-bnb-plugin (vllm-project/vllm#43529): no 0.32 build has
    # it without that plugin, which the serving image does not install. `tokenplane validate` refuses it on GPUs;
    # build_app rejects it wherever vLLM lacks it.
    "bitsandbytes": "bitsandbytes",
}

# Ray Serve LLM's node-initialization callback that downloads Azure Blob sources on each node of a replica.
BLOB_DOWNLOAD_CALLBACK = "tokenplane_serving.blob:BlobDownloadCallback"
# Without a Blob source Ray's node initialization has nothing to do but still costs a task (node_init.py).
SKIP_NODE_INIT_CALLBACK = "tokenplane_serving.node_init:SkipNodeInitCallback"
_DEFAULT_DOWNLOAD_DIR = "~/.cache/tokenplane/blob"
AUTOSCALING_POLICY = "tokenplane_serving.autoscale:TokenplanePolicy"
# Ray Serve LLM's 10 s health-check timeout is tight for a one-token probe behind full CPU batches.
_HEALTH_CHECK_PERIOD_S = 10.0
_HEALTH_CHECK_TIMEOUT_S = 20.0
# How often a draining replica checks whether its last request finished.
_DRAIN_POLL_S = 1.0


def _download_root(args: ServingArgs) -> str:
    return args.download_dir or os.path.expanduser(_DEFAULT_DOWNLOAD_DIR)


def _local(source: str, args: ServingArgs) -> str:
    # What vLLM reads: a blob source's download directory, else the source itself.
    return local_dir_for(parse_blob_uri(source), _download_root(args)) if is_blob_uri(source) else source


def blob_sources(args: ServingArgs) -> list[tuple[str, str]]:
    """Every Azure Blob source (model, tokenizer, draft model, adapters) and the directory it is downloaded to.

    Args:
        args: Validated serving args.

    Returns:
        `(uri, local directory)` pairs, one per distinct directory, in a stable order.
    """
    speculative = args.engine.speculative
    uris = [
        args.model.source,
        args.model.tokenizer_source,
        speculative.model if speculative else None,
        *(adapter.source for adapter in args.lora.adapters),
    ]
    found: dict[str, str] = {}
    for uri in uris:
        if uri and is_blob_uri(uri):
            found.setdefault(_local(uri, args), uri)
    return [(uri, local) for local, uri in found.items()]


def compute_target_ongoing_requests(args: ServingArgs) -> float:
    """Per-replica load the autoscaler aims for.

    Args:
        args: Validated serving args.

    Returns:
        `scaling.target_ongoing_requests`, else 3/4 of the per-replica in-flight cap: scale out before
        replicas saturate, but only once batches are mostly full (a GPU is cheapest per token then).
    """
    if args.scaling.target_ongoing_requests is not None:
        return args.scaling.target_ongoing_requests
    return float(max(1, args.effective_max_ongoing_requests * 3 // 4))


def build_policy_kwargs(args: ServingArgs) -> dict[str, Any]:
    """Arguments of `TokenplanePolicy` for a deployment (JSON-serialisable, as Serve requires).

    Args:
        args: Validated serving args.

    Returns:
        The batch cap, queue and latency targets, floor, scale-in delay and schedule windows.
    """
    scaling = args.scaling
    kwargs: dict[str, Any] = {
        "max_ongoing_requests": args.effective_max_ongoing_requests,
        "target_queue_depth": scaling.target_queue_depth,
        "min_replicas": scaling.min_replicas,
        "downscale_delay_s": scaling.downscale_delay_s,
    }
    if scaling.latency_target is not None:
        kwargs["metric"] = scaling.latency_target.metric
        kwargs["p95_ms"] = scaling.latency_target.p95_ms
    if scaling.schedule:
        kwargs["schedule"] = [w.model_dump(by_alias=True) for w in scaling.schedule]
    if args.batch.enabled:
        kwargs["batch_max_replicas"] = args.batch.max_replicas
    return kwargs


def lora_engine_kwargs(
    *, adapters: int, max_adapters_per_replica: int, max_rank: int, max_num_seqs: int
) -> dict[str, Any]:
    """Give the LoRA settings vLLM gets for a deployment: one rule for the engine and the planner's memory model.

    vLLM preallocates `max_loras` GPU slots of `max_lora_rank` on every LoRA-wrapped layer at engine start
    (`vllm/lora/layers/`), so these two numbers size GPU memory. `max_loras` is the adapters one batch may mix
    and `max_cpu_loras` the adapters the engine keeps loaded (`vllm/config/lora.py`): Ray's multiplexing keeps
    `maxAdaptersPerReplica` loaded, and a batch of `max_num_seqs` sequences mixes at most that many of them.

    Args:
        adapters: Adapters the deployment serves (none: LoRA stays off).
        max_adapters_per_replica: Adapters a replica keeps loaded (the CR's `lora.maxAdaptersPerReplica`).
        max_rank: Largest adapter rank (the CR's `lora.maxRank`).
        max_num_seqs: Most sequences one batch holds (the CR's `engine.maxNumSeqs`).

    Returns:
        `enable_lora`, `max_lora_rank`, `max_loras` and `max_cpu_loras`; empty without adapters.
    """
    if not adapters:
        return {}
    return {
        "enable_lora": True,
        "max_lora_rank": max_rank,
        # GPU slots beyond the batch's sequences would never hold an adapter: 128 adapters at the default 64
        # sequences preallocated 128 slots, half of them never used.
        "max_loras": min(max_adapters_per_replica, max_num_seqs),
        "max_cpu_loras": max_adapters_per_replica,
    }


def _engine_kwargs(args: ServingArgs) -> dict[str, Any]:
    engine = args.engine
    kwargs: dict[str, Any] = {
        "dtype": engine.dtype,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "pipeline_parallel_size": engine.pipeline_parallel_size,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "max_num_seqs": engine.max_num_seqs,
        "enforce_eager": engine.enforce_eager,
    }
    optional = {
        "max_model_len": engine.max_model_len,
        "enable_chunked_prefill": engine.enable_chunked_prefill,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "revision": args.model.revision,
        "quantization": QUANTIZATION_TO_VLLM[engine.quantization] if engine.quantization else None,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if engine.speculative is not None:
        spec = engine.speculative
        kwargs["speculative_config"] = {
            k: v
            for k, v in {
                "method": spec.method,
                "model": _local(spec.model, args) if spec.model else None,
                "num_speculative_tokens": spec.num_speculative_tokens,
                "prompt_lookup_max": spec.prompt_lookup_max,
            }.items()
            if v is not None
        }
    kwargs.update(
        lora_engine_kwargs(
            adapters=len(args.lora.adapters),
            max_adapters_per_replica=args.lora.max_adapters_per_replica,
            max_rank=args.lora.max_lora_rank,
            max_num_seqs=args.engine.max_num_seqs,
        )
    )
    if args.batch.enabled:
        # Batch requests carry a priority above 0: the engine admits interactive requests (0) first.
        kwargs["scheduling_policy"] = "priority"
    kwargs.update(args.engine.extra_engine_args)
    return kwargs


def ray_environment(args: ServingArgs) -> dict[str, str]:
    """Environment every Ray node serving `args` needs before Ray starts.

    Args:
        args: Validated serving args.

    Returns:
        `FAST_PATH_ENV`, plus the session header's name when session affinity uses a custom one (Ray's
        router and HAProxy read it from their process environment), plus `hold_environment`.
    """
    env = dict(FAST_PATH_ENV)
    if args.routing.policy == "session_affinity" and args.routing.session_header != DEFAULT_SESSION_HEADER:
        env[_SESSION_HEADER_ENV] = args.routing.session_header
    return {**env, **hold_environment(args)}


def _retry_after_s(args: ServingArgs) -> int:
    retry_after = args.backpressure.retry_after_s
    return retry_after if retry_after is not None else 1


def _admission_environment(args: ServingArgs) -> dict[str, str]:
    capacity = args.replica_slots + args.effective_max_queued_requests
    values = (str(capacity), str(args.backpressure.status_code), str(_retry_after_s(args)))
    return dict(zip(ADMISSION_ENV, values, strict=True))


def hold_environment(args: ServingArgs) -> dict[str, str]:
    """Render the hold at zero replicas as the environment of Ray's fallback proxy (`HOLD_ENV`).

    Args:
        args: Validated serving args.

    Returns:
        The three variables when `scaling.hold` is set, else none (Ray's fallback proxy as Ray ships it).
    """
    hold = args.scaling.hold
    if hold is None:
        return {}
    seconds, max_requests, app = HOLD_ENV
    return {seconds: f"{hold.seconds:g}", max_requests: str(hold.max_requests), app: args.app_name}


def build_lora_adapter_paths(args: ServingArgs) -> dict[str, str]:
    """Adapter name -> directory, as the LLMServer replica loads them.

    Args:
        args: Validated serving args.

    Returns:
        One entry per configured adapter.

    Azure Blob adapters map to their download directory (the node-initialization callback fills it).
    """
    return {adapter.name: _local(adapter.source, args) for adapter in args.lora.adapters}


def _lora_config(args: ServingArgs) -> dict[str, Any] | None:
    if not args.lora.adapters:
        return None
    # No dynamic_lora_loading_path: tokenplane's LLMServer resolves names to local directories.
    return {"max_num_adapters_per_replica": args.lora.max_adapters_per_replica}


def _request_router_config(args: ServingArgs) -> dict[str, Any] | None:
    policy = args.routing.policy
    if policy == "prefix_affinity":
        return {"request_router_class": PREFIX_AFFINITY_ROUTER}
    if policy == "session_affinity":
        return {
            "request_router_class": CONSISTENT_HASH_ROUTER,
            "request_router_kwargs": {"num_virtual_nodes": 100, "num_fallback_replicas": 2},
        }
    return None  # power_of_two is Serve's default router


def _deployment_config(args: ServingArgs, *, fixed_replicas: int | None = None) -> dict[str, Any]:
    scaling, bp = args.scaling, args.backpressure
    if fixed_replicas is not None:
        autoscaling: dict[str, Any] = {
            "min_replicas": fixed_replicas,
            "max_replicas": fixed_replicas,
            "initial_replicas": fixed_replicas,
        }
    else:
        # The policy owns scale-in hysteresis (it sizes for the busiest load of the last downscale_delay_s), so
        # Serve's own downscale delay is 0: Serve holds every scale-in decision that long again otherwise, and
        # the two stack (600 s + 600 s). The 1 -> 0 step keeps Serve's downscale_to_zero_delay_s (idle time).
        autoscaling = {
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "upscale_delay_s": scaling.upscale_delay_s,
            "downscale_delay_s": 0.0,
        }
        if scaling.initial_replicas is not None:
            autoscaling["initial_replicas"] = scaling.initial_replicas
        if scaling.downscale_to_zero_delay_s is not None:
            autoscaling["downscale_to_zero_delay_s"] = scaling.downscale_to_zero_delay_s
    # Ray Serve LLM defaults both to 1e9: routing would ignore load and autoscaling would never fire.
    autoscaling["target_ongoing_requests"] = compute_target_ongoing_requests(args)
    if fixed_replicas is None:
        autoscaling["policy"] = {"policy_function": AUTOSCALING_POLICY, "policy_kwargs": build_policy_kwargs(args)}
    config: dict[str, Any] = {
        "max_ongoing_requests": args.replica_slots,
        # Bounded: past it the ingress answers 429/503 + Retry-After at once instead of buffering. A direct-ingress
        # replica of Ray 2.60 counts a request as queued from admission until its task takes a slot, even a free
        # slot (replica.py `_track_queued_request`, "its possible that we drop more requests than actual
        # max_queued_requests"): a burst in one event-loop turn was refused beyond max_queued_requests with
        # every slot free. So Ray's bound leaves room for the slots, and the replica's own admission
        # (occupancy.py, `ADMISSION_ENV`) enforces the exact one.
        "max_queued_requests": args.effective_max_queued_requests + args.replica_slots,
        "autoscaling_config": autoscaling,
        "graceful_shutdown_timeout_s": args.drain_grace_period_s,
        "graceful_shutdown_wait_loop_s": _DRAIN_POLL_S,
        "health_check_period_s": _HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": _HEALTH_CHECK_TIMEOUT_S,
    }
    # Always set: the handle's BackPressureError carries these, and the ingress answers with them.
    config["backpressure_config"] = {
        "status_code": bp.status_code,
        "retry_after_s": _retry_after_s(args),
    }
    router = _request_router_config(args)
    if router is not None:
        config["request_router_config"] = router
    return config


def _placement_group_config(args: ServingArgs) -> dict[str, Any]:
    accel, engine = args.accelerator, args.engine
    workers = engine.tensor_parallel_size * engine.pipeline_parallel_size
    if accel.kind == "cpu":
        return {"bundles": [{"CPU": accel.cpus_per_replica}], "strategy": "PACK"}
    per_worker = (accel.gpus_per_replica / workers) if accel.gpus_per_replica else 1.0
    return {
        "bundles": [{"GPU": per_worker, "CPU": accel.cpus_per_replica} for _ in range(workers)],
        # TP shards talk every layer, so keep them on one node; PP stages may span nodes.
        "strategy": "STRICT_PACK" if engine.pipeline_parallel_size == 1 else "PACK",
    }


def build_llm_config(args: ServingArgs) -> dict[str, Any]:
    """Build the `ray.serve.llm.LLMConfig` for one model, as a plain dict.

    Args:
        args: Validated serving args.

    Returns:
        A dict `LLMConfig(**d)` accepts: model_loading_config, accelerator_config, engine_kwargs
        (vLLM argument names only), deployment_config (load-derived max_ongoing_requests, autoscaling,
        backpressure, router), placement_group_config, runtime_env, lora_config when adapters exist, and
        callback_config (the blob download when a source is in Azure Blob, else skipping Ray's node initialization).
    """
    accel = args.accelerator
    loading: dict[str, Any] = {"model_id": args.model.id, "model_source": _local(args.model.source, args)}
    if args.model.tokenizer_source:
        loading["tokenizer_source"] = _local(args.model.tokenizer_source, args)
    env_vars: dict[str, str] = {}
    if accel.kind == "cpu":
        env_vars["VLLM_CPU_KVCACHE_SPACE"] = str(accel.cpu_kv_cache_gib)
    if args.routing.policy == "session_affinity" and args.routing.session_header != DEFAULT_SESSION_HEADER:
        env_vars[_SESSION_HEADER_ENV] = args.routing.session_header
    env_vars.update(_admission_environment(args))

    config: dict[str, Any] = {
        "model_loading_config": loading,
        "accelerator_config": {"kind": accel.kind},
        "engine_kwargs": _engine_kwargs(args),
        "deployment_config": _deployment_config(args),
        "placement_group_config": _placement_group_config(args),
    }
    # Ray rejects accelerator_type on CPU configs, so it is only ever set for GPUs.
    if accel.kind == "gpu" and accel.accelerator_type:
        config["accelerator_type"] = accel.accelerator_type
    config["runtime_env"] = {"env_vars": env_vars}
    lora = _lora_config(args)
    if lora is not None:
        config["lora_config"] = lora
    downloads = blob_sources(args)
    if downloads:
        # Ray runs this on every node of the replica before vLLM starts; vLLM then reads local directories.
        config["callback_config"] = {
            "callback_class": BLOB_DOWNLOAD_CALLBACK,
            "callback_kwargs": {"sources": [list(pair) for pair in downloads]},
        }
    else:
        config["callback_config"] = {"callback_class": SKIP_NODE_INIT_CALLBACK}
    return config


def _ingress_deployment_config(args: ServingArgs) -> dict[str, Any] | None:
    # The ingress replica reads the session header and forwards it to the LLMServer handle; a custom
    # header name must reach that process too (the proxy needs it cluster-wide: the operator's job).
    if args.routing.policy == "session_affinity" and args.routing.session_header != DEFAULT_SESSION_HEADER:
        return {"ray_actor_options": {"runtime_env": {"env_vars": {_SESSION_HEADER_ENV: args.routing.session_header}}}}
    return None


def build_openai_app_args(args: ServingArgs) -> dict[str, Any]:
    """Build the argument of `ray.serve.llm.build_openai_app`.

    Args:
        args: Validated serving args (disaggregation off).

    Returns:
        `{"llm_configs": [<build_llm_config(args)>]}`, plus `ingress_deployment_config` when a custom
        session header must reach the ingress replicas.
    """
    app_args: dict[str, Any] = {"llm_configs": [build_llm_config(args)]}
    ingress = _ingress_deployment_config(args)
    if ingress is not None:
        app_args["ingress_deployment_config"] = ingress
    return app_args


def build_pd_openai_app_args(args: ServingArgs) -> dict[str, Any]:
    """Build the argument of `ray.serve.llm.build_pd_openai_app` (prefill/decode disaggregation).

    Both sides get `engine_kwargs.kv_transfer_config` with the configured connector (Ray requires it).
    This needs GPUs and a GPU KV connector such as NIXL; `ServingArgs` already rejects it on `cpu`.
    Each side runs a fixed replica count; the scaling block does not apply.

    Args:
        args: Validated serving args with `disaggregation.enabled`.

    Returns:
        `{"prefill_config": {...}, "decode_config": {...}}`, each an `LLMConfig` dict.
    """
    dis = args.disaggregation
    kv_transfer = {"kv_connector": dis.kv_connector, "kv_role": "kv_both"}
    sides: dict[str, Any] = {}
    for side, replicas in (("prefill", dis.prefill_replicas), ("decode", dis.decode_replicas)):
        config = build_llm_config(args)
        config["engine_kwargs"]["kv_transfer_config"] = dict(kv_transfer)
        config["deployment_config"] = _deployment_config(args, fixed_replicas=replicas)
        sides[f"{side}_config"] = config
    ingress = _ingress_deployment_config(args)
    if ingress is not None:
        sides["ingress_deployment_config"] = ingress
    return sides


def check_engine_kwargs(engine_kwargs: dict[str, Any], known: Collection[str]) -> None:
    """Fail early, with all offenders listed, if engine kwargs name arguments vLLM does not have.

    Args:
        engine_kwargs: The `engine_kwargs` of an LLMConfig dict.
        known: vLLM's `AsyncEngineArgs` and `FrontendArgs` field names (Ray accepts both).

    Raises:
        ValueError: If any key is unknown.
    """
    unknown = sorted(set(engine_kwargs) - set(known))
    if unknown:
        raise ValueError(f"unknown vLLM engine arguments {unknown} (check engine.extra_engine_args)")
