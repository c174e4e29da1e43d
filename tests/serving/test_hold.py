"""The hold at zero replicas (`tokenplane_serving.hold`) around a test double of Ray's fallback proxy.

The double behaves as Ray's proxy does with a request for a deployment at zero replicas
(ray/serve/_private/proxy.py `send_request_to_replica`): it reads the body through `receive`, keeps calling
`receive` to notice the client leaving, waits for a replica (an event here), and on `http.disconnect` drops the
request and answers the error Ray's proxy answers then. The live check is tests/serving/test_scale_live.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tokenplane_serving.args import ServingArgs
from tokenplane_serving.hold import HOLD_SECONDS_HEADER, KEEPALIVE, HoldLimits, HoldMiddleware, limits_from_env
from tokenplane_serving.mapping import hold_environment

LIMITS = HoldLimits(hold_s=0.4, max_held=2, keepalive_after_s=0.05, keepalive_every_s=0.1, cancel_grace_s=0.5)
SSE_CHUNKS = [b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n', b"data: [DONE]\n\n"]


class FakeProxy:
    """Ray's proxy at zero replicas: answers once `replica.set()`, drops the request on a disconnect."""

    def __init__(self, *, status: int = 200, error_body: bytes = b"") -> None:
        self.replica = asyncio.Event()
        self.bodies: list[bytes] = []
        self.cancelled = 0
        self.answered = 0
        self.status = status
        self.error_body = error_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        disconnected = asyncio.ensure_future(receive())  # Ray's proxy_asgi_receive task
        replica = asyncio.ensure_future(self.replica.wait())
        await asyncio.wait({disconnected, replica}, return_when=asyncio.FIRST_COMPLETED)
        if disconnected.done():
            assert disconnected.result()["type"] == "http.disconnect"
            replica.cancel()
            self.cancelled += 1
            # What Ray's proxy sends after a disconnect (send_http_response_on_exception); nobody must see it.
            await send({"type": "http.response.start", "status": 499, "headers": []})
            await send({"type": "http.response.body", "body": b"Client disconnected."})
            return
        disconnected.cancel()
        self.answered += 1
        if self.status != 200:
            await send({"type": "http.response.start", "status": self.status, "headers": []})
            await send({"type": "http.response.body", "body": self.error_body})
        elif json.loads(body).get("stream"):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x-from", b"replica")]})
            for chunk in SSE_CHUNKS:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x-from", b"replica")]})
            await send({"type": "http.response.body", "body": b'{"choices": []}'})


