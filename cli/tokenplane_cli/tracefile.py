"""The JSONL trace format `tokenplane bench --trace-file` and `tokenplane simulate --trace-file` both replay.

One request per line: `{"t": seconds after the trace's start, "input_tokens": n, "output_tokens": m, "session":
optional}`. Blank lines are skipped. One reader, so a file one command accepts the other accepts too, and reads its
sessions alike: a session id is a string or a whole number, kept as written, so `1` and `"1"` are two sessions (as
they are two JSON values).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from tokenplane_cli.textfile import read_utf8

__all__ = ["MAX_REQUEST_TOKENS", "MAX_TRACE_SECONDS", "TraceLine", "read_trace_lines"]

# A day: `t` counts from the trace's start; a Unix time there (decades) would wait, or simulate, forever.
MAX_TRACE_SECONDS = 86_400
# The longest context of any model the planner knows (Llama 4 Scout's 10M): bench writes a prompt's words before
# sending it, and 100 billion of them filled memory for minutes instead of failing.
MAX_REQUEST_TOKENS = 10_485_760


@dataclass(frozen=True)
class TraceLine:
    """One request of a trace file.

    Attributes:
        number: Its line in the file (1-based).
        t: Arrival, seconds after the trace's start.
        input_tokens: Prompt tokens.
        output_tokens: Tokens to generate.
        session: The conversation it belongs to, if the line names one: a string, or a whole number (never equal to
            a string: `1` and `"1"` are two sessions).
    """

    number: int
    t: float
    input_tokens: int
    output_tokens: int
    session: str | int | None


def read_trace_lines(path: Path, error_type: type[ValueError], prefix: str = "") -> list[TraceLine]:
    """Read and check every line of a trace file, in file order.

    Args:
        path: The JSONL file.
        error_type: The exception the caller reports as a one-line error.
        prefix: Put before the path where the message names the file only (e.g. the option it came from).

    Returns:
        The requests, at least one.

    Raises:
        error_type: Naming the file, the line and the field of the first bad line: unreadable, not UTF-8, not a
            JSON object, a count that is not a whole number from 1 to `MAX_REQUEST_TOKENS`, `t` not a finite
            number of seconds within `MAX_TRACE_SECONDS` of the start, a session that is neither a string nor a
            whole number; or a file without requests.
    """
    out = []
    for number, line in enumerate(read_utf8(path, error_type, "UTF-8 JSONL", prefix=prefix).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise error_type(f"{where}: not JSON ({err.msg})") from None
        except ValueError as err:  # an integer of more digits than Python converts
            raise error_type(f"{where}: not JSON we can read ({err})") from None
        if not isinstance(row, dict):
            raise error_type(f"{where}: expected an object with t, input_tokens, output_tokens")
        values = {}
        for key, low in (("t", 0), ("input_tokens", 1), ("output_tokens", 1)):
            value = row.get(key)
            # JSON's NaN and Infinity (and 1e400) are floats too: int() of them raises, a wait for them never ends.
            if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value) or value < low:
                shown = repr(value)
                shown = shown if len(shown) <= 40 else f"{shown[:20]}... ({len(shown)} characters)"
                raise error_type(f"{where}: {key} must be a number >= {low}, not {shown}")
            if key != "t" and value != int(value):
                raise error_type(f"{where}: {key} must be a whole number of tokens, not {value!r}")
            if key != "t" and value > MAX_REQUEST_TOKENS:
                raise error_type(
                    f"{where}: {key} is {value:,.0f}, beyond the {MAX_REQUEST_TOKENS:,} tokens of the longest "
                    "context any model has: no server takes such a request"
                )
            values[key] = value
        if values["t"] > MAX_TRACE_SECONDS:
            raise error_type(
                f"{where}: t is {values['t']:,.0f} s, beyond the {MAX_TRACE_SECONDS:,} s (one day) a trace may span; "
                "t counts seconds from the trace's start, not a Unix time: subtract the first request's time, "
                "or split the trace by day"
            )
        out.append(
            TraceLine(
                number,
                float(values["t"]),
                int(values["input_tokens"]),
                int(values["output_tokens"]),
                _session(row.get("session"), where, error_type),
            )
        )
    if not out:
        raise error_type(f"{prefix}{path}: no requests in it")
    return out


def _session(value: object, where: str, error_type: type[ValueError]) -> str | int | None:
    """Return a line's session id as written (str() made `1` and `"1"` one session, and `true` the session "True")."""
    if value is None or isinstance(value, str):
        return value
    # 2.0 is the JSON number 2 written another way; bool is an int subclass, and no id.
    if isinstance(value, int | float) and not isinstance(value, bool) and _finite(value) and value == int(value):
        return int(value)
    shown = json.dumps(value)
    shown = shown if len(shown) <= 40 else f"{shown[:20]}... ({len(shown)} characters)"
    raise error_type(f"{where}: session must be a string or a whole number, not {shown}")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond a float's range (1 followed by 400 zeros, written out)
        return False
