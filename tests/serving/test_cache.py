"""The response cache against a real redis-server: what qualifies, per-tenant keys, SSE replay, and outages."""

import asyncio
import io
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from rich.console import Console

from tests.support.redis_server import RedisServer
from tokenplane_serving.args import ServingArgs
from tokenplane_serving.cache import (
    MAX_ENTRY_BYTES,
    CacheSettings,
    ResponseCache,
    assemble_stream,
    cache_key,
    redis_url,
    replay_stream,
    settings_from_args,
)
from tokenplane_serving.features.base import FeatureContext, Replica
from tokenplane_serving.features.cache import feature as cache_feature
from tokenplane_serving.local import local_cache_store

CHAT = "/v1/chat/completions"
ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "tiny",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "bonjour le monde"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
}


def chat(content: str = "Hello   world", **params: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 8, **params}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


def settings(server: RedisServer, **kw: Any) -> CacheSettings:
    return CacheSettings(url=server.url, **kw)


def test_only_deterministic_requests_qualify(redis_server: RedisServer) -> None:
    s = settings(redis_server)
    assert cache_key(CHAT, chat(temperature=0), "k1", s) is not None
    assert cache_key(CHAT, chat(seed=42, temperature=0.8), "k1", s) is not None
    assert cache_key(CHAT, chat(temperature=0.7), "k1", s) is None
    assert cache_key(CHAT, chat(), "k1", s) is None  # OpenAI's default temperature is 1
    assert cache_key(CHAT, chat(temperature=0.7), "k1", settings(redis_server, qualify="all")) is not None
    # Logprobs cannot be replayed in a stream: never cached, whatever the deployment says.
    assert cache_key(CHAT, chat(temperature=0, logprobs=True), "k1", s) is None
    assert cache_key(CHAT, chat(temperature=0, logprobs=False), "k1", s) is not None
    assert cache_key("/v1/completions", {"prompt": "a", "temperature": 0, "logprobs": 0}, "k1", s) is None


def test_key_normalizes_whitespace_and_ignores_streaming_but_not_sampling(redis_server: RedisServer) -> None:
    s = settings(redis_server)
    key = cache_key(CHAT, chat("Hello   world", temperature=0), "k1", s)
    assert key == cache_key(CHAT, chat(" Hello\n world ", temperature=0), "k1", s)
    assert key == cache_key(CHAT, chat("Hello world", temperature=0, stream=True, stream_options={}), "k1", s)
    assert key != cache_key(CHAT, chat("Hello world", temperature=0, max_tokens=9), "k1", s)
    assert key != cache_key(CHAT, chat("Hello world", temperature=0, model="tiny:adapter"), "k1", s)
    assert key != cache_key("/v1/completions", chat("Hello world", temperature=0), "k1", s)


def test_tenants_do_not_share_unless_the_deployment_says_so(redis_server: RedisServer) -> None:
    own = settings(redis_server)
    assert cache_key(CHAT, chat(temperature=0), "key-a", own) != cache_key(CHAT, chat(temperature=0), "key-b", own)
    shared = settings(redis_server, shared=True)
    assert cache_key(CHAT, chat(temperature=0), "key-a", shared) == cache_key(
        CHAT, chat(temperature=0), "key-b", shared
    )


async def test_a_repeat_is_a_hit_with_its_tokens_saved(redis_server: RedisServer) -> None:
    cache = ResponseCache(settings(redis_server, ttl_s=60))
    key = cache_key(CHAT, chat(temperature=0), "k1", cache.settings)
    assert key is not None
    assert await cache.get(key) is None
    await cache.put(key, ANSWER)
    assert await cache.get(key) == ANSWER
    assert (cache.stats.hits, cache.stats.misses, cache.stats.tokens_saved) == (1, 1, 12)  # prompt + completion
    assert cache.stats.hit_ratio == 0.5
    other_tenant = cache_key(CHAT, chat(temperature=0), "k2", cache.settings)
    assert other_tenant is not None and await cache.get(other_tenant) is None
    await cache.close()


