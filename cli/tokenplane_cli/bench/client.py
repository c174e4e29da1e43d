"""A streaming OpenAI chat client that times every chunk (aiohttp; the timing rules of vLLM's benchmark client)."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tokenplane_cli.bench.stats import RequestRecord

__all__ = [
    "AUTH_HINT",
    "TLS_HINT",
    "Endpoint",
    "Reply",
    "StatusError",
    "chat",
    "list_models",
    "max_tokens_hint",
    "normalize_base_url",
]


def normalize_base_url(url: str) -> str:
    """`http://host:port`, `http://host:port/` or `http://host:port/v1` -> `http://host:port/v1`.

    A URL of an endpoint of the API itself (`.../v1/chat/completions`, `.../v1/models`, `.../v1/completions`, as
    pasted from a curl line) means its root too.
    """
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"URL {url!r} must start with http:// or https://")
    url = url.removesuffix("/chat/completions").rstrip("/")
    for endpoint in ("/models", "/completions"):  # `/v1/models/v1/models` answered 404: "give --model"
        if url.endswith("/v1" + endpoint):
            url = url.removesuffix(endpoint)
    return url if url.endswith("/v1") else url + "/v1"


AUTH_HINT = "check the key (--api-key, or OPENAI_API_KEY)"
TLS_HINT = "give the CA that signed its certificate with --ca-bundle FILE (PEM), or --insecure not to verify it"


def max_tokens_hint(field: str) -> str:
    """Say to try the other name of the field that bounds an answer (the server refused or ignored `field`)."""
    other = "max_tokens" if field == "max_completion_tokens" else "max_completion_tokens"
    return f"the server may not take {field}: if it takes {other}, give --max-tokens-field {other}"


class StatusError(ValueError):
    """The endpoint answered with an HTTP error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint.

    Attributes:
        base_url: Root of the API, ending in /v1.
        model: The model name to send.
        api_key: Bearer token, or None.
        ignore_eos: Send vLLM's `ignore_eos` so every answer is exactly max_tokens long.
        timeout_s: Per-request timeout.
        content_parts: Send each user message's content as a list of parts (`[{"type": "text", "text": ...}]`),
            as vLLM's benchmark client does, instead of a string. The server does more work per request for
            parts, so the two shapes do not time alike.
        insecure: Do not verify an https endpoint's certificate (curl's `-k`, httpx's `verify=False`).
        ca_bundle: Verify it against the CA certificates in this PEM file instead of the system's (curl's
            `--cacert`, httpx's `verify=PATH`).
        max_tokens_field: The request field that bounds the answer: `max_completion_tokens` (OpenAI's current
            name, what vLLM's benchmark client sends) or `max_tokens` (servers that know only the older name).
    """

    base_url: str
    model: str
    api_key: str | None = None
    ignore_eos: bool = True
    timeout_s: float = 600.0
    content_parts: bool = True
    insecure: bool = False
    ca_bundle: Path | None = None
    max_tokens_field: str = "max_completion_tokens"

    def tls(self) -> ssl.SSLContext | bool:
        """Return aiohttp's `ssl=`: False not to verify, a context with `ca_bundle`, else True (the system's CAs).

        Raises:
            ValueError: `ca_bundle` cannot be read as PEM certificates, or comes with `insecure`.
        """
        if self.insecure and self.ca_bundle is not None:
            raise ValueError("give --ca-bundle (verify against it) or --insecure (verify nothing), not both")
        if self.insecure:
            return False
        if self.ca_bundle is None:
            return True
        try:
            return ssl.create_default_context(cafile=str(self.ca_bundle))
        except ssl.SSLError as err:  # an OSError too: first
            raise ValueError(
                f"--ca-bundle {self.ca_bundle}: not PEM certificates ({err.reason or err}); give the CA's "
                "certificate(s) as PEM, -----BEGIN CERTIFICATE-----"
            ) from None
        except OSError as err:
            raise ValueError(f"--ca-bundle {self.ca_bundle}: cannot read it ({err.strerror or err})") from None

    def headers(self) -> dict[str, str]:
        """Request headers (JSON, and the key when there is one)."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclass
class Reply:
    """What the answer said.

    Attributes:
        text: The answer's content (sent back in the next turn of a session).
        other_output: Output beside the content, each piece counted as output tokens when the server sends no
            usage, never sent back: the reasoning (`reasoning`, or `reasoning_content`), then each tool call's
            name and arguments, then a refusal.
    """

    text: str = ""
    other_output: list[str] = field(default_factory=list)


