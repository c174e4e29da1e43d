"""Read YAML manifests with errors that name the file and line instead of a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Document", "ManifestError", "load_documents"]


class ManifestError(ValueError):
    """A file could not be read or is not YAML."""


@dataclass(frozen=True)
class Document:
    """One YAML document of a file: where it came from and its body."""

    file: Path
    index: int | None  # None when the file holds one document
    body: dict[str, Any]

    @property
    def label(self) -> str:
        """`file` for single documents, `file#N` when the file holds several."""
        return str(self.file) if self.index is None else f"{self.file}#{self.index}"


def load_documents(path: Path) -> list[Document]:
    """Load every non-empty YAML document of a file.

    Args:
        path: the file.

    Returns:
        The documents, in order, numbered from 0 when there are several.

    Raises:
        ManifestError: unreadable file, invalid YAML (with line and column), or a document that is not a mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        bodies = [b for b in yaml.safe_load_all(text) if b is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ManifestError(f"{path}{where}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: invalid YAML: {exc}") from None
    documents = []
    for index, body in enumerate(bodies):
        if not isinstance(body, dict):
            raise ManifestError(f"{path}: document {index} is a {type(body).__name__}, expected a mapping")
        documents.append(Document(path, index if len(bodies) > 1 else None, body))
    if not documents:
        raise ManifestError(f"{path}: no YAML document found")
    return documents