async def test_unfinished_and_oversized_answers_are_not_stored(redis_server: RedisServer) -> None:
    cache = ResponseCache(settings(redis_server))
    cut = {**ANSWER, "choices": [{**ANSWER["choices"][0], "finish_reason": None}]}
    await cache.put("tokenplane:cache:v1:cut", cut)
    assert await cache.get("tokenplane:cache:v1:cut") is None
    message = {"role": "assistant", "content": "x" * MAX_ENTRY_BYTES}
    huge = {**ANSWER, "choices": [{**ANSWER["choices"][0], "message": message}]}
    await cache.put("tokenplane:cache:v1:huge", huge)
    assert await cache.get("tokenplane:cache:v1:huge") is None
    await cache.close()


async def test_redis_outage_degrades_to_no_cache_then_recovers(redis_server: RedisServer) -> None:
    # A backoff well above the calls' time, so a stall of this process under CI load does not end it mid-test.
    cache = ResponseCache(settings(redis_server, backoff_s=1.5, timeout_s=0.2))
    key = cache_key(CHAT, chat(temperature=0), "k1", cache.settings)
    assert key is not None
    await cache.put(key, ANSWER)
    assert await cache.get(key) == ANSWER
    redis_server.stop()
    started = time.monotonic()
    assert await cache.get(key) is None  # a miss, not an error
    await cache.put(key, ANSWER)  # skipped, not raised
    for _ in range(20):
        assert await cache.get(key) is None
    elapsed = time.monotonic() - started
    assert cache.stats.errors == 1, "one failure, then Redis is left alone for backoff_s"
    assert elapsed < 1.5, f"22 calls during the outage took {elapsed:.2f}s"
    redis_server.start()  # empty again (no persistence), on the same port
    await asyncio.sleep(1.6)
    await cache.put(key, ANSWER)
    assert await cache.get(key) == ANSWER
    await cache.close()


async def test_a_hung_redis_costs_one_timeout_then_is_left_alone(redis_server: RedisServer) -> None:
    cache = ResponseCache(settings(redis_server, timeout_s=0.2, backoff_s=30))
    key = cache_key(CHAT, chat(temperature=0), "k1", cache.settings)
    assert key is not None
    redis_server.pause()  # accepts connections, answers nothing
    try:
        started = time.monotonic()
        for _ in range(10):
            assert await cache.get(key) is None
        elapsed = time.monotonic() - started
    finally:
        redis_server.resume()
    assert cache.stats.errors == 1 and cache.stats.misses == 10
    # One 0.2-s timeout, then no waits: ten timeouts would take 2 s.
    assert elapsed < 1.5, f"10 lookups against a hung Redis took {elapsed:.2f}s"
    await cache.close()


def test_the_secret_holds_a_redis_url_or_the_portals_connection_string() -> None:
    env = "TOKENPLANE_TEST_CACHE_URL"
    args = _cache_args(env).cache
    url = "rediss://:k@r.redis.cache.windows.net:6380/0"
    assert (settings_from_args(args, {env: url}) or pytest.fail()).url == url
    portal = "r.redis.cache.windows.net:6380,password=a+b/c=,ssl=True,abortConnect=False"
    assert (settings_from_args(args, {env: portal}) or pytest.fail()).url == (
        "rediss://:a%2Bb%2Fc%3D@r.redis.cache.windows.net:6380/0"
    )
    assert redis_url("localhost:6379") == "redis://localhost:6379/0"
    with pytest.raises(ValueError, match="must be a redis://, rediss:// or unix:// URL"):
        settings_from_args(args, {env: "http://r.example:80"})
    with pytest.raises(ValueError, match=env):
        settings_from_args(args, {env: " "})


