"""Request validation in the feature layer (features/limits.py), before an ASGI peer that records what reached it."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import pytest

from tests.support.asgi import read_body
from tokenplane_serving.features.base import Receive, Scope, Send
from tokenplane_serving.features.limits import ValidationMiddleware

CHAT = "/v1/chat/completions"


class Peer:
    """Stands in for vLLM's server: answers 200 and keeps the bodies it got."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(receive)
        self.bodies.append(raw)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture(scope="module")
def middleware() -> tuple[Peer, ValidationMiddleware]:
    peer = Peer()
    return peer, ValidationMiddleware(peer)


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], **extra}


@pytest.mark.parametrize(
    ("body", "param", "got"),
    [
        (chat(stream="false"), "stream", "a string"),
        (chat(stream="true"), "stream", "a string"),
        (chat(stream=0), "stream", "an integer"),
        (chat(stream=1), "stream", "an integer"),
        (chat(stream=True, stream_options={"include_usage": "false"}), "stream_options.include_usage", "a string"),
    ],
)
async def test_a_stream_flag_that_is_not_a_boolean_is_a_400_naming_the_field(
    middleware: tuple[Peer, ValidationMiddleware], body: dict[str, Any], param: str, got: str
) -> None:
    # vLLM coerced "false" to False, while the cache, the hold at zero and batch lines read it as sent (truthy).
    peer, app = middleware
    before = len(peer.bodies)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as http:
        answer = await http.post(CHAT, json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, "invalid_type", "invalid_request_error")
    assert error["message"] == f"Invalid type for '{param}': expected a boolean, but got {got} instead."
    assert len(peer.bodies) == before, "the engine never saw it"


@pytest.mark.parametrize("stream", [True, False, None])
async def test_boolean_and_null_stream_flags_reach_the_engine(
    middleware: tuple[Peer, ValidationMiddleware], stream: bool | None
) -> None:
    peer, app = middleware
    body = chat(stream=stream, stream_options={"include_usage": True} if stream else None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as http:
        answer = await http.post(CHAT, json=body)
    assert answer.status_code == 200 and json.loads(peer.bodies[-1]) == body


async def test_a_compressed_body_is_a_415_that_names_the_encoding(
    middleware: tuple[Peer, ValidationMiddleware],
) -> None:
    # It said "'utf-8' codec can't decode byte 0x8b in position 1", which tells a client nothing.
    peer, app = middleware
    before = len(peer.bodies)
    body = gzip.compress(json.dumps(chat()).encode())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as http:
        answer = await http.post(CHAT, content=body, headers={"Content-Encoding": "gzip"})
        plain = await http.post(CHAT, content=b'{"model": "\xff"}')
    assert answer.status_code == 415, answer.text
    expected = "Content-Encoding 'gzip' is not supported: send the JSON body uncompressed."
    assert answer.json()["error"]["message"] == expected
    assert plain.status_code == 400 and plain.json()["error"]["message"] == "Invalid JSON: the body is not UTF-8 text."
    assert len(peer.bodies) == before


async def test_a_body_vllm_refuses_while_validating_says_why_and_names_the_parameter(
    middleware: tuple[Peer, ValidationMiddleware],
) -> None:
    # vLLM raises its own VLLMValidationError here (not a pydantic one); the answer named only the class.
    _, app = middleware
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as http:
        answer = await http.post(CHAT, json=chat(response_format={"type": "json_schema"}))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "response_format"
    assert "the 'json_schema' field must be provided" in error["message"]


@pytest.mark.parametrize(("n", "refused"), [(128, False), (129, True), (1000, True), (2, False)])
async def test_n_above_openais_limit_is_refused_before_the_engine(
    middleware: tuple[Peer, ValidationMiddleware], n: int, refused: bool
) -> None:
    # n=1000 ran 1,000 sequences for one admission slot, and the engine's queue of them grew the fleet.
    peer, app = middleware
    before = len(peer.bodies)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as http:
        answer = await http.post(CHAT, json=chat(n=n, max_tokens=1))
    if refused:
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["param"], error["code"]) == ("n", "integer_above_max_value")
        assert f"<= 128, but got {n}" in error["message"]
        assert len(peer.bodies) == before
    else:
        assert answer.status_code == 200 and len(peer.bodies) == before + 1
