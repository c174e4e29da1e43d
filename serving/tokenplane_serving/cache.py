"""The response cache: exact match on the normalized request, per tenant, in Redis, never in the way.

A request qualifies when its answer is reproducible: temperature 0, or a fixed seed (`deterministic`), unless the
deployment caches every request (`all`); a request asking for logprobs never does (a replayed stream could not carry
them). The key hashes the deployment and its model (`cache_scope`), the route, the tenant (unless the cache is
shared) and the
request with whitespace in the messages or prompt collapsed and the stream flags removed, so a streamed and a
plain request share one entry. The value is the complete (non-streamed) OpenAI response; a streamed request is
answered from it in the `chat.completion.chunk` / `text_completion` SSE shape (tool calls and reasoning included),
and a streamed miss is assembled from its chunks before it is stored (text only: a stream whose deltas carry tool
calls or reasoning is not stored).

Redis is optional at all times: any Redis error, or a slow answer, counts as a miss (or a skipped write), and
Redis is left alone for `backoff_s` so an outage costs clients nothing but the hit ratio. Answers whose JSON exceeds
`MAX_ENTRY_BYTES` are not stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tokenplane_serving.args import CacheArgs, ServingArgs

__all__ = [
    "MAX_ENTRY_BYTES",
    "REDIS_SCHEMES",
    "CacheSettings",
    "CacheStats",
    "ResponseCache",
    "assemble_stream",
    "cache_key",
    "cache_scope",
    "redis_url",
    "replay_stream",
    "settings_from_args",
    "tokens_of",
]

_KEY_PREFIX = "tokenplane:cache:v1:"
_STREAM_FIELDS = ("stream", "stream_options")
# Fields whose answers a replayed stream cannot reproduce (per-token logprobs): such requests never qualify.
_UNCACHEABLE_FIELDS = ("logprobs", "top_logprobs", "prompt_logprobs")
# Largest answer stored: far above a chat answer (~4 bytes per token), small enough that a hit stays a
# sub-millisecond Redis read (Azure Cache for Redis advises values well under 1 MB).
MAX_ENTRY_BYTES = 1024 * 1024
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class CacheSettings:
    """How one deployment caches (from `spec.endpoint.cache`).

    Attributes:
        url: Redis URL (``rediss://`` for TLS, as Azure Cache for Redis requires), from a Secret.
        ttl_s: How long an answer stays valid (how quickly the model or its data change).
        qualify: `deterministic` (temperature 0 or a fixed seed) or `all` requests.
        shared: Whether tenants (API keys, token subjects) share entries; by default each has its own.
        timeout_s: Longest wait for Redis before the request goes on without the cache.
        backoff_s: After a Redis error, how long the cache is skipped before Redis is tried again.
        scope: What answers depend on beyond the request (`cache_scope`): the deployment and its model.
    """

    url: str
    ttl_s: int = 3600
    qualify: Literal["deterministic", "all"] = "deterministic"
    shared: bool = False
    timeout_s: float = 0.25
    backoff_s: float = 5.0
    scope: str = ""


def settings_from_args(args: CacheArgs, environ: Mapping[str, str]) -> CacheSettings | None:
    """Return the cache settings of a deployment (`ServingArgs.cache`), or None when the cache is off.

    Raises:
        ValueError: The cache is on but the Redis URL's environment variable is empty (the Secret is missing a key)
            or holds something that is not a Redis URL.
    """
    if not args.enabled or not args.redis_url_env:
        return None
    value = environ.get(args.redis_url_env, "").strip()
    if not value:
        raise ValueError(
            f"the response cache needs the Redis URL in ${args.redis_url_env} (spec.endpoint.cache.redisSecretRef)"
        )
    url = redis_url(value)
    if url is None:
        raise ValueError(
            f"${args.redis_url_env} (spec.endpoint.cache.redisSecretRef) must be a redis://, rediss:// or unix:// URL, "
            "e.g. rediss://:<access key>@<name>.redis.cache.windows.net:6380/0, or the connection string the Azure "
            "portal shows (<name>.redis.cache.windows.net:6380,password=<access key>,ssl=True)"
        )
    return CacheSettings(url=url, ttl_s=args.ttl_s, qualify=args.qualify, shared=args.shared)


def cache_scope(args: ServingArgs) -> str:
    """Return what a deployment's answers depend on beyond the request: which deployment, and which weights.

    The deployment's identity (`cache.scope`, `<namespace>/<name>`) keeps deployments that share one Redis
    apart: the operator names every app `llm`, served model names repeat across namespaces, and API keys are
    named by their Secret key (`key:alice` in two namespaces is two callers). The model's source, revision,
    tokenizer, dtype, quantization, extra engine arguments and adapters make a new model a new cache, rather
    than serve the old model's answers until their TTL ends.
    """
    model = {
        "deployment": args.cache.scope or args.app_name,
        "model": args.model.model_dump(mode="json"),
        "dtype": args.engine.dtype,
        "quantization": args.engine.quantization,
        "extra_engine_args": args.engine.extra_engine_args,
        "adapters": [a.model_dump(mode="json") for a in args.lora.adapters],
    }
    return hashlib.sha256(json.dumps(model, sort_keys=True, default=str).encode()).hexdigest()


def redis_url(value: str) -> str | None:
    """Return a Redis URL from a URL or a StackExchange.Redis connection string (what the Azure portal shows).

    ``<name>.redis.cache.windows.net:6380,password=<key>,ssl=True,abortConnect=False`` becomes
    ``rediss://:<key>@<name>.redis.cache.windows.net:6380/0``; options other than password and ssl are client
    tuning that has no URL form and is dropped.

    Returns:
        The URL, or None when `value` is neither form.
    """
    if value.startswith(REDIS_SCHEMES):
        return value
    endpoint, *options = (part.strip() for part in value.split(","))
    settings = {}
    for option in options:
        name, sep, setting = option.partition("=")
        if not sep:
            return None
        settings[name.strip().lower()] = setting.strip()
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or "/" in endpoint or "@" in endpoint:
        return None
    scheme = "rediss" if settings.get("ssl", "false").lower() == "true" else "redis"
    password = settings.get("password")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"{scheme}://{auth}{host}:{port}/0"


@dataclass
class CacheStats:
    """Counters since start; the serving metrics export them.

    Attributes:
        hits: Answers served from the cache.
        misses: Qualifying requests the cache did not have (Redis down counts as a miss).
        skipped: Requests that do not qualify (not deterministic).
        tokens_saved: Tokens the engine did not process thanks to hits (prompt + completion).
        errors: Redis errors and timeouts (each degraded to no cache).
    """

    hits: int = 0
    misses: int = 0
    skipped: int = 0
    tokens_saved: int = 0
    errors: int = 0

    @property
    def hit_ratio(self) -> float | None:
        """Hits over qualifying lookups, or None before the first."""
        total = self.hits + self.misses
        return self.hits / total if total else None


def _normalize_text(text: str) -> str:
    return " ".join(text.split())


def _normalize_content(content: Any) -> Any:
    if isinstance(content, str):
        return _normalize_text(content)
    if isinstance(content, list):  # content parts: normalize the text ones, keep the rest as sent
        return [
            {**part, "text": _normalize_text(part["text"])}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
    return content


def _asks_logprobs(body: Mapping[str, Any]) -> bool:
    return any(body.get(name) not in (None, False, 0) for name in _UNCACHEABLE_FIELDS) or (
        body.get("logprobs") == 0 and "messages" not in body  # completions' `logprobs: 0` still returns logprobs
    )


def _deterministic(body: Mapping[str, Any]) -> bool:
    temperature = body.get("temperature")
    seed = body.get("seed")
    return (isinstance(temperature, int | float) and temperature == 0) or (isinstance(seed, int) and seed >= 0)


def cache_key(route: str, body: Mapping[str, Any], tenant: str | None, settings: CacheSettings) -> str | None:
    """Return the cache key of a request, or None when it does not qualify.

    Args:
        route: The OpenAI route, e.g. ``/v1/chat/completions``.
        body: The request body as the client sent it.
        tenant: Who asks (API key or token subject), or None when the endpoint has no auth.
        settings: The deployment's cache settings.

    Returns:
        A Redis key, or None: not deterministic while the deployment caches only deterministic requests, or
        asking for logprobs.
    """
    if (settings.qualify == "deterministic" and not _deterministic(body)) or _asks_logprobs(body):
        return None
    normalized = {k: v for k, v in body.items() if k not in _STREAM_FIELDS}
    if isinstance(normalized.get("messages"), list):
        normalized["messages"] = [
            {**m, "content": _normalize_content(m.get("content"))} if isinstance(m, dict) else m
            for m in normalized["messages"]
        ]
    prompt = normalized.get("prompt")
    if isinstance(prompt, str):
        normalized["prompt"] = _normalize_text(prompt)
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        normalized["prompt"] = [_normalize_text(p) for p in prompt]
    scope = "" if settings.shared else hashlib.sha256((tenant or "").encode()).hexdigest()
    material = json.dumps(
        {"scope": settings.scope, "route": route, "tenant": scope, "request": normalized}, sort_keys=True, default=str
    )
    return _KEY_PREFIX + hashlib.sha256(material.encode()).hexdigest()


@dataclass
class ResponseCache:
    """Get and put complete OpenAI responses in Redis, degrading to no cache on any Redis trouble.

    Args:
        settings: The deployment's cache settings.
    """

    settings: CacheSettings
    stats: CacheStats = field(default_factory=CacheStats)
    _skip_until: float = 0.0
    _client: aioredis.Redis | None = None

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.settings.url,
                socket_timeout=self.settings.timeout_s,
                socket_connect_timeout=self.settings.timeout_s,
                retry_on_timeout=False,
            )
        return self._client

    def _available(self) -> bool:
        return time.monotonic() >= self._skip_until

    def _failed(self) -> None:
        self.stats.errors += 1
        self._skip_until = time.monotonic() + self.settings.backoff_s

    async def get(self, key: str) -> dict[str, Any] | None:
        """Return the cached response for a key, counting a hit (with its tokens) or a miss; never raises."""
        cached: bytes | str | None = None
        if self._available():
            try:
                # One bound on everything (DNS, connect, pool, read): a slow Redis is a miss, not a wait.
                async with asyncio.timeout(self.settings.timeout_s):
                    cached = await self._redis().get(key)
            except (RedisError, OSError, TimeoutError):
                self._failed()
        if cached is None:
            self.stats.misses += 1
            return None
        try:
            response: dict[str, Any] = json.loads(cached)
        except ValueError:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self.stats.tokens_saved += tokens_of(response)
        return response

    async def put(self, key: str, response: Mapping[str, Any]) -> None:
        """Store a complete response for `ttl_s`, unless it failed or was cut short; never raises."""
        choices = response.get("choices") or []
        if not choices or any(c.get("finish_reason") not in ("stop", "length") for c in choices):
            return  # an error, a tool call mid-way or an abort is not an answer worth replaying
        value = json.dumps(response, separators=(",", ":"))
        if len(value) > MAX_ENTRY_BYTES or not self._available():
            return
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                await self._redis().set(key, value, ex=self.settings.ttl_s)
        except (RedisError, OSError, TimeoutError):
            self._failed()

    def note_skipped(self) -> None:
        """Count a request that does not qualify."""
        self.stats.skipped += 1

    async def close(self) -> None:
        """Close the Redis connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def tokens_of(response: Mapping[str, Any]) -> int:
    """Prompt plus completion tokens of a response (what a hit saves the engine), 0 when it has no usage."""
    usage = response.get("usage") or {}
    if not isinstance(usage, Mapping):
        return 0
    return int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)