def test_a_misconfigured_cache_leaves_the_endpoint_serving_without_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env = "TOKENPLANE_TEST_CACHE_URL"
    monkeypatch.setenv(env, "not a url")
    ctx = FeatureContext(_cache_args(env), replica=cast(Replica, None))
    with caplog.at_level(logging.ERROR):
        assert cache_feature(ctx) is None
    assert "response cache off" in caplog.text and env in caplog.text


def _events(stream: list[bytes]) -> list[dict[str, Any]]:
    assert stream[-1] == b"data: [DONE]\n\n"
    assert all(event.startswith(b"data: ") and event.endswith(b"\n\n") for event in stream)
    return [json.loads(event[len(b"data: ") :]) for event in stream[:-1]]


def test_replayed_stream_has_the_chunk_shape_and_reassembles() -> None:
    events = _events(list(replay_stream(ANSWER, include_usage=True)))
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == "bonjour le monde"
    assert events[-1]["choices"] == [] and events[-1]["usage"] == ANSWER["usage"]
    assert assemble_stream(events) == ANSWER
    no_usage = _events(list(replay_stream(ANSWER)))
    assert all("usage" not in e for e in no_usage)


def test_a_replayed_tool_call_reaches_the_openai_client_and_a_streamed_one_is_not_stored_without_it() -> None:
    # vLLM answers a named tool_choice with finish_reason "stop" and the call in `tool_calls` (or in
    # `delta.tool_calls` when streamed): replay dropped the call, and assembly stored an empty answer.
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    message = {"role": "assistant", "content": None, "tool_calls": [call], "reasoning_content": "look it up"}
    answer = {**ANSWER, "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    events = _events(list(replay_stream(answer)))
    state = ChatCompletionStreamState()
    for event in events:
        state.handle_chunk(ChatCompletionChunk.model_validate(event))
    [tool_call] = state.get_final_completion().choices[0].message.tool_calls or []
    assert (tool_call.id, tool_call.function.name, tool_call.function.arguments) == (
        "call_1",
        "weather",
        '{"city":"Oslo"}',
    )
    assert any(e["choices"] and e["choices"][0]["delta"].get("reasoning_content") == "look it up" for e in events)
    assert assemble_stream(events) is None


def test_completions_replay_as_text_completion_events() -> None:
    answer = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "tiny",
        "choices": [{"index": 0, "text": "abc", "finish_reason": "length", "logprobs": None}],
    }
    events = _events(list(replay_stream(answer)))
    assert {e["object"] for e in events} == {"text_completion"}
    assert assemble_stream(events) == answer


def _cache_args(env: str) -> ServingArgs:
    return ServingArgs.model_validate(
        {"model": {"id": "tiny", "source": "/models/tiny"}, "cache": {"enabled": True, "redis_url_env": env}}
    )


def test_a_local_run_starts_its_own_redis_and_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    env = "TOKENPLANE_TEST_CACHE_URL"
    monkeypatch.delenv(env, raising=False)
    console = Console(file=io.StringIO())
    args, stop = local_cache_store(_cache_args(env), console)
    assert stop is not None and args.cache.enabled
    url = os.environ[env]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(b"PING\r\n")
        assert conn.recv(16).startswith(b"+PONG")
    stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert env not in os.environ, "the next local run starts its own"
    # A URL already in the environment (a Redis of the user's own) is used as it is.
    monkeypatch.setenv(env, "rediss://:k@r.redis.cache.windows.net:6380/0")
    args, stop = local_cache_store(_cache_args(env), console)
    assert stop is None and args.cache.enabled


def test_a_local_run_without_redis_serves_without_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = "TOKENPLANE_TEST_CACHE_URL"
    monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on it
    output = io.StringIO()
    args, stop = local_cache_store(_cache_args(env), Console(file=output, width=200))
    assert stop is None and not args.cache.enabled
    assert "Response cache off" in output.getvalue() and "make redis" in output.getvalue()
