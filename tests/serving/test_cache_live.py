"""The response cache on the shared real server (Ray Serve + vLLM, tiny model) with a real redis-server.

"Not reaching the engine" is proven with vLLM's own generation-token counter (`ray_vllm_generation_tokens_total`
on the metrics endpoint): it grows by a miss's tokens and stays put across hits. The shared server's Redis runs
only for this module (conftest.py), so a new, empty Redis is started here and stopped at the end.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.conftest import API_KEYS, MODEL_ID
from tests.support.redis_server import RedisServer
from tokenplane_serving.features.cache import CACHE_HEADER
from tokenplane_serving.local import LocalServer

pytestmark = [pytest.mark.serving, pytest.mark.timeout(300)]

GENERATED = "ray_vllm_generation_tokens_total"
HEADER = CACHE_HEADER.decode()
# The local server's metrics agent refreshes every 2 s; one more second covers the engine step that reports.
REPORT_S = 3.0
# Answers are this long (`ignore_eos`): the random tiny model may otherwise end at once, with nothing to compare.
ANSWER_TOKENS = 16


def scrape_totals(url: str) -> dict[str, float]:
    """Sum each sample name over its label sets, from the metrics endpoint."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def settled(url: str, name: str = GENERATED) -> float:
    """The counter once two reads one report apart agree (every earlier token has been reported)."""
    value = scrape_totals(url).get(name, 0.0)
    for _ in range(5):
        time.sleep(REPORT_S)
        again = scrape_totals(url).get(name, 0.0)
        if again == value:
            return value
        value = again
    raise AssertionError(f"{name} kept moving: is something else generating?")


def client(server: LocalServer, key: str = API_KEYS[0]) -> OpenAI:
    return OpenAI(base_url=server.openai_base_url, api_key=key, max_retries=0, timeout=60)


def unique(text: str) -> str:
    """A prompt no earlier run or test has cached."""
    return f"{text} [{uuid.uuid4().hex[:8]}]"


def chat(oai: OpenAI, content: str, **params: Any) -> tuple[str | None, Any]:
    """One chat completion, deterministic unless `params` say otherwise: (cache header, parsed response)."""
    params = {"max_tokens": ANSWER_TOKENS, "temperature": 0, "extra_body": {"ignore_eos": True}, **params}
    raw = oai.chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=[{"role": "user", "content": content}], **params
    )
    return raw.headers.get(HEADER), raw.parse()


def stream_chat(oai: OpenAI, content: str, **params: Any) -> tuple[str | None, str, list[Any]]:
    """One streamed deterministic chat completion: (cache header, text, chunks)."""
    raw = oai.chat.completions.with_raw_response.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": content}],
        max_tokens=ANSWER_TOKENS,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
        **params,
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return raw.headers.get(HEADER), text, chunks


@pytest.fixture(scope="module")
def redis_up(tiny_server: LocalServer, cache_redis: RedisServer) -> Iterator[RedisServer]:
    """Start the shared server's Redis (empty) and wait until the replica's cache uses it.

    Until now Redis was down, so the replica's cache may be inside its 5 s backoff: poll until a repeat is a hit.
    """
    cache_redis.start()
    oai = client(tiny_server)
    prompt = unique("warm up")
    deadline = time.monotonic() + 30
    while chat(oai, prompt)[0] != "hit":
        assert time.monotonic() < deadline, "the cache never answered a repeat after Redis started"
        time.sleep(0.5)
    try:
        yield cache_redis
    finally:
        cache_redis.stop()


