"""The trace formats `tokenplane bench --trace-file` and `tokenplane simulate --trace-file` both replay.

JSONL, one request per line: `{"t": seconds after the trace's start, "input_tokens": n, "output_tokens": m,
"session": optional}`. Blank lines are skipped. Or Azure's public LLM inference traces as published
(github.com/Azure/AzurePublicDataset, `AzureLLMInferenceTrace_conv.csv` and `_code.csv`, and the 2024 ones split by
day): CSV under the header `TIMESTAMP,ContextTokens,GeneratedTokens`, wall-clock times such as
`2023-11-16 18:15:46.6805900`, replayed from the earliest of them. One reader, so a file one command accepts the
other accepts too, and reads its sessions alike: a session id is a string or a whole number, kept as written, so `1`
and `"1"` are two sessions (as they are two JSON values).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path

from tokenplane_cli.textfile import read_utf8

__all__ = ["AZURE_TRACE_COLUMNS", "MAX_REQUEST_TOKENS", "MAX_TRACE_SECONDS", "TraceLine", "read_trace_lines"]

# The header of Azure's public LLM inference traces, and the fields its columns are.
AZURE_TRACE_COLUMNS = {"TIMESTAMP": "t", "ContextTokens": "input_tokens", "GeneratedTokens": "output_tokens"}
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
    """Read and check every line of a trace file (JSONL, or Azure's CSV), in file order.

    Args:
        path: The trace file.
        error_type: The exception the caller reports as a one-line error.
        prefix: Put before the path where the message names the file only (e.g. the option it came from).

    Returns:
        The requests, at least one.

    Raises:
        error_type: Naming the file, the line and the field of the first bad line: unreadable, not UTF-8, not a
            JSON object (or a CSV row of Azure's three columns), a field missing, a count that is not a whole number
            from 1 to `MAX_REQUEST_TOKENS`, `t` not a finite number of seconds within `MAX_TRACE_SECONDS` of the
            start, a session that is neither a string nor a whole number; or a file without requests.
    """
    lines = read_utf8(path, error_type, "UTF-8 JSONL", prefix=prefix).splitlines()
    header = next((number for number, line in enumerate(lines) if line.strip()), None)
    if header is not None and [column.strip() for column in lines[header].split(",")] == list(AZURE_TRACE_COLUMNS):
        azure, rows = True, _azure_rows(path, lines, header, error_type)
    else:
        azure, rows = False, _jsonl_rows(path, lines, error_type)
    out = []
    for number, row in rows:
        where = f"{path}:{number}"
        checked = _checked(row, where, error_type, azure=azure)
        out.append(TraceLine(number, *checked, _session(row.get("session"), where, error_type)))
    if not out:
        raise error_type(f"{prefix}{path}: no requests in it")
    return out


def _jsonl_rows(path: Path, lines: list[str], error_type: type[ValueError]) -> list[tuple[int, dict[str, object]]]:
    rows = []
    for number, line in enumerate(lines, start=1):
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
        missing = [key for key in ("t", "input_tokens", "output_tokens") if key not in row]
        if missing:
            fields = ", ".join(map(str, row))
            fields = fields if len(fields) <= 60 else f"{fields[:57]}..."
            raise error_type(
                f"{where}: no {', '.join(missing)} (the line has {fields or 'no field'}); a trace line is "
                '{"t": seconds from the start, "input_tokens": n, "output_tokens": m}'
            )
        rows.append((number, row))
    return rows


def _azure_rows(
    path: Path, lines: list[str], header: int, error_type: type[ValueError]
) -> list[tuple[int, dict[str, object]]]:
    """Azure's CSV rows as trace fields: `t` in seconds from the earliest `TIMESTAMP`, the counts as written."""
    stamped = []
    for index, fields in enumerate(csv.reader(lines[header + 1 :]), start=header + 2):
        if not any(field.strip() for field in fields):
            continue
        where = f"{path}:{index}"
        if len(fields) != len(AZURE_TRACE_COLUMNS):
            raise error_type(f"{where}: expected {len(AZURE_TRACE_COLUMNS)} columns ({','.join(AZURE_TRACE_COLUMNS)})")
        when, context, generated = (field.strip() for field in fields)
        try:
            stamp = dt.datetime.fromisoformat(when)
        except ValueError:
            shown = when if len(when) <= 40 else f"{when[:20]}... ({len(when)} characters)"
            raise error_type(
                f"{where}: TIMESTAMP must be a time such as 2023-11-16 18:15:46.68, not {shown!r}"
            ) from None
        stamp = stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=dt.UTC)  # the dataset's times are UTC
        row = {"input_tokens": _count(context), "output_tokens": _count(generated)}
        stamped.append((index, stamp, row))
    if not stamped:
        return []
    first = min(stamp for _, stamp, _ in stamped)
    return [(index, {**row, "t": (stamp - first).total_seconds()}) for index, stamp, row in stamped]


def _count(text: str) -> object:
    """Return a CSV count as the number it is (checked as a JSON number is), or the text when it is none."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _checked(
    row: dict[str, object], where: str, error_type: type[ValueError], *, azure: bool
) -> tuple[float, int, int]:
    """Return a request's `t`, `input_tokens`, `output_tokens`, each checked (named as the file names it)."""
    names = {field: column for column, field in AZURE_TRACE_COLUMNS.items()} if azure else {}
    values = {}
    for key, low in (("t", 0), ("input_tokens", 1), ("output_tokens", 1)):
        value, name = row.get(key), names.get(key, key)
        # JSON's NaN and Infinity (and 1e400) are floats too: int() of them raises, a wait for them never ends.
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value) or value < low:
            shown = repr(value)
            shown = shown if len(shown) <= 40 else f"{shown[:20]}... ({len(shown)} characters)"
            raise error_type(f"{where}: {name} must be a number >= {low}, not {shown}")
        if key != "t" and value != int(value):
            raise error_type(f"{where}: {name} must be a whole number of tokens, not {value!r}")
        if key != "t" and value > MAX_REQUEST_TOKENS:
            raise error_type(
                f"{where}: {name} is {value:,.0f}, beyond the {MAX_REQUEST_TOKENS:,} tokens of the longest "
                "context any model has: no server takes such a request"
            )
        values[key] = value
    t = float(values["t"])
    if t > MAX_TRACE_SECONDS:
        shown = f"{t:,.0f}" if t < 1e15 else f"{t:.3g}"
        what, hint = (
            (f"TIMESTAMP is {shown} s after the earliest", "split the trace by day")
            if azure
            else (
                f"t is {shown} s",
                "t counts seconds from the trace's start, not a Unix time: subtract the first request's time, "
                "or split the trace by day",
            )
        )
        raise error_type(f"{where}: {what}, beyond the {MAX_TRACE_SECONDS:,} s (one day) a trace may span; {hint}")
    return t, int(values["input_tokens"]), int(values["output_tokens"])


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
