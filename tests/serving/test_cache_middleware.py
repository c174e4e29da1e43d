"""The cache middleware's edges, fast: a real redis-server, and an ASGI peer answering as vLLM's OpenAI server does.

The peer follows vLLM 0.32's `chat_completion/serving.py`: each stream chunk is `data: <model_dump_json(
exclude_unset=True)>\\n\\n` (no `usage` key unless continuous usage is on), the usage chunk comes last with
`choices: []` only when `stream_options.include_usage`, an error mid-stream is a `data: {"error": ...}` event
before `data: [DONE]`, and a bad request is a 400 JSON body. The live behaviour is in test_cache_live.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from tests.support.asgi import read_body
from tests.support.redis_server import RedisServer
from tokenplane_serving.args import ServingArgs
from tokenplane_serving.cache import CacheSettings, ResponseCache
from tokenplane_serving.features.base import BODY_KEY, PRINCIPAL_KEY, FeatureContext, Receive, Replica, Scope, Send
from tokenplane_serving.features.cache import CacheMetrics, CacheMiddleware
from tokenplane_serving.features.cache import feature as cache_feature

CHAT = "/v1/chat/completions"


class VllmPeer:
    """Answers chat completions like vLLM's server, word by word; counts what reached it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_stream = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(receive)
        body = json.loads(raw)
        self.bodies.append(body)
        if body.get("max_tokens", 1) < 1:
            error = {"error": {"message": "max_tokens must be at least 1", "type": "BadRequestError", "code": 400}}
            await _json(send, 400, error)
            return
        words = ["bonjour", " le", " monde"]
        usage = {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}
        base = {"id": "chatcmpl-abc", "created": 1, "model": "tiny"}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(words)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            await _json(send, 200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunk = {**base, "object": "chat.completion.chunk"}
        events = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
        events += [{**chunk, "choices": [{"index": 0, "delta": {"content": w}}]} for w in words]
        if self.fail_stream:
            events.append({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}})
        else:
            events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append({**chunk, "choices": [], "usage": usage})
        for event in events:
            data = b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class ParsedBody:
    """What the auth and validation features leave in the scope for the cache: the principal and the parsed body."""

    def __init__(self, app: Any, principal: str) -> None:
        self.app, self.principal = app, principal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(receive)
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        scope = {**scope, BODY_KEY: json.loads(raw), PRINCIPAL_KEY: self.principal}
        await self.app(scope, replay, send)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


def client(peer: VllmPeer, url: str) -> httpx.AsyncClient:
    cache = ResponseCache(CacheSettings(url=url, backoff_s=0.0))
    app = ParsedBody(CacheMiddleware(peer, cache=cache, metrics=CacheMetrics("tiny")), principal="key:current")
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica")


def request(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0, **extra}


def sse(text: str) -> list[dict[str, Any]]:
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.strip()]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def test_a_streamed_miss_gets_usage_from_the_engine_but_only_what_the_client_asked(
    redis_server: RedisServer,
) -> None:
    peer = VllmPeer()
    async with client(peer, redis_server.url) as http:
        miss = await http.post(CHAT, json=request(stream=True))
        assert miss.headers["x-tokenplane-cache"] == "miss"
        assert peer.bodies[-1]["stream_options"] == {"include_usage": True}
        events = sse(miss.text)
        assert all(e["choices"] for e in events), "the usage event the client did not ask for is dropped"
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "bonjour le monde"
        hit = await http.post(CHAT, json=request())
        assert hit.headers["x-tokenplane-cache"] == "hit" and len(peer.bodies) == 1
        assert hit.json()["usage"]["total_tokens"] == 8, "the stored answer kept the engine's usage"
        assert hit.json()["choices"][0]["message"]["content"] == "bonjour le monde"


async def test_errors_and_broken_streams_are_not_stored(redis_server: RedisServer) -> None:
    peer = VllmPeer()
    async with client(peer, redis_server.url) as http:
        for _ in range(2):
            bad = await http.post(CHAT, json=request(max_tokens=0))
            assert bad.status_code == 400 and bad.headers["x-tokenplane-cache"] == "miss"
        peer.fail_stream = True
        for _ in range(2):
            broken = await http.post(CHAT, json=request(stream=True))
            assert "engine died" in broken.text
        assert len(peer.bodies) == 4, "every repeat reached the engine again"


async def test_odd_stream_flags_pass_through_untouched(redis_server: RedisServer) -> None:
    peer = VllmPeer()
    async with client(peer, redis_server.url) as http:
        for body in (request(stream_options="yes"), request(stream="true")):
            answer = await http.post(CHAT, json=body)
            assert "x-tokenplane-cache" not in answer.headers
            assert peer.bodies[-1] == body, "the engine gets the body as sent (and rejects it as it would)"


async def test_redis_down_serves_every_request_from_the_engine(tmp_path: Path) -> None:
    down = RedisServer(tmp_path)  # a free port with nothing listening
    peer = VllmPeer()
    async with client(peer, down.url) as http:
        for stream in (False, True, False, True):
            answer = await http.post(CHAT, json=request(stream=stream))
            assert answer.status_code == 200 and answer.headers["x-tokenplane-cache"] == "miss"
    assert len(peer.bodies) == 4


async def test_deployments_sharing_one_redis_never_answer_from_each_others_entries(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Served names repeat across namespaces, API keys are named by their Secret key (key:alice in both), and
    # the operator names every app `llm`: without the deployment and its model in the key, team-b got team-a's
    # answers, and a deployment whose model changed served the old model's answers until their TTL.
    env = "TOKENPLANE_TEST_CACHE_URL"
    monkeypatch.setenv(env, redis_server.url)

    def replica(scope: str, source: str = "/models/tiny") -> tuple[VllmPeer, httpx.AsyncClient]:
        cache = {"enabled": True, "redis_url_env": env, "scope": scope}
        args = ServingArgs.model_validate({"model": {"id": "tiny", "source": source}, "cache": cache})
        wrap = cache_feature(FeatureContext(args, replica=cast(Replica, None)))
        assert wrap is not None
        peer = VllmPeer()
        app = ParsedBody(wrap(peer), principal="key:alice")
        return peer, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica")

    outcomes = {}
    for name, (scope, source) in {
        "first": ("team-a/copilot", "/models/tiny"),
        "another replica": ("team-a/copilot", "/models/tiny"),
        "another namespace": ("team-b/copilot", "/models/tiny"),
        "a new model": ("team-a/copilot", "/models/tiny-v2"),
    }.items():
        peer, http = replica(scope, source)
        async with http:
            answer = await http.post(CHAT, json=request())
        outcomes[name] = (answer.headers["x-tokenplane-cache"], len(peer.bodies))
    assert outcomes == {
        "first": ("miss", 1),
        "another replica": ("hit", 0),
        "another namespace": ("miss", 1),
        "a new model": ("miss", 1),
    }
