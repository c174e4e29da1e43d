"""Azurite, Microsoft's Azure Storage emulator, as a Blob peer for tests (the real npm package, not a mock).

`make azurite` installs it into tests/support/node (pinned in its package.json). The `azurite` session
fixture in tests/conftest.py starts one instance on a free port; use its `connection_string` with
`azure-storage-blob`, or `upload_dir` to stage files and get their `az://` URI.

Azurite serves the well-known development account `devstoreaccount1` with the documented key
(https://learn.microsoft.com/azure/storage/common/storage-use-azurite#well-known-storage-account-and-key),
in path style: `http://127.0.0.1:PORT/devstoreaccount1/CONTAINER/BLOB`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

__all__ = ["ACCOUNT", "ACCOUNT_KEY", "Azurite", "AzuriteError", "azurite_binary"]

ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
NODE_DIR = Path(__file__).resolve().parent / "node"
_LISTENING = re.compile(r"successfully listens on (https?)://127\.0\.0\.1:(\d+)")


class AzuriteError(RuntimeError):
    """Azurite is not installed or did not start."""


def azurite_binary() -> Path:
    """The `azurite-blob` executable: $TOKENPLANE_AZURITE_BLOB, else the one `make azurite` installed.

    Raises:
        AzuriteError: If it is not installed.
    """
    override = os.environ.get("TOKENPLANE_AZURITE_BLOB")
    path = Path(override) if override else NODE_DIR / "node_modules" / ".bin" / "azurite-blob"
    if not path.is_file():
        raise AzuriteError(f"{path} not found: run `make azurite` (npm install of the pinned Azurite)")
    return path


class Azurite:
    """One Azurite Blob service on 127.0.0.1, on a port the OS picks; data under `location`.

    Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(self, location: Path, *, cert: Path | None = None, key: Path | None = None) -> None:
        """Prepare (not start) an instance.

        Args:
            location: Directory for Azurite's data and its log.
            cert: PEM certificate to serve HTTPS with (and accept OAuth bearer tokens, `--oauth basic`).
            key: The certificate's PEM private key.
        """
        self.location = location
        self.cert, self.key = cert, key
        self.port = 0
        self.scheme = "https" if cert else "http"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def blob_endpoint(self) -> str:
        """The account's Blob endpoint, e.g. `http://127.0.0.1:PORT/devstoreaccount1` (the SDK's account_url)."""
        return f"{self.scheme}://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        """A connection string with the development account's shared key, for `BlobServiceClient`."""
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def start(self, timeout_s: float = 60.0) -> Azurite:
        """Start Azurite and wait until it listens.

        Raises:
            AzuriteError: If it is not installed, exits, or does not listen within `timeout_s`.
        """
        binary = azurite_binary()
        self.location.mkdir(parents=True, exist_ok=True)
        log = self.location / "azurite.log"
        command = [
            str(binary), "--location", str(self.location), "--blobHost", "127.0.0.1", "--blobPort", "0",
            # Tests use the newest SDK, which may speak a newer API version than Azurite knows.
            "--skipApiVersionCheck", "--loose", "--silent",
            # Azurite sends usage telemetry by default; tests talk to 127.0.0.1 only.
            "--disableTelemetry",
        ]  # fmt: skip
        if self.cert and self.key:
            command += ["--cert", str(self.cert), "--key", str(self.key), "--oauth", "basic"]
        with log.open("wb") as out:
            self._process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = _LISTENING.search(log.read_text(errors="replace"))
            if found:
                self.port = int(found.group(2))
                return self
            if self._process.poll() is not None:
                raise AzuriteError(f"azurite exited with {self._process.returncode}: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        self.stop()
        raise AzuriteError(f"azurite did not listen within {timeout_s:.0f}s: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop Azurite (idempotent)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def upload_dir(self, local_dir: Path, container: str, prefix: str) -> str:
        """Upload every file under `local_dir` to `container/prefix/...` (creating the container).

        Args:
            local_dir: Directory to upload, recursively.
            container: Blob container name (created if missing).
            prefix: Blob name prefix, without leading or trailing slash.

        Returns:
            The `az://devstoreaccount1/CONTAINER/PREFIX` URI of the uploaded directory.
        """
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobServiceClient

        with BlobServiceClient.from_connection_string(self.connection_string) as service:
            client = service.get_container_client(container)
            with contextlib.suppress(ResourceExistsError):
                client.create_container()
            for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
                name = f"{prefix}/{path.relative_to(local_dir).as_posix()}"
                with path.open("rb") as data:
                    client.upload_blob(name, data, overwrite=True)
        return f"az://{ACCOUNT}/{container}/{prefix}"
