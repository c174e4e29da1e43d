"""Feature: the response cache (`spec.endpoint.cache`): a repeated request is answered from Redis, not the engine.

It runs innermost: auth has named the tenant, the body limit and validation have parsed the body, and rate limits
have charged the request (a hit is still a request the caller's budget pays for; the limits meter callers, not
engine work). The store, keys and SSE replay are `tokenplane_serving.cache`; this module puts them on the path.

What qualifies and what is kept (where the issue left it open):
- `POST /v1/chat/completions` and `/v1/completions` with a JSON object body, deterministic (temperature 0 or a
  seed) unless `qualify: all`, and not asking for logprobs (`cache.cache_key` holds the rule). Anything else
  passes through untouched (`bypass`).
- Stored: a 200 answer whose every choice finished (`stop` or `length`) and whose JSON is at most
  `MAX_ENTRY_BYTES` (1 MiB); errors, tool calls and cut streams are not. Entries live `ttlSeconds` (default
  3600: an hour bounds how stale an answer gets after the model or its data change, and Redis evicts earlier
  under memory pressure).
- Tenant: the principal auth found (`key:<Secret key name>` or `entra:<oid>`); with auth off every caller is one
  tenant. `shared: true` puts every tenant in one scope. Every key also carries the deployment (`<namespace>/<name>`)
  and its model's source, dtype and adapters (`cache.cache_scope`): deployments sharing one Redis keep apart, and a
  new model starts with an empty cache.

Hits: a plain request gets the stored completion with a fresh `id` and `created`; a streamed one gets it replayed
as `chat.completion.chunk` / `text_completion` SSE events (usage last when `stream_options.include_usage`).
Misses: the engine's answer is forwarded as it comes, unchanged, and a copy is stored once it is complete. A
streamed miss asks the engine for usage (`stream_options.include_usage`) so the stored answer knows its tokens,
and drops that usage event again when the client did not ask for it. Identical requests in flight together are
not coalesced: each is a miss until the first is stored.

Redis is never in the way: a lookup or write waits at most `timeout_s` (0.25 s), then Redis is left alone for
`backoff_s` (5 s); any failure on the cache path is a miss (or a skipped write), never a failed request.
Answers to qualifying requests say `x-tokenplane-cache: hit` or `miss` (others pass untouched, with no per-message
hop). The replica exports hits, misses, bypasses,
errors and the prompt + completion tokens hits saved (`ray_tokenplane_response_cache_*`, docs/metrics.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any

from tokenplane_serving.cache import (
    MAX_ENTRY_BYTES,
    ResponseCache,
    assemble_stream,
    cache_key,
    cache_scope,
    replay_stream,
    settings_from_args,
    tokens_of,
)
from tokenplane_serving.features.base import (
    BODY_KEY,
    PRINCIPAL_KEY,
    ASGIApp,
    FeatureContext,
    Message,
    Receive,
    Scope,
    Send,
    Wrapper,
    send_json,
)

__all__ = ["CACHE_HEADER", "CacheMetrics", "CacheMiddleware", "feature"]

logger = logging.getLogger(__name__)

CACHE_HEADER = b"x-tokenplane-cache"
_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
# The SSE of a streamed miss is kept up to this size to assemble it: one event per token is ~40x the text.
_MAX_STREAM_BYTES = 16 * MAX_ENTRY_BYTES


class CacheMetrics:
    """The replica's cache counters, exported through Ray's metrics agent as `ray_tokenplane_response_cache_*`."""

    def __init__(self, model_id: str) -> None:
        """Create the counters, tagged with the served model name."""
        from ray.serve import metrics

        def counter(name: str, description: str) -> Any:
            made = metrics.Counter(f"tokenplane_response_cache_{name}", description, tag_keys=("model_name",))
            made.set_default_tags({"model_name": model_id})
            return made

        self._hits = counter("hits", "Requests answered from the response cache.")
        self._misses = counter("misses", "Qualifying requests the cache did not have (Redis down included).")
        self._bypassed = counter("bypassed", "Requests that do not qualify for the cache (not deterministic).")
        self._errors = counter("errors", "Redis errors and timeouts, each degraded to no cache.")
        self._saved = counter("saved_tokens", "Prompt + completion tokens hits spared the engine.")

    def hit(self, tokens: int) -> None:
        """Count a hit and the tokens it saved."""
        self._hits.inc()
        if tokens > 0:
            self._saved.inc(tokens)

    def miss(self) -> None:
        """Count a miss."""
        self._misses.inc()

    def bypassed(self) -> None:
        """Count a request that does not qualify."""
        self._bypassed.inc()

    def errors(self, count: int) -> None:
        """Count Redis failures."""
        if count > 0:
            self._errors.inc(count)


def _qualifying_body(scope: Scope) -> dict[str, Any] | None:
    if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in _ROUTES:
        return None
    body = scope.get(BODY_KEY)
    # Only well-typed stream flags: the middleware reads them to pick the answer's shape.
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("stream", False), bool | None)
        or not isinstance(body.get("stream_options") or {}, dict)
    ):
        return None
    return body


def _labelled(message: Message, outcome: bytes) -> Message:
    return {**message, "headers": [*message.get("headers", []), (CACHE_HEADER, outcome)]}


def _with_usage(scope: Scope, receive: Receive, body: Mapping[str, Any]) -> tuple[Scope, Receive]:
    """Return the request with `stream_options.include_usage` on, for the engine (the client keeps its own)."""
    options = {**(body.get("stream_options") or {}), "include_usage": True}
    data = json.dumps({**body, "stream_options": options}).encode()
    headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-length"]
    scope = {**scope, "headers": [*headers, (b"content-length", str(len(data)).encode())]}
    sent = False

    async def replaced() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        while True:  # drain the original body, so later receives see what follows it (a disconnect)
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        return {"type": "http.request", "body": data, "more_body": False}

    return scope, replaced


def _is_usage_event(event: bytes) -> bool:
    if b'"usage"' not in event:
        return False
    try:
        chunk = json.loads(event.removeprefix(b"data: "))
    except ValueError:
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == [] and chunk.get("usage") is not None


def _sse_chunks(raw: bytes) -> list[dict[str, Any]] | None:
    """Parse an SSE body into its JSON objects; None when it is not a clean stream of them."""
    chunks = []
    for part in raw.split(b"\n\n"):
        event = part.strip()
        if not event or event == b"data: [DONE]":
            continue
        if not event.startswith(b"data: "):
            return None
        try:
            chunk = json.loads(event[len(b"data: ") :])
        except ValueError:
            return None
        if not isinstance(chunk, dict):
            return None
        chunks.append(chunk)
    return chunks


def _fresh(response: Mapping[str, Any]) -> dict[str, Any]:
    """Return a stored answer as a new response: its own id (the engine's prefix) and creation time."""
    prefix = str(response.get("id") or "").partition("-")[0] or "cmpl"
    return {**response, "id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time())}


class CacheMiddleware:
    """Answers qualifying requests from the response cache; stores the engine's answers to the others."""

    def __init__(self, app: ASGIApp, *, cache: ResponseCache, metrics: CacheMetrics) -> None:
        """Wrap `app`.

        Args:
            app: The inner ASGI app (vLLM's).
            cache: The deployment's response cache.
            metrics: The replica's cache counters.
        """
        self.app = app
        self._cache = cache
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer from the cache, or let the engine answer and keep a copy."""
        body = _qualifying_body(scope)
        key = None
        if body is not None:
            try:
                key = cache_key(scope["path"], body, scope.get(PRINCIPAL_KEY), self._cache.settings)
            except (TypeError, ValueError):  # a body the key cannot normalize is simply not cached
                key = None
        if body is None or key is None:
            if body is not None:
                self._metrics.bypassed()
            await self.app(scope, receive, send)
            return
        cached = await self._get(key)
        stream = body.get("stream") is True
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if cached is not None:
            self._metrics.hit(tokens_of(cached))
            await self._answer(send, _fresh(cached), stream=stream, include_usage=usage)
            return
        self._metrics.miss()
        if stream:
            await self._stream_miss(scope, receive, send, key, body, client_wants_usage=usage)
        else:
            await self._plain_miss(scope, receive, send, key)

    async def _get(self, key: str) -> dict[str, Any] | None:
        errors = self._cache.stats.errors
        try:
            return await self._cache.get(key)
        except Exception:  # the cache must never fail a request; ResponseCache already absorbs Redis errors
            logger.exception("response cache lookup failed")
            self._cache.stats.errors += 1
            return None
        finally:
            self._metrics.errors(self._cache.stats.errors - errors)

    async def _put(self, key: str, response: dict[str, Any]) -> None:
        errors = self._cache.stats.errors
        try:
            await self._cache.put(key, response)
        except Exception:
            logger.exception("response cache write failed")
            self._cache.stats.errors += 1
        finally:
            self._metrics.errors(self._cache.stats.errors - errors)

    async def _answer(self, send: Send, response: dict[str, Any], *, stream: bool, include_usage: bool) -> None:
        if not stream:
            await send_json(send, 200, json.dumps(response).encode(), [(CACHE_HEADER, b"hit")])
            return
        events = b"".join(replay_stream(response, include_usage=include_usage))
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": [*headers, (CACHE_HEADER, b"hit")]})
        await send({"type": "http.response.body", "body": events, "more_body": False})

    async def _plain_miss(self, scope: Scope, receive: Receive, send: Send, key: str) -> None:
        status, size, kept = 0, 0, []

        async def relay(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = _labelled(message, b"miss")
            elif message["type"] == "http.response.body" and status == 200 and size <= MAX_ENTRY_BYTES:
                kept.append(message.get("body", b""))
                size += len(kept[-1])
            await send(message)

        await self.app(scope, receive, relay)
        if status != 200 or size > MAX_ENTRY_BYTES:
            return
        try:
            response = json.loads(b"".join(kept))
        except ValueError:
            return
        if isinstance(response, dict):
            await self._put(key, response)

    async def _stream_miss(
        self, scope: Scope, receive: Receive, send: Send, key: str, body: dict[str, Any], *, client_wants_usage: bool
    ) -> None:
        if not client_wants_usage:
            scope, receive = _with_usage(scope, receive, body)
        status, kept, pending = 0, bytearray(), b""

        async def relay(message: Message) -> None:
            nonlocal status, pending
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = _labelled(message, b"miss")
            elif message["type"] == "http.response.body":
                piece = message.get("body", b"")
                if status == 200 and len(kept) <= _MAX_STREAM_BYTES:
                    kept.extend(piece)
                if not client_wants_usage:  # pass whole events on, minus the usage one the client did not ask for
                    pending += piece
                    done, _, pending = pending.rpartition(b"\n\n")
                    events = [e + b"\n\n" for e in done.split(b"\n\n") if e] if done else []
                    piece = b"".join(e for e in events if not _is_usage_event(e))
                    if not message.get("more_body", False):
                        piece, pending = piece + pending, b""
                    message = {**message, "body": piece}
            await send(message)

        await self.app(scope, receive, relay)
        if status != 200 or len(kept) > _MAX_STREAM_BYTES:
            return
        chunks = _sse_chunks(bytes(kept))
        response = assemble_stream(chunks) if chunks else None
        if response is not None:
            await self._put(key, response)


def feature(ctx: FeatureContext) -> Wrapper | None:
    """On when `cache.enabled`; a missing or malformed Redis URL leaves it off with an error in the log."""
    if not ctx.args.cache.enabled:
        return None
    try:
        settings = settings_from_args(ctx.args.cache, os.environ)
    except ValueError as err:
        logger.error("response cache off: %s", err)  # the cache is an optimisation: serve without it
        return None
    if settings is None:
        return None
    settings = replace(settings, scope=cache_scope(ctx.args))
    return partial(CacheMiddleware, cache=ResponseCache(settings), metrics=CacheMetrics(ctx.args.model.id))
