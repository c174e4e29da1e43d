"""The serveConfigV2 `import_path` target: `tokenplane_serving.app:build_app`."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from ray import serve
from ray.serve import Application
from ray.serve.llm import LLMConfig, build_llm_deployment, build_openai_app
from ray.serve.llm.deployment import PDPrefillServer

from tokenplane_serving.args import ServingArgs
from tokenplane_serving.mapping import (
    FAST_PATH_ENV,
    build_openai_app_args,
    build_pd_openai_app_args,
    check_engine_kwargs,
)
from tokenplane_serving.ray_internals import direct_streaming_enabled
from tokenplane_serving.server import TokenplaneLLMServer, TokenplanePDDecodeServer

__all__ = ["build_app", "vllm_engine_arg_names"]


def vllm_engine_arg_names() -> frozenset[str]:
    """Names Ray Serve LLM accepts in `engine_kwargs`: vLLM's `AsyncEngineArgs` and `FrontendArgs` fields.

    Returns:
        The field names of the installed vLLM.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    return frozenset(f.name for cls in (AsyncEngineArgs, FrontendArgs) for f in dataclasses.fields(cls))


def _check_against_vllm(llm_configs: list[dict[str, Any]]) -> None:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    known = vllm_engine_arg_names()
    for config in llm_configs:
        kwargs = config["engine_kwargs"]
        check_engine_kwargs(kwargs, known)
        quantization = kwargs.get("quantization")
        if quantization is not None and quantization not in QUANTIZATION_METHODS:
            raise ValueError(f"quantization {quantization!r} is not available in this vLLM build")


def build_app(args: dict[str, Any] | ServingArgs) -> Application:
    """Build the Ray Serve application for one `ServingArgs`.

    Ray calls this with the serveConfigV2 `args:` mapping. It is validated again here: the operator
    that wrote it may be a different version than this image.

    Args:
        args: The serveConfigV2 args (a dict), or an already validated `ServingArgs`.

    Returns:
        Ray Serve LLM's direct streaming: HAProxy in front (with Ray's LLM router choosing the replica
        when a routing policy or LoRA needs it) and `TokenplaneLLMServer` as the ingress, serving vLLM's
        OpenAI app inside tokenplane's feature layer (`/v1/...`, `/-/ready`). With disaggregation, the same with
        `TokenplanePDDecodeServer` as the ingress in front of the prefill deployment.

    Raises:
        pydantic.ValidationError: If the args do not match `ServingArgs`.
        ValueError: If the engine arguments are unknown to the installed vLLM, or Ray's environment
            lacks direct streaming (`mapping.FAST_PATH_ENV`).
    """
    serving = args if isinstance(args, ServingArgs) else ServingArgs.model_validate(args)
    if not direct_streaming_enabled():
        # Without it Ray would build its stock ingress, which has none of tokenplane's features (auth!).
        missing = " ".join(f"{k}={v}" for k, v in FAST_PATH_ENV.items())
        raise ValueError(
            f"Ray Serve LLM direct streaming is off in this process: set {missing} in the environment of "
            "every Ray node before Ray (and ray.serve.llm) start"
        )
    if serving.disaggregation.enabled:
        return _build_pd_app(serving)
    app_args = build_openai_app_args(serving)
    _check_against_vllm(app_args["llm_configs"])
    (config_dict,) = app_args["llm_configs"]
    # The session header reaches Ray's router and HAProxy through the node environment (the operator sets
    # RAY_SERVE_SESSION_ID_HEADER_KEY in every pod); direct streaming takes no ingress deployment options.
    llm_config = LLMConfig(**config_dict, server_cls=TokenplaneLLMServer.for_args(serving))
    if serving.routing.policy != "power_of_two" or serving.lora.adapters:
        # Ray's LLM router picks the replica for each POST (HAProxy asks it): prefix and session affinity
        # need the prompt or the session header, LoRA multiplexing needs the model.
        return build_openai_app({"llm_configs": [llm_config]})
    # Nothing to route on: HAProxy balances the replicas itself (leastconn, the least loaded, as power of
    # two would pick), which saves a Python hop per request.
    return build_llm_deployment(llm_config, deployment_cls=serve.ingress()(llm_config.server_cls))


def _build_pd_app(serving: ServingArgs) -> Application:
    # Ray's build_pd_openai_app makes its own PDDecodeServer the direct-streaming ingress and takes no
    # server class, so the same graph is built here from public parts with ours as the decode ingress:
    # HAProxy -> decode replica (features, then Ray's P/D app: remote prefill, local decode) -> prefill.
    pd_args = build_pd_openai_app_args(serving)
    _check_against_vllm([pd_args["prefill_config"], pd_args["decode_config"]])
    prefill_config, decode_config = LLMConfig(**pd_args["prefill_config"]), LLMConfig(**pd_args["decode_config"])
    # As Ray's PDServingArgs does: decode's NIXL side channel off prefill's default 20000, for colocated replicas.
    decode_config.experimental_configs.setdefault("NIXL_SIDE_CHANNEL_PORT_BASE", 22000)
    # cast: Ray types deployment_cls as its public LLMServer, of which PDPrefillServer is a sibling subclass.
    prefill_cls = cast(Any, PDPrefillServer)
    prefill = build_llm_deployment(prefill_config, name_prefix="Prefill:", deployment_cls=prefill_cls)
    decode_cls = serve.ingress()(TokenplanePDDecodeServer.for_args(serving))
    return build_llm_deployment(
        decode_config, name_prefix="Decode:", bind_kwargs={"prefill_server": prefill}, deployment_cls=decode_cls
    )