def test_plain_repeat_is_served_from_the_cache_without_the_engine(
    tiny_server: LocalServer, redis_up: RedisServer
) -> None:
    assert tiny_server.metrics_url
    oai = client(tiny_server)
    prompt = unique("Name three colours of the rainbow.")
    before = scrape_totals(tiny_server.metrics_url).get(GENERATED, 0.0)
    outcome, first = chat(oai, prompt)
    assert outcome == "miss"
    assert first.usage is not None and first.usage.completion_tokens == ANSWER_TOKENS
    after_miss = settled(tiny_server.metrics_url)
    assert after_miss - before >= first.usage.completion_tokens, "the counter shows the miss's tokens"

    # Repeats, one with the whitespace varied: the same answer in the same shape, a new id, no engine work.
    repeats = [chat(oai, prompt) for _ in range(3)] + [chat(oai, "  " + prompt.replace(" ", "\n  ") + "\t")]
    for outcome, again in repeats:
        assert outcome == "hit"
        assert again.object == "chat.completion"
        assert again.choices[0].message.content == first.choices[0].message.content
        assert again.choices[0].finish_reason == first.choices[0].finish_reason
        assert again.usage == first.usage
        assert again.id != first.id and again.id.startswith("chatcmpl-")
    time.sleep(REPORT_S)
    assert scrape_totals(tiny_server.metrics_url).get(GENERATED, 0.0) == after_miss, "a hit reached the engine"


def test_streamed_repeat_is_replayed_from_the_cache_without_the_engine(
    tiny_server: LocalServer, redis_up: RedisServer
) -> None:
    assert tiny_server.metrics_url
    oai = client(tiny_server)
    prompt = unique("Count from one to ten.")
    before = scrape_totals(tiny_server.metrics_url).get(GENERATED, 0.0)
    outcome, text, chunks = stream_chat(oai, prompt)
    assert outcome == "miss"
    # The cache asked the engine for usage to store it; the client did not, so it got no usage chunk.
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    # A completions stream, too: the `text_completion` event shape.
    completion_prompt = unique("Once upon a time")
    streamed = oai.completions.create(
        model=MODEL_ID, prompt=completion_prompt, max_tokens=ANSWER_TOKENS, temperature=0, stream=True
    )
    completion_text = "".join(c.choices[0].text for c in streamed if c.choices)
    after_miss = settled(tiny_server.metrics_url)
    assert after_miss - before >= ANSWER_TOKENS, "the counter shows the misses' tokens"

    outcome, replayed, replay_chunks = stream_chat(oai, prompt, stream_options={"include_usage": True})
    assert outcome == "hit" and replayed == text
    assert {c.object for c in replay_chunks} == {"chat.completion.chunk"}
    assert replay_chunks[-1].choices == [] and replay_chunks[-1].usage is not None
    assert replay_chunks[-1].usage.completion_tokens == ANSWER_TOKENS
    assert replay_chunks[-2].choices[0].finish_reason in ("stop", "length")
    # The streamed miss was assembled and stored: a plain request gets it whole, with its usage.
    outcome, whole = chat(oai, prompt)
    assert outcome == "hit" and whole.choices[0].message.content == text
    assert whole.usage is not None and whole.usage == replay_chunks[-1].usage
    raw = oai.completions.with_raw_response.create(
        model=MODEL_ID, prompt=completion_prompt, max_tokens=ANSWER_TOKENS, temperature=0, stream=True
    )
    events = list(raw.parse())
    assert raw.headers.get(HEADER) == "hit"
    assert {e.object for e in events} == {"text_completion"}
    assert "".join(e.choices[0].text for e in events if e.choices) == completion_text
    time.sleep(REPORT_S)
    assert scrape_totals(tiny_server.metrics_url).get(GENERATED, 0.0) == after_miss, "a hit reached the engine"


def test_non_deterministic_requests_are_never_cached(tiny_server: LocalServer, redis_up: RedisServer) -> None:
    oai = client(tiny_server)
    prompt = unique("Tell me a story.")
    for _ in range(2):
        raw = oai.chat.completions.with_raw_response.create(
            model=MODEL_ID, messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=0.9
        )
        assert raw.headers.get(HEADER) is None, "a sampled request passes the cache untouched"
        assert raw.parse().usage.completion_tokens > 0
    # A fixed seed makes a sampled request reproducible, so it qualifies.
    assert chat(oai, prompt, seed=7, temperature=0.9)[0] == "miss"
    assert chat(oai, prompt, seed=7, temperature=0.9)[0] == "hit"
    # Logprobs cannot be replayed in a stream, so such requests never qualify.
    assert chat(oai, prompt, logprobs=True)[0] is None


