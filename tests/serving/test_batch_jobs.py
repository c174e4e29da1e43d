"""The Batch API's lifecycle without the engine: input rules, stores (a directory and Azurite), Redis progress.

The queue is a list the test drains (the consumer's Celery queue in production); the engine is a function
that answers like vLLM's OpenAI server. Stores and Redis are real: a directory, Azurite, a redis-server.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.azurite import Azurite
from tests.support.redis_server import RedisServer
from tokenplane_serving.batch import schema
from tokenplane_serving.batch.jobs import (
    TASK_FINALIZE,
    TASK_REQUEST,
    TASK_START,
    TOMBSTONE_TTL_S,
    BatchApiError,
    BatchJobs,
)
from tokenplane_serving.batch.store import STORE_CREDENTIAL_ENV, BlobStore, LocalStore, Store

CHAT = "/v1/chat/completions"


def line(custom_id: str, content: str = "hi", url: str = CHAT, **extra: Any) -> str:
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def test_parse_input_reports_each_bad_line_with_its_number_and_reason() -> None:
    text = "\n".join(
        [
            line("a"),
            "{not json",
            "",
            line("a"),
            line("c", url="/v1/embeddings"),
            json.dumps({"custom_id": "d", "method": "GET", "url": CHAT, "body": {}}),
            line("e", stream=True),
            json.dumps(["x"]),
            line("g"),
        ]
    ).encode()
    parsed = schema.parse_input(text, CHAT)
    assert [(r.line, r.custom_id) for r in parsed.requests] == [(1, "a"), (9, "g")]
    errors = {e.line: e for e in parsed.errors}
    assert sorted(errors) == [2, 4, 5, 6, 7, 8]
    assert errors[2].code == "invalid_json_line" and errors[2].message.startswith("line 2: not valid JSON")
    assert "used by an earlier line" in errors[4].message
    assert errors[5].code == "mismatched_url" and "/v1/embeddings" in errors[5].message
    assert "method must be 'POST'" in errors[6].message
    assert "stream" in errors[7].message
    assert "JSON object" in errors[8].message
    assert parsed.total == 8  # the blank line is not a request


def test_parse_input_splits_lines_at_newlines_only_and_reads_a_bom_or_crlf_file() -> None:
    # U+2028, U+2029 and U+0085 are legal unescaped inside JSON strings (json.dumps(..., ensure_ascii=False)
    # writes them so); str.splitlines() broke a request in two at them and shifted later line numbers.
    odd = "a\u2028b\u2029c\x85d\x1ce\x0bf"
    first = json.dumps(json.loads(line("a", content=odd)), ensure_ascii=False)
    data = "\ufeff" + "\r\n".join([first, line("b"), "", line("c")]) + "\r\n"
    parsed = schema.parse_input(data.encode(), CHAT)
    assert parsed.errors == []
    assert [(r.line, r.custom_id) for r in parsed.requests] == [(1, "a"), (2, "b"), (4, "c")]
    assert parsed.requests[0].body["messages"][0]["content"] == odd


def test_parse_input_reports_a_line_that_is_not_utf8_and_runs_the_rest() -> None:
    latin1 = line("b", content="cafe").replace("cafe", "caf\u00e9").encode("latin-1")  # a lone 0xE9 byte
    data = line("a").encode() + b"\n" + latin1 + b"\n" + line("c").encode()
    parsed = schema.parse_input(data, CHAT)
    assert [(r.line, r.custom_id) for r in parsed.requests] == [(1, "a"), (3, "c")]
    [error] = parsed.errors
    assert (error.line, error.code) == (2, "invalid_json_line") and "not UTF-8" in error.message


def test_parse_input_runs_stream_false_and_names_a_stream_flag_that_is_not_a_boolean() -> None:
    # `"stream": "false"` (a string) was truthy, so the line was refused as "streaming is not available".
    lines = [line("a", stream=False), line("b", stream=None), line("c", stream="false"), line("d", stream=0)]
    parsed = schema.parse_input("\n".join(lines).encode(), CHAT)
    assert [r.custom_id for r in parsed.requests] == ["a", "b"]
    errors = [(e.line, e.custom_id, e.code) for e in parsed.errors]
    assert errors == [(3, "c", "invalid_type"), (4, "d", "invalid_type")]
    message = "line 3: body.stream must be a boolean (false or absent in a batch), not a string"
    assert parsed.errors[0].message == message
    assert parsed.errors[1].message.endswith("not an integer")


def test_parse_input_applies_the_servers_stream_flag_rule_to_stream_options_too() -> None:
    # The server refuses a non-boolean stream_options.include_usage (400, that param); a batch line ran with it.
    lines = [line("a", stream_options={"include_usage": "false"}), line("b", stream_options={"include_usage": False})]
    parsed = schema.parse_input("\n".join(lines).encode(), CHAT)
    assert [r.custom_id for r in parsed.requests] == ["b"]
    [error] = parsed.errors
    assert (error.line, error.code) == (1, "invalid_type")
    assert error.message == "line 1: body.stream_options.include_usage must be a boolean, not a string"


def test_parse_input_caps_the_request_count() -> None:
    parsed = schema.parse_input("\n".join(line(str(i)) for i in range(5)).encode(), CHAT, max_requests=3)
    assert len(parsed.requests) == 3 and [e.code for e in parsed.errors] == ["too_many_requests"] * 2


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(params=["local", "azurite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    azurite: Azurite = request.getfixturevalue("azurite")
    previous = os.environ.get(STORE_CREDENTIAL_ENV)
    os.environ[STORE_CREDENTIAL_ENV] = azurite.connection_string
    try:
        yield BlobStore(f"az://devstoreaccount1/batches/{uuid.uuid4().hex}")
    finally:
        if previous is None:
            os.environ.pop(STORE_CREDENTIAL_ENV, None)
        else:
            os.environ[STORE_CREDENTIAL_ENV] = previous


def test_store_creates_once_and_swaps_only_the_version_it_read(store: Store) -> None:
    assert store.read("a/b.json") is None and not store.exists("a/b.json")
    assert store.write_new("a/b.json", b"one")
    assert not store.write_new("a/b.json", b"two")  # a second writer of the same result changes nothing
    assert store.read("a/b.json") == b"one"
    _, version = store.read_versioned("a/b.json") or (b"", "")
    assert store.replace("a/b.json", b"three", version)
    assert not store.replace("a/b.json", b"four", version)  # stale version: someone else wrote since
    assert store.read("a/b.json") == b"three"
    store.write("a/c.json", b"x")
    store.write("z.json", b"y")
    assert store.list("a/") == ["a/b.json", "a/c.json"]
    store.delete("a/c.json")
    store.delete("a/c.json")  # already gone: nothing happens
    assert store.list("a/") == ["a/b.json"] and not store.exists("a/c.json")


class Harness:
    """BatchJobs with a drainable queue and a counting engine."""

    def __init__(self, store: Store, redis_url: str) -> None:
        self.queue: list[tuple[str, list[Any]]] = []
        self.calls: list[dict[str, Any]] = []
        client = redis.Redis.from_url(redis_url)
        self.jobs = BatchJobs(
            store,
            client,
            lambda task, args: self.queue.append((task, args)),
            namespace=f"test:{uuid.uuid4().hex}",
            max_file_bytes=10_000,
            model="tiny",
        )

    def engine(self, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.calls.append(body)
        if body.get("max_tokens", 0) > 100:
            return 400, {"error": {"message": "max_tokens too large", "type": "BadRequestError", "code": 400}}
        text = body["messages"][0]["content"].upper()
        return 200, {"id": f"chatcmpl-{len(self.calls)}", "object": "chat.completion", "choices": [{"text": text}]}

    def drain(self, *, duplicate_requests: bool = False) -> None:
        while self.queue:
            task, args = self.queue.pop(0)
            if task == TASK_START:
                self.jobs.start(*args)
            elif task == TASK_REQUEST:
                self.jobs.run_request(*args, call=self.engine)
                if duplicate_requests:  # the queue delivered it again (a consumer died before acking)
                    self.jobs.run_request(*args, call=self.engine)
            elif task == TASK_FINALIZE:  # as the consumer's handler calls it: [batch_id] or [batch_id, expire]
                self.jobs.finalize(args[0], expire=len(args) > 1 and args[1])

    def submit(self, owner: str, lines: list[str]) -> dict[str, Any]:
        file = self.jobs.create_file(owner, "in.jsonl", "batch", "\n".join(lines).encode())
        return self.jobs.create_batch(owner, file["id"], CHAT, "24h", {"run": "test"})

    def started(self, owner: str, lines: list[str]) -> tuple[dict[str, Any], list[list[Any]]]:
        """Submit and start a batch; return it and its queued requests' task arguments (the queue left empty)."""
        batch = self.submit(owner, lines)
        self.jobs.start(batch["id"])
        requests = [args for task, args in self.queue if task == TASK_REQUEST]
        self.queue.clear()
        return batch, requests

    def output(self, owner: str, file_id: str | None) -> list[dict[str, Any]]:
        assert file_id is not None
        return [json.loads(x) for x in self.jobs.file_content(owner, file_id).splitlines()]


