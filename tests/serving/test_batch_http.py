"""The Batch API's HTTP layer (features/batch.py) on a real store and redis-server: routes, bad input, outages."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import kombu.exceptions
import pytest
import redis

from tests.support.redis_server import RedisServer
from tokenplane_serving.batch.jobs import BatchJobs
from tokenplane_serving.batch.store import LocalStore
from tokenplane_serving.features.base import PRINCIPAL_KEY
from tokenplane_serving.features.batch import BatchApiMiddleware

MAX_FILE = 4096
MULTIPART_X = {"content-type": "multipart/form-data; boundary=x"}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
async def client(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[httpx.AsyncClient]:
    queued: list[tuple[str, list[Any]]] = []

    def jobs() -> BatchJobs:
        client = redis.Redis.from_url(redis_server.url, socket_timeout=1)
        enqueue = lambda task, args: queued.append((task, args))  # noqa: E731
        return BatchJobs(LocalStore(tmp_path / "store"), client, enqueue, namespace="t", max_file_bytes=MAX_FILE)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        body = b'{"inner": true}'
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    app = BatchApiMiddleware(inner, jobs=jobs, max_file_bytes=MAX_FILE)

    async def as_caller(scope: Any, receive: Any, send: Any) -> None:
        # What auth leaves for the features inside: the caller's principal.
        principal = dict(scope["headers"]).get(b"x-caller", b"").decode()
        await app({**scope, PRINCIPAL_KEY: principal}, receive, send)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=as_caller), base_url="http://t") as c:
        yield c


def upload(content: bytes, purpose: str = "batch") -> dict[str, Any]:
    return {"files": {"file": ("in.jsonl", content)}, "data": {"purpose": purpose}}


async def test_other_paths_reach_the_model_and_unknown_batch_routes_are_404(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/chat/completions", json={})).json() == {"inner": True}
    answer = await client.delete("/v1/batches/batch_1")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_url"


async def test_upload_create_and_read_back(client: httpx.AsyncClient) -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "tiny"}}
    file = (await client.post("/v1/files", **upload(json.dumps(line).encode()))).json()
    assert file["object"] == "file" and file["purpose"] == "batch"
    content = await client.get(f"/v1/files/{file['id']}/content")
    assert json.loads(content.content) == line
    created = await client.post(
        "/v1/batches",
        json={"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    assert created.status_code == 200 and created.json()["status"] == "validating"
    listed = (await client.get("/v1/batches?limit=5")).json()
    assert [b["id"] for b in listed["data"]] == [created.json()["id"]]
    other = await client.get(f"/v1/batches/{created.json()['id']}", headers={"x-caller": "someone-else"})
    assert other.status_code == 404


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"method": "POST", "url": "/v1/files", **upload(b"x" * (MAX_FILE + 1))}, 413, "file_too_large"),
        ({"method": "POST", "url": "/v1/files", "data": {"purpose": "batch"}}, 400, "missing_file"),
        (
            {
                "method": "POST",
                "url": "/v1/files",
                "content": b"--x\r\nContent-Disposition: form-data\r\n\r\n",
                "headers": MULTIPART_X,
            },
            400,
            "invalid_form",
        ),
        (
            {"method": "POST", "url": "/v1/files", "files": {"x": ("a", b"1")}, "data": {"purpose": "batch"}},
            400,
            "missing_file",
        ),
        ({"method": "POST", "url": "/v1/files", "files": {"file": ("a", b"1")}}, 400, "missing_purpose"),
        ({"method": "POST", "url": "/v1/batches", "content": b"{nope"}, 400, "invalid_json"),
        (
            {"method": "POST", "url": "/v1/batches", "json": {"endpoint": "/v1/completions"}},
            400,
            "missing_required_parameter",
        ),
        (
            {
                "method": "POST",
                "url": "/v1/batches",
                "json": {"input_file_id": "file-1", "endpoint": 5, "completion_window": "24h"},
            },
            400,
            "invalid_type",  # was "Missing required parameter: 'endpoint'", though it was there
        ),
        ({"method": "GET", "url": "/v1/batches?limit=lots"}, 400, "invalid_limit"),
        ({"method": "GET", "url": "/v1/batches?limit=0"}, 400, "invalid_limit"),  # was one batch (clamped)
        ({"method": "GET", "url": "/v1/batches?limit=101"}, 400, "invalid_limit"),  # was 100 (clamped)
        ({"method": "GET", "url": "/v1/files?limit=%C2%B2"}, 400, "invalid_limit"),  # "²": was a 503
        ({"method": "GET", "url": "/v1/files/file-nope/content"}, 404, "file_not_found"),
        ({"method": "POST", "url": "/v1/batches/batch_nope/cancel"}, 404, "batch_not_found"),
    ],
)
async def test_bad_requests_get_openai_errors(
    client: httpx.AsyncClient, request_kwargs: dict[str, Any], status: int, code: str
) -> None:
    method, url = request_kwargs.pop("method"), request_kwargs.pop("url")
    answer = await client.request(method, url, **request_kwargs)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error["message"] and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("size", [20, 1_500_000])
async def test_a_file_part_without_a_filename_says_so_and_how_to_send_it(tmp_path: Path, size: int) -> None:
    # curl's `-F 'file=<batch.jsonl'` sends the content as a text field; the answer was "Missing the `file` part",
    # or, over 1 MiB, "Part exceeded maximum size of 1024KB." (starlette's limit for text fields).
    def jobs() -> BatchJobs:
        unused = redis.Redis(port=1)  # connects on first use: never
        return BatchJobs(LocalStore(tmp_path), unused, lambda *_: None, namespace="t", max_file_bytes=2 * 1024 * 1024)

    app = BatchApiMiddleware(lambda *_: None, jobs=jobs, max_file_bytes=2 * 1024 * 1024)  # type: ignore[arg-type]
    content = (b'{"custom_id": "a"}\n' * size)[:size]
    part = b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + content + b"\r\n"
    body = part + b'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--x--\r\n'
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        answer = await http.post("/v1/files", content=body, headers=MULTIPART_X)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("file_without_filename", "file")
    assert "has no filename" in error["message"] and "-F file=@batch.jsonl" in error["message"]


async def test_a_query_string_that_is_not_utf8_is_read_not_a_503(client: httpx.AsyncClient) -> None:
    # A raw `?limit=\xff` (a byte not percent-encoded, as a hand-written client may send) failed to decode, and the
    # list answered 503 "the batch store or queue is unavailable; retry later": a retry never helps.
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for path in ("/v1/batches", "/v1/files"):
        scope = {"type": "http", "method": "GET", "path": path, "query_string": b"limit=\xff", "headers": []}
        await transport.app(scope, receive, send)
        status, error = sent[-2]["status"], json.loads(sent[-1]["body"])["error"]
        assert (status, error["code"], error["param"]) == (400, "invalid_limit", "limit"), error


async def test_a_redis_outage_is_a_503_and_the_rest_keeps_serving(
    client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    file = (await client.post("/v1/files", **upload(b'{"custom_id": "a"}\n'))).json()
    body = {"input_file_id": file["id"], "endpoint": "/v1/completions", "completion_window": "24h"}
    batch = (await client.post("/v1/batches", json=body)).json()
    redis_server.stop()
    answer = await client.post(f"/v1/batches/{batch['id']}/cancel")  # the cancel flag lives in Redis
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "batch_unavailable"
    assert (await client.post("/v1/chat/completions", json={})).json() == {"inner": True}


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (kombu.exceptions.OperationalError("broker unreachable"), 503, "batch_unavailable"),
        (TypeError("a bug in the hand-off"), 500, "internal_error"),
    ],
)
async def test_a_broker_outage_is_a_503_and_a_bug_a_500(
    tmp_path: Path, redis_server: RedisServer, failure: Exception, status: int, code: str
) -> None:
    # A bug answered 503 "retry later", and clients retried what failed the same way every time.
    def enqueue(task: str, args: list[Any]) -> None:
        raise failure

    def jobs() -> BatchJobs:
        client = redis.Redis.from_url(redis_server.url, socket_timeout=1)
        return BatchJobs(LocalStore(tmp_path / "store"), client, enqueue, namespace="t", max_file_bytes=MAX_FILE)

    app = BatchApiMiddleware(None, jobs=jobs, max_file_bytes=MAX_FILE)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        file = (await c.post("/v1/files", **upload(b'{"custom_id": "a"}\n'))).json()
        body = {"input_file_id": file["id"], "endpoint": "/v1/completions", "completion_window": "24h"}
        answer = await c.post("/v1/batches", json=body)
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)
    assert ("retry later" in answer.json()["error"]["message"]) == (status == 503)


async def test_the_openai_client_lists_and_deletes_its_files(client: httpx.AsyncClient) -> None:
    # files.list() and files.delete() were 404 "Unknown route": output and input files could never be removed.
    import openai

    api = openai.AsyncOpenAI(base_url="http://t/v1", api_key="-", http_client=client, max_retries=0)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "tiny"}}
    first = await api.files.create(file=("a.jsonl", json.dumps(line).encode()), purpose="batch")
    second = await api.files.create(file=("b.jsonl", json.dumps(line).encode()), purpose="batch")
    other = await client.post("/v1/files", headers={"x-caller": "someone-else"}, **upload(json.dumps(line).encode()))
    listed = [f.id async for f in api.files.list()]
    assert sorted(listed) == sorted([first.id, second.id]) and other.json()["id"] not in listed
    assert [f.id async for f in api.files.list(purpose="batch_output")] == []
    page = await api.files.list(limit=1, order="asc")
    assert len(page.data) == 1 and page.has_more
    deleted = await api.files.delete(first.id)
    assert (deleted.id, deleted.deleted) == (first.id, True)
    assert [f.id async for f in api.files.list()] == [second.id]
    with pytest.raises(openai.NotFoundError):
        await api.files.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        await api.files.delete(other.json()["id"])  # another caller's file
    bad = await client.get("/v1/files?limit=0")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"


@pytest.mark.parametrize("extra", [1, 70_000])  # read and measured; refused on its Content-Length alone
async def test_an_oversize_file_is_refused_naming_both_sizes_and_what_to_do(
    client: httpx.AsyncClient, extra: int
) -> None:
    # It said "the file has 4097 bytes; the limit is 4096", or "over the 4096 byte limit", and not what to do.
    answer = await client.post("/v1/files", **upload(b"x" * (MAX_FILE + extra)))
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("file_too_large", "file")
    assert "batch input files are at most 4,096 bytes here (batch.max_file_mib)" in error["message"]
    assert error["message"].endswith("split it into several files and create a batch for each")


def test_the_default_file_limit_holds_every_file_openai_accepts() -> None:
    # 100 MiB refused files OpenAI's Batch API takes (up to 200 MB).
    from tokenplane_serving.args import ServingArgs

    args = ServingArgs.model_validate({"model": {"id": "tiny", "source": "/models/tiny"}, "batch": {"enabled": True}})
    assert args.batch.max_file_mib * 2**20 >= 200 * 10**6


def test_each_replica_sweeps_open_batches_in_the_background(tmp_path: Path, redis_server: RedisServer) -> None:
    queued: list[tuple[str, list[Any]]] = []
    client = redis.Redis.from_url(redis_server.url, socket_timeout=1)
    store = LocalStore(tmp_path / "store")
    jobs = BatchJobs(
        store, client, lambda task, args: queued.append((task, args)), namespace="t", max_file_bytes=MAX_FILE
    )
    file = jobs.create_file(
        "o", "in.jsonl", "batch", b'{"custom_id":"a","method":"POST","url":"/v1/completions","body":{}}'
    )
    batch = jobs.create_batch("o", file["id"], "/v1/completions", "24h")
    redis_server.stop()
    redis_server.start()  # the start task is lost, and nobody reads the batch
    queued.clear()
    app = BatchApiMiddleware(None, jobs=lambda: jobs, max_file_bytes=MAX_FILE, sweep_interval_s=0.05)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 3
        while not queued and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        app.stop()
    assert queued == [("tokenplane.batch.start", [batch["id"], True])]


def test_the_sweep_runs_at_the_deployments_batch_sweep_interval(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The interval was a constant (60 s): no deployment could sweep sooner, nor less often on a slow store.
    from tokenplane_serving.args import ServingArgs
    from tokenplane_serving.batch import consumer
    from tokenplane_serving.features.base import FeatureContext
    from tokenplane_serving.features.batch import feature

    queued: list[tuple[str, list[Any]]] = []
    client = redis.Redis.from_url(redis_server.url, socket_timeout=1)
    jobs = BatchJobs(
        LocalStore(tmp_path),
        client,
        lambda task, args: queued.append((task, args)),
        namespace="t",
        max_file_bytes=MAX_FILE,
    )
    file = jobs.create_file("o", "in.jsonl", "batch", b'{"custom_id":"a","method":"POST","url":"/v1/completions"}')
    batch = jobs.create_batch("o", file["id"], "/v1/completions", "24h")
    client.flushall()  # the start task and its marker are lost, and nobody reads the batch
    queued.clear()
    monkeypatch.setattr(consumer, "open_jobs", lambda args: jobs)
    body = {"model": {"id": "tiny", "source": "/models/tiny"}, "batch": {"enabled": True, "sweep_interval_s": 1}}
    wrap = feature(FeatureContext(ServingArgs.model_validate(body), replica=None))  # type: ignore[arg-type]
    assert wrap is not None
    app = wrap(None)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 2.5
        while not queued and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        app.stop()  # type: ignore[attr-defined]
    assert queued == [("tokenplane.batch.start", [batch["id"], True])]
