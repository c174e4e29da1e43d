"""The serveConfigV2 `import_path` target: `tokenplane_serving.app:build_app`."""

from __future__ import annotations

import dataclasses
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.llm import LLMConfig, build_pd_openai_app

from tokenplane_serving.args import ServingArgs
from tokenplane_serving.mapping import (
    build_lora_adapter_paths,
    build_openai_app_args,
    build_pd_openai_app_args,
    check_engine_kwargs,
)

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
        The OpenAI-compatible app (`/v1/models`, `/v1/chat/completions`, `/v1/completions`, ...,
        `/-/ready`): `TokenplaneIngress` in front of one `TokenplaneLLMServer` deployment, wired as
        `ray.serve.llm.build_openai_app` would, or `build_pd_openai_app` with disaggregation.

    Raises:
        pydantic.ValidationError: If the args do not match `ServingArgs`.
        ValueError: If the engine arguments are unknown to the installed vLLM.
    """
    serving = args if isinstance(args, ServingArgs) else ServingArgs.model_validate(args)
    if serving.disaggregation.enabled:
        pd_args = build_pd_openai_app_args(serving)
        _check_against_vllm([pd_args["prefill_config"], pd_args["decode_config"]])
        return build_pd_openai_app(pd_args)
    app_args = build_openai_app_args(serving)
    _check_against_vllm(app_args["llm_configs"])
    return _build_openai_app(serving, app_args)


def _build_openai_app(serving: ServingArgs, app_args: dict[str, Any]) -> Application:
    # Mirrors ray.serve.llm.build_openai_app, with our server and ingress classes: the ingress's
    # FastAPI app must exist before `serve.ingress` to carry the auth and body-limit middleware.
    from ray.llm._internal.common.dict_utils import maybe_apply_llm_deployment_config_defaults
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.server.builder import build_llm_deployment

    from tokenplane_serving.ingress import TokenplaneIngress, build_ingress_class
    from tokenplane_serving.server import TokenplaneLLMServer

    (config_dict,) = app_args["llm_configs"]
    llm_config = LLMConfig(**config_dict)
    adapters = build_lora_adapter_paths(serving)
    server = build_llm_deployment(
        llm_config,
        name_prefix="LLMServer:",  # Ray Serve LLM's deployment name, which dashboards and alerts expect
        deployment_cls=TokenplaneLLMServer,
        bind_kwargs={"lora_adapters": adapters},
    )
    ingress_options = maybe_apply_llm_deployment_config_defaults(
        TokenplaneIngress.get_deployment_options([llm_config]), app_args.get("ingress_deployment_config", {})
    )
    ingress = serve.deployment(build_ingress_class(serving), **ingress_options)
    return ingress.bind(  # type: ignore[attr-defined,no-any-return]
        llm_deployments={llm_config.model_id: server},
        model_cards={llm_config.model_id: to_model_metadata(llm_config.model_id, llm_config)},
        lora_adapters={llm_config.model_id: sorted(adapters)},
        app_name=serving.app_name,
    )
