"""Entra ID's token endpoint for AKS workload identity, over TLS, issuing Azure Storage access tokens.

`WorkloadIdentityCredential` (which `DefaultAzureCredential` tries first on AKS) posts the client-credentials
grant with the projected service-account token as `client_assertion` to
`$AZURE_AUTHORITY_HOST/<tenant>/oauth2/v2.0/token` (azure-identity's AadClient; no discovery call). This peer
checks tenant, client id, assertion and scope and answers with a JWT carrying the claims Azurite's OAuth
(`--oauth basic`) validates: `aud` https://storage.azure.com, `iss` https://sts.windows.net/<tenant>/, and
`iat`/`nbf`/`exp` (Azurite's BlobTokenAuthenticator does not verify the signature).
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import trustme

__all__ = ["EntraEmulator"]

_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
STORAGE_SCOPE = "https://storage.azure.com/.default"


class EntraEmulator:
    """Issues storage tokens to one (tenant, client id, federated token); records each token request."""

    def __init__(self, ca: trustme.CA, tenant: str, client_id: str, federated_token: str) -> None:
        """Prepare (not start) the endpoint; `ca` signs its certificate."""
        self.tenant, self.client_id, self.federated_token = tenant, client_id, federated_token
        self.requests: list[dict[str, str]] = []
        self._ca = ca
        self._key = secrets.token_bytes(32)
        self._server: ThreadingHTTPServer | None = None

    @property
    def authority_host(self) -> str:
        """The value for AZURE_AUTHORITY_HOST."""
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> EntraEmulator:
        """Serve on a free port in a background thread."""
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                form = {key: values[0] for key, values in urllib.parse.parse_qs(body).items()}
                emulator.requests.append({"path": self.path, **form})
                status, answer = emulator._answer(self.path, form)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, name="entra-emulator", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        checks = {
            "path": path == f"/{self.tenant}/oauth2/v2.0/token",
            "grant_type": form.get("grant_type") == "client_credentials",
            "client_id": form.get("client_id") == self.client_id,
            "client_assertion_type": form.get("client_assertion_type") == _JWT_BEARER,
            "client_assertion": form.get("client_assertion") == self.federated_token,
            "scope": form.get("scope") == STORAGE_SCOPE,
        }
        if not all(checks.values()):
            failed = ", ".join(name for name, ok in checks.items() if not ok)
            return 401, {"error": "invalid_client", "error_description": f"AADSTS700213: no match ({failed})"}
        now = int(time.time())
        claims = {
            "aud": "https://storage.azure.com",
            "iss": f"https://sts.windows.net/{self.tenant}/",
            "iat": now,
            "nbf": now - 60,
            "exp": now + 3600,
            "appid": self.client_id,
            "tid": self.tenant,
        }
        token = jwt.encode(claims, self._key, algorithm="HS256")
        return 200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}


def write_pems(ca: trustme.CA, directory: Path) -> tuple[Path, Path, Path]:
    """Write the CA certificate, and a 127.0.0.1 server certificate and key it signed, as PEM files.

    Returns:
        (ca.pem, server.pem, server-key.pem)
    """
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    ca.cert_pem.write_to_path(str(paths[0]))
    server.cert_chain_pems[0].write_to_path(str(paths[1]))
    server.private_key_pem.write_to_path(str(paths[2]))
    return paths
