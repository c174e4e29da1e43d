"""Requests inside a replica: waiting for a slot, and holding one (the queue direct streaming hides).

With direct streaming HAProxy sends each request straight to an LLMServer replica. A request beyond the
deployment's `max_ongoing_requests` is then accepted by the replica and waits there (up to
`max_queued_requests`) for a slot, before any user code runs; Serve's handle-queue gauge
(`ray_serve_deployment_queued_queries`) never sees it. tokenplane counts it from both sides of that wait:

- `AcceptedMiddleware` runs outermost in the replica's HTTP server, before Ray's admission. Ray applies the
  middlewares returned by the function named in `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` to every HTTP
  server it starts, the replica's direct-ingress server included (ray/serve/_private/replica.py
  `_maybe_start_direct_ingress_servers` -> http_util.py `configure_http_middlewares`); `mapping.FAST_PATH_ENV`
  sets it to `http_middlewares` below.
- The `occupancy` feature (`features/occupancy.py`) runs first in tokenplane's feature layer, which Ray calls
  only once the request holds a slot: it marks the request admitted.

Both sides share one `Occupancy` per process (the replica's). The two sides run on different event loops
(Ray runs user code on its own thread), hence the lock; it is taken twice per request, never per token.

The outer side also counts arrivals: inference requests (POSTs) the replica took in over the last
`ARRIVALS_WINDOW_S`, refused ones included (demand the fleet did not serve is still demand), client errors
(4xx other than 429) left out (no replica serves them, however many there are). The autoscaling policy compares
them with the requests served in the same window, so a saturated replica's demand shows although its batch
cannot grow.

The outer side is also the replica's admission: a request that finds (max_ongoing_requests + max_queued_requests)
requests running or waiting is refused there, with the deployment's backpressure status and Retry-After, in the
OpenAI error shape. Ray's own check counts requests on their way to a free slot as queued, so a burst in one
event-loop turn was refused with slots free; `mapping` gives Ray's bound room for the slots (`ADMISSION_ENV`).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.middleware import Middleware

from tokenplane_serving.auth import ASGIApp, Receive, Scope, Send, openai_error_body
from tokenplane_serving.mapping import ADMISSION_ENV

__all__ = [
    "ARRIVALS_WINDOW_S",
    "OCCUPANCY",
    "TICKET_KEY",
    "AcceptedMiddleware",
    "Admission",
    "Arrival",
    "Occupancy",
    "Ticket",
    "http_middlewares",
]

# The scope key the outer middleware leaves for the feature layer (Ray hands the same scope to the app).
TICKET_KEY = "tokenplane.ticket"
# The same window as the latency histograms the replica reports (`tokenplane_serving.server`): the policy divides
# arrivals by the requests served in it.
ARRIVALS_WINDOW_S = 30.0


class Ticket:
    """One accepted request: whether it still waits for a slot."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        """Create a waiting ticket."""
        self.waiting = True


class Arrival:
    """One inference request that reached the replica: whether it still counts as demand."""

    __slots__ = ("counted",)

    def __init__(self) -> None:
        """Create a counted arrival."""
        self.counted = True


class Occupancy:
    """Counts of requests accepted by this replica: waiting for a slot, and holding one; and recent arrivals."""

    def __init__(self) -> None:
        """Start empty."""
        self._lock = threading.Lock()
        self._waiting = 0
        self._ongoing = 0
        self._arrivals: collections.deque[tuple[float, Arrival]] = collections.deque()

    @property
    def waiting(self) -> int:
        """Requests accepted and not yet holding a slot (Ray's `max_ongoing_requests`)."""
        return self._waiting

    @property
    def ongoing(self) -> int:
        """Requests holding a slot: in tokenplane's features or vLLM's app."""
        return self._ongoing

    def accept(self, capacity: int | None = None) -> Ticket | None:
        """Count a request the replica's HTTP server took in; it waits until `admit`.

        Args:
            capacity: Requests running or waiting at most; None for no bound.

        Returns:
            Its ticket, or None when `capacity` requests are already in (the request is not counted).
        """
        with self._lock:
            if capacity is not None and self._waiting + self._ongoing >= capacity:
                return None
            self._waiting += 1
        return Ticket()

    def arrive(self, now: float | None = None) -> Arrival:
        """Count an inference request that reached the replica, admitted or refused (monotonic `now`)."""
        arrival = Arrival()
        with self._lock:
            self._arrivals.append((time.monotonic() if now is None else now, arrival))
        return arrival

    def void(self, arrival: Arrival) -> None:
        """Stop counting an arrival answered with a client error: no replica would serve it."""
        with self._lock:
            arrival.counted = False

    def arrivals(self, now: float | None = None) -> int:
        """Count the arrivals of the last `ARRIVALS_WINDOW_S` seconds."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._arrivals and self._arrivals[0][0] < now - ARRIVALS_WINDOW_S:
                self._arrivals.popleft()
            return sum(1 for _, arrival in self._arrivals if arrival.counted)

    def admit(self, ticket: Ticket | None) -> None:
        """Count a request that got a slot; a request without a ticket (not seen outside) only becomes ongoing."""
        with self._lock:
            if ticket is not None and ticket.waiting:
                ticket.waiting = False
                self._waiting -= 1
            self._ongoing += 1

    def finish(self) -> None:
        """Count the end of a request that held a slot."""
        with self._lock:
            self._ongoing -= 1

    def leave(self, ticket: Ticket) -> None:
        """Count the end of an accepted request; one never admitted (refused, cancelled) stops waiting."""
        with self._lock:
            if ticket.waiting:
                ticket.waiting = False
                self._waiting -= 1


# One per process: a replica process serves one replica.
OCCUPANCY = Occupancy()


@dataclass(frozen=True)
class Admission:
    """A replica's admission bound and how it refuses (rendered by `mapping` into `ADMISSION_ENV`)."""

    capacity: int
    status: int
    retry_after_s: int

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Admission | None:
        """Read the bound of this replica's deployment; None where it is not set (no bound)."""
        values = [environ.get(name) for name in ADMISSION_ENV]
        if not all(values):
            return None
        capacity, status, retry_after = (int(str(v)) for v in values)
        return cls(capacity, status, retry_after)

    async def refuse(self, send: Send) -> None:
        """Answer a request over the bound at once: status, Retry-After, OpenAI error body."""
        body = openai_error_body(
            f"the replica is at capacity ({self.capacity} requests running or queued); retry after "
            f"{self.retry_after_s} s",
            "rate_limit_error" if self.status == 429 else "service_unavailable",
            self.status,
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode()),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class AcceptedMiddleware:
    """Outermost ASGI layer of the replica's HTTP server: admits HTTP requests and counts them to the end."""

    def __init__(self, app: ASGIApp, occupancy: Occupancy = OCCUPANCY, admission: Admission | None = None) -> None:
        """Wrap Ray's direct-ingress app (or any app); the bound defaults to the deployment's (`ADMISSION_ENV`)."""
        self.app = app
        self._occupancy = occupancy
        self._admission = admission if admission is not None else Admission.from_environment()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit (or refuse) the request, and count it while Ray gives it a slot and the app answers.

        A POST is an arrival, refused or not; one answered with a client error is not.
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        occupancy, admission = self._occupancy, self._admission
        arrival = occupancy.arrive() if scope.get("method") == "POST" else None
        if arrival is not None:
            send = _voiding_client_errors(send, occupancy, arrival)
        ticket = occupancy.accept(admission.capacity if admission else None)
        if ticket is None:  # over the bound (there is one: accept refuses only then)
            if admission is not None:
                await admission.refuse(send)
            return
        scope[TICKET_KEY] = ticket
        try:
            await self.app(scope, receive, send)
        finally:
            occupancy.leave(ticket)


def _voiding_client_errors(send: Send, occupancy: Occupancy, arrival: Arrival) -> Send:
    async def watched(message: Any) -> None:
        # 429 is a replica refusing load (demand); other 4xx are requests no replica would serve.
        status = message["status"] if message["type"] == "http.response.start" else 0
        if 400 <= status < 500 and status != 429:
            occupancy.void(arrival)
        await send(message)

    return watched


def http_middlewares() -> list[Any]:
    """Ray's HTTP callback (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`): the middlewares for its HTTP servers.

    Ray calls it once per HTTP server it starts. A replica's server gets the counter; Ray's fallback proxy
    (HAProxy's backup server, which only sees requests that found no replica) gets the hold at zero instead
    (`tokenplane_serving.hold`).

    Returns:
        Starlette `Middleware`s: `AcceptedMiddleware` in a replica, `HoldMiddleware` (or none) in the fallback proxy.
    """
    from tokenplane_serving.ray_internals import in_fallback_proxy

    if in_fallback_proxy():
        from tokenplane_serving.hold import fallback_proxy_middlewares

        return fallback_proxy_middlewares()
    return [Middleware(AcceptedMiddleware)]
