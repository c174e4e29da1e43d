"""Our client's per-request figures and vLLM's client's, on the same SSE byte stream read at known times.

A fake aiohttp session plays back network reads at set clock times (`time.perf_counter`, which both clients
read); our `chat` and vLLM's `async_request_openai_chat_completions` (vllm/benchmarks/lib/endpoint_request_func.py)
each read it, and their TTFT, ITL, E2EL and token counts must be the stated values, and equal. Without vLLM
installed, only our side runs. Also the pieces of `make bench-crosscheck` that set the two clients side by side.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tokenplane_cli.bench import client as client_module
from tokenplane_cli.bench.client import Endpoint, chat
from tokenplane_cli.bench.local import (
    _engine_args,
    bare_vllm_command,
    crosscheck_summary,
    timeline,
    without_prefix_caching,
)
from tokenplane_cli.bench.stats import RequestRecord, summarize

ROLE = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}


def event(body: dict[str, Any] | str) -> bytes:
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n".encode()


def token(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


class Clock:
    """`time.perf_counter` for both clients: set by the stream as each read arrives."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Content:
    def __init__(self, reads: list[tuple[float, bytes]], clock: Clock) -> None:
        self._reads, self._clock = reads, clock

    async def iter_any(self) -> AsyncIterator[bytes]:
        for at, data in self._reads:
            self._clock.now = 100.0 + at
            yield data


class _Response:
    status = 200
    reason = "OK"

    def __init__(self, content: _Content, content_type: str = "text/event-stream") -> None:
        self.content = content
        self.content_type = content_type

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def text(self) -> str:
        return b"".join(data for _, data in self.content._reads).decode()


class FakeSession:
    """Answers every POST with the same reads; keeps the headers it was sent."""

    def __init__(self, reads: list[tuple[float, bytes]], clock: Clock, content_type: str = "text/event-stream") -> None:
        self._reads, self._clock, self._type = reads, clock, content_type
        self.headers: list[dict[str, str]] = []

    def post(self, url: str, json: Any = None, headers: dict[str, str] | None = None) -> _Response:
        self.headers.append(dict(headers or {}))
        return _Response(_Content(self._reads, self._clock), self._type)


# vLLM's chat server: the role chunk goes with the first token (both written for the engine's first output), one
# event per token, then usage and [DONE]. TTFT 0.20 s, gaps 0.06, 0.05, E2EL 0.31 s.
ONE_EVENT_PER_READ = [
    (0.20, event(ROLE) + event(token(" a"))),
    (0.26, event(token(" b"))),
    (0.31, event(token(" c"))),
    (0.32, event(usage(140, 3))),
    (0.33, event("[DONE]")),
]
# A server that sends tokens in clumps: three events in one read, a ping comment, an event cut across two reads,
# usage and [DONE] in one read. Events of one read are stamped at that read's time: gaps 0, 0.35, 0. (The ping
# shares its read with the next event: in a read of its own, vLLM's client strips its blank line and drops the
# event after it as part of the comment; ours keeps it.)
CLUMPED = [
    (0.50, event(ROLE) + event(token(" a")) + event(token(" b"))),
    (0.80, b": ping\n\n" + event(token(" c"))[:20]),
    (0.85, event(token(" c"))[20:] + event(token(" d"))),
    (0.90, event(usage(140, 4)) + event("[DONE]")),
]
CASES = {
    "one event per read": (ONE_EVENT_PER_READ, 0.20, [0.06, 0.05], 0.31, 3, " a b c"),
    "clumped": (CLUMPED, 0.50, [0.0, 0.35, 0.0], 0.85, 4, " a b c d"),
}


def _ours(
    reads: list[tuple[float, bytes]], clock: Clock, content_type: str = "text/event-stream"
) -> tuple[RequestRecord, str, FakeSession]:
    session = FakeSession(reads, clock, content_type)
    record = RequestRecord(index=0, session=None, turn=0, start=0.0, input_tokens_target=128, output_tokens_target=4)
    clock.now = 100.0
    reply = asyncio.run(
        chat(session, Endpoint("http://x/v1", "m"), [{"role": "user", "content": "hi"}], record, 100.0, "run-0")  # type: ignore[arg-type]
    )
    return record, reply.text, session


