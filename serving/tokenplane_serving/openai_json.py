"""Rules on OpenAI request bodies that the online server and batch input files both apply (pure: no I/O)."""

from __future__ import annotations

from typing import Any

__all__ = ["json_type", "non_boolean_flag"]


def json_type(value: Any) -> str:
    """Name a parsed JSON value's type as OpenAI's errors do ("a string", "an integer", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    names = ((str, "a string"), (int, "an integer"), (float, "a number"), (list, "an array"), (dict, "an object"))
    return next((name for kind, name in names if isinstance(value, kind)), type(value).__name__)


def non_boolean_flag(body: Any) -> tuple[str, Any] | None:
    """Find a streaming flag that is not a JSON boolean (or null), as OpenAI refuses it.

    vLLM's pydantic models coerce `"false"`, `"no"`, `0` and `1` to booleans, while the features here (the
    response cache, the hold at zero, batch input lines) read the JSON value as sent: `"false"` is truthy, so one
    request was a stream to one reader and not to another.

    Args:
        body: A parsed request body (anything JSON holds).

    Returns:
        The flag's path (`stream` or `stream_options.include_usage`) and its value; None when both are fine.
    """
    if not isinstance(body, dict):
        return None
    options = body.get("stream_options")
    flags = [("stream", body.get("stream"))]
    if isinstance(options, dict):
        flags.append(("stream_options.include_usage", options.get("include_usage")))
    return next(((param, value) for param, value in flags if value is not None and not isinstance(value, bool)), None)