def replay_stream(response: Mapping[str, Any], *, include_usage: bool = False) -> Iterable[bytes]:
    """Turn a complete response into the SSE events a streamed request gets, ending with ``data: [DONE]``.

    Chat completions become ``chat.completion.chunk`` events (role, then content, then finish_reason, per
    choice), completions ``text_completion`` events; usage comes last when ``stream_options.include_usage``.
    """
    chat = response.get("object") == "chat.completion"
    base = {k: response[k] for k in ("id", "created", "model") if k in response}
    base["object"] = "chat.completion.chunk" if chat else "text_completion"
    for choice in response.get("choices") or []:
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            deltas = [{"role": message.get("role", "assistant"), "content": ""}, _content_delta(message)]
            for delta in deltas:
                yield _event({**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
            end = {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}
        else:
            text = {"index": index, "text": choice.get("text", ""), "finish_reason": None, "logprobs": None}
            yield _event({**base, "choices": [text]})
            end = {"index": index, "text": "", "finish_reason": choice.get("finish_reason"), "logprobs": None}
        yield _event({**base, "choices": [end]})
    if include_usage and response.get("usage") is not None:
        yield _event({**base, "choices": [], "usage": response["usage"]})
    yield b"data: [DONE]\n\n"


def _content_delta(message: Mapping[str, Any]) -> dict[str, Any]:
    """Return the delta that carries a stored message: its content and all else it holds (tool calls, reasoning).

    A tool call in a stream delta carries its position (`index`), as the engine streams it.
    """
    delta: dict[str, Any] = {"content": message.get("content")}
    for name, value in message.items():
        if name in ("role", "content") or value in (None, [], "", {}):
            continue
        if name == "tool_calls" and isinstance(value, list):
            delta[name] = [{"index": i, **call} if isinstance(call, dict) else call for i, call in enumerate(value)]
        else:
            delta[name] = value
    return delta


def assemble_stream(events: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Rebuild the complete response from a streamed answer's chunks (the `data:` JSON objects, in order).

    Only text is rebuilt: a chat delta carrying anything else (tool calls, reasoning, a refusal) makes the
    stream one not to store, rather than store an answer without its tool calls.

    Returns:
        The response as a non-streamed request would have had it, or None when the chunks are not an answer.
    """
    chunks = list(events)
    if not chunks:
        return None
    first = chunks[0]
    chat = first.get("object") == "chat.completion.chunk"
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    usage = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            delta = choice.get("delta") or {}
            if chat and any(v not in (None, [], "", {}) for k, v in delta.items() if k not in ("role", "content")):
                return None
            piece = delta.get("content") if chat else choice.get("text")
            texts.setdefault(index, []).append(piece or "")
            if choice.get("finish_reason") is not None:
                finish[index] = choice["finish_reason"]
    choices = []
    for index in sorted(texts):
        text = "".join(texts[index])
        if chat:
            message = {"role": "assistant", "content": text}
            choices.append({"index": index, "message": message, "finish_reason": finish.get(index)})
        else:
            choices.append({"index": index, "text": text, "finish_reason": finish.get(index), "logprobs": None})
    response = {
        "id": first.get("id"),
        "object": "chat.completion" if chat else "text_completion",
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": choices,
    }
    if usage is not None:
        response["usage"] = usage
    return response


def _event(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
