"""What a benchmark sends: sessions of turns with set token counts, and when each arrives.

Prompt token counts are real: with the served model's tokenizer a prompt is cut to exactly the number of tokens
asked for; without it, `calibrate` measures the server's own count (`usage.prompt_tokens`) and sizes prompts by it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from tokenplane_cli.tracefile import MAX_TRACE_SECONDS, read_trace_lines

__all__ = [
    "MAX_TRACE_SECONDS",
    "BenchInputError",
    "Progress",
    "PromptMaker",
    "Session",
    "Tokenizer",
    "Turn",
    "load_tokenizer",
    "poisson_arrivals",
    "read_trace",
    "synthetic_sessions",
]

# Common English words: prompts made of them tokenize like text, and random draws make every prompt unique
# (no accidental prefix-cache hits unless the workload asks for a shared prefix).
_WORD_TEXT = (
    "time year people way day man thing woman life child world school state family student group country problem "
    "hand part place case week company system program question work government number night point home water room "
    "mother area money story fact month lot right study book eye job word business issue side kind head house "
    "service friend father power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war history party result "
    "change morning reason research girl guy moment air teacher force education foot boy age policy music market "
    "sense nation plan college interest death experience effect use class control care field development role "
    "effort rate heart drug show leader light voice wife police mind price report decision son view relationship "
    "town road arm difference value building action model season society tax director position player record paper "
    "space ground form event official matter center couple site project activity star table need court oil situation "
    "cost industry figure street image phone data picture practice piece land product doctor wall patient worker news "
    "test movie north love support technology step baby computer type attention film tree source organization hair "
    "window evidence population river"
)
_WORDS = tuple(_WORD_TEXT.split())


# Prompts made between two progress reports: often enough for a bar, seldom enough to cost nothing.
PROGRESS_EVERY = 500

Progress = Callable[[int, int], None]


class BenchInputError(ValueError):
    """Bad benchmark input (a flag, a trace line, a tokenizer path): the message says what to fix."""


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer that prompts need."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]:
        """Token ids of `text`."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`."""
        ...


def load_tokenizer(path: str) -> Tokenizer:
    """Load the served model's tokenizer from a local directory or a Hugging Face id.

    Args:
        path: A model directory (with tokenizer.json or similar) or a hub id.

    Returns:
        The tokenizer.

    Raises:
        BenchInputError: when transformers is missing or the tokenizer cannot be loaded.
    """
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise BenchInputError(
            "--tokenizer needs the `transformers` package (pip install transformers), or leave --tokenizer out "
            "to size prompts by the server's own token counts"
        ) from None
    try:
        loaded: Any = AutoTokenizer.from_pretrained(path)
        return cast(Tokenizer, loaded)
    except Exception as err:  # transformers raises OSError, ValueError and more for a bad path
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BenchInputError(f"--tokenizer {path}: cannot load a tokenizer there ({first})") from None


@dataclass
class PromptMaker:
    """Makes prompt text of a set token count.

    Attributes:
        seed: Seed of the word draws (the same seed makes the same prompts).
        tokenizer: The served model's tokenizer; None to size by `tokens_per_word`.
        tokens_per_word: Tokens one word adds, as the server counted (see `calibrate` in the runner).
    """

    seed: int = 0
    tokenizer: Tokenizer | None = None
    tokens_per_word: float = 1.0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def words(self, count: int) -> str:
        """`count` random words."""
        # One draw of k (not k draws of one): 5x faster, which a trace of 200,000 lines of ~1,000 tokens needs
        # (102 s to read before, 160 million words).
        return " ".join(self._rng.choices(_WORDS, k=max(0, count)))

    def shorten(self, text: str, tokens: int) -> str:
        """Cut `text` (made by `text`) to its first `tokens` tokens (exactly with a tokenizer, else about)."""
        if self.tokenizer is None:
            return " ".join(text.split()[: max(1, round(tokens / self.tokens_per_word))])
        return self.tokenizer.decode(self.tokenizer.encode(text, add_special_tokens=False)[: max(1, tokens)])

    def text(self, tokens: int) -> str:
        """Text of `tokens` tokens (exactly, with a tokenizer; by the calibrated rate without one)."""
        if tokens <= 0:
            return ""
        if self.tokenizer is None:
            return self.words(max(1, round(tokens / self.tokens_per_word)))
        tok = self.tokenizer
        text = self.words(tokens * 2)
        # Decoding a cut token list and re-encoding it can merge tokens at the cut; a few rounds settle it.
        for _ in range(8):
            ids = tok.encode(text, add_special_tokens=False)
            if len(ids) == tokens:
                return text
            text = tok.decode(ids[:tokens]) if len(ids) > tokens else text + " " + self.words(tokens - len(ids))
        return text


