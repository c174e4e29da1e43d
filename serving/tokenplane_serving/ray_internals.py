"""Every private Ray Serve LLM name tokenplane uses, each with the reason no public one serves.

Everything else in `tokenplane_serving` stands on Ray's public API (`ray.serve.llm`,
`ray.serve.llm.deployment.LLMServer`, `ray.serve.llm.openai_api_models`, `serve.ingress`'s documented
`__serve_build_asgi_app__` hook). `tests/serving/test_ray_internals.py` checks each name below against the
installed Ray and fails with the name and what to do when an upgrade moves it.
"""

from __future__ import annotations

from typing import Any

import ray

# Reason: `LLMConfig.callback_config` is public and runs a callback on every node of a replica before the
# engine starts (where Blob sources are downloaded), but the base class the callback must extend is not exported.
from ray.llm._internal.common.callbacks.base import CallbackBase

# Reason: `ray.serve.llm.deployment.LLMServer(llm_config, model_downloader=...)` is the public hook for
# LoRA loading, but the loader's base class and the config it must return are not exported. Ray's own
# loader only downloads from object storage; tokenplane resolves adapters to mounted directories.
from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader

__all__ = [
    "PINNED_RAY",
    "CallbackBase",
    "DiskMultiplexConfig",
    "LoraModelLoader",
    "direct_streaming_enabled",
    "engine_client",
    "in_fallback_proxy",
    "start_llm_telemetry_agent",
]

# The Ray these names were checked against (pyproject pins `ray[serve,llm]==` the same).
PINNED_RAY = "2.60.0"


def direct_streaming_enabled() -> bool:
    """Whether `build_openai_app` in this process builds the direct-streaming app.

    Reason: Ray reads `RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING` once, when `ray.llm` is first imported, into a
    private constant; the environment variable set later does not change what this process builds.

    Returns:
        The value `ray.serve.llm.build_openai_app` acts on.
    """
    from ray.llm._internal.serve.core.ingress import builder

    return bool(builder.RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING)  # type: ignore[attr-defined]


def engine_client(engine: Any) -> Any:
    """Return the vLLM `AsyncLLM` behind an `LLMServer.engine`.

    Reason: tokenplane adds a stat logger (vLLM takes loggers only at construction, where Ray fixes the list)
    and runs its one-token readiness probe on the engine directly, not through the HTTP app. Ray keeps
    the client in the private attribute `VLLMEngine._engine_client`.

    Args:
        engine: `LLMServer.engine` after the server started.

    Returns:
        The `vllm.v1.engine.async_llm.AsyncLLM` (an `EngineClient`).

    Raises:
        RuntimeError: The engine has not started, or Ray renamed the attribute.
    """
    client = getattr(engine, "_engine_client", None)
    if client is None:
        raise RuntimeError(f"{type(engine).__name__} has no started vLLM engine client (Ray {ray.__version__})")
    return client


def in_fallback_proxy() -> bool:
    """Whether this process is Ray Serve's fallback proxy (HAProxy's backup server at zero replicas).

    Reason: Ray calls the HTTP callback (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`) without arguments in
    every HTTP server it starts, the replicas' direct-ingress servers and the fallback proxy alike
    (ray/serve/_private/http_util.py `configure_http_middlewares`), and says nowhere which one it is. The
    fallback proxy is the actor Ray names `format_actor_name(SERVE_PROXY_NAME, "fallback-" + node_id)`
    (proxy_state.py `_start_fallback_proxy_if_needed`), from the private `SERVE_PROXY_NAME`.

    Returns:
        True in the fallback proxy's actor; False in replicas, other proxies and outside Ray.
    """
    from ray.serve._private.constants import SERVE_PROXY_NAME

    if not ray.is_initialized():
        return False
    name = ray.get_runtime_context().get_actor_name() or ""
    return name.startswith(f"{SERVE_PROXY_NAME}-fallback-")


def start_llm_telemetry_agent() -> None:
    """Ask for Ray Serve LLM's telemetry actor now, without waiting for it to start.

    Reason: once its engine runs, every `LLMServer` replica gets or creates Ray Serve LLM's detached
    `TelemetryAgent` on the head node and blocks on a call to it before it takes traffic (usage.py
    `push_telemetry_report_for_all_models`, a `ray.get` in the replica's constructor). The first replica of a
    fresh Ray thus waited for a new worker to boot and import Ray Serve LLM: 3.4-4.5 s of every local cold start
    on the tiny model. Asked for with Ray's own get-or-create (same name, namespace and placement) while the
    engine starts, that worker boots meanwhile and the replica finds it running. Ray exports no way to do it.
    """
    from ray.llm._internal.serve.observability.usage_telemetry.usage import _get_or_create_telemetry_agent

    _get_or_create_telemetry_agent()