def test_batch_completes_with_one_answer_per_request_even_when_delivered_twice(store: Store, redis_url: str) -> None:
    h = Harness(store, redis_url)
    rows = [line(f"r{i}", f"hello {i}") for i in range(5)]
    batch = h.submit("key:a", [*rows, "{broken", line("big", max_tokens=500)])
    assert batch["status"] == "validating" and batch["metadata"] == {"run": "test"}
    h.drain(duplicate_requests=True)
    done = h.jobs.get_batch("key:a", batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 7, "completed": 5, "failed": 2}
    assert len(h.calls) == 6  # five good requests and the oversize one, each run once despite redelivery
    output = h.output("key:a", done["output_file_id"])
    assert [o["custom_id"] for o in output] == [f"r{i}" for i in range(5)]
    assert output[2]["response"]["status_code"] == 200
    assert output[2]["response"]["body"]["choices"][0]["text"] == "HELLO 2"
    errors = h.output("key:a", done["error_file_id"])
    assert [(e["custom_id"], bool(e["error"])) for e in errors] == [(None, True), ("big", False)]
    assert errors[0]["error"]["message"].startswith("line 6: not valid JSON")
    assert errors[1]["response"]["status_code"] == 400
    assert done["errors"]["data"][0]["line"] == 6
    h.jobs.finalize(batch["id"])  # a late duplicate finalize changes nothing
    assert h.jobs.get_batch("key:a", batch["id"]) == done


def test_cancel_keeps_finished_answers_and_skips_the_rest(store: Store, redis_url: str) -> None:
    h = Harness(store, redis_url)
    batch, requests = h.started("key:a", [line(f"r{i}") for i in range(6)])
    for args in requests[:2]:
        h.jobs.run_request(*args, call=h.engine)
    assert h.jobs.get_batch("key:a", batch["id"])["request_counts"] == {"total": 6, "completed": 2, "failed": 0}
    assert h.jobs.cancel_batch("key:a", batch["id"])["status"] == "cancelling"  # nothing in flight: close queued
    assert h.queue == [(TASK_FINALIZE, [batch["id"], False])]
    h.drain()
    cancelled = h.jobs.get_batch("key:a", batch["id"])
    assert cancelled["status"] == "cancelled" and cancelled["cancelling_at"] and cancelled["cancelled_at"]
    for args in requests[2:]:
        assert not h.jobs.run_request(*args, call=h.engine)  # queued requests of a cancelled batch never run
    assert h.queue == [] and h.jobs.get_batch("key:a", batch["id"]) == cancelled
    assert cancelled["request_counts"] == {"total": 6, "completed": 2, "failed": 0}
    assert [o["custom_id"] for o in h.output("key:a", cancelled["output_file_id"])] == ["r0", "r1"]
    assert h.jobs.cancel_batch("key:a", batch["id"])["status"] == "cancelled"  # cancelling again is a no-op
    finished = h.submit("key:a", [line("x")])
    h.drain()
    with pytest.raises(BatchApiError) as err:
        h.jobs.cancel_batch("key:a", finished["id"])
    assert (err.value.status, err.value.code) == (409, "batch_not_cancellable")


