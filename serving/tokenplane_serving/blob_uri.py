"""Azure Blob source URIs: the forms tokenplane accepts and where each lands on a node (pure, no Azure SDK).

The operator's API validates sources with `parse_blob_uri`, and the serving runtime downloads them with
`tokenplane_serving.blob`; both read the grammar from here.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

__all__ = [
    "BLOB_CREDENTIAL_ENV",
    "BLOB_URI_FORMS",
    "BLOB_URI_REGEXES",
    "STORE_CREDENTIAL_ENV",
    "BlobLocation",
    "is_blob_uri",
    "local_dir_for",
    "parse_blob_uri",
]

# The replica's secret credential for Azure Blob sources (a SAS token or a connection string); the operator
# fills it from spec.model.accessSecretRef, and `tokenplane_serving.blob` reads it.
BLOB_CREDENTIAL_ENV = "TOKENPLANE_BLOB_CREDENTIAL"
# The Batch API store's secret credential (a SAS token or a connection string), from spec.batch.storeSecretRef;
# empty means the pod's workload identity.
STORE_CREDENTIAL_ENV = "TOKENPLANE_BATCH_STORE_CREDENTIAL"
BLOB_URI_FORMS = (
    "az://ACCOUNT/CONTAINER/PATH, abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PATH or "
    "https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH"
)
# Storage naming rules: https://learn.microsoft.com/azure/storage/common/storage-account-overview#storage-account-name
# and https://learn.microsoft.com/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata
# (containers: 3-63 characters, no leading, trailing or doubled hyphen; the length is checked in parse_blob_uri).
# No lookaround: the CRD's pattern is this grammar too, and the API server's RE2 and pydantic's regex lack it.
_ACCOUNT = r"[a-z0-9]{3,24}"
_CONTAINER = r"[a-z0-9](?:-?[a-z0-9]){2,62}"
# Public cloud, Azure China and Azure US Government storage suffixes.
_SUFFIX = r"core\.(?:windows\.net|chinacloudapi\.cn|usgovcloudapi\.net)"
_PATH = r"(?:/.*)?"


def _forms(named: bool) -> tuple[str, ...]:
    def group(name: str, regex: str) -> str:
        return f"(?P<{name}>{regex})" if named else f"(?:{regex})"

    account, container = group("account", _ACCOUNT), group("container", _CONTAINER)
    suffix, path = group("suffix", _SUFFIX), group("path", _PATH)
    return (
        f"az://{account}/{container}{path}",
        f"abfss://{container}@{account}\\.dfs\\.{suffix}{path}",
        f"https://{account}\\.blob\\.{suffix}/{container}{path}",
    )


# Full-match regexes of the accepted forms, without groups: the operator's API joins them into the source pattern.
BLOB_URI_REGEXES = _forms(named=False)
_FORMS = tuple(re.compile(f"^{form}$") for form in _forms(named=True))
_SCHEMES = ("az://", "abfss://", "https://")


@dataclass(frozen=True)
class BlobLocation:
    """A directory (blob name prefix) in an Azure Storage container.

    Attributes:
        account: Storage account name.
        container: Container (for abfss://, the ADLS Gen2 file system; the Blob API reads it too).
        path: Blob name prefix without leading or trailing slash; empty for the whole container.
        suffix: Storage DNS suffix of the cloud (`core.windows.net` for public Azure).
    """

    account: str
    container: str
    path: str
    suffix: str = "core.windows.net"

    @property
    def account_url(self) -> str:
        """The account's Blob endpoint, `https://ACCOUNT.blob.SUFFIX`."""
        return f"https://{self.account}.blob.{self.suffix}"

    def __str__(self) -> str:
        return f"az://{self.account}/{self.container}/{self.path}".rstrip("/")


def is_blob_uri(uri: str) -> bool:
    """Tell whether `uri` claims to be an Azure Blob source (it may still be malformed: see `parse_blob_uri`)."""
    return uri.startswith(("az://", "abfss://")) or bool(re.match(r"^https://[^/]+\.blob\.", uri))


def parse_blob_uri(uri: str) -> BlobLocation:
    """Parse an Azure Blob source URI.

    Args:
        uri: `az://ACCOUNT/CONTAINER/PATH`, `abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PATH` or
            `https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH` (also the China and US Government clouds).

    Returns:
        The location, its path normalized (no `.`/`..`, no doubled or trailing slashes).

    Raises:
        ValueError: If `uri` is none of these forms, names an invalid account or container, or its path
            climbs out of the container.
    """
    for form in _FORMS:
        found = form.match(uri)
        if found is None:
            continue
        if len(found["container"]) > 63:
            break
        segments = (found["path"] or "").split("/")
        if ".." in segments:
            raise ValueError(f"Azure Blob source {uri!r}: the path may not contain '..'")
        path = "/".join(s for s in segments if s not in ("", "."))
        suffix = found.groupdict().get("suffix") or "core.windows.net"
        return BlobLocation(found["account"], found["container"], path, suffix)
    if not uri.startswith(_SCHEMES):
        raise ValueError(f"{uri!r} is not an Azure Blob URI; use {BLOB_URI_FORMS}")
    raise ValueError(
        f"invalid Azure Blob source {uri!r}: use {BLOB_URI_FORMS} (account: 3-24 lowercase letters and digits; "
        "container: 3-63 lowercase letters, digits and single hyphens)"
    )


def local_dir_for(location: BlobLocation, root: str) -> str:
    """Return where a blob directory is downloaded on every node: `ROOT/ACCOUNT/CONTAINER/PATH`.

    Deterministic, so the path computed when the app is built is the one each node downloads to.
    """
    return posixpath.join(root, location.account, location.container, location.path).rstrip("/")