def test_one_tenants_answer_is_not_served_to_another(tiny_server: LocalServer, redis_up: RedisServer) -> None:
    alice, bob = client(tiny_server, API_KEYS[0]), client(tiny_server, API_KEYS[1])
    prompt = unique("What is the capital of France?")
    assert chat(alice, prompt)[0] == "miss"
    assert chat(alice, prompt)[0] == "hit"
    outcome, _ = chat(bob, prompt)
    assert outcome == "miss", "another API key must not get the first key's cached answer"
    assert chat(bob, prompt)[0] == "hit"


def test_redis_killed_or_hung_mid_test_changes_nothing_but_the_hit_ratio(
    tiny_server: LocalServer, redis_up: RedisServer
) -> None:
    oai = client(tiny_server)
    prompt = unique("Describe the sea.")
    assert chat(oai, prompt)[0] == "miss"
    outcome, cached = chat(oai, prompt)
    assert outcome == "hit"

    redis_up.kill()
    started = time.monotonic()
    for _ in range(4):
        outcome, fresh = chat(oai, prompt)
        assert outcome == "miss" and fresh.choices[0].message.content == cached.choices[0].message.content
        outcome, text, _ = stream_chat(oai, prompt)
        assert outcome == "miss" and text == cached.choices[0].message.content
    killed_s = time.monotonic() - started
    ready = httpx.get(f"{tiny_server.base_url}/-/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True

    redis_up.start()  # empty again (no persistence), on the same port
    redis_up.pause()  # a Redis that accepts connections and never answers
    time.sleep(5.5)  # past the cache's backoff from the kill, so Redis is tried (and hangs)
    started = time.monotonic()
    hung = [chat(oai, unique("Describe the sky."))[0] for _ in range(3)]
    hung_s = time.monotonic() - started
    assert hung == ["miss", "miss", "miss"]
    redis_up.resume()

    deadline = time.monotonic() + 15  # the backoff from the hang, then hits again
    while chat(oai, prompt)[0] != "hit":
        assert time.monotonic() < deadline, "the cache did not come back after Redis did"
        time.sleep(0.5)
    print(f"\n[cache outage] 8 requests with Redis killed: {killed_s:.2f}s; 3 with Redis hung: {hung_s:.2f}s")


def test_hit_and_miss_latency_and_the_cache_metrics(tiny_server: LocalServer, redis_up: RedisServer) -> None:
    """Benchmark (reported, not asserted): a hit's latency against a miss's, 64-token answers."""
    assert tiny_server.metrics_url
    oai = client(tiny_server)
    prompts = [unique(f"Write a long list of fruits, number {i}.") for i in range(5)]

    def timed(prompt: str) -> tuple[str | None, float]:
        started = time.perf_counter()
        outcome, _ = chat(oai, prompt, max_tokens=64)
        return outcome, (time.perf_counter() - started) * 1000.0

    misses = [timed(p) for p in prompts]
    hits = [timed(p) for p in prompts]
    assert {o for o, _ in misses} == {"miss"} and {o for o, _ in hits} == {"hit"}
    miss_ms, hit_ms = [ms for _, ms in misses], [ms for _, ms in hits]
    print(
        f"\n[cache latency] miss median {statistics.median(miss_ms):.1f} ms (max {max(miss_ms):.1f}), "
        f"hit median {statistics.median(hit_ms):.1f} ms (max {max(hit_ms):.1f}), 64 output tokens, n={len(prompts)}"
    )

    time.sleep(REPORT_S)
    totals = scrape_totals(tiny_server.metrics_url)
    for name in ("hits", "misses", "bypassed", "errors", "saved_tokens"):
        assert totals.get(f"ray_tokenplane_response_cache_{name}_total", 0.0) > 0, name
    # Every hit saved its prompt and 64 completion tokens.
    assert totals["ray_tokenplane_response_cache_saved_tokens_total"] >= 64 * len(prompts)
