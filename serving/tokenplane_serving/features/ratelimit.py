"""Feature: per-caller rate limits (requests and tokens per minute), 429 + Retry-After in the OpenAI shape.

A caller is the principal auth found (`key:<Secret key name>` or `entra:<oid>`), else the client address.
Each limit is a token bucket refilled continuously (a full minute's budget may be spent at once, then it
refills at limit/60 per second). Tokens are charged at admission as OpenAI does: the prompt's estimated
tokens (4 characters each) plus `max_tokens`; nothing is metered while the response streams.

Every replica keeps its own buckets holding limit / running replicas: Ray's router spreads requests over
replicas, so the fleet admits about the limit; a policy that concentrates a caller on fewer replicas makes
the limit stricter, never looser.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from tokenplane_serving.auth import openai_error_body
from tokenplane_serving.features.base import (
    BODY_KEY,
    PRINCIPAL_KEY,
    ASGIApp,
    FeatureContext,
    Receive,
    Replica,
    Scope,
    Send,
    Wrapper,
    send_json,
)

__all__ = ["Bucket", "RateLimitMiddleware", "estimate_tokens", "feature"]

_CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text
_REPLICAS_REFRESH_S = 10.0
_MAX_CALLERS = 100_000  # idle buckets are dropped past this, so unknown callers cannot grow memory forever


@dataclass
class Bucket:
    """A token bucket holding up to `capacity`, refilled at `capacity` per minute."""

    capacity: float
    level: float = field(default=-1.0)
    updated: float = 0.0

    def take(self, amount: float, now: float) -> float:
        """Take `amount` if available.

        Returns:
            0 when taken, else the seconds until `amount` would be available (inf if it never fits).
        """
        if self.level < 0:
            self.level, self.updated = self.capacity, now
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60.0)
        self.updated = now
        if amount <= self.level:
            self.level -= amount
            return 0.0
        if amount > self.capacity:
            return math.inf
        return (amount - self.level) * 60.0 / self.capacity


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_length(v) for v in value)
    if isinstance(value, dict):
        return sum(_text_length(v) for k, v in value.items() if k in ("content", "text", "prompt"))
    if isinstance(value, int):
        return _CHARS_PER_TOKEN  # a token id
    return 0


def estimate_tokens(body: dict[str, Any]) -> int:
    """Tokens a request is charged at admission: estimated prompt tokens plus its output budget.

    Returns:
        A positive token count.
    """
    prompt = _text_length(body.get("messages", body.get("prompt", "")))
    budget = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    choices = body.get("n")
    n = choices if isinstance(choices, int) and choices > 0 else 1
    output = budget * n if isinstance(budget, int) and budget > 0 else 0
    return max(1, math.ceil(prompt / _CHARS_PER_TOKEN) + output)


class RateLimitMiddleware:
    """Admits a caller's POST requests while its request and token buckets allow, else 429."""

    def __init__(self, app: ASGIApp, *, rpm: int | None, tpm: int | None, replica: Replica) -> None:
        """Wrap `app`.

        Args:
            app: The inner ASGI app.
            rpm: Requests per minute per caller, fleet-wide (None: unlimited).
            tpm: Tokens per minute per caller, fleet-wide (None: unlimited).
            replica: The replica, asked how many replicas share the limits.
        """
        self.app = app
        self._limits = {"requests": rpm, "tokens": tpm}
        self._replica = replica
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._share = 1
        self._share_at = -math.inf
        self._lock = asyncio.Lock()

    async def _replicas(self, now: float) -> int:
        if now - self._share_at >= _REPLICAS_REFRESH_S:
            self._share_at = now
            running = await self._replica.running_replicas()
            self._share = max(1, running or 1)
        return self._share

    def _bucket(self, caller: str, kind: str, limit: int, replicas: int) -> Bucket:
        capacity = max(1.0, limit / replicas)
        bucket = self._buckets.get((caller, kind))
        if bucket is None:
            if len(self._buckets) >= _MAX_CALLERS:
                self._buckets.clear()  # a flood of distinct callers resets budgets rather than exhausting memory
            bucket = self._buckets[(caller, kind)] = Bucket(capacity)
        bucket.capacity = capacity
        return bucket

    async def _reject(self, send: Send, kind: str, limit: int, wait_s: float) -> None:
        if math.isinf(wait_s):
            message = f"Request too large for the {kind} per minute limit ({limit}); lower max_tokens or the prompt."
            retry = 60
        else:
            retry = max(1, math.ceil(wait_s))
            message = f"Rate limit reached for {kind} per minute (limit {limit}). Please try again in {retry}s."
        body = openai_error_body(message, kind, "rate_limit_exceeded")
        headers = [(b"retry-after", str(retry).encode()), (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode())]
        await send_json(send, 429, body, headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Charge POST requests to their caller's buckets; answer 429 when one is empty."""
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        caller = scope.get(PRINCIPAL_KEY) or f"client:{(scope.get('client') or ('unknown',))[0]}"
        now = time.monotonic()
        replicas = await self._replicas(now)
        body = scope.get(BODY_KEY)
        charges = {"requests": 1, "tokens": estimate_tokens(body) if isinstance(body, dict) else 1}
        async with self._lock:  # check both buckets, then take from both, or from neither
            taken: list[tuple[Bucket, float]] = []
            for kind, limit in self._limits.items():
                if limit is None:
                    continue
                bucket = self._bucket(caller, kind, limit, replicas)
                wait = bucket.take(charges[kind], now)
                if wait:
                    for earlier, amount in taken:
                        earlier.level += amount
                    await self._reject(send, kind, limit, wait)
                    return
                taken.append((bucket, charges[kind]))
        await self.app(scope, receive, send)


def feature(ctx: FeatureContext) -> Wrapper | None:
    """On when `rate_limits` sets a requests or tokens per minute limit."""
    limits = ctx.args.rate_limits
    if limits.requests_per_minute is None and limits.tokens_per_minute is None:
        return None

    def wrap(app: ASGIApp) -> ASGIApp:
        return RateLimitMiddleware(
            app, rpm=limits.requests_per_minute, tpm=limits.tokens_per_minute, replica=ctx.replica
        )

    return wrap
