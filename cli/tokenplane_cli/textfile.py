"""Read a user's file as UTF-8 text, with a one-line error that names the file: one rule for every reader."""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_utf8"]


def read_utf8(path: Path, error: type[ValueError], save_as: str, prefix: str = "") -> str:
    """Return the file's text, without a leading byte-order mark.

    Args:
        path: The file.
        error: The caller's one-line error type (each command reports its own).
        save_as: What the file should be saved as, for the hint: "UTF-8 YAML", "UTF-8 JSONL".
        prefix: Put before the path, e.g. the option that named it ("--trace-file ").

    Raises:
        error: Unreadable, or not UTF-8 (with the first bad byte and its offset).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{prefix}{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")  # a leading byte-order mark (Windows editors write one) is no content
    except UnicodeDecodeError as exc:
        raise error(
            f"{prefix}{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as {save_as}"
        ) from None