def test_cancel_lets_requests_in_flight_finish_and_the_last_one_closes_the_batch(store: Store, redis_url: str) -> None:
    # The cancel queued its finalize behind every request still queued, and a finalize that ran while a request
    # was in flight closed the batch without that request's answer.
    h = Harness(store, redis_url)
    batch, requests = h.started("key:a", [line(f"r{i}") for i in range(6)])
    h.jobs.run_request(*requests[0], call=h.engine)
    seen: dict[str, Any] = {}

    def engine_while_cancelled(endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        seen["cancel"] = h.jobs.cancel_batch("key:a", batch["id"])  # the caller cancels while r1 runs
        seen["skipped"] = [h.jobs.run_request(*args, call=h.engine) for args in requests[2:]]
        h.jobs.finalize(batch["id"])  # a finalize task arriving now must not close the batch without r1
        seen["during"] = h.jobs.get_batch("key:a", batch["id"])
        return h.engine(endpoint, body)

    assert h.jobs.run_request(*requests[1], call=engine_while_cancelled)
    assert seen["cancel"]["status"] == "cancelling" and seen["cancel"]["cancelling_at"]
    assert seen["skipped"] == [False] * 4 and seen["during"]["status"] == "cancelling"
    cancelled = h.jobs.get_batch("key:a", batch["id"])
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"], "closed when r1 ended, not later"
    assert cancelled["request_counts"] == {"total": 6, "completed": 2, "failed": 0}
    assert [o["custom_id"] for o in h.output("key:a", cancelled["output_file_id"])] == ["r0", "r1"]
    assert h.queue == [], "nothing was queued behind the batch's requests"


def test_a_cancel_arriving_as_the_last_request_finishes_leaves_the_batch_completed(
    store: Store, redis_url: str
) -> None:
    # Whether a batch whose every request was answered ended `cancelled` or `completed` (and the cancel a 409)
    # depended on whether the cancel came before or after its finalize task ran.
    h = Harness(store, redis_url)
    late, requests = h.started("o", [line(f"r{i}") for i in range(3)])
    for args in requests:
        h.jobs.run_request(*args, call=h.engine)
    assert h.jobs.get_batch("o", late["id"])["status"] == "finalizing"  # the finalize task is queued
    with pytest.raises(BatchApiError) as err:
        h.jobs.cancel_batch("o", late["id"])
    assert (err.value.status, err.value.code) == (409, "batch_not_cancellable")
    h.drain()
    during, requests = h.started("o", [line(f"r{i}") for i in range(3)])
    for args in requests[:2]:
        h.jobs.run_request(*args, call=h.engine)

    def engine_then_cancel(endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        answer = h.engine(endpoint, body)
        assert h.jobs.cancel_batch("o", during["id"])["status"] == "cancelling"  # the last request is still in flight
        return answer

    h.jobs.run_request(*requests[2], call=engine_then_cancel)
    h.drain()
    for batch in (late, during):
        done = h.jobs.get_batch("o", batch["id"])
        assert done["status"] == "completed", batch
        assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
        assert len(h.output("o", done["output_file_id"])) == 3


def test_a_cancel_while_the_batch_is_being_queued_stops_queueing_its_requests(tmp_path: Path, redis_url: str) -> None:
    # The start queued all 2,000 requests after a cancel that came in after the fifth: 2,000 tasks that only woke
    # consumers (they scale on the queue's length) to skip them.
    h = Harness(LocalStore(tmp_path), redis_url)
    h.jobs.max_file_bytes = 1024 * 1024
    batch = h.submit("o", [line(f"r{i}") for i in range(2000)])
    h.queue.clear()

    def enqueue(task: str, args: list[Any]) -> None:
        h.queue.append((task, args))
        if len(h.queue) == 5:
            assert h.jobs.cancel_batch("o", batch["id"])["status"] == "cancelling"

    h.jobs.enqueue = enqueue
    h.jobs.start(batch["id"])
    assert 5 <= sum(task == TASK_REQUEST for task, _ in h.queue) <= 100
    h.drain()
    cancelled = h.jobs.get_batch("o", batch["id"])
    assert cancelled["status"] == "cancelled" and h.calls == []
    assert cancelled["request_counts"] == {"total": 2000, "completed": 0, "failed": 0}


def test_a_read_or_cancel_queues_the_close_once_for_a_consumer_instead_of_closing_in_the_request(
    store: Store, redis_url: str
) -> None:
    # The cancel, retrieve or list that found a batch to close wrote its output and error files in the caller's
    # HTTP request, reading every result: 12 s for a batch of 5,000 with 2,500 answered on Azurite.
    h = Harness(store, redis_url)
    cancelled, requests = h.started("o", [line(f"c{i}") for i in range(4)])
    expired, _ = h.started("o", [line(f"e{i}") for i in range(3)])
    for args in requests[:2]:
        h.jobs.run_request(*args, call=h.engine)
    record = json.loads(store.read(f"batches/{expired['id']}.json") or b"{}")
    record["batch"]["expires_at"] = int(time.time()) - 1
    store.write(f"batches/{expired['id']}.json", json.dumps(record).encode())
    assert h.jobs.cancel_batch("o", cancelled["id"])["status"] == "cancelling"
    for _ in range(3):
        statuses = {b["id"]: b["status"] for b in h.jobs.list_batches("o")["data"]}
        assert statuses == {cancelled["id"]: "cancelling", expired["id"]: "finalizing"}
        assert h.jobs.get_batch("o", expired["id"])["status"] == "finalizing"
    assert sorted(h.queue) == sorted(
        [(TASK_FINALIZE, [cancelled["id"], False]), (TASK_FINALIZE, [expired["id"], True])]
    )
    assert not [key for key in store.list("files/") if "_output" in (store.read(key) or b"").decode()]
    with pytest.raises(BatchApiError) as err:  # as OpenAI: a finalizing batch cannot be cancelled
        h.jobs.cancel_batch("o", expired["id"])
    assert (err.value.status, err.value.code) == (409, "batch_not_cancellable")
    # A close queued long ago and never done (its task went with Redis's data) is queued again by the next read.
    h.queue.clear()
    record = json.loads(store.read(f"batches/{expired['id']}.json") or b"{}")
    record["closing_at"] -= 901
    store.write(f"batches/{expired['id']}.json", json.dumps(record).encode())
    assert h.jobs.get_batch("o", expired["id"])["status"] == "finalizing"
    assert h.queue == [(TASK_FINALIZE, [expired["id"], True])]
    h.queue.append((TASK_FINALIZE, [cancelled["id"], False]))
    h.drain()
    done = {b["id"]: b for b in h.jobs.list_batches("o")["data"]}
    assert done[cancelled["id"]]["status"] == "cancelled" and done[expired["id"]]["status"] == "expired"
    assert done[cancelled["id"]]["request_counts"] == {"total": 4, "completed": 2, "failed": 0}
    assert done[expired["id"]]["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    assert [o["custom_id"] for o in h.output("o", done[cancelled["id"]]["output_file_id"])] == ["c0", "c1"]


def test_a_cancelled_batch_closes_after_the_grace_when_a_request_in_flight_never_ends(
    tmp_path: Path, redis_url: str
) -> None:
    from tokenplane_serving.batch.jobs import CANCEL_GRACE_S

    store = LocalStore(tmp_path)
    h = Harness(store, redis_url)
    batch, requests = h.started("o", [line(f"r{i}") for i in range(3)])
    h.jobs.run_request(*requests[0], call=h.engine)
    # r1's consumer died mid-request: it is still registered as in flight (what run_request leaves behind).
    h.jobs.redis.sadd(f"{h.jobs.namespace}:{batch['id']}:running", requests[1][1])
    assert h.jobs.cancel_batch("o", batch["id"])["status"] == "cancelling"
    assert h.jobs.get_batch("o", batch["id"])["status"] == "cancelling"
    record = json.loads(store.read(f"batches/{batch['id']}.json") or b"{}")
    record["batch"]["cancelling_at"] -= CANCEL_GRACE_S + 1
    store.write(f"batches/{batch['id']}.json", json.dumps(record).encode())
    assert h.jobs.get_batch("o", batch["id"])["status"] == "cancelling"  # the read queued its close
    h.drain()
    cancelled = h.jobs.get_batch("o", batch["id"])
    assert cancelled["status"] == "cancelled"
    assert [o["custom_id"] for o in h.output("o", cancelled["output_file_id"])] == ["r0"]


def test_a_batch_whose_input_file_was_deleted_before_it_started_fails_saying_so(tmp_path: Path, redis_url: str) -> None:
    h = Harness(LocalStore(tmp_path), redis_url)
    batch = h.submit("key:a", [line("a")])
    h.jobs.delete_file("key:a", batch["input_file_id"])
    h.drain()
    failed = h.jobs.get_batch("key:a", batch["id"])
    assert failed["status"] == "failed" and h.calls == []
    [error] = failed["errors"]["data"]
    assert error["code"] == "input_file_deleted" and batch["input_file_id"] in error["message"]


def test_a_file_without_a_runnable_request_fails_the_batch_with_line_errors(tmp_path: Path, redis_url: str) -> None:
    h = Harness(LocalStore(tmp_path), redis_url)
    batch = h.submit("", ["{", line("a", url="/v1/completions")])
    h.drain()
    failed = h.jobs.get_batch("", batch["id"])
    assert failed["status"] == "failed" and failed["failed_at"]
    assert [e["line"] for e in failed["errors"]["data"]] == [1, 2]
    assert h.calls == []


@pytest.mark.parametrize(
    ("call", "status", "code"),
    [
        (lambda j, f: j.create_batch("o", f, "/v1/embeddings", "24h"), 400, "invalid_endpoint"),
        (lambda j, f: j.create_batch("o", f, CHAT, "1h"), 400, "invalid_completion_window"),
        (lambda j, f: j.create_batch("o", f, CHAT, "24h", {"a": 1}), 400, "invalid_metadata"),
        (lambda j, f: j.create_batch("o", f, CHAT, "24h", ["a"]), 400, "invalid_metadata"),
        (lambda j, f: j.create_batch("o", "file-nope", CHAT, "24h"), 404, "file_not_found"),
        (lambda j, f: j.create_batch("someone-else", f, CHAT, "24h"), 404, "file_not_found"),
        (lambda j, f: j.get_batch("o", "batch_../../x"), 404, "batch_not_found"),
        (lambda j, f: j.create_file("o", "x.jsonl", "fine-tune", b"{}"), 400, "invalid_purpose"),
        (lambda j, f: j.create_file("o", "x.jsonl", "batch", b"x" * 10_001), 413, "file_too_large"),
        (lambda j, f: j.create_file("o", "x.jsonl", "batch", b"\n \n"), 400, "empty_file"),
        (lambda j, f: j.create_file("o", "x.jsonl", "batch", b"\xef\xbb\xbf\r\n"), 400, "empty_file"),
        (
            lambda j, f: j.create_file("o", "x.jsonl", "batch", ("\ufeff" + line("a") + "\r\n").encode("utf-16-le")),
            400,
            "invalid_file_encoding",
        ),
    ],
)
def test_bad_calls_get_openai_errors_that_say_what_to_change(
    tmp_path: Path, redis_url: str, call: Any, status: int, code: str
) -> None:
    h = Harness(LocalStore(tmp_path), redis_url)
    file_id = h.jobs.create_file("o", "in.jsonl", "batch", line("a").encode())["id"]
    with pytest.raises(BatchApiError) as err:
        call(h.jobs, file_id)
    assert (err.value.status, err.value.code) == (status, code)
    assert err.value.body()["error"]["message"]


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata has 17 pairs; at most 16 are allowed"),
        ({"k" * 65: "v"}, "has 65 characters; keys are at most 64"),
        ({"note": "v" * 513}, "metadata['note'] has 513 characters; values are at most 512"),
    ],
)
def test_metadata_over_openais_limits_is_refused_naming_the_limit(
    tmp_path: Path, redis_url: str, metadata: dict[str, str], says: str
) -> None:
    # 17 pairs, a 65-character key and a 513-character value were all accepted and stored.
    h = Harness(LocalStore(tmp_path), redis_url)
    file_id = h.jobs.create_file("o", "in.jsonl", "batch", line("a").encode())["id"]
    with pytest.raises(BatchApiError) as err:
        h.jobs.create_batch("o", file_id, CHAT, "24h", metadata)
    assert (err.value.status, err.value.code, err.value.param) == (400, "invalid_metadata", "metadata")
    assert says in err.value.message
    assert h.queue == [] and h.jobs.list_batches("o")["data"] == []
    at_the_limits = {f"k{i:063d}": "v" * 512 for i in range(16)}  # 64-character keys
    assert h.jobs.create_batch("o", file_id, CHAT, "24h", at_the_limits)["metadata"] == at_the_limits


def test_a_file_of_more_than_50000_requests_is_refused_when_the_batch_is_created(
    tmp_path: Path, redis_url: str
) -> None:
    # It was accepted, and its batch ran the first 50,000 lines and wrote one `too_many_requests` error per extra
    # line; OpenAI refuses the batch at creation with a 400.
    h = Harness(LocalStore(tmp_path), redis_url)
    h.jobs.max_file_bytes = 10 * 1024 * 1024
    at_limit = "\n".join([line("x")] * schema.MAX_REQUESTS).encode() + b"\n\n"  # blank lines are no requests
    over = h.jobs.create_file("o", "big.jsonl", "batch", at_limit + line("y").encode())
    with pytest.raises(BatchApiError) as err:
        h.jobs.create_batch("o", over["id"], CHAT, "24h")
    assert (err.value.status, err.value.code, err.value.param) == (400, "too_many_requests", "input_file_id")
    assert "has 50001 requests; a batch holds at most 50000" in err.value.message
    assert h.queue == [] and h.jobs.list_batches("o")["data"] == []
    fits = h.jobs.create_file("o", "fits.jsonl", "batch", at_limit)
    assert h.jobs.create_batch("o", fits["id"], CHAT, "24h")["status"] == "validating"


def test_list_pages_newest_first_and_only_the_callers_batches(tmp_path: Path, redis_url: str) -> None:
    h = Harness(LocalStore(tmp_path), redis_url)
    mine = [h.submit("me", [line("a")])["id"] for _ in range(3)]
    h.submit("other", [line("a")])
    first = h.jobs.list_batches("me", limit=2)
    assert first["has_more"] and len(first["data"]) == 2
    rest = h.jobs.list_batches("me", after=first["last_id"], limit=2)
    assert not rest["has_more"]
    assert sorted(b["id"] for b in first["data"] + rest["data"]) == sorted(mine)


def test_requests_still_queued_when_the_window_ends_are_reported_expired(tmp_path: Path, redis_url: str) -> None:
    store = LocalStore(tmp_path)
    h = Harness(store, redis_url)
    batch = h.submit("o", [line(f"r{i}") for i in range(3)])
    h.jobs.start(batch["id"])
    h.queue.pop(0)
    first = h.queue.pop(0)
    h.jobs.run_request(*first[1], call=h.engine)
    # The 24 h window ends with two requests still queued (the record is what a day-old batch's looks like).
    record = json.loads(store.read(f"batches/{batch['id']}.json") or b"{}")
    record["batch"]["expires_at"] = record["batch"]["created_at"] - 1
    store.write(f"batches/{batch['id']}.json", json.dumps(record).encode())
    h.drain()
    expired = h.jobs.get_batch("o", batch["id"])
    assert expired["status"] == "expired" and expired["expired_at"]
    assert expired["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    assert len(h.calls) == 1
    assert {e["error"]["code"] for e in h.output("o", expired["error_file_id"])} == {"batch_expired"}


def test_after_redis_lost_its_data_a_batch_past_its_window_ends_expired_with_what_completed(tmp_path: Path) -> None:
    # Redis restarted empty: the queued tasks, progress sets and cancel flags were gone, no consumer would ever
    # finalize the batch, and it stayed `in_progress` for good.
    with RedisServer(tmp_path) as server:
        store = LocalStore(tmp_path / "store")
        h = Harness(store, server.url)
        batch, requests = h.started("o", [line(f"r{i}") for i in range(4)] + ["{broken", line("r5")])
        for args in requests[:2]:
            h.jobs.run_request(*args, call=h.engine)
        server.stop()
        server.start()  # no persistence: everything Redis held is lost, the queue (Celery's list) with it
        h.queue.clear()
        assert h.jobs.get_batch("o", batch["id"])["status"] == "in_progress", "within its window it may still run"
        assert h.queue == [(TASK_START, [batch["id"], True])]  # queued again from the input file...
        h.queue.clear()  # ...but no consumer ran it before the window ended
        record = json.loads(store.read(f"batches/{batch['id']}.json") or b"{}")
        record["batch"]["expires_at"] = int(time.time()) - 1  # 24 h later
        store.write(f"batches/{batch['id']}.json", json.dumps(record).encode())
        [listed] = h.jobs.list_batches("o")["data"]  # the list queues its close, once
        assert h.jobs.get_batch("o", batch["id"])["status"] == "finalizing"
        assert h.queue == [(TASK_FINALIZE, [batch["id"], True])]
        h.drain()
        expired = h.jobs.get_batch("o", batch["id"])
    assert listed["status"] == "finalizing" and listed["finalizing_at"]
    assert expired["status"] == "expired" and expired["expired_at"]
    assert expired["request_counts"] == {"total": 6, "completed": 2, "failed": 4}
    assert [o["custom_id"] for o in h.output("o", expired["output_file_id"])] == ["r0", "r1"]
    errors = [(e["custom_id"], e["error"]["code"]) for e in h.output("o", expired["error_file_id"])]
    assert errors == [
        ("r2", "batch_expired"),
        ("r3", "batch_expired"),
        (None, "invalid_json_line"),
        ("r5", "batch_expired"),
    ]
    assert len(h.calls) == 2


def test_a_line_for_an_adapter_not_served_is_a_404_without_reaching_the_engine() -> None:
    # Ray's LoRA loader failed on it, Celery retried it three times, and the error file said 500.
    from tokenplane_serving.batch.consumer import _engine_call

    call = _engine_call("no-such-app", "tiny", 10, frozenset({"legal"}))  # no Serve app: reaching it would raise
    body = {"model": "tiny:nope", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    status, answer = call(CHAT, body)
    assert status == 404 and answer["error"]["param"] == "model"
    assert "tiny:nope" in answer["error"]["message"] and "tiny:legal" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        (None, "Invalid request: TypeError while validating the body"),
        ([{"role": "user", "content": [None]}], "Message `content` must be a string, null, or a list of content parts"),
    ],
)
def test_a_line_whose_body_crashes_validation_is_a_400_at_once(messages: Any, says: str) -> None:
    # `"messages": null` raised TypeError out of the engine call: retried three times, then a 500 in the error file;
    # a `[null]` content part passed validation (a lazy iterator) and failed only inside the engine.
    from tokenplane_serving.batch.consumer import _engine_call

    call = _engine_call("no-such-app", "tiny", 10)  # no Serve app: reaching it would raise
    status, answer = call(CHAT, {"model": "tiny", "messages": messages, "max_tokens": 4})
    assert status == 400 and answer["error"]["code"] == 400
    assert answer["error"]["message"].startswith(says), answer


def test_a_task_rides_out_a_store_outage_longer_than_a_few_seconds(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batch queue as the consumers run it: Ray's Celery adapter with this deployment's task-processor config,
    # a real worker and Redis. A handler failing for 10 s (the store or Redis unreachable) was retried three times
    # (1 + 2 + 4 s) and then dropped: its request never answered and its batch never finished.
    import gc

    from celery.contrib.testing.worker import start_worker
    from ray.serve.task_consumer import instantiate_adapter_from_config

    from tokenplane_serving.args import ServingArgs
    from tokenplane_serving.batch.consumer import task_processor_config

    monkeypatch.setenv("TOKENPLANE_BATCH_REDIS_URL", redis_url)
    batch = {"enabled": True, "scope": f"team-{uuid.uuid4().hex[:8]}/copilot"}  # as the operator renders it
    args = ServingArgs.model_validate({"model": {"id": "tiny", "source": "/models/tiny"}, "batch": batch})
    config = task_processor_config(args)
    assert config.queue_name == f"tokenplane-batch-{batch['scope']}"
    adapter: Any = instantiate_adapter_from_config(config)
    attempts: list[float] = []
    back_at = time.monotonic() + 10

    def run(line: int) -> int:
        attempts.append(time.monotonic())
        if time.monotonic() < back_at:
            raise ConnectionError("the batch store is unreachable")
        return line

    adapter.register_task_handle(run, name="tokenplane.test.outage")
    with start_worker(
        adapter._app, pool="threads", concurrency=1, perform_ping_check=False, queues=[config.queue_name]
    ):
        task = adapter.enqueue_task_sync("tokenplane.test.outage", args=[7])
        deadline = time.monotonic() + 40
        while (status := adapter.get_task_status_sync(task.id).status) not in ("SUCCESS", "FAILURE"):
            assert time.monotonic() < deadline, f"still {status} after {len(attempts)} attempts"
            time.sleep(0.25)
        del task
        gc.collect()  # Celery's results unsubscribe as they are collected: while Redis still runs
    adapter._app.close()
    assert status == "SUCCESS" and len(attempts) >= 5, (status, len(attempts))


def test_a_close_lost_with_redis_is_queued_again_by_the_next_read(tmp_path: Path) -> None:
    # The cancel queued the close, Redis restarted empty (the task gone with it), and every read for the next
    # 15 minutes left the batch `cancelling`, believing the close still queued.
    with RedisServer(tmp_path) as server:
        store = LocalStore(tmp_path / "store")
        h = Harness(store, server.url)
        batch, requests = h.started("o", [line(f"r{i}") for i in range(3)])
        h.jobs.run_request(*requests[0], call=h.engine)
        assert h.jobs.cancel_batch("o", batch["id"])["status"] == "cancelling"
        assert h.queue == [(TASK_FINALIZE, [batch["id"], False])]
        assert h.jobs.get_batch("o", batch["id"])["status"] == "cancelling"
        assert len(h.queue) == 1, "a read while the close is queued queues no other"
        server.stop()
        server.start()  # no persistence: the queued close is lost
        h.queue.clear()
        assert h.jobs.get_batch("o", batch["id"])["status"] == "cancelling"
        assert h.queue == [(TASK_FINALIZE, [batch["id"], False])], "queued again at once, not 15 minutes later"
        h.jobs.list_batches("o")
        assert len(h.queue) == 1
        h.drain()
        cancelled = h.jobs.get_batch("o", batch["id"])
    assert cancelled["status"] == "cancelled"
    assert [o["custom_id"] for o in h.output("o", cancelled["output_file_id"])] == ["r0"]


def test_a_copy_delivered_again_while_the_first_runs_does_not_close_the_cancelled_batch_without_its_answer(
    store: Store, redis_url: str
) -> None:
    # The queue redelivered r1 (its first copy outlived the visibility timeout); the cancel came in meanwhile, the
    # second copy skipped it and removed r1 from the in-flight set as it ended, while the first still ran: the
    # batch closed `cancelled` without r1, whose answer came a moment later and was in no file.
    h = Harness(store, redis_url)
    batch, requests = h.started("o", [line(f"r{i}") for i in range(3)])
    h.jobs.run_request(*requests[0], call=h.engine)
    seen: dict[str, Any] = {}

    def engine_while_redelivered(endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        assert h.jobs.cancel_batch("o", batch["id"])["status"] == "cancelling"
        seen["second copy ran"] = h.jobs.run_request(*requests[1], call=h.engine)
        h.drain()  # whatever the second copy or the cancel queued
        seen["during"] = h.jobs.get_batch("o", batch["id"])["status"]
        return h.engine(endpoint, body)

    assert h.jobs.run_request(*requests[1], call=engine_while_redelivered)
    assert seen == {"second copy ran": False, "during": "cancelling"}
    cancelled = h.jobs.get_batch("o", batch["id"])
    assert cancelled["status"] == "cancelled"
    assert cancelled["request_counts"] == {"total": 3, "completed": 2, "failed": 0}
    assert [o["custom_id"] for o in h.output("o", cancelled["output_file_id"])] == ["r0", "r1"]


def test_a_cancel_during_validation_closes_with_every_line_error(store: Store, redis_url: str) -> None:
    # The cancel's close ran while the start was still writing line errors: the batch said `cancelled` with an
    # error file holding the first bad line only, and the start's later errors were in no file.
    h = Harness(store, redis_url)
    batch = h.submit("o", [line("a"), "{one", line("b"), "{two", line("a"), "[3]"])
    h.queue.clear()
    write_new = store.write_new
    seen: dict[str, Any] = {}

    def cancel_after_the_first_line_error(key: str, data: bytes) -> bool:
        created = write_new(key, data)
        if key.startswith("results/") and "cancel" not in seen:
            seen["cancel"] = h.jobs.cancel_batch("o", batch["id"])["status"]
            h.drain()  # the close it queued runs now, while the start still validates
            seen["closed"] = h.jobs.get_batch("o", batch["id"])
        return created

    store.write_new = cancel_after_the_first_line_error  # type: ignore[method-assign]
    h.jobs.start(batch["id"])
    assert seen["cancel"] == "cancelling" and h.calls == []
    for cancelled in (seen["closed"], h.jobs.get_batch("o", batch["id"])):
        assert cancelled["status"] == "cancelled"
        assert cancelled["request_counts"] == {"total": 6, "completed": 0, "failed": 4}
        errors = h.output("o", cancelled["error_file_id"])
        assert [e["error"]["message"].split(":")[0] for e in errors] == ["line 2", "line 4", "line 5", "line 6"]


def test_listings_order_same_second_creations_newest_first_and_pages_see_each_once(
    tmp_path: Path, redis_url: str
) -> None:
    # Batches created in the same second were ordered by their random ids: not newest first, and a batch created
    # while a caller paged could land below the cursor among the older ones.
    h = Harness(LocalStore(tmp_path), redis_url)
    created = [h.submit("me", [line("a")]) for _ in range(8)]
    newest_first = [b["id"] for b in reversed(created)]
    assert [b["id"] for b in h.jobs.list_batches("me", limit=100)["data"]] == newest_first
    seen: list[str] = []
    page = h.jobs.list_batches("me", limit=3)
    while True:
        seen += [b["id"] for b in page["data"]]
        h.submit("me", [line("a")])  # created while paging: listed first, above every cursor
        if not page["has_more"]:
            break
        page = h.jobs.list_batches("me", after=page["last_id"], limit=3)
    assert seen == newest_first
    files = h.jobs.list_files("me", order="asc", limit=8)["data"]
    assert [f["id"] for f in files] == [b["input_file_id"] for b in created]


def test_a_cancel_during_validation_of_a_file_without_a_runnable_line_stays_cancelled(
    tmp_path: Path, redis_url: str
) -> None:
    # The start, finding no runnable line, wrote `failed` over the record whatever it said: a batch the cancel had
    # already closed `cancelled` (its files written) turned `failed`.
    store = LocalStore(tmp_path)
    h = Harness(store, redis_url)
    batch = h.submit("o", ["{one", "{two"])
    h.queue.clear()
    write_new = store.write_new

    def cancel_after_the_first_line_error(key: str, data: bytes) -> bool:
        created = write_new(key, data)
        if key.startswith("results/") and not h.queue and h.jobs.get_batch("o", batch["id"])["status"] == "validating":
            h.jobs.cancel_batch("o", batch["id"])
            h.drain()
        return created

    store.write_new = cancel_after_the_first_line_error  # type: ignore[method-assign]
    h.jobs.start(batch["id"])
    cancelled = h.jobs.get_batch("o", batch["id"])
    assert cancelled["status"] == "cancelled" and not cancelled["failed_at"]
    assert cancelled["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    assert len(h.output("o", cancelled["error_file_id"])) == 2


def test_paging_on_from_a_file_deleted_since_or_filtered_out_continues_at_its_place(
    tmp_path: Path, redis_url: str
) -> None:
    # A cleanup loop deleting each file of a page passed the deleted last_id as `after` and got an empty page:
    # it stopped after the first page, leaving the rest. An id not listed for the purpose filter did the same.
    h = Harness(LocalStore(tmp_path), redis_url)
    ids = [h.jobs.create_file("me", f"{i}.jsonl", "batch", line("a").encode())["id"] for i in range(5)]
    newest_first = list(reversed(ids))
    deleted: list[str] = []
    page = h.jobs.list_files("me", limit=2)
    while True:
        for file in page["data"]:
            h.jobs.delete_file("me", file["id"])
            deleted.append(file["id"])
        if not page["has_more"]:
            break
        page = h.jobs.list_files("me", after=page["last_id"], limit=2)
    assert deleted == newest_first and h.jobs.list_files("me")["data"] == []
    asc = h.jobs.list_files("me", order="asc", after=ids[1])
    assert asc["data"] == [] and not asc["has_more"]
    kept = [h.jobs.create_file("me", "k.jsonl", "batch", line("a").encode())["id"] for _ in range(2)]
    assert [f["id"] for f in h.jobs.list_files("me", order="asc", after=ids[4])["data"]] == kept
    batch = h.jobs.create_batch("me", kept[0], CHAT, "24h")
    h.drain()
    output = h.jobs.get_batch("me", batch["id"])["output_file_id"]
    after_output = h.jobs.list_files("me", purpose="batch", after=output)  # newest first: both inputs are older
    assert [f["id"] for f in after_output["data"]] == list(reversed(kept))


def test_the_sweep_expires_tombstones_past_their_ttl_and_keeps_newer_ones(tmp_path: Path, redis_url: str) -> None:
    # Every deleted file left a tombstone for good: a deployment deleting its batch files grew them without bound.
    store = LocalStore(tmp_path)
    h = Harness(store, redis_url)
    old, recent, legacy, kept = (
        h.jobs.create_file("me", "x.jsonl", "batch", line("a").encode())["id"] for _ in range(4)
    )
    for file_id in (old, recent, legacy):
        h.jobs.delete_file("me", file_id)
    tombstone = json.loads(store.read(f"deleted/files/{old}.json") or b"{}")
    tombstone["deleted_ns"] -= TOMBSTONE_TTL_S * 10**9
    store.write(f"deleted/files/{old}.json", json.dumps(tombstone).encode())
    tombstone = json.loads(store.read(f"deleted/files/{legacy}.json") or b"{}")
    del tombstone["deleted_ns"]  # written by a version before tombstones carried their deletion time
    store.write(f"deleted/files/{legacy}.json", json.dumps(tombstone).encode())
    assert h.jobs.sweep() == 0
    assert store.list("deleted/files/") == sorted(f"deleted/files/{f}.json" for f in (recent, legacy))
    assert "deleted_ns" in json.loads(store.read(f"deleted/files/{legacy}.json") or b"{}"), "its TTL starts now"
    assert [f["id"] for f in h.jobs.list_files("me", order="asc", after=recent)["data"]] == [kept]
    with pytest.raises(BatchApiError) as err:
        h.jobs.list_files("me", after=old)
    assert (err.value.status, err.value.code, err.value.param) == (400, "invalid_cursor", "after")


@pytest.mark.parametrize("kind", ["files", "batches"])
def test_an_after_that_names_none_of_the_callers_objects_is_a_400_naming_the_cursor(
    tmp_path: Path, redis_url: str, kind: str
) -> None:
    h = Harness(LocalStore(tmp_path), redis_url)
    theirs = h.submit("other", [line("a")])
    h.submit("me", [line("a")])
    for after in ("file-doesnotexist", theirs["input_file_id"], theirs["id"]):
        with pytest.raises(BatchApiError) as err:
            h.jobs.list_files("me", after=after) if kind == "files" else h.jobs.list_batches("me", after=after)
        assert (err.value.status, err.value.param, err.value.code) == (400, "after", "invalid_cursor")
        assert err.value.message.startswith(f"after {after!r} is not one of your")


def test_a_batch_whose_tasks_redis_lost_mid_way_is_queued_again_for_the_unanswered_lines_only(tmp_path: Path) -> None:
    # Redis restarted empty within the window: the batch's queued tasks and progress sets were gone, and it stayed
    # `in_progress` for 24 h, then expired with 3 of its 5 requests never run.
    with RedisServer(tmp_path) as server:
        store = LocalStore(tmp_path / "store")
        h = Harness(store, server.url)
        batch, requests = h.started("o", [line(f"r{i}") for i in range(5)] + ["{broken"])
        for args in requests[:2]:
            h.jobs.run_request(*args, call=h.engine)
        server.stop()
        server.start()  # no persistence: the 3 queued tasks and the progress sets are lost
        h.queue.clear()
        assert h.jobs.get_batch("o", batch["id"])["status"] == "in_progress"
        assert h.queue == [(TASK_START, [batch["id"], True])]
        h.jobs.list_batches("o")
        assert len(h.queue) == 1, "one read queues it again, not every read"
        h.jobs.start(batch["id"], True)  # counts the two answered again, queues the three others
        assert [args[1] for task, args in h.queue if task == TASK_REQUEST] == [3, 4, 5]
        assert h.jobs.get_batch("o", batch["id"])["request_counts"] == {"total": 6, "completed": 2, "failed": 1}
        h.jobs.run_request(*requests[3], call=h.engine)  # a consumer still held this one when Redis restarted
        h.drain()
        done = h.jobs.get_batch("o", batch["id"])
    assert done["status"] == "completed" and done["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
    assert [o["custom_id"] for o in h.output("o", done["output_file_id"])] == [f"r{i}" for i in range(5)]
    assert len(h.calls) == 5, "each request ran once: the one run meanwhile was not run again"


def test_a_batch_whose_start_redis_lost_is_started_by_the_next_read(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        h = Harness(LocalStore(tmp_path / "store"), server.url)
        batch = h.submit("o", [line("r0"), line("r1")])
        server.stop()
        server.start()
        h.queue.clear()  # the start task is gone
        assert h.jobs.get_batch("o", batch["id"])["status"] == "validating"
        h.drain()
        done = h.jobs.get_batch("o", batch["id"])
    assert done["status"] == "completed" and done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}


def test_the_sweep_moves_open_batches_on_without_anyone_reading_them(tmp_path: Path) -> None:
    # Expiry, a cancel's grace and tasks lost with Redis acted only when the batch's owner read it: a batch nobody
    # polled stayed `in_progress` past its window, and one whose tasks Redis lost never ran them.
    with RedisServer(tmp_path) as server:
        store = LocalStore(tmp_path / "store")
        h = Harness(store, server.url)
        lost, requests = h.started("o", [line("r0"), line("r1")])
        h.jobs.run_request(*requests[0], call=h.engine)
        late, _ = h.started("o", [line("r0")])
        record = json.loads(store.read(f"batches/{late['id']}.json") or b"{}")
        record["batch"]["expires_at"] = int(time.time()) - 1
        store.write(f"batches/{late['id']}.json", json.dumps(record).encode())
        server.stop()
        server.start()
        assert h.jobs.sweep() == 2
        assert sorted(h.queue) == sorted([(TASK_START, [lost["id"], True]), (TASK_FINALIZE, [late["id"], True])])
        assert h.jobs.sweep() == 2 and len(h.queue) == 2, "a second sweep queues nothing again"
        h.drain()
        assert h.jobs.sweep() == 0 and store.list("open/") == [], "closed batches leave the sweep's index"
        statuses = [h.jobs.get_batch("o", b["id"])["status"] for b in (lost, late)]
    assert statuses == ["completed", "expired"] and len(h.calls) == 2


def test_batches_an_earlier_version_created_are_adopted_without_queueing_their_requests_again(
    tmp_path: Path, redis_url: str
) -> None:
    # A batch created before the `queued` marker and the open/ index had neither: after the upgrade its first read
    # took the missing marker for a Redis loss and queued its unanswered requests a second time (3 of 3 here), and
    # the sweep never visited it.
    store = LocalStore(tmp_path)
    h = Harness(store, redis_url)
    olds = [h.started("o", [line(f"r{i}") for i in range(3)]) for _ in range(2)]
    client = redis.Redis.from_url(redis_url)
    for batch, _ in olds:  # as the earlier version left them
        record = json.loads(store.read(f"batches/{batch['id']}.json") or b"{}")
        record.pop("indexed", None)
        store.write(f"batches/{batch['id']}.json", json.dumps(record).encode())
        store.delete(f"open/{batch['id']}")
        client.delete(f"{h.jobs.namespace}:{batch['id']}:queued")
    (read, requests), (unread, _) = olds
    assert h.jobs.get_batch("o", read["id"])["status"] == "in_progress"
    assert h.queue == [] and store.exists(f"open/{read['id']}"), "adopted: indexed, nothing queued again"
    assert h.jobs.sweep() == 2 and h.queue == [] and store.exists(f"open/{unread['id']}")
    for args in requests:  # the earlier version's tasks, still in the queue
        h.jobs.run_request(*args, call=h.engine)
    h.drain()
    done = h.jobs.get_batch("o", read["id"])
    assert done["status"] == "completed" and len(h.calls) == 3


def test_a_read_while_the_batch_is_being_created_does_not_queue_a_second_start(tmp_path: Path, redis_url: str) -> None:
    # The `queued` marker was set after the record was written: a read in between took its absence for a Redis
    # loss and queued a resume, which queued every request a second time.
    store = LocalStore(tmp_path)
    h = Harness(store, redis_url)
    real_write, reads = store.write, []

    def read_as_it_is_written(key: str, data: bytes) -> None:
        real_write(key, data)
        if key.startswith("batches/"):
            reads.append(h.jobs.get_batch("o", key.removeprefix("batches/").removesuffix(".json"))["status"])

    store.write = read_as_it_is_written  # type: ignore[method-assign]
    batch = h.submit("o", [line("a")])
    assert reads == ["validating"] and h.queue == [(TASK_START, [batch["id"]])]
