"""The replica's waiting/ongoing counts through the real middlewares, around an admission gate like Ray's.

Ray's direct-ingress server (ray/serve/_private/replica.py `_direct_ingress_asgi`) refuses a request when
`max_queued_requests` are already waiting, else waits for one of `max_ongoing_requests` slots and then calls the
app; the gate below does the same with an asyncio.Semaphore. The live check (a real replica's /metrics under
load) is tests/serving/test_production.py::test_waiting_gauge_counts_requests_queued_in_the_replica.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tokenplane_serving.features.occupancy import AdmittedMiddleware
from tokenplane_serving.occupancy import AcceptedMiddleware, Occupancy, http_middlewares

SLOTS, QUEUE = 2, 3


def stack(occupancy: Occupancy, release: asyncio.Event) -> Any:
    async def engine(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    inner = AdmittedMiddleware(engine, occupancy)
    slots = asyncio.Semaphore(SLOTS)
    queued = 0

    async def ray_admission(scope: Any, receive: Any, send: Any) -> None:
        nonlocal queued
        if queued >= QUEUE:
            await send({"type": "http.response.start", "status": 429, "headers": []})
            await send({"type": "http.response.body", "body": b"busy"})
            return
        queued += 1
        try:
            await slots.acquire()
        finally:
            queued -= 1
        try:
            await inner(scope, receive, send)
        finally:
            slots.release()

    return AcceptedMiddleware(ray_admission, occupancy)


async def request(app: Any) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}, receive, send)
    return int(sent[0]["status"])


def test_waiting_and_ongoing_follow_admission_refusal_and_cancellation() -> None:
    async def scenario() -> None:
        occupancy, release = Occupancy(), asyncio.Event()
        app = stack(occupancy, release)
        tasks = [asyncio.create_task(request(app)) for _ in range(SLOTS + QUEUE)]
        await asyncio.sleep(0.05)
        assert (occupancy.ongoing, occupancy.waiting) == (SLOTS, QUEUE)
        # One more is refused by the gate and stops counting at once.
        assert await request(app) == 429
        assert (occupancy.ongoing, occupancy.waiting) == (SLOTS, QUEUE)
        # A waiting client that goes away stops waiting.
        tasks[-1].cancel()
        await asyncio.sleep(0.01)
        assert occupancy.waiting == QUEUE - 1
        release.set()
        codes = await asyncio.gather(*tasks[:-1])
        assert codes == [200] * (SLOTS + QUEUE - 1)
        assert (occupancy.ongoing, occupancy.waiting) == (0, 0)

    asyncio.run(scenario())


def test_without_the_outer_layer_requests_are_ongoing_never_waiting() -> None:
    # A replica whose Ray lacks the HTTP callback: the feature layer still counts slot holders.
    async def scenario() -> None:
        occupancy, release = Occupancy(), asyncio.Event()
        outer = stack(occupancy, release)
        inner_only = outer.app  # the gate and the feature layer, without AcceptedMiddleware
        task = asyncio.create_task(request(inner_only))
        await asyncio.sleep(0.02)
        assert (occupancy.ongoing, occupancy.waiting) == (1, 0)
        release.set()
        assert await task == 200
        assert (occupancy.ongoing, occupancy.waiting) == (0, 0)

    asyncio.run(scenario())


def test_the_ray_callback_returns_starlette_middleware() -> None:
    from ray.serve._private.http_util import validate_http_proxy_callback_return

    (middleware,) = validate_http_proxy_callback_return(http_middlewares())
    assert middleware.cls is AcceptedMiddleware
