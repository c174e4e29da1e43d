"""Our bench client and vLLM's own (`vllm.benchmarks.serve`) agree on a server whose timings depend on the load.

The peer plays vLLM's serving loop (vllm/v1/engine: continuous batching; one engine step prefills the requests that
arrived since the last step and decodes one token for each running one) with a cost per step that grows with the
prompt tokens it prefills and the sequences it decodes, so TTFT depends on how the client's requests line up, as
on a real server. It streams as vLLM's chat endpoint does (vllm/entrypoints/openai/chat_completion/serving.py):
a `delta.role` chunk with the first token, one chunk per token, the `usage` chunk, `data: [DONE]`. Prompt tokens
are counted with the served model's tokenizer and chat template, so both clients' 128-token prompts cost alike.

`make bench-crosscheck` runs the same comparison against the real endpoints.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from threading import Thread
from typing import Any

import pytest
from aiohttp import web

from tokenplane_cli.bench.client import Endpoint
from tokenplane_cli.bench.local import MODEL_ID, _vllm_client
from tokenplane_cli.bench.runner import WorkloadSpec, run_sync

pytest.importorskip("vllm.benchmarks.serve")

REPO_TINY = Path(__file__).resolve().parents[3] / "models" / "tiny"
# Steps of tens of ms, so a busy machine's scheduling jitter (a few ms) is small next to them.
STEP_S, PREFILL_TOKEN_S, DECODE_SEQ_S = 0.008, 0.0004, 0.0016
CONCURRENCY, PROMPTS, ROUNDS = 16, 48, 2


@dataclass
class _Request:
    prompt_tokens: int
    left: int
    out: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)


class EnginePeer:
    """A continuous-batching engine behind an OpenAI streaming chat endpoint."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._arrived: list[_Request] = []
        self._running: list[_Request] = []
        self._wake = asyncio.Event()
        self.content_types: set[str] = set()

    def prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        flat = [
            {"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]}
            for m in messages
        ]
        text = self._tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=True)
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    async def engine(self) -> None:
        while True:
            if not self._arrived and not self._running:
                self._wake.clear()
                await self._wake.wait()
            new, self._arrived = self._arrived, []
            prefill = sum(r.prompt_tokens for r in new)
            await asyncio.sleep(STEP_S + PREFILL_TOKEN_S * prefill + DECODE_SEQ_S * len(self._running))
            for request in self._running + new:
                request.left -= 1
                request.out.put_nowait("token")
                if request.left <= 0:
                    request.out.put_nowait(None)
            self._running = [r for r in self._running + new if r.left > 0]

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.content_types |= {type(m["content"]).__name__ for m in body["messages"] if m["role"] == "user"}
        job = _Request(self.prompt_tokens(body["messages"]), body["max_completion_tokens"])
        self._arrived.append(job)
        self._wake.set()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(data: dict[str, Any] | str) -> None:
            await response.write(f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode())

        sent = 0
        while await job.out.get() is not None:
            if sent == 0:
                await send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            await send({"choices": [{"index": 0, "delta": {"content": f" w{sent}"}}]})
            sent += 1
        usage = {"prompt_tokens": job.prompt_tokens, "completion_tokens": sent}
        await send({"choices": [], "usage": usage | {"total_tokens": job.prompt_tokens + sent}})
        await send("[DONE]")
        return response


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenplane_serving.tinymodel import write_tiny_model

    if (REPO_TINY / "tokenplane_tiny.json").exists():
        return write_tiny_model(REPO_TINY)
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def engine_peer(tiny_tokenizer_dir: Path) -> Iterator[tuple[EnginePeer, str]]:
    from transformers import AutoTokenizer

    loop = asyncio.new_event_loop()
    peer = loop.run_until_complete(_make_peer(AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))))
    application = web.Application()
    application.router.add_get("/v1/models", peer.models)
    application.router.add_post("/v1/chat/completions", peer.chat)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runner = web.AppRunner(application)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    engine = loop.create_task(peer.engine())
    thread = Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield peer, f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(engine.cancel)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


async def _make_peer(tokenizer: Any) -> EnginePeer:
    return EnginePeer(tokenizer)  # its asyncio objects belong to the peer's loop


# A comparison of timings: a benchmark (`make benchmark`), not a timed test of `make test`.
@pytest.mark.benchmark
def test_our_client_and_vllms_agree_within_ten_percent(
    engine_peer: tuple[EnginePeer, str], tiny_tokenizer_dir: Path
) -> None:
    peer, url = engine_peer
    tokenizer = str(tiny_tokenizer_dir)
    keys = ("mean_ttft_ms", "median_ttft_ms", "output_throughput", "mean_itl_ms", "mean_tpot_ms")
    seen: dict[str, dict[str, list[float]]] = {"ours": {k: [] for k in keys}, "vllm": {k: [] for k in keys}}

    def run(name: str, seed: int) -> dict[str, Any]:
        if name == "vllm":
            return _vllm_client(url, tokenizer, PROMPTS, CONCURRENCY, seed=seed, output_len=32)
        spec = WorkloadSpec(num_prompts=PROMPTS, input_tokens=128, output_tokens=32, tokenizer=tokenizer, seed=seed)
        return run_sync(Endpoint(f"{url}/v1", MODEL_ID), spec, concurrency=CONCURRENCY, rate=None).report

    # Interleaved (A B B A), as `make bench-crosscheck` does, so a drift in the machine's load hits both alike.
    for i in range(ROUNDS):
        for name in ("ours", "vllm") if i % 2 == 0 else ("vllm", "ours"):
            report = run(name, i)
            assert report["completed"] == PROMPTS
            for k in keys:
                seen[name][k].append(float(report[k]))
    ratios = {k: sum(seen["ours"][k]) / sum(seen["vllm"][k]) for k in keys}
    print("\n[crosscheck] ours / vLLM's: " + ", ".join(f"{k} {ratios[k]:.3f}" for k in keys))
    # Both send the prompt as a list of content parts, the shape vLLM's client uses.
    assert peer.content_types == {"list"}
    assert all(abs(r - 1) <= 0.10 for r in ratios.values()), ratios