@dataclass
class Turn:
    """One request of a session.

    Attributes:
        input_tokens: New prompt content tokens of this turn (a shared prefix included on the first turn); for a
            trace's turn (`whole_prompt`), the whole prompt, the conversation before it included.
        output_tokens: max_tokens of the answer.
        arrival: Seconds after the start when it may be sent (traces), or None to follow the previous turn.
        text: The new user message (filled by `PromptMaker`; for a `whole_prompt` turn after the first, cut at
            send time to what the conversation leaves of `input_tokens`).
        whole_prompt: `input_tokens` counts the whole prompt, as `tokenplane simulate` reads a trace line.
    """

    input_tokens: int
    output_tokens: int
    arrival: float | None = None
    text: str = ""
    whole_prompt: bool = False


@dataclass
class Session:
    """Turns sent one after another, each with the whole conversation so far.

    Attributes:
        id: Session id (the trace's `session` as written, a string or a number; or a generated one).
        turns: The turns, in order.
        start: Seconds after the run starts when the first turn may be sent.
        shorten: Cuts a turn's text to a number of tokens (`PromptMaker.shorten`), for `whole_prompt` turns.
    """

    id: str | int
    turns: list[Turn]
    start: float = 0.0
    shorten: Callable[[str, int], str] | None = None


