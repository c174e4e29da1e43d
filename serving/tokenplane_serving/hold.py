"""Requests held at zero replicas: a hold time, a bound, SSE keep-alives, in Ray's fallback proxy.

With HAProxy (`mapping.FAST_PATH_ENV`), each application's HAProxy backend lists the ingress replicas and, as
a `backup` server, Ray's Python proxy on the head node ("fallback proxy": ray/serve/_private/haproxy_templates.py
`server ... check backup`, haproxy.py `BackendConfig.fallback_server`, proxy_state.py
`_start_fallback_proxy_if_needed`). HAProxy sends a request to a backup server only when no replica is up, so
at zero replicas the fallback proxy takes it, queues it in its deployment handle, and Serve's cold start
answers it once a replica runs. `HoldMiddleware` wraps that proxy's ASGI app (Ray applies the middlewares
returned by `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`: http_util.py `configure_http_middlewares`, called
by proxy.py `ProxyActor.__init__`); requests with a replica to go to never pass it, so it costs the hot path
nothing. It adds what the issue asks of a held request:

- A hold time (`HoldLimits.hold_s`, the CR's `scaleToZero.holdSeconds`; a client may shorten its own with the
  `x-tokenplane-hold-seconds` header). A request still waiting for a replica past it gets 503 with
  `Retry-After` in the OpenAI error shape, and Ray's proxy is told the client left (an `http.disconnect`
  on its `receive`), which cancels the request in the handle's queue (proxy_response_generator.py
  `ProxyResponseGenerator`: `self._response.cancel()` on the disconnected task; handle.py
  `DeploymentResponse.cancel`: an unassigned request's assignment is cancelled), so it never runs unseen
  on the replica that starts later. Once the application has a running replica (`replicas_up`), a
  request is no longer held: it waits in Serve's queue or generates, and the hold time no longer applies
  (a non-streamed answer starts only when it is complete), and a request that arrives then passes untouched
  (HAProxy also falls back here when its health checks mark busy replicas down).
- A bound (`max_held`): one request more is answered 429 with `Retry-After` at once.
- SSE keep-alive comments (`: keep-alive`) for a streamed request (`"stream": true`) that waits, from
  `keepalive_after_s` on (a stream answered sooner is untouched), every `keepalive_every_s`. They commit
  a 200 `text/event-stream` response, so past the hold time such a stream ends the way vLLM ends a stream
  that fails midway: `data: {"error": {...}}` (code 503), then `data: [DONE]`. An error status the
  replica answers after the commit is turned into the same kind of event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tokenplane_serving.auth import ASGIApp, Message, Receive, Scope, Send, openai_error_body
from tokenplane_serving.mapping import HOLD_ENV

__all__ = [
    "HOLD_SECONDS_HEADER",
    "KEEPALIVE",
    "HoldLimits",
    "HoldMiddleware",
    "fallback_proxy_middlewares",
    "limits_from_env",
]

# A client may shorten its own hold (never lengthen it past the CR's).
HOLD_SECONDS_HEADER = "x-tokenplane-hold-seconds"
KEEPALIVE = b": keep-alive\n\n"
_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx-style proxies pass each event at once
]


@dataclass(frozen=True)
class HoldLimits:
    """How requests are held while a replica starts.

    Attributes:
        hold_s: How long a request waits for a replica before 503.
        max_held: Requests held at once; one more gets 429.
        retry_after_s: The `Retry-After` of both answers. A cold start is under way when either is sent,
            so an immediate retry would only queue again; 10 s is a fraction of any model's start.
        keepalive_after_s: A stream answered within this is untouched (no keep-alive, no committed 200).
        keepalive_every_s: Between keep-alives: below the idle timeouts of common proxies and load balancers
            (nginx and Azure Application Gateway 60 s and up) with margin.
        cancel_grace_s: After the 503, how long Ray's proxy gets to drop the request after the disconnect,
            before its task is cancelled outright.
    """

    hold_s: float
    max_held: int
    retry_after_s: int = 10
    keepalive_after_s: float = 2.0
    keepalive_every_s: float = 10.0
    cancel_grace_s: float = 5.0


def limits_from_env(environ: Mapping[str, str] = os.environ) -> tuple[HoldLimits, str] | None:
    """Read the hold the operator (or `tokenplane up`) rendered into the environment (`mapping.HOLD_ENV`).

    Returns:
        The limits and the application whose replicas end a hold; None when the variables are unset.
    """
    seconds, max_requests, app = (environ.get(name) for name in HOLD_ENV)
    if not seconds or not max_requests or not app:
        return None
    return HoldLimits(hold_s=float(seconds), max_held=int(max_requests)), app


def _error_event(message: str, err_type: str, code: int) -> bytes:
    return b"data: " + openai_error_body(message, err_type, code) + b"\n\n"


def _json_headers(body: bytes, retry_after_s: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after_s).encode()),
    ]


def _hold_hint(scope: Scope) -> float | None:
    for name, value in scope.get("headers") or ():
        if name.lower() == HOLD_SECONDS_HEADER.encode():
            try:
                hint = float(value)
            except ValueError:
                return None
            return hint if hint > 0 and math.isfinite(hint) else None
    return None


def _is_stream(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("stream") is True


class HoldMiddleware:
    """ASGI middleware of Ray's fallback proxy: hold time, bound and keep-alives for requests at zero replicas."""

    def __init__(
        self,
        app: ASGIApp,
        limits: HoldLimits,
        replicas_up: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """Wrap the fallback proxy's app.

        Args:
            app: Ray's proxy app (or any ASGI app).
            limits: The hold.
            replicas_up: True when the application has a running replica, so a request is not waiting for one;
                asked when a request arrives and when its hold time runs out (None: never; every request is held).
        """
        self.app = app
        self.limits = limits
        self._replicas_up = replicas_up
        self.held = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hold an HTTP request; Ray's own endpoints (`/-/healthz`, `/-/routes`) pass untouched.

        So does every request while the application has a running replica: HAProxy also falls back to this proxy
        when its health checks mark busy replicas down, and such a request is not waiting for a replica to start.
        """
        if scope["type"] != "http" or scope.get("path", "").startswith("/-/") or await self.replicas_up():
            await self.app(scope, receive, send)
            return
        limits = self.limits
        if self.held >= limits.max_held:
            body = openai_error_body(
                f"{self.held} requests are already waiting for a replica to start (the limit); "
                f"retry in {limits.retry_after_s}s.",
                "RateLimitError",
                429,
            )
            headers = _json_headers(body, limits.retry_after_s)
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.held += 1
        hold = _Hold(self, scope, receive, send)
        try:
            await hold.run()
        finally:
            hold.release()

    async def replicas_up(self) -> bool:
        """Whether the application has a running replica; False when unknown."""
        if self._replicas_up is None:
            return False
        try:
            return await asyncio.wait_for(self._replicas_up(), timeout=5.0)
        except Exception:  # unknown: the hold ends as it would without a replica
            return False


class _Hold:
    """One held request: its body replayed downstream, its answer watched, its deadline kept."""

    def __init__(self, owner: HoldMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        self.owner = owner
        self.scope = scope
        self.receive = receive
        self.send = send
        self.limits = owner.limits
        self.counted = True
        self.pending: deque[Message] = deque()
        self.stream = False
        self.committed = False  # our own 200 text/event-stream went out (keep-alives)
        self.answered = asyncio.Event()  # the downstream began its response
        self.expired = asyncio.Event()  # we answered 503: the downstream is told the client left
        self.error_status: int | None = None  # an error answer after the commit, turned into an SSE event
        self.error_body = b""
        self.client: asyncio.Future[Message] | None = None
        self.lock = asyncio.Lock()  # keep-alives and the downstream's messages never interleave

    def release(self) -> None:
        if self.counted:
            self.counted = False
            self.owner.held -= 1

    async def read_body(self) -> bool:
        """Buffer the request body (to see `stream`, then replay it); False if the client left meanwhile."""
        chunks = []
        while True:
            message = await self.receive()
            self.pending.append(message)
            if message["type"] != "http.request":
                return False
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.stream = _is_stream(b"".join(chunks))
        return True

    async def downstream_receive(self) -> Message:
        if self.pending:
            return self.pending.popleft()
        if self.expired.is_set():
            return {"type": "http.disconnect"}
        if self.client is None or self.client.done():
            self.client = asyncio.ensure_future(self.receive())
        expiry = asyncio.ensure_future(self.expired.wait())
        waiters: set[asyncio.Future[Any]] = {self.client, expiry}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            expiry.cancel()
        if self.expired.is_set() or not self.client.done():
            return {"type": "http.disconnect"}
        message = self.client.result()
        self.client = None
        return message

    async def downstream_send(self, message: Message) -> None:
        async with self.lock:
            if self.expired.is_set():
                return  # the client has its 503 already
            kind = message["type"]
            if kind == "http.response.start":
                self.answered.set()
                self.release()
                if not self.committed:
                    await self.send(message)
                elif message["status"] != 200:
                    self.error_status = int(message["status"])
                return
            if kind != "http.response.body" or self.error_status is None:
                await self.send(message)
                return
            self.error_body += message.get("body", b"")
            if not message.get("more_body", False):
                await self.send({"type": "http.response.body", "body": self._error_event(), "more_body": True})
                await self.send({"type": "http.response.body", "body": _DONE})

    def _error_event(self) -> bytes:
        # An OpenAI-shaped error body passes as it is; anything else is wrapped in that shape.
        with contextlib.suppress(ValueError):
            parsed = json.loads(self.error_body)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                return b"data: " + json.dumps(parsed).encode() + b"\n\n"
        text = self.error_body.decode(errors="replace").strip() or "upstream error"
        status = self.error_status or 500
        return _error_event(text, "ServiceUnavailableError" if status == 503 else "APIError", status)

    async def keepalive(self) -> None:
        async with self.lock:
            if self.answered.is_set() or self.expired.is_set():
                return
            if not self.committed:
                self.committed = True
                await self.send({"type": "http.response.start", "status": 200, "headers": list(_SSE_HEADERS)})
            await self.send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})

    async def expire(self, hold_s: float) -> None:
        async with self.lock:
            if self.answered.is_set():
                return
            self.expired.set()
            retry = self.limits.retry_after_s
            message = (
                f"No replica became ready within the hold time ({hold_s:g}s) while the model scales up from zero; "
                f"retry in {retry}s."
            )
            if self.committed:
                event = _error_event(message, "ServiceUnavailableError", 503)
                await self.send({"type": "http.response.body", "body": event, "more_body": True})
                await self.send({"type": "http.response.body", "body": _DONE})
            else:
                body = openai_error_body(message, "ServiceUnavailableError", 503)
                await self.send({"type": "http.response.start", "status": 503, "headers": _json_headers(body, retry)})
                await self.send({"type": "http.response.body", "body": body})
        self.release()

    async def run(self) -> None:
        if not await self.read_body():
            await self.owner.app(self.scope, self.downstream_receive, self.downstream_send)
            return
        limits = self.limits
        hint = _hold_hint(self.scope)
        hold_s = min(limits.hold_s, hint) if hint is not None else limits.hold_s
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + hold_s
        next_keepalive = started + limits.keepalive_after_s if self.stream else math.inf
        task = asyncio.ensure_future(self.owner.app(self.scope, self.downstream_receive, self.downstream_send))
        answered = asyncio.ensure_future(self.answered.wait())
        try:
            while not task.done() and not self.answered.is_set():
                wake = min(deadline, next_keepalive)
                timeout = None if math.isinf(wake) else max(0.0, wake - loop.time())
                await asyncio.wait({task, answered}, timeout=timeout)
                if task.done() or self.answered.is_set():
                    break
                now = loop.time()
                if now >= deadline:
                    if await self.owner.replicas_up():
                        deadline = math.inf  # no longer waiting for a replica: Serve's queue or generation
                        self.release()
                        continue
                    await self.expire(hold_s)
                    break
                if now >= next_keepalive:
                    await self.keepalive()
                    next_keepalive = now + limits.keepalive_every_s
            if self.expired.is_set():
                # Ray's proxy drops the request on the disconnect; cancel it outright if it does not in time.
                done, _ = await asyncio.wait({task}, timeout=limits.cancel_grace_s)
                if not done:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                return
            await self._finish(task)
        finally:
            answered.cancel()
            if not task.done():
                task.cancel()
            if self.client is not None:
                self.client.cancel()

    async def _finish(self, task: asyncio.Future[None]) -> None:
        try:
            await task
        except Exception:
            if not self.committed or self.answered.is_set():
                raise
            # The stream is committed and the downstream failed before answering: end it as vLLM would.
            async with self.lock:
                event = _error_event("The request failed before a replica answered.", "APIError", 500)
                await self.send({"type": "http.response.body", "body": event, "more_body": True})
                await self.send({"type": "http.response.body", "body": _DONE})


class _ReplicasUp:
    """Whether an application has a running replica in every deployment, from Serve's public status API.

    Asked off the proxy's event loop (`serve.status` blocks), at most once a second: one answer serves the
    requests that arrive, or whose hold runs out, within a second of each other.
    """

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self._answer: tuple[float, bool] = (-math.inf, False)

    async def __call__(self) -> bool:
        now = asyncio.get_running_loop().time()
        if now - self._answer[0] >= 1.0:
            self._answer = (now, await asyncio.to_thread(self._ask))
        return self._answer[1]

    def _ask(self) -> bool:
        from ray import serve

        app = serve.status().applications.get(self.app_name)
        if app is None or not app.deployments:
            return False
        running = (
            sum(n for k, n in d.replica_states.items() if str(getattr(k, "value", k)) == "RUNNING")
            for d in app.deployments.values()
        )
        return all(n > 0 for n in running)


def fallback_proxy_middlewares() -> list[Any]:
    """Build the middlewares of Ray's fallback proxy: `HoldMiddleware` when the environment sets a hold.

    Returns:
        One Starlette `Middleware`, or none (no hold configured: the fallback proxy as Ray ships it).
    """
    from starlette.middleware import Middleware

    found = limits_from_env()
    if found is None:
        return []
    limits, app_name = found
    return [Middleware(HoldMiddleware, limits=limits, replicas_up=_ReplicasUp(app_name))]
