"""Where the Batch API keeps files, batch records and per-request results: a directory, or Azure Blob.

Both stores offer the same few operations, and the two that make the lifecycle safe under retries and
concurrent writers: `write_new` (create only if absent: a request run twice writes its result once) and
`replace` (compare-and-swap on a version: a cancel and a finalize never overwrite each other).
Keys are `/`-separated relative names.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from tokenplane_serving.blob_uri import STORE_CREDENTIAL_ENV, is_blob_uri, parse_blob_uri

__all__ = ["STORE_CREDENTIAL_ENV", "BlobStore", "LocalStore", "Store", "open_store"]


class Store(Protocol):
    """Byte objects under keys, with create-if-absent and compare-and-swap."""

    def read(self, key: str) -> bytes | None:
        """Return the object's bytes, or None if absent."""
        ...

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """Return the object's bytes and a version token for `replace`, or None if absent."""
        ...

    def write(self, key: str, data: bytes) -> None:
        """Create or overwrite the object."""
        ...

    def write_new(self, key: str, data: bytes) -> bool:
        """Create the object if absent; False (and nothing written) if it exists."""
        ...

    def replace(self, key: str, data: bytes, version: str) -> bool:
        """Overwrite the object if it is still at `version`; False (nothing written) otherwise."""
        ...

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object (nothing happens if it is absent)."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Keys starting with `prefix`, sorted."""
        ...


class LocalStore:
    """A directory (for `tokenplane up` and one-node clusters); atomic renames, `flock` for compare-and-swap."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        """Use `root` (created if missing)."""
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"store key {key!r} leaves the store")
        return path

    def _tmp(self, path: Path, data: bytes) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return tmp

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with (path.parent / f".{path.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def read(self, key: str) -> bytes | None:
        """Return the object's bytes, or None if absent."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """Return the object's bytes and their SHA-256 as the version."""
        data = self.read(key)
        return None if data is None else (data, hashlib.sha256(data).hexdigest())

    def write(self, key: str, data: bytes) -> None:
        """Create or overwrite atomically (a reader sees the old or the new bytes, never a mix)."""
        path = self._path(key)
        os.replace(self._tmp(path, data), path)

    def write_new(self, key: str, data: bytes) -> bool:
        """Create if absent: a hard link fails atomically when the name exists."""
        path = self._path(key)
        tmp = self._tmp(path, data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def replace(self, key: str, data: bytes, version: str) -> bool:
        """Overwrite if the content still hashes to `version` (under a lock shared by all writers)."""
        path = self._path(key)
        with self._locked(path):
            current = self.read_versioned(key)
            if current is None or current[1] != version:
                return False
            os.replace(self._tmp(path, data), path)
            return True

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove the file (nothing happens if it is absent)."""
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        """Keys under the directory part of `prefix` that start with `prefix`."""
        base = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith("."))


class BlobStore:
    """An Azure Blob directory (`az://ACCOUNT/CONTAINER/PREFIX`): ETags for compare-and-swap.

    Credentials as for model sources: `TOKENPLANE_BATCH_STORE_CREDENTIAL` (connection string or SAS
    token), else the pod's workload identity. The container is created on first use if missing.
    """

    def __init__(self, uri: str) -> None:
        """Use the Blob directory `uri`."""
        from tokenplane_serving.blob import service_client

        self.location = parse_blob_uri(uri)
        self._prefix = f"{self.location.path}/" if self.location.path else ""
        service = service_client(self.location, STORE_CREDENTIAL_ENV)
        self._container = service.get_container_client(self.location.container)
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()

    def _blob(self, key: str) -> Any:
        return self._container.get_blob_client(self._prefix + key)

    def read(self, key: str) -> bytes | None:
        """Return the blob's bytes, or None if absent."""
        found = self.read_versioned(key)
        return None if found is None else found[0]

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """Return the blob's bytes and its ETag."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            downloader = self._blob(key).download_blob()
        except ResourceNotFoundError:
            return None
        return downloader.readall(), str(downloader.properties.etag)

    def write(self, key: str, data: bytes) -> None:
        """Create or overwrite the blob."""
        self._blob(key).upload_blob(data, overwrite=True)

    def write_new(self, key: str, data: bytes) -> bool:
        """Create the blob unless it exists (`If-None-Match: *`)."""
        from azure.core.exceptions import ResourceExistsError

        try:
            self._blob(key).upload_blob(data, overwrite=False)
            return True
        except ResourceExistsError:
            return False

    def replace(self, key: str, data: bytes, version: str) -> bool:
        """Overwrite the blob if its ETag is still `version` (`If-Match`)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            condition = MatchConditions.IfNotModified
            self._blob(key).upload_blob(data, overwrite=True, etag=version, match_condition=condition)
            return True
        except (ResourceModifiedError, ResourceNotFoundError):
            return False

    def exists(self, key: str) -> bool:
        """Whether the blob exists."""
        return bool(self._blob(key).exists())

    def delete(self, key: str) -> None:
        """Delete the blob (nothing happens if it is absent)."""
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self._blob(key).delete_blob()

    def list(self, prefix: str) -> list[str]:
        """Keys starting with `prefix`, sorted."""
        names = self._container.list_blob_names(name_starts_with=self._prefix + prefix)
        return sorted(name[len(self._prefix) :] for name in names)


def open_store(location: str) -> Store:
    """Open the store at `location`: an Azure Blob directory URI, else a local directory."""
    return BlobStore(location) if is_blob_uri(location) else LocalStore(location)