async def list_models(session: aiohttp.ClientSession, base_url: str, api_key: str | None) -> list[str]:
    """Model ids the endpoint serves (GET /v1/models)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with session.get(f"{base_url}/models", headers=headers) as response:
        if response.status != 200:
            text = (await response.text())[:200]
            raise StatusError(f"GET {base_url}/models answered {response.status}: {text}", response.status)
        text = await response.text()
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"GET {base_url}/models answered what is not JSON: {text[:120]!r}") from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ValueError(f"GET {base_url}/models answered no OpenAI model list (data: [...]): {text[:120]!r}")
    return [str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id")]


def _error_kind(status: int) -> str:
    return f"http_{status}"


async def chat(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    messages: list[dict[str, str]],
    record: RequestRecord,
    clock_zero: float,
    request_id: str | None = None,
) -> Reply:
    """Send one streaming chat completion and fill `record` with its timings, usage and outcome.

    TTFT is taken at the first SSE event with a choice that is not a role-only chunk (`delta` with `role` and no
    output), each later one adds an ITL gap, and E2EL ends at the last such event. vLLM's
    `async_request_openai_chat_completions` takes any event with `choices`, the role-only chunk too: against
    vLLM's server, which sends it with the first token, both read the same TTFT; against a server that sends it on
    accepting the request, vLLM's client reads a TTFT of about 0 and one long gap, this one the time to the first
    token.

    Args:
        session: The HTTP session (its connector bounds nothing: the caller bounds concurrency).
        endpoint: Where and what to ask.
        messages: The conversation.
        record: Filled in place.
        clock_zero: `time.perf_counter()` at the start of the run; `record.start` is relative to it.
        request_id: Sent as `x-request-id` (as vLLM's client does), so the server's logs name the request.

    Returns:
        The answer's text.
    """
    sent = [_as_parts(m) for m in messages] if endpoint.content_parts else list(messages)
    payload: dict[str, Any] = {
        "model": endpoint.model,
        "messages": sent,
        endpoint.max_tokens_field: record.output_tokens_target,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint.ignore_eos:
        payload["ignore_eos"] = True
    headers = endpoint.headers()
    if request_id is not None:
        headers["x-request-id"] = request_id
    reply = Reply()
    parts: list[str] = []
    stream = _Stream()
    start = time.perf_counter()
    record.start = start - clock_zero
    last = start
    try:
        async with asyncio.timeout(endpoint.timeout_s):
            async with session.post(f"{endpoint.base_url}/chat/completions", json=payload, headers=headers) as response:
                if response.status != 200:
                    record.error_kind = _error_kind(response.status)
                    text = (await response.text())[:300]
                    if endpoint.max_tokens_field in text and 400 <= response.status < 500:
                        text += f"; {max_tokens_hint(endpoint.max_tokens_field)}"
                    record.error = text or response.reason
                    return reply
                if response.content_type == "application/json":
                    record.error_kind = "not_streaming"
                    body = (await response.text())[:200]
                    record.error = (
                        "the server answered with one JSON body, not an event stream (text/event-stream): token "
                        f"timings need a server that streams chat completions; it said: {body}"
                    )
                    return reply
                buffer = b""
                async for raw in response.content.iter_any():
                    buffer += raw
                    # SSE events end with a blank line; a network chunk may hold several events or part of one.
                    # Lines may end in CRLF, LF or CR (the SSE spec; sse-starlette, for one, writes CRLF).
                    events, buffer = _split_events(buffer)
                    for event in events:
                        now = time.perf_counter()
                        if _on_event(event, record, parts, stream, now - start, now - last):
                            last = now
                events, _ = _split_events(buffer + b"\n\n")
                for event in events:
                    now = time.perf_counter()
                    if _on_event(event, record, parts, stream, now - start, now - last):
                        last = now
    except TimeoutError:
        record.error_kind, record.error = "timeout", f"no complete answer within {endpoint.timeout_s:g}s"
        return reply
    except aiohttp.ClientSSLError as err:  # a certificate not verified, or TLS spoken to a server without it
        record.error_kind, record.error = "tls", f"{type(err).__name__}: {err}; {TLS_HINT}"
        return reply
    except aiohttp.ClientError as err:
        record.error_kind, record.error = "connection", f"{type(err).__name__}: {err}"
        return reply
    except (ValueError, OSError) as err:  # e.g. a header aiohttp refuses to send, a socket error it did not wrap
        record.error_kind, record.error = "client_error", f"{type(err).__name__}: {err}"
        return reply
    if record.error_kind is None:
        if record.chunks == 0:
            record.error_kind, record.error = "no_tokens", "the stream ended without a chunk carrying tokens"
        elif not (stream.done or stream.finished):
            # A stream closed early (a crashed replica, a proxy's timeout) without chunked-encoding framing to
            # show it: the answer is cut short, not complete.
            record.error_kind = "incomplete_stream"
            record.error = "the stream ended without a finish_reason or data: [DONE]: the answer was cut short"
        else:
            record.success = True
            record.e2el = last - start
    reply.text = "".join(parts)
    reply.other_output = stream.other_output()
    return reply


@dataclass
class _Stream:
    """What a stream said beside its content: its own end, and reasoning, tool calls (by index) and refusal.

    `done` is `data: [DONE]`, `finished` a choice's `finish_reason`.
    """

    done: bool = False
    finished: bool = False
    reasoning: list[str] = field(default_factory=list)
    tools: dict[int, list[str]] = field(default_factory=dict)
    refusal: list[str] = field(default_factory=list)

    def take(self, delta: dict[str, Any]) -> None:
        """Keep the output of a delta that is not content."""
        # vLLM names it `reasoning`, earlier versions `reasoning_content`; some send both with the same text.
        reasoning = delta.get("reasoning")
        reasoning = reasoning if isinstance(reasoning, str) else delta.get("reasoning_content")
        if isinstance(reasoning, str):
            self.reasoning.append(reasoning)
        if isinstance(refusal := delta.get("refusal"), str):
            self.refusal.append(refusal)
        calls = delta.get("tool_calls")
        for number, call in enumerate(calls if isinstance(calls, list) else []):
            if not isinstance(call, dict):
                continue
            index = call.get("index", number)
            function = call.get("function")
            pieces = self.tools.setdefault(index if isinstance(index, int) else number, [])
            if isinstance(function, dict):
                pieces += [v for k in ("name", "arguments") if isinstance(v := function.get(k), str)]

    def other_output(self) -> list[str]:
        """Each kind of output beside the content, as text (see `Reply.other_output`)."""
        texts = ["".join(self.reasoning)] + ["".join(p) for _, p in sorted(self.tools.items())]
        return [t for t in [*texts, "".join(self.refusal)] if t]


def _split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete SSE events in `buffer` (line ends made LF) and the incomplete rest."""
    # A CR at the very end may be the first half of a CRLF whose LF is in the next read: keep it for then.
    held = b"\r" if buffer.endswith(b"\r") else b""
    text = (buffer[:-1] if held else buffer).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    *events, rest = text.split(b"\n\n")
    return [e for e in events if e.strip()], rest + held


def _as_parts(message: dict[str, str]) -> dict[str, Any]:
    # vLLM's client sends its prompt as one text part (vllm/benchmarks/lib/endpoint_request_func.py
    # `_get_chat_content`); earlier answers go back as the server wrote them.
    if message.get("role") == "user" and isinstance(message.get("content"), str):
        return {**message, "content": [{"type": "text", "text": message["content"]}]}
    return message


# Delta fields that carry generated output: the answer, a reasoning parser's split-off thinking (vLLM names it
# `reasoning`, earlier versions and others `reasoning_content`), tool calls, a refusal.
_OUTPUT_KEYS = ("content", "reasoning", "reasoning_content", "tool_calls", "refusal")


def _role_only(delta: dict[str, Any] | None) -> bool:
    """Tell a chunk that announces the answer's role and carries no output: the first chunk of a chat stream.

    Every other chunk with a choice is a token event, an empty one too: vLLM sends a chunk per token and holds
    back the text of a token that ends inside a character (content "", the text comes with a later token).
    """
    if not delta or "role" not in delta:
        return False
    return not any(delta.get(key) for key in _OUTPUT_KEYS)


def _on_event(
    event: bytes, record: RequestRecord, parts: list[str], stream: _Stream, since_start: float, since_last: float
) -> bool:
    """Account one SSE event; True when it carried a token (a choice, not a role-only chunk)."""
    carried = False
    for line in event.decode("utf-8", errors="replace").splitlines():
        if not line.startswith("data:"):
            continue  # comments (":" pings), event names
        data = line[5:].strip()
        if data == "[DONE]":
            stream.done = True
            continue
        try:
            body = json.loads(data)
        except json.JSONDecodeError:
            record.error_kind, record.error = "bad_stream", f"not JSON: {data[:120]}"
            return carried
        if not isinstance(body, dict):
            record.error_kind, record.error = "bad_stream", f"not a JSON object: {data[:120]}"
            return carried
        if "error" in body and not body.get("choices"):
            error = body["error"]
            record.error_kind = "stream_error"
            record.error = str(error.get("message") if isinstance(error, dict) else error)[:300]
            return carried
        usage = body.get("usage")
        if isinstance(usage, dict):
            record.prompt_tokens = _count(usage.get("prompt_tokens"), record.prompt_tokens)
            record.completion_tokens = _count(usage.get("completion_tokens"), record.completion_tokens)
        choices = body.get("choices")
        if not choices:
            continue
        choice = choices[0] if isinstance(choices, list) else None
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict | None):
            record.error_kind, record.error = "bad_stream", f"a choice without a delta object: {data[:120]}"
            return carried
        content = (delta or {}).get("content")
        parts.append(content if isinstance(content, str) else "")
        if delta:
            stream.take(delta)
        if isinstance(choice, dict) and choice.get("finish_reason"):
            stream.finished = True
        if _role_only(delta):
            continue  # no token in it; vLLM sends it with the first token, other servers on accepting the request
        if not carried:  # one event is one token event, however many data lines it holds
            if record.chunks == 0:
                record.ttft = since_start
            else:
                record.itl.append(since_last)
            record.chunks += 1
            carried = True
    return carried


def _count(value: Any, before: int | None) -> int | None:
    """Read a token count from `usage`: a whole number >= 0, else keep what was known before."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else before
