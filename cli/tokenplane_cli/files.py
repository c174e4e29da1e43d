"""Read YAML manifests as kubectl does, with one-line errors that name the file (and line) instead of a traceback."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tokenplane_cli.textfile import read_utf8

__all__ = [
    "MAX_FILE_BYTES",
    "STDIN",
    "Document",
    "ManifestError",
    "load_documents",
    "load_one_document",
    "manifest_files",
]

# The API server refuses request bodies over 3 MiB; a manifest file larger than that cannot be applied whole.
MAX_FILE_BYTES = 3 * 1024 * 1024
# `-` reads standard input, as `kubectl apply -f -` does (e.g. `helm template ... | tokenplane validate -`).
STDIN = Path("-")
_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(ValueError):
    """A file could not be read or is not YAML."""


@dataclass(frozen=True)
class Document:
    """One YAML document of a file: where it came from and its body."""

    file: Path
    index: int | None  # None when the file holds one document
    body: dict[str, Any]

    @property
    def source(self) -> str:
        """The file's name, or `stdin` for `-`."""
        return "stdin" if self.file == STDIN else str(self.file)

    @property
    def label(self) -> str:
        """`file` for single documents, `file#N` when the file holds several."""
        return self.source if self.index is None else f"{self.source}#{self.index}"


# Values a document may expand to through YAML aliases. A manifest has hundreds; nine levels of nine aliases (a
# "billion laughs", a few hundred bytes) expand to 387 million, which every check walking the document would visit
# for hours. kubectl refuses such files too ("excessive aliasing").
MAX_EXPANDED_VALUES = 1_000_000


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Count the values a node stands for once every alias is expanded (shared nodes counted once per use)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 0  # a node inside itself (a recursive alias): the constructor refuses it, with its line
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes)
        if total > MAX_EXPANDED_VALUES:
            break
    sizes[id(node)] = total
    return total


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (as kubectl does) and keeps timestamps as strings (as JSON does)."""

    def compose_document(self) -> yaml.Node | None:
        node: yaml.Node | None = super().compose_document()
        if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_VALUES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"its aliases (*name) expand to more than {MAX_EXPANDED_VALUES:,} values (excessive aliasing, as "
                "kubectl says); write the repeated values out or use fewer aliases",
                node.start_mark,
            )
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: the base class reports it with its position
            if duplicate:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first}); keep one", key_node.start_mark
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


# Kubernetes reads YAML as JSON: a date-like scalar is a string there, never a timestamp.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_mapping)


def _one_line(text: object) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def load_documents(path: Path) -> list[Document]:
    """Load every non-empty YAML document of a file.

    Args:
        path: the file.

    Returns:
        The documents, in order, numbered from 0 when there are several.

    Raises:
        ManifestError: unreadable, too large, not UTF-8 text, invalid YAML (with line and column), duplicate keys,
            or a document that is not a mapping; always one line naming the file.
    """
    if path == STDIN:
        text = _read_stdin()
    else:
        if path.is_dir():  # commands that take one document; `tokenplane validate` expands folders
            raise ManifestError(f"{path}: a folder, not a file; pass one of its files, e.g. {path / 'name.yaml'}")
        if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
            raise ManifestError(
                f"{path}: {path.stat().st_size:,} bytes; the API server accepts at most {MAX_FILE_BYTES:,} per request"
            )
        text = read_utf8(path, ManifestError, "UTF-8 YAML")
    name = "stdin" if path == STDIN else str(path)
    try:
        bodies = [b for b in yaml.load_all(text, Loader=_Loader) if b is not None]  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ManifestError(f"{name}{where}: invalid YAML: {_one_line(exc.problem)}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{name}: invalid YAML: {_one_line(exc)}") from None
    except RecursionError:
        raise ManifestError(f"{name}: invalid YAML: nested too deeply") from None
    documents = []
    for index, body in enumerate(bodies):
        if not isinstance(body, dict):
            kind = "list" if isinstance(body, list) else f"{type(body).__name__} value"
            raise ManifestError(
                f"{name}: document {index} is a {kind}, expected a mapping (apiVersion: ..., kind: ..., spec: ...)"
            )
        documents.append(Document(path, index if len(bodies) > 1 else None, body))
    if not documents:
        raise ManifestError(f"{name}: no YAML document found")
    return documents


def _read_stdin() -> str:
    data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ManifestError(f"stdin: over {MAX_FILE_BYTES:,} bytes; the API server accepts at most that per request")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"stdin: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); pipe UTF-8 YAML"
        ) from None


def manifest_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders into the manifests they hold, as `kubectl apply -f DIR` does (not recursively).

    Args:
        paths: Files, folders, or `-` (standard input), in the order given.

    Returns:
        The files, each folder's `.yaml`, `.yml` and `.json` files in name order in its place.

    Raises:
        ManifestError: A folder holds no such file.
    """
    files: list[Path] = []
    for path in paths:
        if path != STDIN and path.is_dir():
            found = sorted(f for f in path.iterdir() if f.suffix in _MANIFEST_SUFFIXES and f.is_file())
            if not found:
                raise ManifestError(f"{path}: a folder with no .yaml, .yml or .json file")
            files.extend(found)
        else:
            files.append(path)
    return files


def load_one_document(path: Path, command: str) -> Document:
    """Load a file that must hold exactly one document: the InferenceDeployment `tokenplane <command>` takes.

    Raises:
        ManifestError: As `load_documents`, or the file holds several documents.
    """
    documents = load_documents(path)
    if len(documents) > 1:
        raise ManifestError(
            f"{documents[0].source} holds {len(documents)} documents; {command} takes one InferenceDeployment: put it "
            "in a file of its own (`tokenplane validate` and `tokenplane render` take several)"
        )
    return documents[0]
