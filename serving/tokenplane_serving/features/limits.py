"""Features: the request body limit, and request validation that turns crashes on bad bodies into 400s."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pydantic

from tokenplane_serving.auth import openai_error_body
from tokenplane_serving.features.base import BODY_KEY, ASGIApp, FeatureContext, Receive, Scope, Send, Wrapper, send_json
from tokenplane_serving.openai_json import json_type, non_boolean_flag

__all__ = [
    "MAX_BODY_BYTES",
    "BodyLimitMiddleware",
    "ValidationMiddleware",
    "body_limit",
    "materialize_contents",
    "validation",
]

# Far above any text prompt a 128k-token context can hold, far below what would hurt the replica.
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_CHOICES = 128  # OpenAI's limit on `n`


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Any:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class BodyLimitMiddleware:
    """413 for bodies larger than `max_bytes`, checked before anything parses them."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_BODY_BYTES) -> None:
        """Wrap `app`.

        Args:
            app: The inner ASGI app.
            max_bytes: Largest accepted request body.
        """
        self.app = app
        self._max = max_bytes

    async def _reject(self, send: Send) -> None:
        body = openai_error_body(
            f"Request body exceeds {self._max} bytes.", "invalid_request_error", "request_too_large"
        )
        await send_json(send, 413, body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        await self.app(scope, _replay(b"".join(chunks), receive), send)


class _NonFiniteNumberError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFiniteNumberError(name)


def materialize_contents(request: Any) -> None:
    """Iterate a validated chat request's message contents, raising ValueError for a bad part.

    Raises:
        ValueError: A content part that is not a string, null, or a content part.
    """
    # Pydantic keeps `Iterable[...]` message contents as lazy iterators; a bad part such as
    # `"content": [null]` only fails when the server iterates it, as a 500. Iterate here instead.
    for message in request.messages:
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
        if content is not None and not isinstance(content, str):
            try:
                list(content)
            except (TypeError, ValueError) as err:
                raise ValueError("Message `content` must be a string, null, or a list of content parts.") from err


def _too_many_choices(body: Any) -> bytes | None:
    """OpenAI's 400 for `n` above `MAX_CHOICES`, or None.

    vLLM takes any `n` and runs each choice as a request of its own: one request with `n: 1000` held one slot
    of the replica's admission while 1,000 sequences queued in the engine, where the autoscaler reads them as
    demand and grows the fleet for one caller.
    """
    n = body.get("n") if isinstance(body, dict) else None
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_CHOICES:
        message = f"Invalid 'n': integer above maximum value. Expected a value <= {MAX_CHOICES}, but got {n} instead."
        return openai_error_body(message, "invalid_request_error", "integer_above_max_value", "n")
    return None


class ValidationMiddleware:
    """400 instead of 500 for request bodies that crash validation or error rendering.

    Some vLLM request validators assume well-typed fields (e.g. `"messages": null` raises TypeError
    inside validation), and FastAPI only turns `ValidationError` into a 400. `NaN`/`Infinity` (not
    JSON per RFC 8259, but accepted by Python's parser) make the validation-error response itself
    unserialisable. A crash caused by the client's own body is a client error, so POST bodies are
    checked here first. The parsed body is left in the scope (`BODY_KEY`) for the features inside. A `stream`
    flag that is not a boolean is refused as OpenAI refuses it (param `stream`), so every reader agrees on it.
    """

    def __init__(self, app: ASGIApp) -> None:
        """Wrap `app`."""
        self.app = app
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

        self._models: dict[str, Any] = {
            "/v1/chat/completions": ChatCompletionRequest,
            "/v1/completions": CompletionRequest,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            scope[BODY_KEY] = parsed
            if model is not None and (too_many := _too_many_choices(parsed)) is not None:
                await send_json(send, 400, too_many)
                return
            if model is not None and (wrong := non_boolean_flag(parsed)) is not None:
                param, value = wrong
                text = f"Invalid type for '{param}': expected a boolean, but got {json_type(value)} instead."
                await send_json(send, 400, openai_error_body(text, "invalid_request_error", "invalid_type", param))
                return
            if model is not None:
                request = model.model_validate(parsed)
                if hasattr(request, "messages"):
                    materialize_contents(request)
        except _NonFiniteNumberError as err:
            await send_json(send, 400, openai_error_body(f"Invalid JSON: {err} is not a valid number.", *_BAD))
            return
        except pydantic.ValidationError:
            pass  # a normal validation error: vLLM answers 400 with details
        except UnicodeDecodeError:
            await _refuse_undecodable(scope, send)
            return
        except ValueError as err:
            if isinstance(err, json.JSONDecodeError):
                pass  # malformed JSON: vLLM answers 400
            else:
                await send_json(send, 400, openai_error_body(str(err), *_BAD))
                return
        except Exception as err:
            # vLLM's own validation errors (VLLMValidationError) carry the reason and the parameter; other
            # crashes at least name their type.
            reason = str(err).strip()
            detail = f"Invalid request: {type(err).__name__} while validating the body" + (
                f": {reason}" if reason else "."
            )
            named = getattr(err, "parameter", None)
            answer = openai_error_body(detail, "invalid_request_error", 400, named if isinstance(named, str) else None)
            await send_json(send, 400, answer)
            return
        await self.app(scope, _replay(body, receive), send)


_BAD = ("invalid_request_error", 400)


async def _refuse_undecodable(scope: Scope, send: Send) -> None:
    # A compressed body is the usual cause: say so, rather than echo the decoder's byte offset.
    encoding = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"content-encoding"), "")
    if encoding and encoding.lower() != "identity":
        message = f"Content-Encoding {encoding!r} is not supported: send the JSON body uncompressed."
        await send_json(send, 415, openai_error_body(message, "invalid_request_error", 415))
        return
    await send_json(send, 400, openai_error_body("Invalid JSON: the body is not UTF-8 text.", *_BAD))


def body_limit(ctx: FeatureContext) -> Wrapper:
    """413 for bodies over `MAX_BODY_BYTES`, before anything reads them."""
    return partial(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)


def validation(ctx: FeatureContext) -> Wrapper:
    """400 for bodies that would crash validation; shares the parsed body with inner features."""
    return ValidationMiddleware
