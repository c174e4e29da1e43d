"""The feature layer: what tokenplane adds to an OpenAI endpoint, as ASGI middleware on vLLM's own app.

With Ray Serve LLM's direct streaming, HAProxy sends each request straight to an LLMServer replica, whose
HTTP app is vLLM's own OpenAI server: tokens leave the engine's process as vLLM makes them, with no
extra Python hop. tokenplane's features wrap that app inside the replica, so they cost one pass per request
and nothing per token.

A feature is a module with one function `feature(ctx) -> Wrapper | None` (None: off for these args). It
is listed once in `FEATURES`, outermost first; a new feature (as the Batch API and the response cache were) is a
new module and one line here (the hold at zero is not one: it runs in Ray's fallback proxy, `tokenplane_serving.hold`).
Features share per-request facts through the ASGI scope: `PRINCIPAL_KEY` (who is calling, set by auth) and
`BODY_KEY` (the parsed JSON body, set by validation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tokenplane_serving.features import auth, batch, cache, limits, models, occupancy, ratelimit, readiness
from tokenplane_serving.features.base import (
    BODY_KEY,
    PRINCIPAL_KEY,
    ASGIApp,
    FeatureContext,
    FeatureStack,
    Replica,
    Wrapper,
    send_json,
)
from tokenplane_serving.features.errors import install_openai_http_errors

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

# The features, outermost first: count the request as holding a slot, reject strangers before reading bodies
# (public probes pass auth by path), answer the Batch API (its own upload limit), bound the body before parsing
# it, parse it once for the features inside (rate limits charge the caller auth found and the tokens the body
# asks for); the response cache answers innermost, once the tenant is known and the request admitted.
FEATURES: tuple[Callable[[FeatureContext], Wrapper | None], ...] = (
    occupancy.feature,
    auth.feature,
    batch.feature,  # before the body limit: batch input files are larger than requests
    limits.body_limit,
    limits.validation,
    ratelimit.feature,
    models.feature,
    readiness.feature,
    cache.feature,
)


def build_wrappers(ctx: FeatureContext) -> list[Wrapper]:
    """Build the wrappers the deployment's args turn on, outermost first."""
    return [w for w in (feature(ctx) for feature in FEATURES) if w is not None]


def install(app: Any, ctx: FeatureContext) -> Any:
    """Put the feature layer outermost on a built Starlette/FastAPI app (vLLM's); its routing errors in OpenAI's shape.

    vLLM's `build_app` builds the middleware stack eagerly; clearing it lets Starlette rebuild it with
    ours, and `app` stays the FastAPI app Serve expects (exception handlers, lifespan).

    Returns:
        `app`, with the features installed.
    """
    app.middleware_stack = None
    app.add_middleware(FeatureStack, wrappers=build_wrappers(ctx))
    install_openai_http_errors(app)
    return app
