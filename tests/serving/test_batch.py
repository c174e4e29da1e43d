"""The Batch API live, with the official `openai` client, on the shared tiny server (real Ray Serve, vLLM, Redis).

The batch consumers are Ray Serve async-inference replicas (Celery on the redis-server `serve_local` started),
scaled from zero on the queue's length; results go to the run's batch store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import ray

from tests.serving.conftest import API_KEYS, MODEL_ID
from tokenplane_serving.local import LocalServer

pytestmark = pytest.mark.serving

CHAT = "/v1/chat/completions"


def jsonl(rows: list[Any]) -> bytes:
    return b"".join((row if isinstance(row, str) else json.dumps(row)).encode() + b"\n" for row in rows)


def request(custom_id: str, text: str, max_tokens: int = 8) -> dict[str, Any]:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": {**body, "temperature": 0}}


@pytest.fixture(scope="module")
def client(tiny_server: LocalServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=tiny_server.openai_base_url, api_key=API_KEYS[0], max_retries=0) as c:
        yield c


def wait_for(client: openai.OpenAI, batch_id: str, statuses: set[str], timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout_s}s: {batch.request_counts}"
        time.sleep(0.5)


def lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(x) for x in client.files.content(file_id).content.splitlines()]


def test_a_batch_runs_to_completed_and_reports_the_malformed_line(client: openai.OpenAI) -> None:
    rows: list[Any] = [request(f"q{i}", f"Count to {i}") for i in range(5)]
    rows.insert(2, '{"custom_id": "broken", "method": "POST"')
    uploaded = client.files.create(file=("questions.jsonl", jsonl(rows)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    window, metadata = "24h", {"t": "1"}
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window=window, metadata=metadata)
    assert batch.status == "validating" and batch.metadata == {"t": "1"}
    done = wait_for(client, batch.id, {"completed", "failed"})
    assert done.status == "completed", done
    assert done.request_counts is not None and (done.request_counts.total, done.request_counts.completed) == (6, 5)
    output = lines(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in output) == [f"q{i}" for i in range(5)]
    for entry in output:
        assert entry["response"]["status_code"] == 200
        assert entry["response"]["body"]["choices"][0]["message"]["content"]
        assert entry["response"]["body"]["model"] == MODEL_ID
    (error,) = lines(client, done.error_file_id)
    assert error["error"]["message"].startswith("line 3: not valid JSON")
    assert done.errors is not None and done.errors.data is not None and done.errors.data[0].line == 3
    assert any(b.id == batch.id for b in client.batches.list(limit=100).data)


def test_bad_input_gets_openai_errors(client: openai.OpenAI, tiny_server: LocalServer) -> None:
    uploaded = client.files.create(file=("one.jsonl", jsonl([request("a", "hi")])), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="endpoint '/v1/embeddings' is not supported"):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError, match="No such File object"):
        client.batches.create(input_file_id="file-missing", endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="purpose 'fine-tune' is not supported"):
        client.files.create(file=("one.jsonl", b"{}\n"), purpose="fine-tune")
    other = openai.OpenAI(base_url=tiny_server.openai_base_url, api_key=API_KEYS[1], max_retries=0)
    with other, pytest.raises(openai.NotFoundError):  # another caller's file
        other.files.retrieve(uploaded.id)


def test_cancel_stops_the_batch_and_keeps_what_finished(client: openai.OpenAI) -> None:
    rows = [request(f"c{i}", f"Tell a long story number {i}", max_tokens=48) for i in range(40)]
    uploaded = client.files.create(file=("long.jsonl", jsonl(rows)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    wait_for(client, batch.id, {"in_progress"}, timeout_s=60)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    cancelled = wait_for(client, batch.id, {"cancelled"}, timeout_s=60)
    assert cancelled.request_counts is not None and cancelled.request_counts.completed < 40
    if cancelled.output_file_id:
        assert len(lines(client, cancelled.output_file_id)) == cancelled.request_counts.completed


def _consumer_actors() -> list[Any]:
    names = ray.util.list_named_actors(all_namespaces=True)
    return [ray.get_actor(a["name"], namespace=a["namespace"]) for a in names if "BatchConsumer" in a["name"]]


def test_a_batch_survives_its_consumer_dying_mid_way_without_duplicates(client: openai.OpenAI) -> None:
    rows = [request(f"d{i}", f"Describe the colour {i}", max_tokens=24) for i in range(16)]
    uploaded = client.files.create(file=("durable.jsonl", jsonl(rows)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 90
    while True:  # kill the consumer once it has answered some but not all requests
        counts = client.batches.retrieve(batch.id).request_counts
        if counts is not None and 2 <= counts.completed < 12:
            break
        assert time.monotonic() < deadline, counts
        time.sleep(0.2)
    actors = _consumer_actors()
    assert actors, "no BatchConsumer replica is running"
    for actor in actors:
        ray.kill(actor, no_restart=True)  # Serve replaces the dead replica; its unacked requests are redelivered
    done = wait_for(client, batch.id, {"completed", "failed"}, timeout_s=150)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (16, 0)
    ids = [o["custom_id"] for o in lines(client, done.output_file_id)]
    assert sorted(ids) == sorted(f"d{i}" for i in range(16))  # each exactly once
