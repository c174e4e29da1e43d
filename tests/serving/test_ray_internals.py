"""The private Ray names tokenplane uses (all in `tokenplane_serving.ray_internals`) still mean what they did.

Fast (no Ray cluster): each check imports or inspects the installed Ray and, when an upgrade moved
something, fails with the name and what to do, instead of a replica failing at start in a cluster.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import ray

SERVING = Path(__file__).resolve().parents[2] / "serving" / "tokenplane_serving"
WHAT_TO_DO = "update tokenplane_serving/ray_internals.py (and PINNED_RAY) for the new Ray, then re-run tests/serving"


def test_ray_is_the_pinned_version() -> None:
    from tokenplane_serving.ray_internals import PINNED_RAY

    assert ray.__version__ == PINNED_RAY, (
        f"Ray {ray.__version__} is installed but ray_internals was checked against {PINNED_RAY}: {WHAT_TO_DO}"
    )


def test_only_ray_internals_imports_private_ray() -> None:
    offenders = []
    for path in SERVING.rglob("*.py"):
        if path.name == "ray_internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("ray") and "._" in n]
    assert not offenders, f"private Ray imports outside ray_internals.py: {offenders}"


def test_lora_loader_hook_matches() -> None:
    from ray.serve.llm.deployment import LLMServer

    from tokenplane_serving.ray_internals import DiskMultiplexConfig, LoraModelLoader

    init = inspect.signature(LLMServer.__init__).parameters
    assert "model_downloader" in init, f"LLMServer(...) lost its model_downloader parameter: {WHAT_TO_DO}"
    loader_init = inspect.signature(LoraModelLoader.__init__).parameters
    # LLMServer constructs the loader with these two keywords (llm_server.py, _init_multiplex_loader).
    assert {"download_timeout_s", "max_tries"} <= set(loader_init), f"LoraModelLoader.__init__ changed: {WHAT_TO_DO}"
    load = inspect.signature(LoraModelLoader.load_model_from_config).parameters
    assert list(load)[1:] == ["lora_model_id", "llm_config"], f"load_model_from_config changed: {WHAT_TO_DO}"
    fields = set(DiskMultiplexConfig.model_fields)
    assert {"model_id", "max_total_tokens", "local_path", "lora_assigned_int_id"} <= fields, (
        f"DiskMultiplexConfig fields changed ({sorted(fields)}): {WHAT_TO_DO}"
    )


def test_direct_streaming_switch_is_readable() -> None:
    from tokenplane_serving.ray_internals import direct_streaming_enabled

    try:
        value = direct_streaming_enabled()
    except (ImportError, AttributeError) as err:
        pytest.fail(f"Ray moved its direct-streaming switch ({err}): {WHAT_TO_DO}")
    assert isinstance(value, bool)


def test_engine_client_attribute_is_where_ray_keeps_it() -> None:
    from ray.llm._internal.serve.engines.vllm import vllm_engine

    source = inspect.getsource(vllm_engine.VLLMEngine)
    assert "self._engine_client = " in source, f"VLLMEngine no longer keeps `_engine_client`: {WHAT_TO_DO}"


def test_late_bound_asgi_hook_exists() -> None:
    from ray.serve.llm.deployment import LLMServer

    # Public, documented in `serve.ingress`: the server builds its HTTP app after the engine starts.
    assert inspect.iscoroutinefunction(getattr(LLMServer, "__serve_build_asgi_app__", None)), (
        f"LLMServer.__serve_build_asgi_app__ is gone; the feature layer cannot wrap vLLM's app: {WHAT_TO_DO}"
    )


def test_the_fallback_proxy_is_haproxys_backup_and_named_as_in_fallback_proxy() -> None:
    from ray.serve._private import haproxy_templates, proxy, proxy_state
    from ray.serve._private.constants import SERVE_PROXY_NAME
    from ray.serve._private.utils import format_actor_name

    # tokenplane_serving.hold relies on: the fallback proxy is each app backend's `backup` server (it sees only
    # requests that found no replica), it runs Ray's ProxyActor (which applies the HTTP callback), and its name.
    assert "{{ backend.fallback_server.port }} check backup" in haproxy_templates.HAPROXY_CONFIG_TEMPLATE, WHAT_TO_DO
    assert "self._http_options = configure_http_middlewares(http_options)" in inspect.getsource(proxy), WHAT_TO_DO
    start = inspect.getsource(proxy_state.ProxyStateManager._start_fallback_proxy_if_needed)
    assert 'node_id=f"fallback-{node_id}"' in start and "proxy_actor_class=ProxyActor" in start, WHAT_TO_DO
    name = format_actor_name(SERVE_PROXY_NAME, "fallback-abc")
    assert name.startswith(f"{SERVE_PROXY_NAME}-fallback-"), WHAT_TO_DO


def test_replicas_reuse_the_telemetry_agent_start_llm_telemetry_agent_creates() -> None:
    from ray.llm._internal.serve.core.server import llm_server
    from ray.llm._internal.serve.observability.usage_telemetry import usage

    # start_llm_telemetry_agent only saves time if replicas, once their engine runs, reach the agent through
    # the same get-or-create by name (so they find the one build_app started instead of waiting for their own).
    assert "push_telemetry_report_for_all_models" in inspect.getsource(llm_server.LLMServer._start_engine), (
        f"LLMServer no longer reports telemetry when its engine starts; start_llm_telemetry_agent may go: {WHAT_TO_DO}"
    )
    assert "_get_or_create_telemetry_agent()" in inspect.getsource(usage._retry_get_telemetry_agent), WHAT_TO_DO
    assert "get_if_exists=True" in inspect.getsource(usage._get_or_create_telemetry_agent), WHAT_TO_DO
