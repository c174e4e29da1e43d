"""Prefill/decode disaggregation is served through tokenplane's feature layer, like the plain path.

The P/D path needs GPUs and a KV connector, so vLLM CPU cannot run it; the app is built here for real (Ray's
public builders, no cluster) and the decode ingress's HTTP app is assembled by the same class methods a
replica runs, around a stand-in for vLLM's app (what `VLLMEngine.build_asgi_app` returns once the engine
runs), and its middleware is exercised over HTTP.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from tokenplane_serving.args import ServingArgs
from tokenplane_serving.local import LocalServer
from tokenplane_serving.mapping import FAST_PATH_ENV

KEY = "pd-key-0123456789"


@pytest.fixture
def pd_args(tmp_path: Path) -> ServingArgs:
    (tmp_path / "k").write_text(KEY)
    return ServingArgs.model_validate(
        {
            "model": {"id": "long-context", "source": "/models/llama"},
            "accelerator": {"kind": "gpu", "accelerator_type": "H100"},
            "engine": {"max_num_seqs": 16, "max_model_len": 4096},
            "auth": {"mode": "api_key", "api_keys_dir": str(tmp_path)},
            "disaggregation": {"enabled": True, "prefill_replicas": 2, "decode_replicas": 1},
        }
    )


@pytest.mark.serving
def test_pd_app_has_tokenplanes_decode_server_as_ingress(pd_args: ServingArgs, tiny_server: LocalServer) -> None:
    # Ray's builders read the running Ray's runtime env: the session's shared server provides one.
    assert all(os.environ.get(k) == v for k, v in FAST_PATH_ENV.items())  # tests/serving/conftest.py
    from tokenplane_serving.app import build_app
    from tokenplane_serving.server import TokenplanePDDecodeServer

    app = build_app(pd_args)
    decode = app._bound_deployment  # Ray keeps the graph here; there is no public accessor
    assert decode.name.startswith("Decode:")
    assert issubclass(decode.func_or_class, TokenplanePDDecodeServer)
    assert decode.func_or_class.serving_args == pd_args  # the features' configuration travels with the class
    prefill = decode.init_kwargs["prefill_server"]._bound_deployment
    assert prefill.name.startswith("Prefill:")
    assert prefill._deployment_config.num_replicas == 2 or prefill._deployment_config.autoscaling_config


class _Engine:
    """Stands in for Ray's VLLMEngine once started: `build_asgi_app` returns vLLM's (here: a bare) app."""

    def __init__(self) -> None:
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        async def chat() -> dict[str, str]:
            return {"reached": "engine"}

    async def build_asgi_app(self) -> FastAPI:
        return self.app


def test_pd_decode_ingress_requires_the_api_key_and_bounds_bodies(pd_args: ServingArgs) -> None:
    from ray.serve.llm import LLMConfig

    from tokenplane_serving.mapping import build_pd_openai_app_args
    from tokenplane_serving.server import TokenplanePDDecodeServer

    cls = TokenplanePDDecodeServer.for_args(pd_args)
    server = cls.__new__(cls)  # the engine-starting constructor needs a GPU; the app assembly does not
    server.engine = _Engine()
    server._llm_config = LLMConfig(**build_pd_openai_app_args(pd_args)["decode_config"])
    app = asyncio.run(server.__serve_build_asgi_app__())
    chat_routes = [r for r in app.routes if getattr(r, "path", "") == "/v1/chat/completions"]
    assert len(chat_routes) == 1 and chat_routes[0].endpoint.__name__ == "_pd_chat"  # Ray's P/D handler

    body = {"model": "long-context", "messages": [{"role": "user", "content": "hi"}]}
    with TestClient(app) as client:
        denied = client.post("/v1/chat/completions", json=body)
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "missing_api_key"
        wrong = client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        huge = client.post(
            "/v1/chat/completions",
            content=b"x" * (17 * 1024 * 1024),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        assert huge.status_code == 413
        bad = client.post(
            "/v1/chat/completions",
            content=b'{"model": "long-context", "messages": [], "temperature": NaN}',
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        assert bad.status_code == 400
        assert client.get("/-/ready").status_code == 503  # probes need no key; no engine generated yet
