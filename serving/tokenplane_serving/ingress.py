"""The OpenAI ingress: Ray Serve LLM's `OpenAiIngress` with auth, body limit, OpenAI-shaped errors, LoRA, readiness."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from typing import Any

import pydantic
from fastapi import FastAPI, HTTPException, Request, status
from ray import serve
from ray.llm._internal.common.utils.lora_utils import get_base_model_id, get_lora_id
from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest, ModelCard, ModelList
from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS, OpenAiIngress, init, make_fastapi_ingress
from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request
from ray.serve._private.common import ReplicaState
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from tokenplane_serving.auth import AuthMiddleware, openai_error_body
from tokenplane_serving.auth import Receive as _Receive
from tokenplane_serving.auth import Scope as _Scope
from tokenplane_serving.auth import Send as _Send

__all__ = [
    "MAX_BODY_BYTES",
    "BodyLimitMiddleware",
    "TokenplaneIngress",
    "ValidatorCrashGuard",
    "build_ingress_class",
]

# Far above any text prompt a 128k-token context can hold, far below what would hurt the ingress.
MAX_BODY_BYTES = 16 * 1024 * 1024
_READY_TIMEOUT_S = 3.0


class BodyLimitMiddleware:
    """413 for bodies larger than `max_bytes`, checked before anything parses them."""

    def __init__(self, app: Callable[..., Any], *, max_bytes: int = MAX_BODY_BYTES) -> None:
        """Wrap `app`.

        Args:
            app: The inner ASGI app.
            max_bytes: Largest accepted request body.
        """
        self.app = app
        self._max = max_bytes

    async def _reject(self, send: _Send) -> None:
        body = openai_error_body(
            f"Request body exceeds {self._max} bytes.", "invalid_request_error", "request_too_large"
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        """Reject oversize bodies by Content-Length, or while streaming them in when it is absent."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self._max:
                await self._reject(send)
                return
            await self.app(scope, receive, send)
            return
        # Chunked upload: buffer up to the limit, then replay it to the app.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self._max:
                await self._reject(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


class _NonFiniteNumberError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFiniteNumberError(name)


class ValidatorCrashGuard:
    """400 instead of 500 for request bodies that crash validation or error rendering.

    Some vLLM request validators assume well-typed fields (e.g. `"messages": null` raises TypeError
    inside validation), and FastAPI only turns `ValidationError` into a 400. `NaN`/`Infinity` (not
    JSON per RFC 8259, but accepted by Python's parser) make the validation-error response itself
    unserialisable. A crash caused by the client's own body is a client error, so POST bodies are
    checked here first.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        """Wrap `app`."""
        self.app = app
        from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest, CompletionRequest

        self._models: dict[str, Any] = {
            "/v1/chat/completions": ChatCompletionRequest,
            "/v1/completions": CompletionRequest,
        }

    @staticmethod
    async def _bad_request(send: _Send, message: str) -> None:
        error = openai_error_body(message, "invalid_request_error", 400)
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(error)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": error})

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        """Check POST bodies, then replay them to the app."""
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(chunks)
        model = self._models.get(scope.get("path", ""))
        try:
            parsed = json.loads(body, parse_constant=_reject_constant)
            if model is not None:
                model.model_validate(parsed)
        except _NonFiniteNumberError as err:
            await self._bad_request(send, f"Invalid JSON: {err} is not a valid number.")
            return
        except (ValueError, pydantic.ValidationError):
            pass  # malformed JSON or a normal validation error: FastAPI answers 400 with details
        except Exception as err:
            await self._bad_request(send, f"Invalid request: {type(err).__name__} while validating the body.")
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class TokenplaneIngress(OpenAiIngress):
    """`OpenAiIngress` that knows the configured LoRA adapters and aggregates replica readiness."""

    def __init__(
        self,
        llm_deployments: dict[str, DeploymentHandle[Any]],
        model_cards: dict[str, ModelCard],
        *,
        lora_paths: dict[str, str] | None = None,
        lora_adapters: dict[str, list[str]] | None = None,
        app_name: str = "llm",
    ) -> None:
        """Create the ingress.

        Args:
            llm_deployments: Base model id -> LLMServer handle.
            model_cards: Base model id -> card.
            lora_paths: Unused (Ray's cloud-path listing); adapters are listed from `lora_adapters`.
            lora_adapters: Base model id -> adapter names served as `<model>:<name>`.
            app_name: The Serve application, to count its running replicas.
        """
        super().__init__(llm_deployments, model_cards, lora_paths=None)
        self._adapters = {base: set(names) for base, names in (lora_adapters or {}).items()}
        self._app_name = app_name

    async def _get_model_id(self, model: str | None) -> str:
        model_id: str = await super()._get_model_id(model)
        base = get_base_model_id(model_id)
        if model_id != base and get_lora_id(model_id) not in self._adapters.get(base, set()):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f'Could not find model with id "{model_id}".')
        return model_id

    def _adapter_card(self, base: str, name: str) -> ModelCard:
        card = self._model_cards[base]
        return ModelCard(
            id=f"{base}:{name}",
            object="model",
            owned_by=card.owned_by,
            permission=list(card.permission),
            metadata={**card.metadata, "base_model_id": base},
        )

    async def model(self, model_id: str) -> ModelCard | None:
        """Return the card of a base model or of a configured adapter, else None."""
        if model_id in self._model_cards:
            return self._model_cards[model_id]
        base = get_base_model_id(model_id)
        if base in self._model_cards and get_lora_id(model_id) in self._adapters.get(base, set()):
            return self._adapter_card(base, get_lora_id(model_id))
        return None

    async def models(self) -> ModelList:
        """OpenAI `GET /v1/models`: base models and their adapters."""
        cards = []
        for base, card in self._model_cards.items():
            cards.append(card)
            cards.extend(self._adapter_card(base, name) for name in sorted(self._adapters.get(base, ())))
        return ModelList(data=cards)

    async def _process_llm_request(self, body: Any, call_method: str, raw_request: Request | None = None) -> Response:
        if isinstance(body, ChatCompletionRequest):
            # Ray re-checks message contents after validation and raises ValueError (a 500) on bad
            # parts such as `"content": [null]`; run the same check first and make it a 400.
            try:
                _sanitize_chat_completion_request(body)
            except ValueError as err:
                raise HTTPException(status.HTTP_400_BAD_REQUEST, str(err)) from None
        try:
            response: Response = await super()._process_llm_request(body, call_method, raw_request)
        except BackPressureError as err:
            # Answered here, not by Ray's proxy, to use the OpenAI error shape. Cheap by design: no
            # logging per rejection, an overload would flood the logs.
            retry_after = err.retry_after_s if err.retry_after_s is not None else 1
            return Response(
                openai_error_body(
                    "The server is at capacity; retry after the delay in Retry-After.",
                    "rate_limit_error" if err.status_code == 429 else "server_overloaded",
                    err.status_code,
                ),
                status_code=err.status_code,
                media_type="application/json",
                headers={"Retry-After": str(max(0, math.ceil(retry_after)))},
            )
        return response

    async def _running_replicas(self) -> dict[str, int] | None:
        try:
            app = (await asyncio.to_thread(serve.status)).applications.get(self._app_name)
        except Exception:  # the controller may be briefly unreachable; readiness then asks replicas only
            return None
        if app is None:
            return {}
        return {name: d.replica_states.get(ReplicaState.RUNNING, 0) for name, d in app.deployments.items()}

    async def ready(self) -> Response:
        """`GET /-/ready`: per-model readiness (the operator's `Ready` condition reads this).

        A model is ready when a replica answers that it generated a token within the last seconds.
        A deployment with no running replica (scaled to zero) is reported without waking it.
        """
        running = await self._running_replicas()
        models: dict[str, Any] = {}
        for model_id, handle in self._default_serve_handles.items():
            replicas = None
            if running is not None:
                replicas = sum(n for name, n in running.items() if name.endswith(handle.deployment_name))
            entry: dict[str, Any] = {"running_replicas": replicas}
            if replicas == 0:
                entry.update(ready=False, reason="NoRunningReplica")
            else:
                try:
                    replica = await asyncio.wait_for(handle.readiness.remote(), timeout=_READY_TIMEOUT_S)
                    entry.update(replica)
                    entry["reason"] = "CompletionSucceeded" if replica["ready"] else "CompletionFailed"
                except Exception as err:
                    entry.update(ready=False, reason="ReplicaUnresponsive", error=type(err).__name__)
            models[model_id] = entry
        ready = bool(models) and all(m["ready"] for m in models.values())
        return JSONResponse({"ready": ready, "models": models}, status_code=200 if ready else 503)


def _http_error_response(request: Request, exc: Exception) -> Response:
    # FastAPI's default is {"detail": ...}; OpenAI clients parse {"error": {...}}.
    assert isinstance(exc, StarletteHTTPException)
    code = "model_not_found" if exc.status_code == 404 and "model" in str(exc.detail) else exc.status_code
    return Response(
        openai_error_body(str(exc.detail), "invalid_request_error", code),
        status_code=exc.status_code,
        media_type="application/json",
        headers=exc.headers,
    )


def build_ingress_class(serving: Any) -> type:
    """Build the `@serve.ingress` class for one `ServingArgs`.

    Middleware order (outermost first): auth, body limit, validator-crash guard, then Ray Serve LLM's
    request id, metrics, CORS and exception handling. HTTP errors are rendered in the OpenAI error shape.

    Args:
        serving: Validated `ServingArgs`.

    Returns:
        The ingress class, ready for `serve.deployment(...)`.
    """
    app: FastAPI = init()
    app.add_exception_handler(StarletteHTTPException, _http_error_response)
    app.add_middleware(ValidatorCrashGuard)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    if serving.auth.mode != "none":
        app.add_middleware(AuthMiddleware, auth=serving.auth.model_dump())
    endpoints = {**DEFAULT_ENDPOINTS, "ready": lambda a: a.get("/-/ready")}
    return make_fastapi_ingress(TokenplaneIngress, endpoint_map=endpoints, app=app)  # type: ignore[no-any-return]