def synthetic_sessions(
    *,
    num_prompts: int,
    input_tokens: int,
    output_tokens: int,
    turns: int = 1,
    prefix_tokens: int = 0,
    prefix_groups: int = 1,
    maker: PromptMaker,
    on_progress: Progress | None = None,
) -> list[Session]:
    """Sessions of synthetic prompts: `num_prompts` requests in all, `turns` per session.

    Args:
        num_prompts: Requests in all (rounded up to whole sessions).
        input_tokens: Content tokens of each turn's user message (prefix included).
        output_tokens: max_tokens of each answer.
        turns: Turns per session (1: independent requests).
        prefix_tokens: Tokens of a prefix shared by the first turns of sessions in the same group (0: none).
        prefix_groups: How many distinct shared prefixes there are; sessions take them round-robin.
        maker: Makes the text.
        on_progress: Called with (prompts made, prompts in all) as the prompts are made.

    Returns:
        The sessions, each starting at 0 (arrivals are set later).
    """
    if num_prompts < 1 or input_tokens < 1 or output_tokens < 1 or turns < 1:
        raise BenchInputError("--num-prompts, --input-tokens, --output-tokens and --turns must be at least 1")
    if prefix_tokens >= input_tokens:
        raise BenchInputError(
            f"--prefix-tokens ({prefix_tokens}) must be below --input-tokens ({input_tokens}): the prefix is "
            "part of the prompt"
        )
    if prefix_groups < 1:
        raise BenchInputError("--prefix-groups must be at least 1")
    prefixes = [maker.text(prefix_tokens) for _ in range(prefix_groups)] if prefix_tokens else []
    sessions = []
    count = -(-num_prompts // turns)
    for s in range(count):
        session = Session(id=f"s{s}", turns=[])
        for t in range(turns):
            turn = Turn(input_tokens=input_tokens, output_tokens=output_tokens)
            if t == 0 and prefixes:
                turn.text = prefixes[s % prefix_groups] + " " + maker.text(input_tokens - prefix_tokens)
            else:
                turn.text = maker.text(input_tokens)
            session.turns.append(turn)
            if on_progress is not None and (s * turns + t + 1) % PROGRESS_EVERY == 0:
                on_progress(s * turns + t + 1, count * turns)
        sessions.append(session)
    if on_progress is not None:
        on_progress(count * turns, count * turns)
    return sessions


def read_trace(
    path: Path, maker: PromptMaker, limit: int | None = None, on_progress: Progress | None = None
) -> list[Session]:
    """Sessions from a trace file: JSONL lines `{"t", "input_tokens", "output_tokens", "session"?}`, or Azure's CSV.

    The formats are `tokenplane_cli.tracefile`'s.

    `t` is the arrival in seconds after the start; lines of one session become its turns in order of `t`. As in
    `tokenplane simulate`, `input_tokens` is a request's whole prompt: a later turn of a session resends the
    conversation so far, and its new message is what that leaves of `input_tokens` (the runner cuts it). Times are
    shifted so the first request goes at once: a trace's quiet lead-in is not waited through, nor counted in the
    run's duration.

    Args:
        path: The trace file.
        maker: Makes the text.
        limit: Replay only the first `limit` requests by `t` (`--num-prompts`, as vLLM takes the first N of a
            dataset; a session keeps its turns up to there), or all.
        on_progress: Called with (prompts made, prompts in all) as the prompts are made (a 200,000-line trace of
            ~1,000-token prompts takes about 30 s).

    Returns:
        The sessions, ordered by their first arrival.

    Raises:
        BenchInputError: naming the file, line and field of the first bad line, or a limit below 1.
    """
    if limit is not None and limit < 1:
        raise BenchInputError(f"--num-prompts must be at least 1, not {limit}")
    # Keyed by the id as the trace writes it (`1` and `"1"` are two sessions); a line without one is a session of
    # its own, named after its line, which a trace's session "line4" does not join.
    by_session: dict[str | int | tuple[str, int], list[Turn]] = {}
    lines = read_trace_lines(path, BenchInputError, prefix="--trace-file ")
    if limit is not None:
        lines = sorted(lines, key=lambda line: (line.t, line.number))[:limit]
    first = min(line.t for line in lines)
    for line in lines:
        key = line.session if line.session is not None else ("line", line.number)
        turn = Turn(line.input_tokens, line.output_tokens, arrival=line.t - first, whole_prompt=True)
        by_session.setdefault(key, []).append(turn)
    sessions = []
    made = 0
    for sid, turns in by_session.items():
        turns.sort(key=lambda turn: turn.arrival or 0.0)
        for turn in turns:
            turn.text = maker.text(turn.input_tokens)
            made += 1
            if on_progress is not None and made % PROGRESS_EVERY == 0:
                on_progress(made, len(lines))
        name = f"line{sid[1]}" if isinstance(sid, tuple) else sid
        sessions.append(Session(id=name, turns=turns, start=turns[0].arrival or 0.0, shorten=maker.shorten))
    if on_progress is not None:
        on_progress(made, len(lines))
    return sorted(sessions, key=lambda s: s.start)


def poisson_arrivals(
    count: int, rate: float, seed: int = 0, draw: Callable[[float], float] | None = None
) -> list[float]:
    """Arrival times of a Poisson process (exponential gaps), rescaled so the last lands at `count / rate`.

    vLLM rescales the same way so runs with different seeds send the same total in the same time.

    Args:
        count: How many arrivals.
        rate: Arrivals per second.
        seed: Seed of the gaps.
        draw: Gap sampler taking the rate (tests); exponential by default.

    Returns:
        Non-decreasing times in seconds, the first after 0.
    """
    if rate <= 0:
        raise BenchInputError(f"--rate must be positive, not {rate}")
    rng = random.Random(seed)
    sample = draw or rng.expovariate
    times, now = [], 0.0
    for _ in range(count):
        now += sample(rate)
        times.append(now)
    if times and times[-1] > 0:
        scale = (count / rate) / times[-1]
        times = [t * scale for t in times]
    return times