class Client:
    """One HTTP request through the middleware, recording what reaches the client."""

    def __init__(self, app: Any, *, stream: bool = False, path: str = "/v1/chat/completions", hint: str = "") -> None:
        self.app = app
        self.sent: list[dict[str, Any]] = []
        body = json.dumps({"model": "tiny", "messages": [], "stream": stream}).encode()
        # The body in two chunks, as a server may deliver it.
        self.incoming = [
            {"type": "http.request", "body": body[:10], "more_body": True},
            {"type": "http.request", "body": body[10:], "more_body": False},
        ]
        self.left = asyncio.Event()
        headers = [(b"content-type", b"application/json")]
        if hint:
            headers.append((HOLD_SECONDS_HEADER.encode(), hint.encode()))
        self.scope = {"type": "http", "method": "POST", "path": path, "headers": headers}

    async def receive(self) -> dict[str, Any]:
        if self.incoming:
            return self.incoming.pop(0)
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def __call__(self) -> Client:
        await self.app(self.scope, self.receive, self.send)
        return self

    @property
    def status(self) -> int:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.sent
        return int(starts[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def error_of(body: bytes) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert set(error) >= {"message", "type", "code"}
    return dict(error)


async def test_past_the_hold_time_503_retry_after_openai_error_and_the_request_is_dropped_downstream() -> None:
    proxy = FakeProxy()
    hold = HoldMiddleware(proxy, LIMITS)
    client = await asyncio.wait_for(Client(hold)(), 5)
    assert client.status == 503
    assert client.headers[b"retry-after"] == b"10"
    assert client.headers[b"content-type"] == b"application/json"
    error = error_of(client.body)
    assert error["code"] == 503 and error["type"] == "ServiceUnavailableError" and "0.4s" in error["message"]
    assert proxy.cancelled == 1 and proxy.answered == 0, "the held request must be cancelled in Serve's queue"
    assert hold.held == 0
    proxy.replica.set()  # the replica that starts later sees nothing of it
    await asyncio.sleep(0.05)
    assert proxy.answered == 0


async def test_over_the_bound_429_retry_after_at_once_and_the_bound_frees_up() -> None:
    proxy = FakeProxy()
    hold = HoldMiddleware(proxy, LIMITS)
    held = [asyncio.ensure_future(Client(hold)()) for _ in range(LIMITS.max_held)]
    await asyncio.sleep(0.05)
    assert hold.held == LIMITS.max_held
    refused = await asyncio.wait_for(Client(hold)(), 1)
    assert refused.status == 429
    assert refused.headers[b"retry-after"] == b"10"
    assert error_of(refused.body)["code"] == 429
    assert len(proxy.bodies) == LIMITS.max_held, "a refused request never reaches Ray's proxy"
    proxy.replica.set()
    assert [c.status for c in await asyncio.gather(*held)] == [200, 200]
    assert hold.held == 0
    assert (await Client(hold)()).status == 200


async def test_a_waiting_stream_gets_keepalives_then_the_real_stream() -> None:
    proxy = FakeProxy()
    client = Client(HoldMiddleware(proxy, LIMITS), stream=True)
    task = asyncio.ensure_future(client())
    await asyncio.sleep(0.3)
    proxy.replica.set()
    await asyncio.wait_for(task, 5)
    assert client.status == 200
    assert client.headers[b"content-type"].startswith(b"text/event-stream")
    body = client.body
    assert body.startswith(KEEPALIVE) and body.count(KEEPALIVE) >= 2
    assert body.endswith(b"".join(SSE_CHUNKS)), "the replica's stream follows the keep-alives intact"
    assert client.sent[-1] == {"type": "http.response.body", "body": b""}


async def test_a_stream_past_the_hold_time_ends_with_an_error_event_and_done() -> None:
    proxy = FakeProxy()
    client = await asyncio.wait_for(Client(HoldMiddleware(proxy, LIMITS), stream=True)(), 5)
    assert client.status == 200  # committed by the keep-alives
    events = client.body.split(b"\n\n")
    assert events[0] == KEEPALIVE.strip()
    assert events[-3].startswith(b"data: {") and events[-2] == b"data: [DONE]" and events[-1] == b""
    assert error_of(events[-3].removeprefix(b"data: "))["code"] == 503
    assert client.sent[-1].get("more_body", False) is False
    assert proxy.cancelled == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_quick_answer_is_untouched(stream: bool) -> None:
    proxy = FakeProxy()
    proxy.replica.set()
    held = await Client(HoldMiddleware(proxy, LIMITS), stream=stream)()
    direct = await Client(proxy, stream=stream)()
    assert held.sent == direct.sent
    assert KEEPALIVE not in held.body


async def test_an_answer_that_comes_while_held_passes_through_intact() -> None:
    proxy = FakeProxy()
    client = Client(HoldMiddleware(proxy, LIMITS))
    task = asyncio.ensure_future(client())
    await asyncio.sleep(0.2)  # inside the hold time, past the keep-alive delay (a plain request gets none)
    proxy.replica.set()
    await asyncio.wait_for(task, 5)
    direct = await Client(proxy)()
    assert client.sent == direct.sent
    assert proxy.bodies[0] == proxy.bodies[1], "the body reaches Ray's proxy as the client sent it"


async def test_a_running_replica_ends_the_hold_so_a_long_generation_is_not_cut() -> None:
    proxy = FakeProxy()
    asked = 0

    async def replicas_up() -> bool:
        nonlocal asked
        asked += 1
        return asked > 1

    hold = HoldMiddleware(proxy, LIMITS, replicas_up=replicas_up)
    client = Client(hold)
    task = asyncio.ensure_future(client())
    await asyncio.sleep(LIMITS.hold_s * 2)  # past the hold time: assigned, still generating
    assert hold.held == 0, "a request with a replica to go to is no longer held"
    proxy.replica.set()
    await asyncio.wait_for(task, 5)
    assert client.status == 200 and asked == 2  # on arrival (none yet), then when the hold ran out


async def test_with_a_replica_running_requests_pass_as_ray_ships_them() -> None:
    # HAProxy falls back here too when its health checks mark busy replicas down: those are not held or bounded.
    proxy = FakeProxy()

    async def replicas_up() -> bool:
        return True

    hold = HoldMiddleware(proxy, HoldLimits(hold_s=0.1, max_held=1), replicas_up=replicas_up)
    clients = [Client(hold, stream=True) for _ in range(3)]
    tasks = [asyncio.ensure_future(client()) for client in clients]
    await asyncio.sleep(0.3)
    assert hold.held == 0
    proxy.replica.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    direct = await Client(proxy, stream=True)()
    assert all(client.sent == direct.sent for client in clients)


async def test_a_client_hint_shortens_the_hold_never_lengthens_it() -> None:
    proxy = FakeProxy()
    hold = HoldMiddleware(proxy, LIMITS)
    loop = asyncio.get_running_loop()
    started = loop.time()
    short = await asyncio.wait_for(Client(hold, hint="0.1")(), 5)
    assert short.status == 503 and loop.time() - started < LIMITS.hold_s
    assert "0.1s" in error_of(short.body)["message"]
    started = loop.time()
    long = await asyncio.wait_for(Client(hold, hint="60")(), 5)
    assert long.status == 503 and loop.time() - started < 2


async def test_an_error_answered_after_the_keepalives_becomes_an_sse_error_event() -> None:
    upstream = b'{"error": {"message": "bad", "type": "BadRequestError", "param": null, "code": 400}}'
    proxy = FakeProxy(status=400, error_body=upstream)
    client = Client(HoldMiddleware(proxy, LIMITS), stream=True)
    task = asyncio.ensure_future(client())
    await asyncio.sleep(0.2)
    proxy.replica.set()
    await asyncio.wait_for(task, 5)
    assert client.status == 200
    assert client.body.endswith(b"data: " + json.dumps(json.loads(upstream)).encode() + b"\n\ndata: [DONE]\n\n")


async def test_a_client_that_leaves_frees_its_place() -> None:
    proxy = FakeProxy()
    hold = HoldMiddleware(proxy, LIMITS)
    client = Client(hold)
    task = asyncio.ensure_future(client())
    await asyncio.sleep(0.05)
    client.left.set()
    await asyncio.wait_for(task, 1)
    assert proxy.cancelled == 1 and hold.held == 0


async def test_rays_own_endpoints_pass_even_when_full() -> None:
    proxy = FakeProxy()
    proxy.replica.set()
    hold = HoldMiddleware(proxy, HoldLimits(hold_s=1, max_held=1))
    hold.held = 1
    assert (await Client(hold, path="/-/healthz")()).status == 200


def test_the_hold_reaches_the_proxy_through_the_environment() -> None:
    args = ServingArgs.model_validate(
        {
            "model": {"id": "m", "source": "/models/m"},
            "scaling": {"min_replicas": 0, "hold": {"seconds": 45, "max_requests": 7}},
        }
    )
    env = hold_environment(args)
    assert env == {"TOKENPLANE_HOLD_SECONDS": "45", "TOKENPLANE_HOLD_MAX_REQUESTS": "7", "TOKENPLANE_HOLD_APP": "llm"}
    assert limits_from_env(env) == (HoldLimits(hold_s=45, max_held=7), "llm")
    assert limits_from_env({}) is None
    assert hold_environment(args.model_copy(update={"scaling": args.scaling.model_copy(update={"hold": None})})) == {}
