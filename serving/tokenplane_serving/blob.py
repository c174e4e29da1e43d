"""Azure Blob model and adapter sources: downloaded on every node of a replica before its engine starts.

Ray Serve LLM 2.60 has its own Azure loader (`azure://` / `abfss://` through adlfs), but it builds the
endpoint as `<account>.blob.core.windows.net` and authenticates only with `DefaultAzureCredential`: no SAS,
no connection string, no other endpoint (Azurite, Azure China). So tokenplane keeps Ray's mechanism, its
node-initialization callback (`LLMConfig.callback_config`, run on every node of the replica's placement
group before vLLM starts), and does the transfer itself with `azure-storage-blob` into a local directory.
vLLM and the LoRA loader then read plain directories, locally and in the cluster alike.

Credentials, in order: `TOKENPLANE_BLOB_CREDENTIAL` (the operator fills it from `spec.model.accessSecretRef`)
holding a connection string or a SAS token; otherwise `DefaultAzureCredential`, which on AKS is the pod's
workload identity (the webhook injects AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenplane_serving.blob_uri import BLOB_CREDENTIAL_ENV, BlobLocation, parse_blob_uri
from tokenplane_serving.ray_internals import CallbackBase

__all__ = ["BlobDownloadCallback", "BlobSourceError", "DownloadStats", "download", "service_client"]

logger = logging.getLogger(__name__)

_MANIFEST = ".tokenplane-blob.json"  # blob name -> ETag of what is on disk, to skip unchanged files
_CONNECTION_KEYS = {"BlobEndpoint", "AccountName", "AccountKey", "SharedAccessSignature", "DefaultEndpointsProtocol"}
_PARALLEL_FILES = 8
_PARALLEL_RANGES = 4  # per large blob


class BlobSourceError(RuntimeError):
    """A blob source could not be read; the message says which source and what to change."""


@dataclass(frozen=True)
class DownloadStats:
    """What one `download` did."""

    files: int
    downloaded_bytes: int
    skipped_files: int
    seconds: float


def _connection_fields(value: str) -> dict[str, str] | None:
    # A connection string is `Key=Value;...` with Azure's keys; a SAS token is a query string (`sv=...&sig=...`).
    fields = dict(part.split("=", 1) for part in value.split(";") if "=" in part)
    return fields if _CONNECTION_KEYS & fields.keys() else None


def _default_credential() -> Any:
    from azure.identity import DefaultAzureCredential

    # No interactive or shared-cache prompts in a replica; AKS workload identity comes first in the chain.
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def service_client(location: BlobLocation, credential_env: str = BLOB_CREDENTIAL_ENV) -> Any:
    """Make a `BlobServiceClient` for `location`'s account.

    Args:
        location: Where the blobs are.
        credential_env: Environment variable that may hold a connection string or a SAS token; when it is
            empty, the pod's identity (`DefaultAzureCredential`) is used.

    Raises:
        BlobSourceError: If the connection string names another account.
    """
    from azure.storage.blob import BlobServiceClient

    secret = os.environ.get(credential_env, "").strip()
    if not secret:
        return BlobServiceClient(location.account_url, credential=_default_credential())
    fields = _connection_fields(secret)
    if fields is None:  # a SAS token for the source's own account
        return BlobServiceClient(location.account_url, credential=secret.lstrip("?"))
    account = fields.get("AccountName")
    if account is not None and account != location.account:
        raise BlobSourceError(
            f"{location}: the connection string in {credential_env} is for account "
            f"{account!r}; a secret credential serves sources in its own account only"
        )
    has_secret = "AccountKey" in fields or "SharedAccessSignature" in fields
    # An endpoint-only connection string (e.g. a custom domain) still authenticates as the pod's identity.
    return BlobServiceClient.from_connection_string(secret, credential=None if has_secret else _default_credential())


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    # Replicas sharing a node download into the same directory; the second waits and then finds it current.
    lock_path = dest.parent / f".{dest.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _explain(location: BlobLocation, err: Exception) -> BlobSourceError:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    hint = (
        "give the pod's identity the 'Storage Blob Data Reader' role on the account (spec.serviceAccountName names "
        "a workload-identity ServiceAccount), or put a SAS token or connection string in spec.model.accessSecretRef"
    )
    if isinstance(err, ClientAuthenticationError) and not isinstance(err, HttpResponseError):
        return BlobSourceError(f"{location}: no Azure credential ({str(err).splitlines()[0]}); {hint}")
    if isinstance(err, HttpResponseError):
        status = err.status_code
        code = getattr(err, "error_code", None) or err.reason
        if status in (401, 403):
            return BlobSourceError(f"{location}: access denied ({status} {code}); {hint}")
        if status == 404:
            return BlobSourceError(f"{location}: container {location.container!r} not found ({code})")
        return BlobSourceError(f"{location}: storage answered {status} {code}")
    if isinstance(err, ServiceRequestError):
        return BlobSourceError(f"{location}: cannot reach {location.account_url} ({str(err).splitlines()[0]})")
    return BlobSourceError(f"{location}: {type(err).__name__}: {err}")


def download(uri: str, dest: str | Path) -> DownloadStats:
    """Mirror the blobs under `uri` into `dest`, skipping files whose ETag is unchanged since the last call.

    Files under `dest` that no longer exist in the container are removed (a re-sharded checkpoint must not
    leave stale shards next to the new ones). Concurrent calls for one `dest` on a node run one at a time.

    Args:
        uri: An Azure Blob directory (`az://`, `abfss://` or `https://...blob...`).
        dest: Local directory to mirror into (created if missing).

    Returns:
        How many files, how many bytes were transferred, how many files were current, and the time taken.

    Raises:
        ValueError: If `uri` is not a valid Azure Blob URI.
        BlobSourceError: If the blobs cannot be listed or read, or the directory is empty.
    """
    location = parse_blob_uri(uri)
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with _locked(target):
        try:
            return _mirror(location, target, started)
        except BlobSourceError:
            raise
        except Exception as err:
            raise _explain(location, err) from err


def _mirror(location: BlobLocation, target: Path, started: float) -> DownloadStats:
    manifest_path = target / _MANIFEST
    manifest: dict[str, str] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    prefix = f"{location.path}/" if location.path else ""
    with service_client(location) as service:
        container = service.get_container_client(location.container)
        # ADLS Gen2 (abfss) accounts list their directories as empty blobs marked hdi_isfolder.
        blobs = {
            blob.name[len(prefix) :]: blob
            for blob in container.list_blobs(name_starts_with=prefix, include=["metadata"])
            if (blob.metadata or {}).get("hdi_isfolder") != "true" and not blob.name.endswith("/")
        }
        if not blobs:
            raise BlobSourceError(
                f"{location}: no blobs under this path; point the source at the directory that holds the "
                "model's config.json and weights (or the adapter's adapter_config.json)"
            )
        stale = [name for name, blob in blobs.items() if not _current(target / name, blob, manifest.get(name))]

        def fetch(name: str) -> int:
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            with partial.open("wb") as out:
                size = container.download_blob(prefix + name, max_concurrency=_PARALLEL_RANGES).readinto(out)
            os.replace(partial, path)
            return int(size)

        with ThreadPoolExecutor(max_workers=_PARALLEL_FILES) as pool:
            transferred = sum(pool.map(fetch, stale))
    for path in target.rglob("*"):
        name = path.relative_to(target).as_posix()
        if path.is_file() and name != _MANIFEST and name not in blobs:
            path.unlink()
    manifest_path.write_text(json.dumps({name: blob.etag for name, blob in blobs.items()}, sort_keys=True))
    stats = DownloadStats(len(blobs), transferred, len(blobs) - len(stale), time.monotonic() - started)
    logger.info(
        "%s -> %s: %d files, %d bytes transferred, %d current, %.1fs",
        location, target, stats.files, stats.downloaded_bytes, stats.skipped_files, stats.seconds,
    )  # fmt: skip
    return stats


def _current(path: Path, blob: Any, recorded_etag: str | None) -> bool:
    return recorded_etag == blob.etag and path.is_file() and path.stat().st_size == blob.size


class BlobDownloadCallback(CallbackBase):
    """Ray Serve LLM node-initialization callback that downloads a replica's Azure Blob sources.

    Ray runs `on_before_download_model_files_distributed` in a task on every node of the replica's
    placement group (`initialize_node` in Ray Serve LLM's node initialization utils), so a
    pipeline-parallel replica spanning nodes finds the weights on each. `callback_kwargs`:
    `{"sources": [[uri, local_dir], ...]}` (built by `tokenplane_serving.mapping`).
    """

    def on_before_download_model_files_distributed(self) -> None:
        """Download every configured source into its local directory (current files are skipped)."""
        for uri, local_dir in self.kwargs.get("sources", []):
            download(uri, local_dir)