@pytest.mark.parametrize("case", CASES)
def test_ttft_itl_e2el_and_tokens_on_a_known_stream(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reads, ttft, itl, e2el, tokens, text = CASES[case]
    clock = Clock()
    monkeypatch.setattr(client_module.time, "perf_counter", clock)
    record, answer, session = _ours(reads, clock)
    assert record.success and answer == text
    # The role chunk (empty content) carries no token: TTFT is at the first token, and no gap follows the role.
    assert record.ttft == pytest.approx(ttft)
    assert record.itl == pytest.approx(itl)
    # E2EL ends at the last token event, not at the usage event or [DONE] after it.
    assert record.e2el == pytest.approx(e2el)
    assert record.e2el == pytest.approx(record.ttft + sum(record.itl))
    assert record.output_tokens == tokens and record.prompt_tokens == 140
    assert record.chunks == tokens  # the role chunk is an event, not a token
    assert session.headers[0]["x-request-id"] == "run-0"


@pytest.mark.parametrize("case", CASES)
def test_vllms_client_reads_the_same_stream_alike(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    functions = pytest.importorskip("vllm.benchmarks.lib.endpoint_request_func")
    reads, *_ = CASES[case]
    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    ours, answer, _ = _ours(reads, clock)
    clock.now = 100.0
    request = functions.RequestFuncInput(
        prompt="hi", api_url="http://x/v1/chat/completions", prompt_len=128, output_len=4, model="m"
    )
    theirs = asyncio.run(functions.async_request_openai_chat_completions(request, FakeSession(reads, clock)))
    assert theirs.success and theirs.generated_text == answer
    assert ours.ttft == pytest.approx(theirs.ttft)
    # vLLM's client counts the role chunk as an event: one more gap, of 0 (the role chunk came with the first token).
    assert theirs.itl == pytest.approx([0.0, *ours.itl])
    assert ours.e2el == pytest.approx(theirs.latency)
    assert (ours.output_tokens, ours.prompt_tokens) == (theirs.output_tokens, theirs.prompt_len)


def _no_usage(tokens: int, chunks: int, text_tokens: int | None, target: int = 128) -> RequestRecord:
    return RequestRecord(
        index=0, session=None, turn=0, start=0.0, input_tokens_target=target, output_tokens_target=tokens,
        success=True, ttft=0.1, e2el=1.0, itl=[0.9 / (chunks - 1)] * (chunks - 1), chunks=chunks,
        text_tokens=text_tokens,
    )  # fmt: skip


def test_without_usage_tokens_are_counted_as_vllm_counts_them() -> None:
    # 64 tokens in 17 token events (4 in most, fewer in some), the server sent no usage.
    counted = _no_usage(64, 17, text_tokens=64)
    # Output: the tokenizer's count of the answer (vLLM's fallback), not the 17 events.
    assert counted.output_tokens == 64
    assert counted.tpot == pytest.approx(0.9 / 63)
    # Without a tokenizer, the events are all there is to count.
    assert _no_usage(64, 17, text_tokens=None).output_tokens == 17
    # Input: the prompt tokens the workload sent (vLLM's `prompt_len`), not 0.
    report = summarize([counted, _no_usage(64, 17, 64, target=100)], duration_s=2.0)
    assert report["total_input_tokens"] == 228
    assert report["total_output_tokens"] == 128 and report["output_throughput"] == 64.0


def test_a_ping_in_a_read_of_its_own_hides_no_event(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(client_module.time, "perf_counter", clock)
    reads = [(0.5, event(ROLE) + event(token(" a"))), (0.6, b": ping\n\n"), (0.7, event(token(" b")))]
    reads += [(0.8, event(usage(140, 2))), (0.9, event("[DONE]"))]
    record, answer, _ = _ours(reads, clock)
    assert answer == " a b" and record.itl == pytest.approx([0.2]) and record.e2el == pytest.approx(0.7)


def test_a_role_chunk_sent_before_the_first_token_is_not_the_first_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # A server that sends its role chunk on accepting the request and the first token 0.5 s later. Before, TTFT
    # read 0.05 s (the role chunk), ITL had a 0.45 s gap no token took, and without usage the role chunk counted
    # as a token (3 for 2).
    clock = Clock()
    monkeypatch.setattr(client_module.time, "perf_counter", clock)
    reasoning = {"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]}
    reads = [(0.05, event(ROLE)), (0.5, event(reasoning)), (0.6, event(token(" a"))), (0.62, event("[DONE]"))]
    record, answer, _ = _ours(reads, clock)
    assert record.success and answer == " a"
    assert record.ttft == pytest.approx(0.5) and record.itl == pytest.approx([0.1])
    assert record.e2el == pytest.approx(0.6) and record.output_tokens == 2  # no usage, no tokenizer: 2 events


def test_an_empty_content_chunk_is_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # vLLM sends a chunk per token, with content "" for a token whose text ends inside a character (the text
    # comes with a later token); its first token can be one. Role chunk and first token arrive together.
    clock = Clock()
    monkeypatch.setattr(client_module.time, "perf_counter", clock)
    reads = [(0.2, event(ROLE) + event(token(""))), (0.25, event(token(""))), (0.3, event(token("\u00e9")))]
    record, answer, _ = _ours([*reads, (0.31, event(usage(140, 3))), (0.32, event("[DONE]"))], clock)
    assert record.success and answer == "\u00e9" and record.chunks == 3
    assert record.ttft == pytest.approx(0.2) and record.itl == pytest.approx([0.05, 0.05])


def _crlf(reads: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
    # The same events with CRLF line ends (sse-starlette's default), each read cut after its first CR: a CR and
    # its LF arrive in two reads (at the same time).
    out = []
    for at, data in reads:
        crlf = data.replace(b"\n", b"\r\n")
        cut = crlf.index(b"\r") + 1
        out += [(at, crlf[:cut]), (at, crlf[cut:])]
    return out


@pytest.mark.parametrize("case", CASES)
def test_crlf_line_ends_time_alike(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before, events were split on LF LF only: a CRLF stream was one event at its end (TTFT = E2EL, no usage, 0
    # output tokens) and still counted as a success.
    reads, ttft, itl, e2el, tokens, text = CASES[case]
    clock = Clock()
    monkeypatch.setattr(client_module.time, "perf_counter", clock)
    record, answer, _ = _ours(_crlf(reads), clock)
    assert record.success and answer == text
    assert record.ttft == pytest.approx(ttft) and record.e2el == pytest.approx(e2el)
    assert record.itl == pytest.approx(itl)
    assert record.output_tokens == tokens and record.prompt_tokens == 140


@pytest.mark.parametrize(
    ("reads", "content_type", "kind"),
    [
        # Closed cleanly halfway (no chunked framing to show the cut): no finish_reason, no [DONE].
        ([(0.2, event(ROLE)), (0.3, event(token(" a")))], "text/event-stream", "incomplete_stream"),
        # JSON that is not an event object, or a choice without a delta object: one failed request, not a crash.
        ([(0.2, event(ROLE)), (0.3, b'data: "a"\n\n'), (0.4, event("[DONE]"))], "text/event-stream", "bad_stream"),
        ([(0.2, event({"choices": [{"delta": "a"}]})), (0.4, event("[DONE]"))], "text/event-stream", "bad_stream"),
        ([(0.2, b"data: [1]\n\n"), (0.4, event("[DONE]"))], "text/event-stream", "bad_stream"),
        # A server that ignores stream: true.
        ([(0.2, b'{"choices": [{"message": {"content": "a"}}]}')], "application/json", "not_streaming"),
    ],
)
def test_an_answer_that_is_not_a_whole_stream_fails_by_kind(
    reads: list[tuple[float, bytes]], content_type: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(client_module.time, "perf_counter", clock)
    record, _, _ = _ours(reads, clock, content_type)
    assert not record.success and record.error_kind == kind, record
    if kind == "not_streaming":  # what the server said, for a 200 that carries an error
        assert '"content": "a"' in str(record.error)


def test_a_finish_reason_without_done_is_a_whole_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(client_module.time, "perf_counter", clock)
    last = {"choices": [{"index": 0, "delta": {"content": " b"}, "finish_reason": "length"}]}
    record, answer, _ = _ours([(0.2, event(ROLE)), (0.3, event(token(" a"))), (0.4, event(last))], clock)
    assert record.success and answer == " a b" and record.e2el == pytest.approx(0.4)


def test_crosscheck_lays_both_clients_requests_side_by_side() -> None:
    ours = [
        RequestRecord(index=i, session=None, turn=0, start=start, input_tokens_target=8, output_tokens_target=2,
                      success=True, ttft=ttft, e2el=e2el, itl=[e2el - ttft], chunks=2)
        for i, (start, ttft, e2el) in enumerate([(0.5, 0.2, 0.3), (0.0, 0.1, 0.25)])
    ]  # fmt: skip
    # vLLM's detailed result: perf_counter start times, and a failed request (TTFT 0) that is left out.
    theirs = {
        "start_times": [1000.5, 1000.0, 1000.7],
        "ttfts": [0.2, 0.1, 0.0],
        "latencies": [0.3, 0.25, 0.0],
        "itls": [[0.1], [0.15], []],
    }
    expected = [[0.0, 100.0, 250.0, 2], [500.0, 200.0, 300.0, 2]]
    assert timeline({}, ours) == expected
    assert timeline(theirs) == expected


def test_crosscheck_ratios_are_of_each_clients_medians() -> None:
    def pair(ours: tuple[float, float, float], theirs: tuple[float, float, float]) -> dict[str, Any]:
        return {
            client: dict(zip(("output_throughput", "mean_ttft_ms", "mean_itl_ms"), figures, strict=True))
            for client, figures in (("tokenplane_bench", ours), ("vllm_client", theirs))
        }

    runs = [pair((100, 50, 10), (100, 40, 10)), pair((90, 44, 9), (110, 45, 8)), pair((120, 60, 12), (95, 48, 9))]
    summary = crosscheck_summary(runs)
    # Medians: ours 100 tok/s, 50 ms, 10 ms; vLLM's 100, 45, 9.
    assert summary["oursOverVllmOfMedians"] == pytest.approx(
        {"output_throughput": 1.0, "mean_ttft_ms": 50 / 45, "mean_itl_ms": 10 / 9}
    )
    assert summary["medianOfPairRatios"]["output_throughput"] == pytest.approx(1.0)
    # Within 10% is judged on throughput and mean TTFT only: 50/45 is 11% off.
    assert summary["within10Percent"] is False
    runs[0]["tokenplane_bench"]["mean_ttft_ms"] = 49.0
    runs[2]["tokenplane_bench"]["mean_ttft_ms"] = 49.0
    assert crosscheck_summary(runs)["within10Percent"] is True


def test_crosscheck_serves_both_without_prefix_cache(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "local-tiny.yaml"
    assert "--no-enable-prefix-caching" not in bare_vllm_command(_engine_args(example), 8000)
    copy = without_prefix_caching(example, tmp_path)
    args = _engine_args(copy)
    assert args["prefix_caching"] is False and args["max_num_seqs"] == _engine_args(example)["max_num_seqs"]
    # tokenplane up reads the copy's spec.engine.enablePrefixCaching; bare vLLM gets the flag.
    assert "--no-enable-prefix-caching" in bare_vllm_command(args, 8000)
