"""OpenAI Batch API shapes and the rules of a batch input file (pure: no I/O, no Ray).

The shapes follow OpenAI's API reference (File, Batch, the batch input and output line formats), so the
official `openai` client parses them unchanged.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tokenplane_serving.openai_json import json_type, non_boolean_flag

__all__ = [
    "ACTIVE_STATUSES",
    "COMPLETION_WINDOWS",
    "MAX_REQUESTS",
    "SUPPORTED_ENDPOINTS",
    "TERMINAL_STATUSES",
    "BatchRequest",
    "LineError",
    "ParsedInput",
    "batch_object",
    "count_requests",
    "error_line",
    "file_object",
    "new_id",
    "output_line",
    "parse_input",
    "reported_errors",
]

SUPPORTED_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
COMPLETION_WINDOWS = ("24h",)
# OpenAI's per-batch limit; also bounds the queue one upload can create.
MAX_REQUESTS = 50_000
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
ACTIVE_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
_MAX_REPORTED_ERRORS = 100  # batch.errors lists the first ones; the error file has them all


def new_id(prefix: str) -> str:
    """Make a fresh object id in OpenAI's style (`file-...`, `batch_...`, `batch_req_...`)."""
    return f"{prefix}{uuid.uuid4().hex}"


@dataclass(frozen=True)
class BatchRequest:
    """One valid input line.

    Attributes:
        line: 1-based line number in the input file.
        custom_id: The caller's id, echoed in the output.
        body: The request body sent to `url`.
    """

    line: int
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LineError:
    """An input line that cannot run, with the reason a user can act on."""

    line: int
    custom_id: str | None
    code: str
    message: str

    def as_openai(self) -> dict[str, Any]:
        """Return the entry in `batch.errors.data`."""
        return {"code": self.code, "message": self.message, "param": None, "line": self.line}


@dataclass(frozen=True)
class ParsedInput:
    """A batch input file, split into runnable requests and line errors (both in line order)."""

    requests: list[BatchRequest]
    errors: list[LineError]

    @property
    def total(self) -> int:
        """Requests in the file (non-empty lines)."""
        return len(self.requests) + len(self.errors)


def _check_line(line_no: int, text: str, endpoint: str, seen: set[str]) -> BatchRequest | LineError:
    def bad(message: str, custom_id: str | None = None, code: str = "invalid_request") -> LineError:
        return LineError(line_no, custom_id, code, f"line {line_no}: {message}")

    try:
        item = json.loads(text)
    except json.JSONDecodeError as err:
        return bad(f"not valid JSON ({err.msg} at column {err.colno})", code="invalid_json_line")
    if not isinstance(item, dict):
        return bad("each line must be a JSON object with custom_id, method, url and body")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return bad("custom_id must be a non-empty string", code="missing_custom_id")
    if custom_id in seen:
        return bad(f"custom_id {custom_id!r} is used by an earlier line; custom_ids must be unique", custom_id)
    seen.add(custom_id)
    if item.get("method") != "POST":
        return bad(f"method must be 'POST', not {item.get('method')!r}", custom_id)
    url = item.get("url")
    if url != endpoint:
        return bad(f"url {url!r} differs from the batch's endpoint {endpoint!r}", custom_id, "mismatched_url")
    body = item.get("body")
    if not isinstance(body, dict):
        return bad("body must be a JSON object (the request for the endpoint)", custom_id)
    if (wrong := non_boolean_flag(body)) is not None:
        param, value = wrong
        must = "a boolean (false or absent in a batch)" if param == "stream" else "a boolean"
        return bad(f"body.{param} must be {must}, not {json_type(value)}", custom_id, "invalid_type")
    if body.get("stream") is True:
        return bad("streaming is not available in a batch; remove body.stream", custom_id)
    return BatchRequest(line_no, custom_id, body)


def _jsonl_lines(data: bytes) -> Iterator[tuple[int, str | LineError]]:
    """Yield a JSONL file's numbered lines: each as text, or an error when it is not UTF-8.

    JSON Lines records end at LF only (CR LF is tolerated). Not `str.splitlines()`: it also breaks at
    U+2028, U+2029, U+0085 and other characters that JSON strings may hold unescaped (`json.dumps(...,
    ensure_ascii=False)` writes them so), which cut one request in two and shifted every later line number.
    A UTF-8 byte order mark at the file's start (Windows editors write one) is not part of the first line.
    """
    for line_no, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        try:
            yield line_no, raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as err:
            message = f"line {line_no}: not UTF-8 (byte {err.start + 1} of the line); save the file as UTF-8"
            yield line_no, LineError(line_no, None, "invalid_json_line", message)


def count_requests(data: bytes) -> int:
    """Count a batch input file's requests as `parse_input` does: its non-blank lines."""
    return sum(1 for _, line in _jsonl_lines(data) if not isinstance(line, str) or line.strip())


def parse_input(data: bytes, endpoint: str, *, max_requests: int = MAX_REQUESTS) -> ParsedInput:
    """Split a batch input file (JSONL) into runnable requests and per-line errors.

    Lines end at LF (a CR before it and a BOM at the file's start are ignored); blank lines are
    skipped. A line is runnable when it is a JSON object with a unique non-empty
    `custom_id`, `method` `POST`, `url` equal to the batch's endpoint and an object `body` without
    `stream`. The request body itself is checked by the engine when the line runs, as OpenAI does.

    Args:
        data: The file's bytes (UTF-8).
        endpoint: The batch's endpoint.
        max_requests: Lines beyond this are errors.

    Returns:
        The runnable requests and the line errors.
    """
    requests: list[BatchRequest] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    for line_no, line in _jsonl_lines(data):
        if isinstance(line, str) and not line.strip():
            continue
        if len(requests) + len(errors) >= max_requests:
            message = f"line {line_no}: over {max_requests} requests"
            errors.append(LineError(line_no, None, "too_many_requests", message))
            continue
        checked = line if isinstance(line, LineError) else _check_line(line_no, line, endpoint, seen)
        (requests if isinstance(checked, BatchRequest) else errors).append(checked)  # type: ignore[arg-type]
    return ParsedInput(requests, errors)


def file_object(file_id: str, *, size: int, created_at: int, filename: str, purpose: str) -> dict[str, Any]:
    """Build an OpenAI File object."""
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": created_at,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def batch_object(
    batch_id: str,
    *,
    endpoint: str,
    input_file_id: str,
    completion_window: str,
    created_at: int,
    metadata: dict[str, str] | None,
    model: str | None = None,
) -> dict[str, Any]:
    """Build a new OpenAI Batch object in status `validating`."""
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "model": model,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": completion_window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created_at,
        "in_progress_at": None,
        "expires_at": created_at + 24 * 3600,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata,
    }


def reported_errors(errors: list[LineError]) -> dict[str, Any] | None:
    """`batch.errors` for the line errors (the first hundred), or None when there are none."""
    if not errors:
        return None
    return {"object": "list", "data": [e.as_openai() for e in errors[:_MAX_REPORTED_ERRORS]]}


def output_line(custom_id: str, status_code: int, body: dict[str, Any], request_id: str) -> dict[str, Any]:
    """One line of the output (2xx) or error (other status) file for a request the engine answered."""
    return {
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body},
        "error": None,
    }


def error_line(custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    """One line of the error file for a request that never reached the engine."""
    error = {"code": code, "message": message}
    return {"id": new_id("batch_req_"), "custom_id": custom_id, "response": None, "error": error}
