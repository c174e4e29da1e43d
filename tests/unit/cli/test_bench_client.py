"""`tokenplane bench`'s client and runner against a small OpenAI-compatible peer with known timings.

The peer streams the way vLLM's chat endpoint does (vllm/entrypoints/openai/chat_completion/serving.py in 0.32): a
first chunk with `delta.role` (and empty content) when the first token is out, one chunk per token, then, with
`stream_options.include_usage`, a chunk with `choices: []` and `usage`, then `data: [DONE]`. Its prompt count is
words + 5 (a chat template's overhead), so prompt sizing by the server's usage can be checked.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from threading import Thread
from typing import Any

import pytest
from aiohttp import web
from typer.testing import CliRunner

from tokenplane_cli import app
from tokenplane_cli.bench.client import Endpoint
from tokenplane_cli.bench.runner import WorkloadSpec, calibrate, run, run_sync
from tokenplane_cli.bench.workload import Session, Turn

FIRST_TOKEN_S = 0.05
TOKEN_GAP_S = 0.01
TEMPLATE_TOKENS = 5


class Peer:
    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests: list[dict[str, Any]] = []
        self.request_ids: list[str | None] = []  # each request's x-request-id, beside `requests`
        self.refuse_every = 0  # answer every n-th workload request (not calibration probes) with 429
        self.counted = 0
        self.no_usage = False  # send no usage, and two tokens per event (a server that batches its chunks)
        self.key: str | None = None  # refuse requests without this bearer key (401)
        self.fixed_prompt: int | None = None  # report this prompt count whatever the prompt (a stub's usage)
        # A server that knows only max_tokens: refuses max_completion_tokens (400), or ignores it (16 tokens).
        self.only_max_tokens: str | None = None
        self.admit = 0  # refuse (429) a workload request that finds this many in flight: admission control
        self.thinks_and_calls = False  # no usage; reasoning, then a tool call, then the content's tokens

    def refused(self, request: web.Request) -> web.Response | None:
        if self.key and request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.json_response({"error": {"message": "invalid key"}}, status=401)
        return None

    async def models(self, request: web.Request) -> web.Response:
        if refused := self.refused(request):
            return refused
        return web.json_response({"object": "list", "data": [{"id": "peer-model", "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if refused := self.refused(request):
            return refused
        body = await request.json()
        self.requests.append(body)
        self.request_ids.append(request.headers.get("x-request-id"))
        limit = body.get("max_tokens", 16) if self.only_max_tokens else body["max_completion_tokens"]
        if self.only_max_tokens == "refuse" and "max_completion_tokens" in body:
            message = "Unrecognized request argument supplied: max_completion_tokens"
            return web.json_response({"error": {"message": message}}, status=400)
        if self.admit and limit > 1 and self.in_flight >= self.admit:
            return web.json_response({"error": {"message": "over capacity"}}, status=429)
        self.counted += limit > 1
        if self.refuse_every and limit > 1 and self.counted % self.refuse_every == 0:
            return web.json_response({"error": {"message": "busy"}}, status=429)
        # OpenAI content is a string or a list of parts (vLLM's own benchmark client sends parts).
        texts = [m["content"] if isinstance(m["content"], str) else " ".join(p["text"] for p in m["content"])
                 for m in body["messages"]]  # fmt: skip
        prompt = sum(len(text.split()) for text in texts) + TEMPLATE_TOKENS
        prompt = self.fixed_prompt if self.fixed_prompt is not None else prompt
        tokens = limit
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(data: dict[str, Any] | str) -> None:
            text = data if isinstance(data, str) else json.dumps(data)
            await response.write(f"data: {text}\n\n".encode())

        try:
            await asyncio.sleep(FIRST_TOKEN_S)
            await send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            if self.thinks_and_calls:
                # vLLM 0.10-0.11 sent the reasoning under both names: it is counted once.
                for word in (" r0", " r1", " r2"):
                    await send({"choices": [{"index": 0, "delta": {"reasoning": word, "reasoning_content": word}}]})
                call = {"index": 0, "id": "call-1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
                await send({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
                for part in (' {"q":', ' "x"}'):
                    call = {"index": 0, "function": {"arguments": part}}
                    await send({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
            step = 2 if self.no_usage else 1
            for i in range(0, tokens, step):
                if i:
                    await asyncio.sleep(TOKEN_GAP_S)
                text = "".join(f" w{j}" for j in range(i, min(i + step, tokens)))
                await send({"choices": [{"index": 0, "delta": {"content": text}}]})
            usage = {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}
            if body.get("stream_options", {}).get("include_usage") and not (self.no_usage or self.thinks_and_calls):
                await send({"choices": [], "usage": usage})
            await send("[DONE]")
        finally:
            self.in_flight -= 1
        return response


@pytest.fixture(scope="module")
def peer() -> Iterator[tuple[Peer, str]]:
    state = Peer()
    application = web.Application()
    application.router.add_get("/v1/models", state.models)
    application.router.add_post("/v1/chat/completions", state.chat)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(application)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_timings_usage_and_closed_loop_concurrency(peer: tuple[Peer, str]) -> None:
    state, url = peer
    state.max_in_flight = 0
    endpoint = Endpoint(f"{url}/v1", "peer-model")
    spec = WorkloadSpec(num_prompts=12, input_tokens=20, output_tokens=8)
    result = run_sync(endpoint, spec, concurrency=3, rate=None)
    report = result.report
    assert report["completed"] == 12 and report["failed"] == 0
    assert state.max_in_flight == 3
    assert report["total_output_tokens"] == 12 * 8
    for record in result.records:
        assert record.ttft is not None and record.e2el is not None
        assert FIRST_TOKEN_S * 0.9 <= record.ttft < FIRST_TOKEN_S + 0.15
        # The role chunk carries no token: 8 tokens make 8 token events and 7 gaps.
        assert record.chunks == 8 and len(record.itl) == 7
        assert record.e2el == pytest.approx(record.ttft + sum(record.itl), abs=1e-6)
        # Prompts sized by the server's own count: 20 content tokens + the template's 5.
        assert record.prompt_tokens == 20 + TEMPLATE_TOKENS
    assert report["mean_tpot_ms"] >= TOKEN_GAP_S * 1000 * 7 / 8 * 0.9
    assert report["workload"]["prompt_sizing"] == "server usage"
    assert report["workload"]["template_tokens"] == TEMPLATE_TOKENS
    assert state.requests[-1]["ignore_eos"] is True


def test_calibration_reads_the_servers_count(peer: tuple[Peer, str]) -> None:
    _, url = peer
    per_word, overhead = asyncio.run(calibrate(Endpoint(f"{url}/v1", "peer-model")))
    assert per_word == pytest.approx(1.0)
    assert overhead == TEMPLATE_TOKENS


def test_multi_turn_sessions_carry_the_conversation(peer: tuple[Peer, str]) -> None:
    state, url = peer
    state.requests.clear()
    state.request_ids.clear()
    spec = WorkloadSpec(num_prompts=6, input_tokens=10, output_tokens=3, turns=3, prefix_tokens=4)
    result = run_sync(Endpoint(f"{url}/v1", "peer-model"), spec, concurrency=2, rate=None)
    assert result.report["completed"] == 6
    third_turns = [r for r in state.requests if len(r["messages"]) == 5]
    assert len(third_turns) == 2
    roles = [m["role"] for m in third_turns[0]["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert third_turns[0]["messages"][1]["content"] == " w0 w1 w2"
    # The prompt goes as one text part, the shape vLLM's benchmark client sends (--content-string: a string).
    assert all(m["content"][0]["type"] == "text" for r in state.requests for m in r["messages"] if m["role"] == "user")
    firsts = [
        r["messages"][0]["content"][0]["text"].split()[:4]
        for r, request_id in zip(state.requests, state.request_ids, strict=True)
        # not the calibration probes, nor the untimed initial request (both without a request id)
        if len(r["messages"]) == 1 and r["max_completion_tokens"] == 3 and request_id
    ]
    assert len(firsts) == 2 and firsts[0] == firsts[1]  # the shared prefix
    # Turn 3 resends turns 1-2: the server counts the whole conversation.
    by_turn = {r.turn: r.prompt_tokens for r in result.records if r.session == "s0"}
    assert by_turn[2] == 10 + 3 + 10 + 3 + 10 + TEMPLATE_TOKENS


def test_open_loop_trace_replay_keeps_arrival_times(peer: tuple[Peer, str], tmp_path: Path) -> None:
    _, url = peer
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        "\n".join(json.dumps({"t": t, "input_tokens": 8, "output_tokens": 2}) for t in (0.0, 0.3, 0.6)) + "\n"
    )
    result = run_sync(Endpoint(f"{url}/v1", "peer-model"), WorkloadSpec(trace_file=trace), concurrency=None, rate=None)
    starts = [r.start for r in result.records]
    assert starts == pytest.approx([0.0, 0.3, 0.6], abs=0.08)
    assert result.report["request_rate"] == "inf" and result.report["completed"] == 3


def test_errors_are_counted_by_kind(peer: tuple[Peer, str]) -> None:
    state, url = peer
    state.refuse_every = 2
    try:
        spec = WorkloadSpec(num_prompts=8, input_tokens=5, output_tokens=2)
        result = run_sync(Endpoint(f"{url}/v1", "peer-model"), spec, concurrency=1, rate=None)
    finally:
        state.refuse_every = 0
    assert result.report["failed"] == 4
    assert set(result.report["errors_by_kind"]) == {"http_429"}
    assert result.report["completed"] + result.report["failed"] == 8


def test_cli_json_report_and_saved_requests(peer: tuple[Peer, str], tmp_path: Path) -> None:
    _, url = peer
    saved = tmp_path / "requests.jsonl"
    args = ["bench", url, "-c", "2", "-n", "4", "--input-tokens", "6", "--output-tokens", "3", "-o", "json"]
    args += ["--save-requests", str(saved), "--goodput", "ttft:5000", "--gpus", "1", "--usd-per-hour", "3.6"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"] == "peer-model"  # from /v1/models
    assert report["request_goodput"] == pytest.approx(report["request_throughput"])
    assert report["usd_per_million_output_tokens"] == pytest.approx(1e6 / report["output_throughput"] / 1000)
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert len(lines) == 4 and all(line["success"] and line["completion_tokens"] == 3 for line in lines)


def test_cli_bad_input_is_one_line_not_a_traceback(peer: tuple[Peer, str]) -> None:
    _, url = peer
    runner = CliRunner()
    result = runner.invoke(app, ["bench", url, "-n", "2"])
    assert result.exit_code == 2
    assert "give --concurrency N" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["bench", url, "-c", "1", "--goodput", "ttft=3"])
    assert result.exit_code == 2 and "KEY:MS" in result.output
    result = runner.invoke(app, ["bench", url, "-c", "1", "--vm-size", "Standard_Nope"])
    assert result.exit_code == 2 and "not in the planner's catalog" in result.output
    # A load no run can take is named as such, even when the endpoint is down too (port 9: discard, closed here).
    for args, message in (
        (["-c", "0"], "--concurrency must be at least 1"),
        (["--rate", "-1"], "--rate must be"),
        (["-c", "1", "--input-tokens", "100000000000"], "--input-tokens must be at most 10,485,760"),
    ):
        result = runner.invoke(app, ["bench", "http://127.0.0.1:9", *args])
        assert result.exit_code == 2 and message in result.output, result.output


def test_sweep_compare_and_plot_write_their_files(peer: tuple[Peer, str], tmp_path: Path) -> None:
    _, url = peer
    runner = CliRunner()
    small = ["-n", "4", "--input-tokens", "6", "--output-tokens", "3", "--gpus", "1", "--usd-per-hour", "2"]
    result = runner.invoke(
        app, ["bench", "sweep", url, "-c", "1,2,4", "--out-dir", str(tmp_path), "--name", "s", *small]
    )
    assert result.exit_code == 0, result.output
    sweep = json.loads((tmp_path / "s.json").read_text())
    assert sweep["by"] == "concurrency" and 1 <= len(sweep["steps"]) <= 3
    assert sweep["loads"][: len(sweep["steps"])] == [1, 2, 4][: len(sweep["steps"])]
    assert (tmp_path / "s-curve.png").stat().st_size > 10_000 and (tmp_path / "s-cdf.png").stat().st_size > 10_000

    out = tmp_path / "compare.json"
    args = ["bench", "compare", url, url, "--pairs", "2", "-c", "2,1", "--warmup", "1", "--out", str(out)]
    result = runner.invoke(app, [*args, "-n", "4", "--input-tokens", "6", "--output-tokens", "3"])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["ratiosAtConcurrency"] == 2 and [level["concurrency"] for level in doc["levels"]] == [2, 1]
    for key in ("throughputRatio", "p95TtftRatio", "p95ItlRatio"):
        assert 0.2 < doc[key] < 5  # one peer against itself
        assert doc["levels"][0][key]["min"] <= doc[key] <= doc["levels"][0][key]["max"]
    runs = doc["levels"][0]["runs"]
    assert [(r["endpoint"], r["pair"]) for r in runs] == [
        ("tokenplane", 0),
        ("vllm", 0),
        ("tokenplane", 1),
        ("vllm", 1),
    ]
    assert all(r["completed"] == 4 for r in runs)

    result = runner.invoke(app, ["bench", "plot", str(tmp_path / "s.json"), "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    result = runner.invoke(app, ["bench", "plot", str(out), "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no p95_e2el_ms" in result.output


def test_content_string_sends_plain_strings(peer: tuple[Peer, str]) -> None:
    state, url = peer
    state.requests.clear()
    state.request_ids.clear()
    endpoint = Endpoint(f"{url}/v1", "peer-model", content_parts=False)
    result = run_sync(endpoint, WorkloadSpec(num_prompts=2, input_tokens=5, output_tokens=2), concurrency=1, rate=None)
    assert result.report["completed"] == 2
    assert all(isinstance(m["content"], str) for r in state.requests for m in r["messages"])


def test_an_untimed_initial_request_then_the_run_with_request_ids(peer: tuple[Peer, str]) -> None:
    state, url = peer
    state.requests.clear()
    state.request_ids.clear()
    spec = WorkloadSpec(num_prompts=6, input_tokens=10, output_tokens=4)
    result = run_sync(Endpoint(f"{url}/v1", "peer-model"), spec, concurrency=3, rate=None)
    # Calibration's two probes, then vLLM's "initial single prompt test run": the first prompt once, untimed and
    # unrecorded, then the 6 timed requests, each named by an x-request-id of the run.
    workload = [
        (r, i) for r, i in zip(state.requests, state.request_ids, strict=True) if r["max_completion_tokens"] == 4
    ]
    assert len(workload) == 7 and workload[0][1] is None
    assert workload[0][0]["messages"] == workload[1][0]["messages"]
    ids = [i for _, i in workload[1:]]
    assert all(ids) and len(set(ids)) == 6 and len({i.rsplit("-", 1)[0] for i in ids if i}) == 1
    assert len(result.records) == 6 and result.report["completed"] == 6
    # The clock starts after the initial request: the first timed request is sent at 0.
    assert min(r.start for r in result.records) < 0.05


def test_without_usage_the_tokenizer_counts_the_answer(peer: tuple[Peer, str]) -> None:
    state, url = peer
    state.no_usage = True
    try:
        endpoint = Endpoint(f"{url}/v1", "peer-model")
        tokenizer = WordTokenizer()
        sessions = [Session(id=f"s{i}", turns=[Turn(5, 8, text="a b c d e")]) for i in range(2)]
        counted = asyncio.run(run(endpoint, sessions, concurrency=1, tokenizer=tokenizer)).report
        chunks = asyncio.run(run(endpoint, sessions, concurrency=1)).report
    finally:
        state.no_usage = False
    # 8 words in 4 events of 2 (after the role chunk): the tokenizer counts 8 per answer, the events only 4.
    assert counted["total_output_tokens"] == 16 and chunks["total_output_tokens"] == 8
    # No usage either for the prompt: the workload's 5 tokens each.
    assert counted["total_input_tokens"] == 10


def test_without_usage_reasoning_and_tool_calls_count_as_output(peer: tuple[Peer, str]) -> None:
    # Only `content` was kept for the tokenizer's count: a reasoning model's thinking and its tool calls, which it
    # generated token by token, counted as no output at all (here 2 tokens of 8).
    state, url = peer
    state.thinks_and_calls = True
    try:
        endpoint = Endpoint(f"{url}/v1", "peer-model")
        sessions = [Session(id="s0", turns=[Turn(5, 2, text="a b c d e"), Turn(5, 2, text="f g h i j")])]
        result = asyncio.run(run(endpoint, sessions, concurrency=1, tokenizer=WordTokenizer()))
    finally:
        state.thinks_and_calls = False
    # 3 reasoning words (sent under two names, counted once), the call `lookup {"q": "x"}` (3), 2 content words.
    assert [r.output_tokens for r in result.records] == [8, 8]
    assert result.report["total_output_tokens"] == 16
    # Only the content goes back in the next turn, as OpenAI asks of reasoning.
    assert state.requests[-1]["messages"][1]["content"] == " w0 w1"


class WordTokenizer:
    """A tokenizer with one token per word."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(range(len(text.split())))

    def decode(self, ids: list[int]) -> str:
        return " ".join("w" for _ in ids)


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        # Each was a Python traceback (UnicodeDecodeError without the file, TypeError, FileExistsError) before.
        (b'{"p95_e2el_ms": 5 # \xe9}', [], "r.json: cannot read it as JSON ('utf-8' codec"),
        (b'{"p95_e2el_ms": null, "usd_per_million_output_tokens": 3}', [], "must be numbers, not (None, 3)"),
        (b'{"p95_e2el_ms": 5, "usd_per_million_output_tokens": 3}', ["--out-dir", "r.json"], "cannot make that folder"),
    ],
)
def test_plot_input_it_cannot_use_is_one_line(tmp_path: Path, content: bytes, args: list[str], message: str) -> None:
    report = tmp_path / "r.json"
    report.write_bytes(content)
    args = [str(tmp_path / a) if a.endswith(".json") else a for a in args]
    result = CliRunner().invoke(app, ["bench", "plot", str(report), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_an_output_path_that_cannot_be_written_is_refused_before_measuring(tmp_path: Path) -> None:
    # An unreachable URL: refused before it is contacted (the sweep failed only after its last step before).
    taken = tmp_path / "a-file"
    taken.write_text("")
    url = "http://127.0.0.1:9/v1"
    result = CliRunner().invoke(app, ["bench", "sweep", url, "-c", "1,2", "--out-dir", str(taken)])
    assert result.exit_code == 2 and "--out-dir" in result.output and "cannot make that folder" in result.output
    result = CliRunner().invoke(app, ["bench", "compare", url, url, "-c", "1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "a folder; give the JSON file to write" in result.output


def test_a_wrong_key_says_to_check_the_key(peer: tuple[Peer, str]) -> None:
    # Before, a 401 said "give the model with --model", or "give the served model's tokenizer with --tokenizer".
    state, url = peer
    state.key = "right"
    try:
        runner = CliRunner()
        for extra in ([], ["--model", "peer-model"]):
            result = runner.invoke(app, ["bench", url, "-c", "1", "-n", "1", "--api-key", "wrong", *extra])
            assert result.exit_code == 2 and "401" in result.output and "--api-key" in result.output, result.output
            assert "--tokenizer" not in result.output and "give the model" not in result.output
        result = runner.invoke(app, ["bench", url, "-c", "1", "-n", "1", "--api-key", "right", "-o", "json"])
        assert result.exit_code == 0 and json.loads(result.stdout)["completed"] == 1
    finally:
        state.key = None


def test_a_chat_completions_url_means_its_root(peer: tuple[Peer, str]) -> None:
    _, url = peer
    result = CliRunner().invoke(app, ["bench", f"{url}/v1/chat/completions/", "-c", "1", "-n", "1", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["base_url"] == f"{url}/v1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # A folder: the run went through, then IsADirectoryError ended it with a traceback and no report.
        (["--save-requests", "."], "--save-requests .: a folder"),
        # Without --vm-size both were ignored without a word.
        (["--prices", "prices.yaml"], "--prices needs --vm-size"),
        (["--vms", "3", "--gpus", "1"], "--vms 3 needs --vm-size"),
    ],
)
def test_options_that_cannot_take_effect_are_refused_before_measuring(
    peer: tuple[Peer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    state, url = peer
    monkeypatch.chdir(tmp_path)
    before = len(state.requests)
    result = CliRunner().invoke(app, ["bench", url, "-c", "1", "-n", "1", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and len(state.requests) == before


def test_a_stop_reports_what_finished_and_counts_the_rest(peer: tuple[Peer, str]) -> None:
    # Ctrl-C sets the stop (runner._stop_on_ctrl_c). Before, asyncio cancelled the run and nothing was reported.
    _, url = peer
    endpoint = Endpoint(f"{url}/v1", "peer-model")
    # 2 quick requests, then 2 slow ones in flight at the stop and 2 queued behind them.
    sessions = [Session(id=f"s{i}", turns=[Turn(5, 2 if i < 2 else 60, text="a b c d e")]) for i in range(6)]

    async def stopped_at(seconds: float) -> Any:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        return await run(endpoint, sessions, concurrency=2, stop=stop, initial_test=False)

    result = asyncio.run(stopped_at(0.4))
    report = result.report
    assert report["interrupted"] is True
    assert (report["completed"], report["failed"], report["dropped_in_flight"], report["not_sent"]) == (2, 0, 2, 2)
    assert len(result.records) == 2 and all(r.success for r in result.records)
    assert 0.35 < report["duration"] < 0.6


def test_turns_after_a_failed_turn_are_counted_as_not_sent(peer: tuple[Peer, str]) -> None:
    state, url = peer
    state.refuse_every, state.counted = 2, 0
    try:
        spec = WorkloadSpec(num_prompts=6, input_tokens=5, output_tokens=2, turns=3)
        report = run_sync(Endpoint(f"{url}/v1", "peer-model"), spec, concurrency=1, rate=None).report
    finally:
        state.refuse_every = 0
    assert report["failed"] >= 1 and report["not_sent"] >= 1
    assert report["completed"] + report["failed"] + report["not_sent"] == 6
    assert report["interrupted"] is False and report["dropped_in_flight"] == 0


def test_ctrl_c_prints_the_partial_report(peer: tuple[Peer, str], tmp_path: Path) -> None:
    state, url = peer
    sent_before = sum(1 for i in state.request_ids if i)  # the timed requests, each with an x-request-id
    saved = tmp_path / "requests.jsonl"
    code = "import sys; from tokenplane_cli import main; sys.argv[0] = 'tokenplane'; main()"
    args = [sys.executable, "-c", code, "bench", url, "-c", "1", "-n", "20", "--output-tokens", "30", "-o", "json"]
    process = subprocess.Popen(
        [*args, "--save-requests", str(saved)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        # A test runner may start its children with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    deadline = time.monotonic() + 60
    # Start-up (imports, sizing), then wait for 3 timed requests of 0.35 s each to have been sent.
    while sum(1 for i in state.request_ids if i) < sent_before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()
    report = json.loads(out)
    assert report["interrupted"] is True and 1 <= report["completed"] < 20
    assert report["completed"] + report["dropped_in_flight"] + report["not_sent"] == 20
    assert "interrupted" in err.decode() and len(saved.read_text().splitlines()) == report["completed"]


def test_a_trace_sessions_prompts_are_the_traces_whole_prompts(peer: tuple[Peer, str], tmp_path: Path) -> None:
    # `tokenplane simulate` reads a trace line's input_tokens as the request's whole prompt (its agentic trace
    # grows each call's context by the last answer and a tool result). Bench resent the conversation and added
    # input_tokens on top: the second turn below was 20 + 4 + 40 + 5 = 69 prompt tokens, not 40. The trace starts
    # at t = 100: the run starts with its first request, not after 100 s of waiting.
    _, url = peer
    trace = tmp_path / "trace.jsonl"
    rows = [
        {"t": 100.0, "input_tokens": 20, "output_tokens": 4, "session": "a"},
        {"t": 100.2, "input_tokens": 40, "output_tokens": 4, "session": "a"},
        {"t": 100.3, "input_tokens": 10, "output_tokens": 4, "session": "a"},  # a compacted context: afresh
        {"t": 100.1, "input_tokens": 15, "output_tokens": 2},
    ]
    trace.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = run_sync(Endpoint(f"{url}/v1", "peer-model"), WorkloadSpec(trace_file=trace), concurrency=None, rate=None)
    report = result.report
    assert report["completed"] == 4 and report["duration"] < 5
    prompts = {(r.session, r.turn): r.prompt_tokens for r in result.records}
    # The peer counts words + 5 (its template): whole prompts as the trace gives them.
    assert prompts == {("a", 0): 25, ("a", 1): 45, ("a", 2): 15, ("line4", 0): 20}
    assert [round(r.start, 1) for r in sorted(result.records, key=lambda r: r.start)] == [0.0, 0.1, 0.2, 0.3]


def test_a_server_whose_usage_ignores_the_prompt_gets_prompts_of_one_token_per_word(peer: tuple[Peer, str]) -> None:
    # Calibration divides the growth of usage.prompt_tokens by the growth of the prompt: a stub reporting a fixed
    # count grew by 0, the floor of 0.05 tokens per word applied, and 20-token prompts went out as 400 words.
    state, url = peer
    state.fixed_prompt = 7
    state.requests.clear()
    try:
        spec = WorkloadSpec(num_prompts=2, input_tokens=20, output_tokens=2)
        report = run_sync(Endpoint(f"{url}/v1", "peer-model"), spec, concurrency=1, rate=None).report
    finally:
        state.fixed_prompt = None
    workload = [r for r in state.requests if r["max_completion_tokens"] == 2]
    sent = [len(r["messages"][0]["content"][0]["text"].split()) for r in workload]
    assert sent == [20, 20, 20]  # the untimed first request, then the run's two
    assert report["workload"]["tokens_per_word"] == 1.0 and "assumed" in report["workload"]["prompt_sizing"]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        # Before: AttributeError ('list' object has no attribute 'get'), a traceback.
        ("[]", "no OpenAI model list"),
        # Before: "cannot reach .../models: 0, message='Attempt to decode JSON with unexpected mimetype'".
        ("<html>login</html>", "what is not JSON"),
        # Before: aiohttp's default 5 minutes of silence.
        ("hang", "did not answer within 0.5s"),
    ],
)
def test_a_models_list_it_cannot_use_is_one_line(answer: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenplane_cli.bench import runner

    monkeypatch.setattr(runner, "MODELS_TIMEOUT_S", 0.5)

    async def models(request: web.Request) -> web.Response:
        if answer == "hang":
            await asyncio.sleep(2)
        return web.Response(text=answer, content_type="text/html")

    application = web.Application()
    application.router.add_get("/v1/models", models)

    async def main() -> str:
        server = web.AppRunner(application)
        await server.setup()
        site = web.TCPSite(server, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            await runner.resolve_endpoint(f"http://127.0.0.1:{port}", None, None)
        except ValueError as error:
            return str(error)
        finally:
            await server.cleanup()
        return "no error"

    assert message in asyncio.run(main())


def test_ctrl_c_between_sweep_steps_writes_the_steps_measured(
    peer: tuple[Peer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C in the second step's prompt sizing (run_sync raises KeyboardInterrupt before a request is sent).
    # Before, the sweep said "interrupted before a step was measured; nothing written" and step 1 was lost.
    from tokenplane_cli.bench import compare

    _, url = peer
    calls = []
    real = compare.run_sync

    def run_twice(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["concurrency"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(compare, "run_sync", run_twice)
    args = ["bench", "sweep", url, "-c", "1,2,4", "-n", "2", "--output-tokens", "2", "--out-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130, result.output
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert sweep["interrupted"] is True and sweep["loads"] == [1] and sweep["steps"][0]["completed"] == 2


def test_a_sweep_against_an_endpoint_that_sheds_load_stops_where_it_fails(
    peer: tuple[Peer, str], tmp_path: Path
) -> None:
    # An endpoint that admits one request at a time and answers the rest 429 at once: the TTFT of those it serves
    # stays flat, so the sweep went on through every step (and would through 64 or 128) saying nothing of them.
    state, url = peer
    state.admit = 1
    try:
        args = ["bench", "sweep", url, "-c", "1,2,4,8", "-n", "8", "--output-tokens", "4", "--out-dir", str(tmp_path)]
        result = CliRunner().invoke(app, args)
    finally:
        state.admit = 0
    assert result.exit_code == 0, result.output
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert sweep["loads"] == [1, 2] and sweep["saturated_at"] == 1 and sweep["stop_reason"] == "failing"
    assert sweep["steps"][0]["failed"] == 0 and sweep["steps"][1]["failed"] >= 1
    assert "failing at concurrency 2: stopped there (" in result.stdout


def test_num_prompts_caps_a_trace_replay(peer: tuple[Peer, str], tmp_path: Path) -> None:
    # `-n 3 --trace-file` replayed all 5 requests: --num-prompts was read for synthetic workloads only. It now
    # takes the trace's first 3 by t, as vLLM takes a dataset's first N; a session keeps its turns up to there.
    _, url = peer
    trace = tmp_path / "trace.jsonl"
    rows = [
        {"t": 0.3, "input_tokens": 6, "output_tokens": 2, "session": "a"},
        {"t": 0.0, "input_tokens": 4, "output_tokens": 2, "session": "a"},
        {"t": 0.1, "input_tokens": 5, "output_tokens": 2},
        {"t": 0.4, "input_tokens": 7, "output_tokens": 2},
        {"t": 0.2, "input_tokens": 8, "output_tokens": 2, "session": "a"},
    ]
    trace.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = ["bench", url, "--trace-file", str(trace), "-n", "3", "-o", "json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["completed"] == 3 and report["not_sent"] == 0
    assert report["workload"]["num_prompts"] == 3
    # t 0.0 and 0.2 of session a (its turn at 0.3 is past the cap), and the line at 0.1.
    assert report["total_input_tokens"] == (4 + 5) + (8 + 5) + (5 + 5)
    result = CliRunner().invoke(app, ["bench", url, "--trace-file", str(trace), "-n", "0"])
    assert result.exit_code == 2 and "--num-prompts must be at least 1, not 0" in result.output
    # Without -n, the whole trace; and a synthetic workload's 64.
    result = CliRunner().invoke(app, ["bench", url, "--trace-file", str(trace), "-o", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["completed"] == 5
    assert WorkloadSpec().describe()["num_prompts"] == 64


def test_num_prompts_beyond_a_trace_says_the_whole_trace_was_replayed(peer: tuple[Peer, str], tmp_path: Path) -> None:
    # -n 500 of a 3-line trace replayed the 3 without a word: the run looked like the 500 asked for.
    _, url = peer
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps({"t": i / 10, "input_tokens": 3, "output_tokens": 1}) + "\n" for i in range(3)))
    result = CliRunner().invoke(app, ["bench", url, "--trace-file", str(trace), "-n", "500", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["completed"] == 3
    assert "-n 500 is more than the trace's 3 requests: replaying all 3" in result.stderr
    result = CliRunner().invoke(app, ["bench", url, "--trace-file", str(trace), "-n", "3", "-o", "json"])
    assert result.exit_code == 0 and "replaying all" not in result.stderr


@pytest.mark.parametrize("workload", ["synthetic", "trace", "sweep"])
def test_a_rate_whose_arrivals_span_days_is_refused_before_any_measured_request(
    peer: tuple[Peer, str], tmp_path: Path, workload: str
) -> None:
    # --rate 0.0001 with 100 requests spread their starts over 1,000,000 s (11.6 days), and waited through them.
    state, url = peer
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps({"t": i, "input_tokens": 3, "output_tokens": 1}) + "\n" for i in range(100)))
    args = {
        "synthetic": ["bench", url, "--rate", "0.0001", "-n", "100"],
        "trace": ["bench", url, "--rate", "0.0001", "--trace-file", str(trace)],
        "sweep": ["bench", "sweep", url, "--rate", "0.0001,1", "-n", "100", "--out-dir", str(tmp_path)],
    }[workload]
    # A trace's length is known once it is read, after the prompts are sized; a synthetic workload's at once,
    # before its tokenizer is loaded.
    early = [] if workload == "trace" else ["--tokenizer", "tokenizer-never-loaded"]
    before = len(state.requests)
    result = CliRunner().invoke(app, [*args, "--model", "peer-model", *early])
    assert result.exit_code == 2, result.output
    assert "--rate 0.0001 starts 100 sessions over 277.8 h (11.6 days" in result.output
    measured = [r for r in state.requests[before:] if r["max_completion_tokens"] > 1]
    assert not measured, "no workload request may be sent"
    result = CliRunner().invoke(app, ["bench", url, "--rate", "1000", "-n", "2", "-o", "json"])
    assert result.exit_code == 0, result.output


def test_the_prompts_of_a_trace_are_made_under_a_progress_bar(
    peer: tuple[Peer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from tokenplane_cli.bench import commands

    _, url = peer
    screen = io.StringIO()
    monkeypatch.setattr(commands, "err", Console(file=screen, force_terminal=True, width=120))
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        "".join(json.dumps({"t": i / 100, "input_tokens": 3, "output_tokens": 1}) + "\n" for i in range(3))
    )
    result = CliRunner().invoke(app, ["bench", url, "--trace-file", str(trace), "-o", "json"])
    assert result.exit_code == 0, result.output
    assert "making prompts" in screen.getvalue()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (what a test cluster's ingress often has)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokenplane-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def tls_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    import ssl

    cert_file, key_file = _self_signed(tmp_path_factory.mktemp("tls"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    state = Peer()
    application = web.Application()
    application.router.add_get("/v1/models", state.models)
    application.router.add_post("/v1/chat/completions", state.chat)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(application)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{port}", cert_file
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_an_https_endpoint_with_a_self_signed_certificate(tls_peer: tuple[str, Path], tmp_path: Path) -> None:
    # There was no way to reach one: every request failed on the certificate, and the message did not say what to
    # do. --ca-bundle verifies against its CA (curl --cacert, httpx verify=PATH); --insecure verifies nothing.
    url, cert = tls_peer
    runner = CliRunner()
    small = ["-c", "1", "-n", "2", "--input-tokens", "4", "--output-tokens", "2", "-o", "json"]
    for extra in ([], ["--model", "peer-model"]):  # refused at GET /v1/models, or at the first chat request
        result = runner.invoke(app, ["bench", url, *small, *extra])
        assert result.exit_code == 2, result.output
        assert "certificate" in result.output and "--ca-bundle FILE" in result.output, result.output
        assert "--insecure" in result.output and "Traceback" not in result.output
    for extra in (["--ca-bundle", str(cert)], ["--insecure"], ["-k", "--model", "peer-model"]):
        result = runner.invoke(app, ["bench", url, *small, *extra])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["completed"] == 2
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello")
    for extra, message in (
        (["--ca-bundle", str(tmp_path / "missing.pem")], "missing.pem: cannot read it"),
        (["--ca-bundle", str(not_pem)], "ca.pem: not PEM certificates"),
        (["--ca-bundle", str(cert), "--insecure"], "not both"),
    ):
        result = runner.invoke(app, ["bench", url, *small, *extra])
        assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("mode", ["refuse", "ignore"])
def test_a_server_that_knows_only_max_tokens(peer: tuple[Peer, str], mode: str) -> None:
    # The client sent max_completion_tokens only. A server that refuses it failed every request with its 400; one
    # that ignores it answered at its own length (16 here, up to max-model-len with ignore_eos) and the report's
    # token figures were of answers nobody asked for, without a word.
    state, url = peer
    state.only_max_tokens = mode
    state.requests.clear()
    small = ["-c", "1", "-n", "2", "--input-tokens", "4", "--output-tokens", "3", "-o", "json", "--model", "peer-model"]
    try:
        result = CliRunner().invoke(app, ["bench", url, *small])
        if mode == "refuse":  # refused at the prompt-sizing probe, naming the option to give
            assert result.exit_code == 2 and "give --max-tokens-field max_tokens" in result.output, result.output
        else:
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)["over_max_tokens"] == 2
            assert "2 answers were longer than the max_completion_tokens asked for" in result.stderr
            assert "give --max-tokens-field max_tokens" in result.stderr
        state.requests.clear()
        result = CliRunner().invoke(app, ["bench", url, *small, "--max-tokens-field", "max_tokens"])
    finally:
        state.only_max_tokens = None
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["completed"] == 2 and report["total_output_tokens"] == 6 and report["over_max_tokens"] == 0
    assert all("max_tokens" in r and "max_completion_tokens" not in r for r in state.requests)


@pytest.mark.parametrize("command", ["run", "sweep", "compare"])
@pytest.mark.parametrize("timeout", ["0", "-1", "nan"])
def test_a_timeout_no_request_can_meet_is_refused_before_any_request(
    peer: tuple[Peer, str], tmp_path: Path, command: str, timeout: str
) -> None:
    # Each was taken: every request (the prompt-sizing probes first) timed out at once, "no complete answer within
    # nans", and a sweep or compare failed that way only after asking the endpoint for its model.
    state, url = peer
    before = len(state.requests)
    args = {
        "run": ["bench", url, "-c", "1"],
        "sweep": ["bench", "sweep", url, "-c", "1,2", "--out-dir", str(tmp_path)],
        "compare": ["bench", "compare", url, url, "--out", str(tmp_path / "c.json")],
    }[command]
    result = CliRunner().invoke(app, [*args, "-n", "1", "--timeout", timeout])
    assert result.exit_code == 2, result.output
    assert f"--timeout must be a positive number of seconds per request, not {timeout}" in result.output
    assert len(state.requests) == before


@pytest.mark.parametrize(
    "extra", [["--input-tokens", "50"], ["--output-tokens", "9", "--turns", "3"], ["--prefix-tokens", "10"]]
)
def test_synthetic_workload_options_with_a_trace_are_refused(
    peer: tuple[Peer, str], tmp_path: Path, extra: list[str]
) -> None:
    # They were ignored without a word: the trace's own tokens and sessions were sent.
    state, url = peer
    before = len(state.requests)
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"t": 0, "input_tokens": 4, "output_tokens": 2}\n')
    result = CliRunner().invoke(app, ["bench", url, "-c", "1", "--trace-file", str(trace), *extra])
    flags = ", ".join(a for a in extra if a.startswith("--"))
    assert result.exit_code == 2 and f"{flags} with --trace-file: the trace gives" in result.output, result.output
    assert len(state.requests) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Each said "--num-prompts, --input-tokens, --output-tokens and --turns must be at least 1", after two
        # prompt-sizing requests to the endpoint.
        (["-n", "0"], "--num-prompts must be at least 1, not 0"),
        (["--turns", "0"], "--turns must be at least 1, not 0"),
        (["--output-tokens", "-1"], "--output-tokens must be at least 1, not -1"),
        (["--prefix-tokens", "-1"], "--prefix-tokens must be 0 or more, not -1"),
        (["--prefix-groups", "0"], "--prefix-groups must be at least 1, not 0"),
        (["--input-tokens", "8", "--prefix-tokens", "8"], "--prefix-tokens (8) must be below --input-tokens (8)"),
        # compare said "--num-prompts ... must be at least 1": it had made its warm-up run of -1 prompts.
        (["compare", "--warmup", "-1"], "--warmup must be 0 or more unmeasured requests, not -1"),
        (["sweep", "--turns", "0"], "--turns must be at least 1, not 0"),
    ],
)
def test_workload_counts_no_run_can_have_are_named_before_any_request(
    peer: tuple[Peer, str], tmp_path: Path, args: list[str], message: str
) -> None:
    state, url = peer
    before = len(state.requests)
    if args[0] == "compare":
        command = ["bench", "compare", url, url, "-c", "1", "--out", str(tmp_path / "c.json"), *args[1:]]
    elif args[0] == "sweep":
        command = ["bench", "sweep", url, "-c", "1,2", "--out-dir", str(tmp_path), *args[1:]]
    else:
        command = ["bench", url, "-c", "1", *args]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(state.requests) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # A step of inf or nan failed when its turn came ("--rate must be a positive number"), after the steps before
        # it had been measured, and those were not written.
        (["--rate", "1,inf"], "--rate: expected increasing positive numbers"),
        (["--rate", "0.5,nan"], "--rate: expected increasing positive numbers"),
        # Below 0 the sweep could never stop on saturation (or stopped on any TTFT), without a word.
        (["-c", "1,2", "--min-gain", "-1"], "--min-gain is a relative growth, 0 or more (0.05 = 5%), not -1"),
        (["-c", "1,2", "--ttft-growth", "nan"], "--ttft-growth is a relative growth, 0 or more (0.05 = 5%), not nan"),
        # "." wrote the hidden files ..json and .-curve.png; "a/b" failed after the steps, on a missing folder.
        (["-c", "1", "--name", "."], "--name '.' names the sweep's files under --out-dir"),
        (["-c", "1", "--name", "runs/a"], "--name 'runs/a' names the sweep's files under --out-dir"),
        (["-c", "1", "--name", " "], "--name ' ' names the sweep's files under --out-dir"),
    ],
)
def test_sweep_options_no_sweep_can_use_are_refused_before_the_first_step(
    peer: tuple[Peer, str], tmp_path: Path, args: list[str], message: str
) -> None:
    state, url = peer
    before = len(state.requests)
    result = CliRunner().invoke(app, ["bench", "sweep", url, *args, "-n", "1", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(state.requests) == before


def test_compare_refuses_one_label_for_both_endpoints(peer: tuple[Peer, str], tmp_path: Path) -> None:
    # Both endpoints' runs went under one name: compare.json's endpoints kept one URL, and its chart drew both
    # endpoints' requests as one curve.
    state, url = peer
    before = len(state.requests)
    args = ["bench", "compare", url, url, "-c", "1", "-n", "1", "--out", str(tmp_path / "c.json")]
    result = CliRunner().invoke(app, [*args, "--label-a", "x", "--label-b", "x"])
    assert result.exit_code == 2 and "--label-a and --label-b are both 'x'" in result.output, result.output
    assert len(state.requests) == before


def test_plot_with_a_latency_key_the_report_lacks_names_the_option(tmp_path: Path) -> None:
    # --latency p95_e2el (no _ms) said "r.json: no p95_e2el in it; is it `tokenplane bench -o json` output?" of
    # a report that was.
    report = tmp_path / "r.json"
    figures = {"output_throughput": 10, "p95_e2el_ms": 5, "p99_ttft_ms": 4, "usd_per_million_output_tokens": 3}
    report.write_text(json.dumps(figures))
    result = CliRunner().invoke(
        app, ["bench", "plot", str(report), "--latency", "p95_e2el", "--out-dir", str(tmp_path)]
    )
    assert result.exit_code == 2, result.output
    assert "--latency p95_e2el: not a latency of the report; give one of p95_e2el_ms, p99_ttft_ms" in result.output


@pytest.mark.filterwarnings("error::UserWarning")  # matplotlib's, on the terminal of a user without a curve
def test_a_sweep_whose_first_step_fails_exits_1_with_the_first_failure(peer: tuple[Peer, str], tmp_path: Path) -> None:
    # Every request refused: the sweep stopped at its first step, "failing", and exited 0 as if it had found the
    # endpoint's limit; nothing said why the requests failed (`bench URL` exits 1 and prints the first failure).
    state, url = peer
    state.refuse_every, state.counted = 1, 0
    try:
        args = ["bench", "sweep", url, "-c", "1,2", "-n", "2", "--output-tokens", "2", "--out-dir", str(tmp_path)]
        result = CliRunner().invoke(app, [*args, "-o", "json"])
    finally:
        state.refuse_every = 0
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["stop_reason"] == "failing"
    assert "the first step failed (100% of its requests failed" in result.stderr
    assert "first failure (http_429): " in result.stderr and "busy" in result.stderr


@pytest.mark.parametrize("path", ["/v1/models", "/v1/completions/"])
def test_a_models_or_completions_url_means_its_root(peer: tuple[Peer, str], path: str) -> None:
    # Only .../v1/chat/completions was read as the root: .../v1/models became .../v1/models/v1, whose GET
    # /models answered 404, and the error said to give --model.
    _, url = peer
    result = CliRunner().invoke(app, ["bench", f"{url}{path}", "-c", "1", "-n", "1", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["base_url"] == f"{url}/v1"


def test_a_sweep_step_runs_under_a_progress_bar(
    peer: tuple[Peer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sweep showed nothing while a step ran (minutes at 64 requests of long answers), only a line after it.
    from rich.console import Console

    from tokenplane_cli.bench import commands

    _, url = peer
    screen = io.StringIO()
    monkeypatch.setattr(commands, "err", Console(file=screen, force_terminal=True, width=120))
    args = ["bench", "sweep", url, "-c", "1,2", "-n", "2", "--output-tokens", "2", "--out-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    bars = [line for line in screen.getvalue().split("\r") if "━" in line]
    assert any("concurrency 1" in line and "2/2" in line for line in bars), screen.getvalue()
    assert any("concurrency 2" in line and "2/2" in line for line in bars), screen.getvalue()


def test_compare_with_failed_requests_exits_1_and_names_them(peer: tuple[Peer, str], tmp_path: Path) -> None:
    # Half of every run refused: compare printed its ratios of what was served and exited 0, without a word of
    # the failures (in compare.json's runs only).
    state, url = peer
    state.refuse_every, state.counted = 2, 0
    try:
        args = ["bench", "compare", url, url, "-c", "1", "--pairs", "1", "--warmup", "0", "-n", "2"]
        result = CliRunner().invoke(app, [*args, "--output-tokens", "2", "--out", str(tmp_path / "c.json")])
    finally:
        state.refuse_every = 0
    assert result.exit_code == 1, result.output
    assert "tokenplane at concurrency 1: 1 of 2 requests failed; first (http_429): " in result.stderr
    assert "vllm at concurrency 1: 1 of 2 requests failed" in result.stderr
    assert (tmp_path / "c.json").exists()
