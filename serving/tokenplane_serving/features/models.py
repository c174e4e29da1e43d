"""Feature: LoRA adapters as models (`<model>:<adapter>`): listed in `/v1/models`, unknown ones a 404.

vLLM lists the adapters it has loaded; tokenplane's are mounted and load on first use (Ray Serve
multiplexing), so they are listed from the configuration, and a request naming an adapter that is not
configured gets the OpenAI 404 before it reaches a replica's loader.
"""

from __future__ import annotations

import json
from typing import Any

from tokenplane_serving.auth import openai_error_body
from tokenplane_serving.features.base import BODY_KEY, ASGIApp, FeatureContext, Receive, Scope, Send, Wrapper, send_json

__all__ = ["ModelsMiddleware", "feature"]


class ModelsMiddleware:
    """Adds adapter cards to `GET /v1/models[/{id}]` and rejects unknown adapters with 404."""

    def __init__(self, app: ASGIApp, *, base: str, adapters: list[str]) -> None:
        """Wrap `app`.

        Args:
            app: The inner ASGI app (vLLM's).
            base: The served base model id.
            adapters: Adapter names served as `<base>:<name>`.
        """
        self.app = app
        self._base = base
        self._adapters = frozenset(adapters)
        self._ids = {f"{base}:{name}" for name in adapters}

    def _card(self, base_card: dict[str, Any], adapter_id: str) -> dict[str, Any]:
        return {**base_card, "id": adapter_id, "root": adapter_id, "parent": self._base}

    async def _list(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Ask vLLM for its list (the base card with its limits), then append the adapters.
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        if start.get("status") != 200:
            await send_json(send, int(start.get("status", 500)), b"".join(chunks))
            return
        listing = json.loads(b"".join(chunks))
        base_card = next((c for c in listing.get("data", []) if c.get("id") == self._base), None)
        if base_card is not None:
            known = {c.get("id") for c in listing["data"]}
            listing["data"].extend(self._card(base_card, i) for i in sorted(self._ids) if i not in known)
        await send_json(send, 200, json.dumps(listing).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer model listings; check the `model` of POST bodies."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/v1/models":
            await self._list(scope, receive, send)
            return
        if method == "GET" and path.startswith("/v1/models/") and path[len("/v1/models/") :] in self._ids:
            scope = {**scope, "path": "/v1/models"}
            wanted = path[len("/v1/models/") :]
            collected: list[Any] = []

            async def keep(message: Any) -> None:
                collected.append(message)

            await self._list(scope, receive, keep)
            listing = json.loads(b"".join(m.get("body", b"") for m in collected[1:]) or b"{}")
            card = next((c for c in listing.get("data", []) if c.get("id") == wanted), None)
            if card is not None:
                await send_json(send, 200, json.dumps(card).encode())
                return
        body = scope.get(BODY_KEY) if method == "POST" else None
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str) and model.startswith(self._base + ":") and model not in self._ids:
            body = openai_error_body(f"The model `{model}` does not exist.", "invalid_request_error", "model_not_found")
            await send_json(send, 404, body)
            return
        await self.app(scope, receive, send)


def feature(ctx: FeatureContext) -> Wrapper | None:
    """On when the deployment serves LoRA adapters."""
    if not ctx.args.lora.adapters:
        return None
    names = [a.name for a in ctx.args.lora.adapters]

    def wrap(app: ASGIApp) -> ASGIApp:
        return ModelsMiddleware(app, base=ctx.args.model.id, adapters=names)

    return wrap
