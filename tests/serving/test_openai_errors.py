"""Routing errors of vLLM's app in OpenAI's shape (features/errors.py), next to vLLM's own exception handlers."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
from fastapi import FastAPI, HTTPException
from vllm.entrypoints.serve.exception_handling.register import init_exception_handler

from tokenplane_serving.features.errors import install_openai_http_errors


def vllm_like_app() -> FastAPI:
    """A FastAPI app with vLLM's real exception handlers, a POST route, and a route that raises as vLLM's do."""
    app = FastAPI()
    app.state.args = SimpleNamespace(log_error_stack=False)  # vLLM's handlers read its server args
    init_exception_handler(app)

    @app.post("/v1/chat/completions")
    async def chat() -> dict[str, str]:
        return {}

    @app.get("/v1/teapot")
    async def teapot() -> None:
        raise HTTPException(status_code=418, detail="short and stout")

    return app


async def _get(app: FastAPI, method: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as http:
        return await http.request(method, path)


async def test_an_unknown_url_and_a_wrong_method_answer_in_openai_shape() -> None:
    # FastAPI answered {"detail": "Not Found"}: the OpenAI SDK's errors then carry no message.
    app = vllm_like_app()
    install_openai_http_errors(app)
    missing = await _get(app, "POST", "/v1/embeddings")
    assert missing.status_code == 404
    error = {"message": "Invalid URL (POST /v1/embeddings)", "type": "invalid_request_error"}
    error |= {"param": None, "code": None}
    assert missing.json() == {"error": error}
    wrong = await _get(app, "GET", "/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["message"] == "Method not allowed (GET /v1/chat/completions); this URL takes POST"


async def test_vllm_keeps_answering_the_errors_its_routes_raise() -> None:
    app = vllm_like_app()
    install_openai_http_errors(app)
    answer = await _get(app, "GET", "/v1/teapot")
    assert answer.status_code == 418
    assert answer.json()["error"]["message"] == "short and stout"  # vLLM's handler, not ours
