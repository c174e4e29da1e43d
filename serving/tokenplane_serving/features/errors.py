"""OpenAI's error shape for the HTTP errors vLLM's app leaves to FastAPI (an unknown URL, a wrong method).

FastAPI answers them `{"detail": "Not Found"}`, which OpenAI clients cannot read: the official SDK looks for
`error.message`. OpenAI itself answers an unknown URL `Invalid URL (POST /v1/embeddings)`. The handler runs only
when a route raises, so it costs nothing on the path of a request that is served.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from tokenplane_serving.auth import openai_error_body

__all__ = ["install_openai_http_errors", "openai_http_error"]

_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error", 429: "rate_limit_error"}


async def openai_http_error(request: Request, exc: Exception) -> Response:
    """Render a Starlette `HTTPException` in OpenAI's error shape, keeping its status and headers (`Allow`)."""
    if not isinstance(exc, HTTPException):  # Starlette registers handlers by class; keep mypy honest
        raise exc
    status, headers = exc.status_code, dict(exc.headers or {})
    target = f"{request.method} {request.url.path}"
    if status == 404:
        message = f"Invalid URL ({target})"
    elif status == 405:
        allowed = headers.get("Allow") or headers.get("allow")
        message = f"Method not allowed ({target})" + (f"; this URL takes {allowed}" if allowed else "")
    else:
        message = str(exc.detail)
    err_type = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = openai_error_body(message, err_type, None)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def install_openai_http_errors(app: Any) -> None:
    """Make `app` (a Starlette/FastAPI app) answer its HTTP errors in OpenAI's shape."""
    app.add_exception_handler(HTTPException, openai_http_error)
