"""The feature layer: what tokenplane adds to an OpenAI endpoint, as ASGI middleware on vLLM's own app.

With Ray Serve LLM's direct streaming, HAProxy sends each request straight to an LLMServer replica, whose
HTTP app is vLLM's own OpenAI server: tokens leave the engine's process as vLLM makes them, with no
extra Python hop. tokenplane's features wrap that app inside the replica, so they cost one pass per request
and nothing per token.

A feature is a module with one function `feature(ctx) -> Wrapper | None` (None: off for these args). It
is listed once in `FEATURES`, outermost first; a new feature (a response cache, the Batch API, a hold at
zero) is a new module and one line here. Features share per-request facts through the ASGI scope:
`PRINCIPAL_KEY` (who is calling, set by auth) and `BODY_KEY` (the parsed JSON body, set by validation).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from tokenplane_serving.args import ServingArgs

__all__ = [
    "BODY_KEY",
    "FEATURES",
    "PRINCIPAL_KEY",
    "ASGIApp",
    "FeatureContext",
    "FeatureStack",
    "Replica",
    "Wrapper",
    "build_wrappers",
    "install",
    "send_json",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Wrapper = Callable[[ASGIApp], ASGIApp]

# Scope keys features set for the ones inside them.
PRINCIPAL_KEY = "tokenplane.principal"
BODY_KEY = "tokenplane.body"


class Replica(Protocol):
    """What features may ask of the serving replica they run in."""

    async def readiness(self) -> dict[str, Any]:
        """Report this replica's readiness (`ready`, `last_success_age_s`, ...)."""
        ...

    async def running_replicas(self) -> int | None:
        """Count running replicas of this deployment; None when the controller cannot tell."""
        ...


@dataclass(frozen=True)
class FeatureContext:
    """What a feature is built from.

    Attributes:
        args: The deployment's validated `ServingArgs`.
        replica: The replica the app runs in.
    """

    args: ServingArgs
    replica: Replica


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer with a JSON body (features answer without FastAPI, to stay cheap)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_wrappers(ctx: FeatureContext) -> list[Wrapper]:
    """Build the wrappers the deployment's args turn on, outermost first."""
    return [w for w in (feature(ctx) for feature in FEATURES) if w is not None]


class FeatureStack:
    """ASGI middleware applying the feature wrappers around the inner app (Starlette `add_middleware` form)."""

    def __init__(self, app: ASGIApp, *, wrappers: list[Wrapper]) -> None:
        """Wrap `app`, the last wrapper innermost."""
        for wrap in reversed(wrappers):
            app = wrap(app)
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request through the features."""
        await self._app(scope, receive, send)


def install(app: Any, ctx: FeatureContext) -> Any:
    """Put the feature layer outermost on a built Starlette/FastAPI app (vLLM's).

    vLLM's `build_app` builds the middleware stack eagerly; clearing it lets Starlette rebuild it with
    ours, and `app` stays the FastAPI app Serve expects (exception handlers, lifespan).

    Returns:
        `app`, with the features installed.
    """
    app.middleware_stack = None
    app.add_middleware(FeatureStack, wrappers=build_wrappers(ctx))
    return app


# The features, outermost first: reject strangers before reading bodies (public probes pass auth by
# path), bound the body before parsing it, parse it once for the features inside (rate limits charge the
# caller auth found and the tokens the body asks for).
from tokenplane_serving.features import auth, limits, models, ratelimit, readiness  # noqa: E402

FEATURES: tuple[Callable[[FeatureContext], Wrapper | None], ...] = (
    auth.feature,
    limits.body_limit,
    limits.validation,
    ratelimit.feature,
    models.feature,
    readiness.feature,
)
