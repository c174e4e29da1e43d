"""The replica's waiting/ongoing counts through the real middlewares, around an admission gate like Ray's.

Ray's direct-ingress server (ray/serve/_private/replica.py `_direct_ingress_asgi`) refuses a request when
`max_queued_requests` are already waiting, else waits for one of `max_ongoing_requests` slots and then calls the
app; the gate below does the same with an asyncio.Semaphore. The live check (a real replica's /metrics under
load) is tests/serving/test_production.py::test_waiting_gauge_counts_requests_queued_in_the_replica.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tokenplane_serving.features.occupancy import AdmittedMiddleware
from tokenplane_serving.mapping import ADMISSION_ENV
from tokenplane_serving.occupancy import (
    ARRIVALS_WINDOW_S,
    AcceptedMiddleware,
    Admission,
    Occupancy,
    http_middlewares,
)

SLOTS, QUEUE = 2, 3


def engine_behind_the_feature_layer(occupancy: Occupancy, release: asyncio.Event) -> Any:
    """vLLM's app stand-in, answering once `release` is set, inside the feature that marks requests admitted."""

    async def engine(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await answer(send, 200, b"ok")

    return AdmittedMiddleware(engine, occupancy)


async def answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


def stack(occupancy: Occupancy, release: asyncio.Event) -> Any:
    inner = engine_behind_the_feature_layer(occupancy, release)
    slots = asyncio.Semaphore(SLOTS)
    queued = 0

    async def ray_admission(scope: Any, receive: Any, send: Any) -> None:
        nonlocal queued
        if queued >= QUEUE:
            await answer(send, 429, b"busy")
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

    return AcceptedMiddleware(ray_admission, occupancy, admission=None)


async def call(app: Any, method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    """One request (a POST by default) through `app`: status, headers, body."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": "/v1/completions", "headers": []}, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0].get("headers", [])}
    return int(sent[0]["status"]), headers, b"".join(m.get("body", b"") for m in sent[1:])


async def request(app: Any) -> int:
    return (await call(app))[0]


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


def racy_stack(occupancy: Occupancy, release: asyncio.Event, ray_limit: int, admission: Admission | None) -> Any:
    """Ray 2.60's direct-ingress admission as written: a request counts as queued from admission until a task,
    created then and run on a later turn of the loop, takes a slot (replica.py `_track_queued_request`)."""

    inner = engine_behind_the_feature_layer(occupancy, release)
    slots = asyncio.Semaphore(SLOTS)
    queued = 0

    async def ray_admission(scope: Any, receive: Any, send: Any) -> None:
        nonlocal queued
        if queued >= ray_limit:
            await answer(send, 503, b"Request dropped due to backpressure")
            return
        queued += 1

        async def call_asgi() -> None:
            nonlocal queued
            async with slots:
                queued -= 1
                await inner(scope, receive, send)

        await asyncio.create_task(call_asgi())

    return AcceptedMiddleware(ray_admission, occupancy, admission)


async def burst(app: Any, n: int) -> list[tuple[int, dict[str, str], bytes]]:
    """n requests that all reach the app in the same turn of the event loop."""
    return list(await asyncio.gather(*(call(app) for _ in range(n))))


def test_rays_admission_alone_refuses_a_burst_with_slots_free() -> None:
    # The upstream behaviour tokenplane's admission exists for: SLOTS + QUEUE requests fit, yet only QUEUE get in.
    async def scenario() -> list[int]:
        release = asyncio.Event()
        app = racy_stack(Occupancy(), release, ray_limit=QUEUE, admission=None)
        pending = asyncio.create_task(burst(app, SLOTS + QUEUE))
        await asyncio.sleep(0.05)
        release.set()
        return [status for status, _, _ in await pending]

    codes = asyncio.run(scenario())
    assert codes.count(503) == SLOTS, codes


def test_a_burst_fills_slots_and_queue_exactly_and_the_rest_get_the_deployments_refusal() -> None:
    admission = Admission(capacity=SLOTS + QUEUE, status=429, retry_after_s=7)

    async def scenario() -> tuple[list[tuple[int, dict[str, str], bytes]], tuple[int, int]]:
        occupancy, release = Occupancy(), asyncio.Event()
        # As mapping renders it: Ray's own bound leaves room for the slots.
        app = racy_stack(occupancy, release, ray_limit=SLOTS + QUEUE, admission=admission)
        pending = asyncio.create_task(burst(app, SLOTS + QUEUE + 2))
        await asyncio.sleep(0.05)
        counts = (occupancy.ongoing, occupancy.waiting)
        release.set()
        return await pending, counts

    results, counts = asyncio.run(scenario())
    assert counts == (SLOTS, QUEUE)
    codes = [status for status, _, _ in results]
    assert codes.count(200) == SLOTS + QUEUE and codes.count(429) == 2, codes
    for status, headers, body in results:
        if status == 429:
            assert headers["retry-after"] == "7"
            error = json.loads(body)["error"]
            assert error["code"] == 429 and "at capacity (5 requests" in error["message"]


def test_the_bound_is_read_from_the_deployments_environment() -> None:
    env = dict(zip(ADMISSION_ENV, ("24", "503", "2"), strict=True))
    assert Admission.from_environment(env) == Admission(capacity=24, status=503, retry_after_s=2)
    assert Admission.from_environment({}) is None


def test_arrivals_count_inference_requests_refused_or_not_but_not_client_errors() -> None:
    async def scenario() -> None:
        occupancy, release = Occupancy(), asyncio.Event()
        app = stack(occupancy, release)
        tasks = [asyncio.create_task(request(app)) for _ in range(SLOTS + QUEUE)]
        await asyncio.sleep(0.05)
        assert await request(app) == 429  # refused for lack of room: demand all the same
        bounded = AcceptedMiddleware(app.app, occupancy, Admission(capacity=SLOTS + QUEUE, status=503, retry_after_s=1))
        assert await request(bounded) == 503  # refused by tokenplane's admission: demand too
        assert occupancy.arrivals() == SLOTS + QUEUE + 2

        async def bad_request(scope: Any, receive: Any, send: Any) -> None:
            await answer(send, 400, b"too long")

        assert await request(AcceptedMiddleware(bad_request, occupancy, admission=None)) == 400  # none would serve it
        release.set()
        await asyncio.gather(*tasks)
        assert (await call(app, method="GET"))[0] == 200  # not an inference request (a probe, the model list)
        assert occupancy.arrivals() == SLOTS + QUEUE + 2  # served or refused, they arrived within the window
        assert occupancy.arrivals(now=time.monotonic() + ARRIVALS_WINDOW_S + 1) == 0  # and leave it

    asyncio.run(scenario())
