"""The feature layer's shared parts: ASGI types, the scope keys features set, the context they are built from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tokenplane_serving.args import ServingArgs
from tokenplane_serving.auth import ASGIApp, Message, Receive, Scope, Send  # the ASGI types, defined once

__all__ = [
    "BODY_KEY",
    "PRINCIPAL_KEY",
    "ASGIApp",
    "FeatureContext",
    "FeatureStack",
    "Message",
    "Receive",
    "Replica",
    "Scope",
    "Send",
    "Wrapper",
    "send_json",
]

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
