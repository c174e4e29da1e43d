"""Run a workload against an endpoint: closed loop (concurrency), open loop (Poisson rate) or a trace replay."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from tokenplane_cli.bench.client import (
    AUTH_HINT,
    TLS_HINT,
    Endpoint,
    StatusError,
    chat,
    list_models,
    normalize_base_url,
)
from tokenplane_cli.bench.stats import Cost, RequestRecord, summarize
from tokenplane_cli.bench.workload import (
    BenchInputError,
    Progress,
    PromptMaker,
    Session,
    Tokenizer,
    load_tokenizer,
    poisson_arrivals,
    read_trace,
    synthetic_sessions,
)
from tokenplane_cli.tracefile import MAX_REQUEST_TOKENS, MAX_TRACE_SECONDS

__all__ = [
    "SYNTHETIC_PROMPTS",
    "RunResult",
    "WorkloadSpec",
    "build_sessions",
    "calibrate",
    "check_load",
    "check_rate_span",
    "resolve_endpoint",
    "run",
    "run_sync",
]


# Requests of a synthetic workload when --num-prompts is not given (vLLM's default is 1,000; runs here are short).
SYNTHETIC_PROMPTS = 64

# How long GET /v1/models may take when the model is not given.
MODELS_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class WorkloadSpec:
    """What to send, independent of how fast.

    Attributes:
        num_prompts: Requests in all; None for `SYNTHETIC_PROMPTS` of a synthetic workload, or a whole trace (with a
            trace, the first `num_prompts` requests by arrival).
        input_tokens: Prompt content tokens per turn.
        output_tokens: max_tokens per answer.
        turns: Turns per session.
        prefix_tokens: Tokens of a shared prefix at the start of each session (0: none).
        prefix_groups: Distinct shared prefixes.
        trace_file: Replay this trace instead (arrivals and sizes from the file).
        tokenizer: The served model's tokenizer (path or hub id); None to size prompts by the server's count.
        seed: Seed of prompts and arrivals.
    """

    num_prompts: int | None = None
    input_tokens: int = 128
    output_tokens: int = 64
    turns: int = 1
    prefix_tokens: int = 0
    prefix_groups: int = 1
    trace_file: Path | None = None
    tokenizer: str | None = None
    seed: int = 0

    def check(self) -> None:
        """Refuse counts no workload can have, naming the option; cheap, so before any request.

        Raises:
            BenchInputError: The first such option, with its value.
        """
        for flag, value in (
            ("--num-prompts", self.num_prompts),
            ("--input-tokens", self.input_tokens),
            ("--output-tokens", self.output_tokens),
            ("--turns", self.turns),
            ("--prefix-groups", self.prefix_groups),
        ):
            if value is not None and value < 1:
                raise BenchInputError(f"{flag} must be at least 1, not {value}")
        for flag, value in (("--input-tokens", self.input_tokens), ("--output-tokens", self.output_tokens)):
            if value > MAX_REQUEST_TOKENS:
                raise BenchInputError(
                    f"{flag} must be at most {MAX_REQUEST_TOKENS:,} (the longest context), not {value:,}"
                )
        if self.prefix_tokens < 0:
            raise BenchInputError(f"--prefix-tokens must be 0 or more, not {self.prefix_tokens}")
        if self.trace_file is None and self.prefix_tokens >= self.input_tokens:
            raise BenchInputError(
                f"--prefix-tokens ({self.prefix_tokens}) must be below --input-tokens ({self.input_tokens}): the "
                "prefix is part of the prompt"
            )

    def synthetic_sessions(self) -> int | None:
        """Return how many sessions a synthetic workload starts; None for a trace (known once it is read)."""
        if self.trace_file is not None:
            return None
        return -(-(self.num_prompts if self.num_prompts is not None else SYNTHETIC_PROMPTS) // self.turns)

    def describe(self) -> dict[str, Any]:
        """Return the spec as JSON-ready settings."""
        return {
            "num_prompts": SYNTHETIC_PROMPTS
            if self.num_prompts is None and self.trace_file is None
            else self.num_prompts,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "turns": self.turns,
            "prefix_tokens": self.prefix_tokens,
            "prefix_groups": self.prefix_groups,
            "trace_file": str(self.trace_file) if self.trace_file else None,
            "tokenizer": self.tokenizer,
            "seed": self.seed,
        }


@dataclass
class RunResult:
    """One benchmark run.

    Attributes:
        report: The summary (see `stats.summarize`) plus the run's settings.
        records: Every request.
    """

    report: dict[str, Any]
    records: list[RequestRecord] = field(default_factory=list)


async def resolve_endpoint(url: str, model: str | None, api_key: str | None, **kwargs: Any) -> Endpoint:
    """Make an Endpoint for `url`, asking the server for its model when none is given.

    Raises:
        ValueError: a URL, TLS option or answer of GET /v1/models that cannot be used, saying what to do.
    """
    endpoint = Endpoint(base_url=normalize_base_url(url), model=model or "", api_key=api_key, **kwargs)
    tls = endpoint.tls()  # a --ca-bundle that cannot be used is refused before any request
    if model:
        return endpoint
    base = endpoint.base_url
    # aiohttp's default is 5 minutes: a mistyped address hung that long before a word.
    timeout = aiohttp.ClientTimeout(total=MODELS_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls), timeout=timeout) as session:
        try:
            models = await list_models(session, base, api_key)
        except TimeoutError:
            raise BenchInputError(f"{base}/models did not answer within {MODELS_TIMEOUT_S:g}s") from None
        except aiohttp.ClientSSLError as err:
            raise BenchInputError(f"cannot reach {base}/models: {err}; {TLS_HINT}") from None
        except aiohttp.ClientError as err:
            raise BenchInputError(f"cannot reach {base}/models: {err}") from None
        except StatusError as err:
            hint = AUTH_HINT if err.status in (401, 403) else "give the model with --model"
            raise BenchInputError(f"{err}; {hint}") from None
        except ValueError as err:  # not JSON, or no model list: list_models says which
            raise BenchInputError(f"{err}; give the model with --model") from None
    if not models:
        raise BenchInputError(f"{base}/models lists no model; give one with --model")
    return replace(endpoint, model=models[0])


async def _prompt_tokens(session: aiohttp.ClientSession, endpoint: Endpoint, text: str) -> int:
    record = RequestRecord(index=-1, session=None, turn=0, start=0, input_tokens_target=0, output_tokens_target=1)
    await chat(session, replace(endpoint, ignore_eos=False), [{"role": "user", "content": text}], record, 0.0)
    if not record.success:
        # The endpoint refused or failed the request: a tokenizer would not help (it did before this said so).
        hint = f"; {AUTH_HINT}" if record.error_kind in ("http_401", "http_403") else ""
        raise BenchInputError(
            f"a request to size prompts by the server's count ({endpoint.base_url}/chat/completions, model "
            f"{endpoint.model}) failed ({record.error_kind}: {record.error}){hint}"
        )
    if record.prompt_tokens is None:
        raise BenchInputError(
            f"{endpoint.base_url} sent no usage (prompt_tokens) to size prompts by; give the served model's "
            "tokenizer with --tokenizer"
        )
    return record.prompt_tokens


async def calibrate(endpoint: Endpoint, seed: int = 0, words: int = 200) -> tuple[float | None, int]:
    """Tokens per word and chat-template overhead, as the server counts them (two prompts' `usage`).

    Args:
        endpoint: The endpoint to ask.
        seed: Seed of the probe text.
        words: Words in the longer probe.

    Returns:
        (tokens per word, prompt tokens the server adds around the content); tokens per word is None when the
        server's count did not grow with the prompt (a stub that reports a fixed usage): there is nothing to size
        by.
    """
    maker = PromptMaker(seed=seed + 7919)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=endpoint.tls())) as session:
        short = await _prompt_tokens(session, endpoint, maker.words(words // 4))
        long = await _prompt_tokens(session, endpoint, maker.words(words))
    if long <= short:
        return None, short
    per_word = max((long - short) / (words - words // 4), 0.05)
    return per_word, max(0, round(short - per_word * (words // 4)))


async def build_sessions(
    spec: WorkloadSpec, endpoint: Endpoint, tokenizer: Tokenizer | None = None, on_progress: Progress | None = None
) -> tuple[list[Session], dict[str, Any]]:
    """Make the workload's sessions with real token counts; also return how prompts were sized.

    `tokenizer` is `spec.tokenizer` already loaded (loaded here when not given); `on_progress` gets (prompts made,
    prompts in all) as the prompts are made.
    """
    if spec.tokenizer:
        maker = PromptMaker(seed=spec.seed, tokenizer=tokenizer or load_tokenizer(spec.tokenizer))
        sizing: dict[str, Any] = {"prompt_sizing": "tokenizer", "tokenizer": spec.tokenizer}
    else:
        per_word, overhead = await calibrate(endpoint, spec.seed)
        if per_word is None:
            # Before, the floor of 0.05 tokens per word applied: prompts of 20 words per token asked for.
            maker = PromptMaker(seed=spec.seed, tokens_per_word=1.0)
            sizing = {
                "prompt_sizing": "1 token per word assumed: the server's usage.prompt_tokens did not grow with the "
                "prompt (give --tokenizer to size prompts by the model's tokenizer)",
                "tokens_per_word": 1.0,
            }
        else:
            maker = PromptMaker(seed=spec.seed, tokens_per_word=per_word)
            sizing = {"prompt_sizing": "server usage", "tokens_per_word": per_word, "template_tokens": overhead}
    if spec.trace_file is not None:
        return read_trace(spec.trace_file, maker, limit=spec.num_prompts, on_progress=on_progress), sizing
    sessions = synthetic_sessions(
        num_prompts=spec.num_prompts if spec.num_prompts is not None else SYNTHETIC_PROMPTS,
        input_tokens=spec.input_tokens,
        output_tokens=spec.output_tokens,
        turns=spec.turns,
        prefix_tokens=spec.prefix_tokens,
        prefix_groups=spec.prefix_groups,
        maker=maker,
        on_progress=on_progress,
    )
    return sessions, sizing


def check_load(concurrency: int | None, rate: float | None) -> None:
    """Refuse a closed-loop concurrency below 1, or an open-loop rate that is not a positive number.

    Raises:
        BenchInputError: Naming the option and the value.
    """
    if concurrency is not None and concurrency < 1:
        raise BenchInputError(f"--concurrency must be at least 1, not {concurrency}")
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise BenchInputError(f"--rate must be a positive number of requests per second, not {rate}")


def check_rate_span(sessions: int | None, rate: float | None) -> None:
    """Refuse an open-loop rate that spreads the sessions' starts over more than a day, as a trace may span.

    The arrivals are rescaled so the last starts at `sessions / rate` (`poisson_arrivals`): `--rate 0.0001` with
    100 requests waited 11.6 days, with nothing said.

    Raises:
        BenchInputError: Naming the rate, the sessions and how long their starts would take.
    """
    if rate is None or sessions is None or sessions / rate <= MAX_TRACE_SECONDS:
        return
    span = sessions / rate
    raise BenchInputError(
        f"--rate {rate:g} starts {sessions:,} sessions over {span / 3600:,.1f} h ({span / 86400:,.1f} days; the last "
        f"at sessions / rate), beyond the day a run may take: raise --rate (requests per second), or lower -n"
    )


async def run(
    endpoint: Endpoint,
    sessions: list[Session],
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    seed: int = 0,
    goodput_ms: dict[str, float] | None = None,
    cost: Cost | None = None,
    on_done: Callable[[RequestRecord], None] | None = None,
    initial_test: bool = True,
    tokenizer: Tokenizer | None = None,
    stop: asyncio.Event | None = None,
) -> RunResult:
    """Send the sessions and measure.

    Closed loop: `concurrency` requests in flight at most and no rate. Open loop: sessions start at Poisson
    arrivals of `rate` per second (optionally capped by `concurrency`, as vLLM's --max-concurrency), or at the
    trace's times when the sessions carry them. Turns of a session go one after another, each with the
    conversation so far, and never before the trace's time for them.

    The run is set up as `vllm bench serve` sets up its own (vllm/benchmarks/serve.py `benchmark`), so the two
    clients' figures compare: one untimed request with the first prompt before the clock starts (vLLM's
    "initial single prompt test run": the first timed wave does not pay for a cold connection or a server's
    first-request work), a connection pool as large as the concurrency, and every request named by an
    `x-request-id` header. The duration runs from the first request's dispatch to the last answer's end. (vLLM
    also freezes the garbage collector's heap before its run; that is left out here: with a server in the same
    process, as in the tests, a frozen heap of 670,000 objects made new connections 0.1 s slower.)

    Args:
        endpoint: Where to send.
        sessions: What to send.
        concurrency: Most requests in flight, or None for no limit.
        rate: Sessions started per second (Poisson), or None to start them all at once (or by the trace).
        seed: Seed of the arrivals.
        goodput_ms: SLOs for goodput.
        cost: GPUs and price behind the endpoint.
        on_done: Called after each request (the progress bar).
        initial_test: Send the untimed first request (a failure does not stop the run: its own requests then
            fail and are counted by kind).
        tokenizer: The served model's tokenizer, to count the output tokens of answers that came without
            `usage` (after the clock stops, as vLLM does; reasoning and tool calls too, which vLLM leaves out);
            None counts their token events.
        stop: Set to end the run early (Ctrl-C): the clock stops, requests in flight are dropped, and the report
            covers the requests that finished, with `interrupted` true and the dropped ones' count.

    Returns:
        The report and every finished request's record.
    """
    check_load(concurrency, rate)
    check_rate_span(len(sessions), rate)
    starts = poisson_arrivals(len(sessions), rate, seed) if rate else [s.start for s in sessions]
    limit = asyncio.Semaphore(concurrency) if concurrency else None
    records: list[RequestRecord] = []
    texts: dict[int, list[str]] = {}
    run_id = f"tokenplane-bench-{uuid.uuid4().hex[:8]}"
    connector = aiohttp.TCPConnector(
        limit=concurrency or 0, limit_per_host=concurrency or 0, force_close=False, ssl=endpoint.tls()
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        if initial_test and sessions and sessions[0].turns:
            first = sessions[0].turns[0]
            probe = RequestRecord(
                index=-1, session=None, turn=0, start=0.0, input_tokens_target=first.input_tokens,
                output_tokens_target=first.output_tokens,
            )  # fmt: skip
            await chat(http, endpoint, [{"role": "user", "content": first.text}], probe, time.perf_counter())
        zero = time.perf_counter()
        send = asyncio.ensure_future(
            _send_all(http, endpoint, sessions, starts, rate, limit, records, texts, zero, run_id, on_done)
        )
        interrupted = False
        if stop is not None:
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({send, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not send.done():
                interrupted = True
                send.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await send
        if not interrupted:
            await send  # the run's own exceptions, if any
        duration = time.perf_counter() - zero
    # A request cut off by the stop has no outcome: it neither completed nor failed.
    dropped = [r for r in records if not r.success and r.error_kind is None]
    not_sent = sum(len(s.turns) for s in sessions) - len(records)
    records = [r for r in records if r.success or r.error_kind is not None]
    if tokenizer is not None:
        for record in records:
            if record.success and record.completion_tokens is None:
                # Each kind of output on its own, as the server's parsers split it: content, reasoning, tool calls.
                pieces = texts[record.index]
                record.text_tokens = sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in pieces if t)

    records.sort(key=lambda r: r.start)
    report = summarize(records, duration, goodput_ms=goodput_ms, cost=cost)
    report.update(
        {
            "base_url": endpoint.base_url,
            "model": endpoint.model,
            "max_concurrency": concurrency,
            "request_rate": rate if rate is not None else "inf",
            "interrupted": interrupted,
            "dropped_in_flight": len(dropped),
            # Turns never sent: later turns of a session whose earlier turn failed, and all left at a stop.
            "not_sent": not_sent,
        }
    )
    return RunResult(report=report, records=records)


async def _send_all(
    http: aiohttp.ClientSession,
    endpoint: Endpoint,
    sessions: list[Session],
    starts: list[float],
    rate: float | None,
    limit: asyncio.Semaphore | None,
    records: list[RequestRecord],
    texts: dict[int, list[str]],
    zero: float,
    run_id: str,
    on_done: Callable[[RequestRecord], None] | None,
) -> None:
    """Send every session's turns (see `run`).

    Appends one record per request, and keeps the output of each that came without `usage` (keyed by record
    index: its content, then its reasoning and tool calls, see `Reply.other_output`) for counting its tokens later.
    """

    async def one_session(session: Session, start_at: float) -> None:
        messages: list[dict[str, str]] = []
        conversation = 0  # content tokens of the conversation so far (whole-prompt turns)
        for number, turn in enumerate(session.turns):
            due = turn.arrival if turn.arrival is not None and rate is None else start_at if number == 0 else 0
            delay = zero + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            text = turn.text
            if turn.whole_prompt and messages and session.shorten is not None:
                if turn.input_tokens > conversation:  # the new message is what the conversation leaves
                    text = session.shorten(turn.text, turn.input_tokens - conversation)
                else:  # a context shorter than the conversation (truncated, compacted): start afresh
                    messages = []
            messages.append({"role": "user", "content": text})
            # The record is made once the concurrency limit lets the request go: one still queued at a stop was
            # never sent, and is counted as such (`not_sent`), not as dropped in flight.
            gate: contextlib.AbstractAsyncContextManager[Any] = limit if limit is not None else contextlib.nullcontext()
            async with gate:
                record = RequestRecord(
                    index=len(records),
                    session=session.id,
                    turn=number,
                    start=0.0,
                    input_tokens_target=turn.input_tokens,
                    output_tokens_target=turn.output_tokens,
                )
                records.append(record)
                reply = await chat(http, endpoint, list(messages), record, zero, f"{run_id}-{record.index}")
            if record.completion_tokens is None:
                texts[record.index] = [reply.text, *reply.other_output]
            if on_done is not None:
                on_done(record)
            if not record.success:
                return  # the conversation cannot go on without its answer
            messages.append({"role": "assistant", "content": reply.text})
            # In content tokens, as the workload sizes prompts (the chat template's own tokens come on top, alike
            # for every turn): a whole-prompt turn's content, and the answer.
            conversation = turn.input_tokens + record.output_tokens

    await asyncio.gather(*(one_session(s, t) for s, t in zip(sessions, starts, strict=True)))


def run_sync(
    endpoint: Endpoint,
    spec: WorkloadSpec,
    *,
    concurrency: int | None,
    rate: float | None,
    goodput_ms: dict[str, float] | None = None,
    cost: Cost | None = None,
    on_prepare: Progress | None = None,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> RunResult:
    """Build the workload and run it (one event loop).

    `on_prepare` gets (prompts made, prompts in all) while the prompts are made, `on_start` the number of requests
    once they are, `on_done` each request's record.
    """

    async def main() -> RunResult:
        stop = _stop_on_ctrl_c()
        tokenizer = load_tokenizer(spec.tokenizer) if spec.tokenizer else None
        sessions, sizing = await build_sessions(spec, endpoint, tokenizer, on_prepare)
        if stop.is_set():
            raise KeyboardInterrupt
        if on_start is not None:
            on_start(sum(len(s.turns) for s in sessions))
        result = await run(
            endpoint,
            sessions,
            concurrency=concurrency,
            rate=rate,
            seed=spec.seed,
            goodput_ms=goodput_ms,
            cost=cost,
            on_done=on_done,
            tokenizer=tokenizer,
            stop=stop,
        )
        result.report.update({"workload": spec.describe() | sizing})
        return result

    return asyncio.run(main())


def _stop_on_ctrl_c() -> asyncio.Event:
    """Make an event the first Ctrl-C sets (the run then reports what finished); a second one interrupts at once.

    Without it asyncio cancels the run and every figure measured so far is lost. Only the main thread can take
    the signal; elsewhere the event is never set.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):  # a process that ignores it (a background job)
        return stop

    def first() -> None:
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)  # back to KeyboardInterrupt for a second Ctrl-C

    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread; no signals
        loop.add_signal_handler(signal.SIGINT, first)
    return stop
