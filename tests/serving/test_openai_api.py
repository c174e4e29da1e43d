"""The OpenAI API of a real Ray Serve + vLLM deployment of the tiny model, via the official client."""

from __future__ import annotations

import pytest
from openai import OpenAI

from tests.serving.conftest import API_KEYS
from tokenplane_serving.local import LocalServer

# The shared server starts inside the first test's setup, so that test needs more than the default 300 s.
pytestmark = [pytest.mark.serving, pytest.mark.timeout(600)]

MODEL = "tiny"


@pytest.fixture(scope="module")
def client(tiny_server: LocalServer) -> OpenAI:
    return OpenAI(base_url=tiny_server.openai_base_url, api_key=API_KEYS[0], max_retries=0, timeout=60)


def test_models_lists_the_model(client: OpenAI) -> None:
    assert MODEL in [m.id for m in client.models.list().data]


def test_chat_completion(client: OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello, who are you?"}], max_tokens=8, temperature=0
    )
    choice = response.choices[0]
    assert choice.message.content
    assert choice.finish_reason in ("length", "stop")
    assert response.usage is not None
    assert response.usage.prompt_tokens > 0
    assert 0 < response.usage.completion_tokens <= 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_chat_completion_streamed(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert text
    assert finish in ("length", "stop")
    assert usage is not None
    assert 0 < usage.completion_tokens <= 8


def test_completion(client: OpenAI) -> None:
    response = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert response.choices[0].text
    assert response.choices[0].finish_reason in ("length", "stop")
    assert response.usage is not None
    assert response.usage.completion_tokens > 0


def test_unknown_model_is_a_client_error(client: OpenAI) -> None:
    import openai

    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    assert 400 <= info.value.status_code < 500
