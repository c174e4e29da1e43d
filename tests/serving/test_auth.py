"""Auth middleware and verifiers alone: key files, rotation, JWT claims (real stack: test_production, test_routing)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tokenplane_serving.auth import ApiKeyStore, AuthError, AuthMiddleware, EntraVerifier

TENANT, AUDIENCE = "tenant-1", "api://tp"


def app_with(auth: dict[str, Any]) -> TestClient:
    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/v1/models", ok), Route("/-/ready", ok), Route("/metrics", ok)])
    app.add_middleware(AuthMiddleware, auth=auth)
    return TestClient(app)


def test_api_keys_from_secret_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("alpha\n")
    (tmp_path / "b").write_text("beta")
    (tmp_path / "..data").mkdir()  # Kubernetes' projection bookkeeping is not a key
    (tmp_path / "empty").write_text("\n")
    client = app_with({"mode": "api_key", "api_keys_dir": str(tmp_path)})
    assert client.get("/v1/models", headers={"Authorization": "Bearer alpha"}).status_code == 200
    assert client.get("/v1/models", headers={"api-key": "beta"}).status_code == 200
    for bad in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer alph"}, {"Authorization": "Basic alpha"}):
        response = client.get("/v1/models", headers=bad)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/-/ready").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_api_key_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tokenplane_serving.auth._RELOAD_EVERY_S", 0.0)
    store = ApiKeyStore(tmp_path)
    (tmp_path / "k").write_text("old")
    store.check("old")
    (tmp_path / "k").write_text("new")
    store.check("new")
    with pytest.raises(AuthError):
        store.check("old")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig"}]}))
    return key, path


def token(key: Any, kid: str = "k1", alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": f"https://login.microsoftonline.com/{TENANT}/v2.0", "aud": AUDIENCE, "exp": now + 60, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers={"kid": kid})


def test_entra_claims(keys: tuple[Any, Path]) -> None:
    key, path = keys
    verifier = EntraVerifier(TENANT, AUDIENCE, jwks_path=str(path))
    assert verifier.check(token(key))["aud"] == AUDIENCE
    assert verifier.check(token(key, iss=f"https://sts.windows.net/{TENANT}/"))
    cases = {
        "expired_token": token(key, exp=int(time.time()) - 600),
        "invalid_token": token(key, aud="api://other"),
    }
    for code, bad in cases.items():
        with pytest.raises(AuthError) as info:
            verifier.check(bad)
        assert info.value.code == code
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for bad in (
        token(other),  # wrong signature
        token(key, kid="unknown"),
        token(key, exp=None),  # no expiry
        token(key, iss="https://login.microsoftonline.com/other/v2.0"),
        jwt.encode({"aud": AUDIENCE, "exp": int(time.time()) + 60}, "secret-secret-secret-secret-32b!", "HS256"),
        "garbage",
    ):
        with pytest.raises(AuthError, match=r"^Token"):
            verifier.check(bad)
