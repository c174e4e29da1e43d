"""Client authentication at the ingress: API keys from a mounted Secret, or Entra ID bearer tokens."""

from __future__ import annotations

import hmac
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

import jwt

__all__ = [
    "PUBLIC_PATHS",
    "ApiKeyStore",
    "AuthError",
    "AuthMiddleware",
    "EntraVerifier",
    "build_authenticator",
    "openai_error_body",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Probes and scrapers run inside the cluster without credentials; they reveal no model output.
PUBLIC_PATHS = frozenset({"/-/ready", "/-/healthz", "/-/routes", "/metrics"})
_RELOAD_EVERY_S = 2.0


class AuthError(Exception):
    """A rejected credential; `code` is the OpenAI-style error code, `str()` is safe to return."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def openai_error_body(message: str, err_type: str, code: str | int | None, param: str | None = None) -> bytes:
    """Serialise an error in the OpenAI shape `{"error": {"message", "type", "param", "code"}}`.

    Returns:
        The JSON body.
    """
    return json.dumps({"error": {"message": message, "type": err_type, "param": param, "code": code}}).encode()


class ApiKeyStore:
    """API keys from a mounted Kubernetes Secret: every regular file is one key.

    Files are re-read every few seconds, so rotating the Secret (add a key, roll clients, remove the
    old key) needs no restart. Kubernetes' `..data` bookkeeping entries are skipped.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        """Create the store; keys are read lazily on first use.

        Args:
            directory: The Secret's mount path.
        """
        self._dir = Path(directory)
        self._keys: tuple[tuple[str, bytes], ...] = ()
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def _keys_now(self) -> tuple[tuple[str, bytes], ...]:
        now = time.monotonic()
        if now - self._loaded_at >= _RELOAD_EVERY_S:
            with self._lock:
                keys = []
                if self._dir.is_dir():
                    for entry in sorted(self._dir.iterdir()):
                        if entry.name.startswith(".") or not entry.is_file():
                            continue
                        value = entry.read_bytes().strip()
                        if value:
                            keys.append((entry.name, value))
                self._keys, self._loaded_at = tuple(keys), now
        return self._keys

    def check(self, presented: str) -> str:
        """Accept `presented` if it equals one of the keys, comparing in constant time.

        Returns:
            The principal: `key:<file name>` (the Secret's key name, never the key itself).

        Raises:
            AuthError: If it matches no key.
        """
        given = presented.encode()
        # Compare against every key (no early exit), so timing does not reveal which one matched.
        matched = None
        for name, key in self._keys_now():
            if hmac.compare_digest(given, key):
                matched = name
        if matched is None:
            raise AuthError("Incorrect API key provided.", "invalid_api_key")
        return f"key:{matched}"


class EntraVerifier:
    """Validates Microsoft Entra ID access tokens: RS256 signature against the tenant JWKS, issuer, audience, expiry."""

    def __init__(
        self, tenant_id: str, audience: str, *, jwks_path: str | None = None, jwks_url: str | None = None
    ) -> None:
        """Create the verifier.

        Args:
            tenant_id: Entra tenant; both the v2 and v1 issuer forms are accepted.
            audience: Expected `aud` (the API's application ID URI or client id).
            jwks_path: Local JWKS file (tests, air-gapped clusters); re-read when it changes.
            jwks_url: JWKS URL; the tenant's public discovery keys if neither is set.
        """
        self._audience = audience
        self._issuers = [f"https://login.microsoftonline.com/{tenant_id}/v2.0", f"https://sts.windows.net/{tenant_id}/"]
        self._jwks_path = Path(jwks_path) if jwks_path else None
        self._file_keys: dict[str, Any] = {}
        self._file_mtime: float | None = None
        self._client = (
            None
            if self._jwks_path
            else jwt.PyJWKClient(
                jwks_url or f"https://login.microsoftonline.com/{tenant_id}/discovery/v2.0/keys",
                cache_keys=True,
                lifespan=3600,
            )
        )

    def _signing_key(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        assert self._jwks_path is not None
        mtime = self._jwks_path.stat().st_mtime
        if mtime != self._file_mtime:
            jwks = jwt.PyJWKSet.from_json(self._jwks_path.read_text())
            self._file_keys = {k.key_id: k.key for k in jwks.keys if k.key_id}
            self._file_mtime = mtime
        kid = jwt.get_unverified_header(token).get("kid")
        if kid not in self._file_keys:
            raise AuthError("Token signing key is not in the tenant's key set.", "invalid_token")
        return self._file_keys[kid]

    def check(self, token: str) -> dict[str, Any]:
        """Validate a bearer token.

        Returns:
            The verified claims.

        Raises:
            AuthError: If the token is malformed, expired, or has a bad signature, issuer or audience.
        """
        try:
            key = self._signing_key(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self._audience,
                issuer=self._issuers,
                options={"require": ["exp", "iss", "aud"]},
                leeway=30,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("Token has expired.", "expired_token") from None
        except jwt.InvalidAudienceError:
            raise AuthError("Token audience is not this endpoint.", "invalid_token") from None
        except jwt.InvalidIssuerError:
            raise AuthError("Token issuer is not the configured tenant.", "invalid_token") from None
        except (jwt.PyJWTError, ValueError):
            # The message never echoes the token.
            raise AuthError("Token is invalid or its signature does not verify.", "invalid_token") from None
        return claims


Authenticator = Callable[[str], str]


def build_authenticator(auth: dict[str, Any]) -> Authenticator | None:
    """Turn `ServingArgs.auth` into a credential check.

    Args:
        auth: The `AuthArgs` fields as a dict.

    Returns:
        A callable that returns the caller's principal (`key:<name>`, `entra:<oid>`) and raises
        `AuthError` for a bad credential, or None when auth is off.
    """
    if auth["mode"] == "api_key":
        return ApiKeyStore(auth["api_keys_dir"]).check
    if auth["mode"] == "entra_id":
        verifier = EntraVerifier(
            auth["entra_tenant_id"],
            auth["entra_audience"],
            jwks_path=auth.get("entra_jwks_path"),
            jwks_url=auth.get("entra_jwks_url"),
        )

        def subject(token: str) -> str:
            claims = verifier.check(token)
            # `oid` names the user or app across its tokens; `sub` is per-app and the fallback.
            return f"entra:{claims.get('oid') or claims.get('sub') or 'unknown'}"

        return subject
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", [])
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class AuthMiddleware:
    """ASGI middleware: 401 in the OpenAI error shape unless the request carries a valid credential.

    The credential is `Authorization: Bearer <key or token>` (what OpenAI clients send) or `api-key`
    (Azure OpenAI clients). Public paths and CORS preflights pass. Keys and tokens are never logged.
    The caller's principal goes into `scope["tokenplane.principal"]` for the features inside (rate limits).
    """

    def __init__(self, app: ASGIApp, *, auth: dict[str, Any]) -> None:
        """Wrap `app`.

        Args:
            app: The inner ASGI app.
            auth: `AuthArgs` as a dict. The checker is built here, in the replica, because key stores
                and JWKS clients hold locks that cannot travel with the pickled app.
        """
        self.app = app
        authenticate = build_authenticator(auth)
        if authenticate is None:
            raise ValueError("AuthMiddleware needs auth mode 'api_key' or 'entra_id'")
        self._authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the credential, then call the inner app or answer 401."""
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        authorization = _header(scope, b"authorization")
        credential = None
        if authorization and authorization[:7].lower() == "bearer ":
            credential = authorization[7:].strip()
        credential = credential or _header(scope, b"api-key")
        try:
            if not credential:
                raise AuthError("Missing credential: send 'Authorization: Bearer <key>'.", "missing_api_key")
            scope["tokenplane.principal"] = self._authenticate(credential)
        except AuthError as err:
            body = openai_error_body(str(err), "invalid_request_error", err.code)
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer error="invalid_token"'),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
