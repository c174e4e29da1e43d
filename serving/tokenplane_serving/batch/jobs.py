"""The batch lifecycle, on a `Store` (files, records, results) and Redis (progress sets, the cancel flag).

Delivery is at-least-once: the queue (Celery on Redis, late acknowledgement) hands a request to another
consumer when the one running it dies. Result writes are idempotent: each request's result is written
once under its line number (`Store.write_new`), a request whose result exists is not run again, and
progress is counted in Redis *sets* of line numbers, so a request delivered twice is counted once and
appears once in the output. Whoever completes the last request queues the finalize task; finalizing is
idempotent too (output file ids derive from the batch id, the record changes by compare-and-swap). A cancel
queues its batch's close at once, or, when requests are in flight, the last of them closes it (or the first read
after `CANCEL_GRACE_S` queues it): never a task queued behind the batch's remaining requests.

Closing reads every result (2,500 of them on Azurite: 12 s), so the API side never closes a batch in the
caller's request: it queues the finalize task, which scales a consumer up from zero. A retrieve, a list and each
API replica's background `sweep` of the open batches queue the close of a batch whose window ended or whose
cancel's grace is over, or whose queued close Redis lost. A running batch whose `queued` marker is gone from
Redis lost its tasks with it: the read or sweep queues its start again, which counts the stored results and
queues only the requests without one.

The API side (`create_file`, `create_batch`, `get_batch`, `cancel_batch`, ...) runs in the serving
replicas; the worker side (`start`, `run_request`, `finalize`) in the batch consumers.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from tokenplane_serving.batch import schema
from tokenplane_serving.batch.store import Store
from tokenplane_serving.openai_json import json_type

__all__ = [
    "CANCEL_GRACE_S",
    "TASK_FINALIZE",
    "TASK_REQUEST",
    "TASK_START",
    "TOMBSTONE_TTL_S",
    "BatchApiError",
    "BatchJobs",
    "Call",
    "Enqueue",
    "Redis",
    "file_too_large",
]

logger = logging.getLogger(__name__)

TASK_START = "tokenplane.batch.start"
TASK_REQUEST = "tokenplane.batch.request"
TASK_FINALIZE = "tokenplane.batch.finalize"
_PROGRESS_TTL_S = 14 * 24 * 3600  # Redis progress keys outlive any batch's 24 h window
# OpenAI: a cancelled batch is `cancelling` while its in-flight requests finish, for up to 10 minutes, then
# `cancelled`. A request whose consumer died stays "in flight" in Redis; the batch closes without it after this.
CANCEL_GRACE_S = 600
_CAS_TRIES = 20
# A close queued this long ago and still not done is queued again, whatever Redis says. A close lost with Redis's data
# (a restart without persistence, a failover) is queued again sooner: by the first read after the loss, which
# finds the close's marker gone from Redis along with its task.
_CLOSE_RETRY_S = 900
_CANCEL_CHECK_EVERY = 100  # requests queued between reads of the cancel flag while a batch is queued
# A deleted file's tombstone keeps its place for a caller paging on from it: a cleanup loop pages on within seconds,
# so a week covers any pause, and the tombstones kept are those of the last week's deletions, not of every one.
TOMBSTONE_TTL_S = 7 * 24 * 3600
_TOMBSTONE_SWEEP_S = 3600  # a sweep reads every tombstone: hourly, not on each (minutely) sweep
_ADOPTED_KEY = "meta/adopted-unindexed-batches"  # the first sweep after the upgrade adopted every older open batch

Enqueue = Callable[[str, list[Any]], None]
# (endpoint, body) -> (HTTP status, JSON body): one request through the engine.
Call = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]


class Redis(Protocol):
    """The few redis-py calls the lifecycle uses."""

    def sadd(self, name: str, *values: Any) -> Any: ...  # noqa: D102
    def srem(self, name: str, *values: Any) -> Any: ...  # noqa: D102
    def scard(self, name: str) -> Any: ...  # noqa: D102
    def expire(self, name: str, time: int) -> Any: ...  # noqa: D102
    def set(self, name: str, value: Any, ex: int | None = None, *, nx: bool = False) -> Any: ...  # noqa: D102
    def exists(self, *names: str) -> Any: ...  # noqa: D102


class StoreContention(RuntimeError):
    """A batch record other writers kept changing: retrying later succeeds."""


class BatchApiError(Exception):
    """A client error in the OpenAI error shape."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        """Create the error: HTTP `status`, a message saying what to change, OpenAI's `code` and `param`."""
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        """Return the OpenAI error body."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def file_too_large(size: int, limit: int) -> BatchApiError:
    """Make the 413 for an upload of `size` bytes over the `limit`: both sizes, and what to do instead."""

    def amount(n: int) -> str:
        return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"

    message = (
        f"the file is {amount(size)}; batch input files are at most {amount(limit)} here (batch.max_file_mib):"
        " split it into several files and create a batch for each"
    )
    return BatchApiError(413, message, "file_too_large", "file")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class BatchJobs:
    """Files and batches on one store and one Redis, for one deployment's queue."""

    def __init__(
        self,
        store: Store,
        redis: Redis,
        enqueue: Enqueue,
        *,
        namespace: str,
        max_file_bytes: int,
        model: str | None = None,
    ) -> None:
        """Bind the lifecycle to its store, Redis and queue.

        Args:
            store: Files, batch records and results.
            redis: Progress sets and cancel flags (the broker's Redis).
            enqueue: Puts a task (name, args) on the deployment's batch queue.
            namespace: Redis key prefix (one per deployment).
            max_file_bytes: Largest accepted upload.
            model: The served model, reported in batch objects.
        """
        self.store, self.redis, self.enqueue = store, redis, enqueue
        self.namespace, self.max_file_bytes, self.model = namespace, max_file_bytes, model
        self._tombstones_swept_at: float | None = None  # time.monotonic() of the last `expire_tombstones` by `sweep`

    # Files ---------------------------------------------------------------------------------------

    def create_file(self, owner: str, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        """Store an uploaded file (purpose `batch`: a JSONL input) and return its File object.

        Raises:
            BatchApiError: Wrong purpose, empty or oversize file.
        """
        if purpose != "batch":
            message = f"purpose {purpose!r} is not supported here; use 'batch'"
            raise BatchApiError(400, message, "invalid_purpose", "purpose")
        if not data.removeprefix(b"\xef\xbb\xbf").strip():  # a byte order mark alone is empty too
            raise BatchApiError(400, "the file is empty; upload JSONL with one request per line", "empty_file", "file")
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            # Windows PowerShell 5's `>` and Out-File write UTF-16: every line would fail as "not valid JSON".
            message = "the file is UTF-16 (it starts with a UTF-16 byte order mark); save it as UTF-8 JSONL"
            raise BatchApiError(400, message, "invalid_file_encoding", "file")
        if len(data) > self.max_file_bytes:
            raise file_too_large(len(data), self.max_file_bytes)
        file_id = schema.new_id("file-")
        # Counted while the bytes are at hand, so creating a batch need not read the file back (up to 200 MiB).
        return self._put_file(owner, file_id, filename, purpose, data, requests=schema.count_requests(data))

    def _put_file(
        self, owner: str, file_id: str, filename: str, purpose: str, data: bytes, requests: int | None = None
    ) -> dict[str, Any]:
        created_ns = time.time_ns()
        obj = schema.file_object(
            file_id, size=len(data), created_at=created_ns // 10**9, filename=filename, purpose=purpose
        )
        self.store.write(f"files/{file_id}.data", data)
        record = {"file": obj, "owner": owner, "requests": requests, "created_ns": created_ns}
        self.store.write(f"files/{file_id}.json", _dumps(record))
        return obj

    def get_file(self, owner: str, file_id: str) -> dict[str, Any]:
        """Return the File object.

        Raises:
            BatchApiError: 404 if there is no such file for this caller.
        """
        return dict(self._file_record(owner, file_id)["file"])

    def _file_record(self, owner: str, file_id: str) -> dict[str, Any]:
        raw = self.store.read(f"files/{file_id}.json") if _safe_id(file_id) else None
        record = json.loads(raw) if raw else None
        if record is None or record["owner"] != owner:
            raise BatchApiError(404, f"No such File object: {file_id}", "file_not_found", "file_id")
        return dict(record)

    def list_files(
        self,
        owner: str,
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 10_000,
        order: str = "desc",
    ) -> dict[str, Any]:
        """List the caller's files in OpenAI's list shape (`purpose` filters, `after` pages on, by `created_at`)."""
        files = []
        for key in self.store.list("files/"):
            if not key.endswith(".json"):
                continue
            raw = self.store.read(key)
            record = json.loads(raw) if raw else None
            if record is not None and record["owner"] == owner and purpose in (None, record["file"]["purpose"]):
                files.append((_created_key(record, record["file"]), record["file"]))
        return _list_page(files, after, max(1, min(limit, 10_000)), order != "asc", self._file_position(owner), "file")

    def _file_position(self, owner: str) -> Callable[[str], tuple[int, str] | None]:
        """Where a file id sits in the caller's listings: its record's, or its tombstone's once deleted."""

        def position(file_id: str) -> tuple[int, str] | None:
            for key in (f"files/{file_id}.json", f"deleted/files/{file_id}.json"):
                raw = self.store.read(key) if _safe_id(file_id) else None
                record = json.loads(raw) if raw else None
                if record is not None and record["owner"] == owner:
                    return _created_key(record, record["file"])
            return None

        return position

    def delete_file(self, owner: str, file_id: str) -> dict[str, Any]:
        """Delete a file (input, output or error) and return OpenAI's deletion object.

        Raises:
            BatchApiError: 404 if there is no such file for this caller.
        """
        record = self._file_record(owner, file_id)
        # A tombstone keeps the file's place: a caller paging with it as `after` (deleting each file of a page, as
        # a cleanup loop does) got an empty page, and stopped after the first page.
        tombstone = {
            "file": {"id": file_id, "created_at": record["file"]["created_at"]},
            "owner": owner,
            "created_ns": record.get("created_ns"),
            "deleted_ns": time.time_ns(),  # `expire_tombstones` drops it after TOMBSTONE_TTL_S
        }
        self.store.write(f"deleted/files/{file_id}.json", _dumps(tombstone))
        self.store.delete(f"files/{file_id}.json")  # first: a half-deleted file is gone, not listed without bytes
        self.store.delete(f"files/{file_id}.data")
        return {"id": file_id, "object": "file", "deleted": True}

    def expire_tombstones(self) -> int:
        """Remove the tombstones of files deleted `TOMBSTONE_TTL_S` ago or more; return how many are kept.

        Paging on from such a file is then a 400 `invalid_cursor`, as from any id the caller never had. A tombstone
        written before tombstones carried their deletion time gets one now: it is kept for the full TTL from here.
        """
        now, kept = time.time_ns(), 0
        for key in self.store.list("deleted/files/"):
            raw = self.store.read(key)
            tombstone = json.loads(raw) if raw else None
            if tombstone is None:
                continue
            deleted_ns = tombstone.get("deleted_ns")
            if deleted_ns is not None and now - deleted_ns >= TOMBSTONE_TTL_S * 10**9:
                self.store.delete(key)
                continue
            if deleted_ns is None:
                self.store.write(key, _dumps({**tombstone, "deleted_ns": now}))
            kept += 1
        return kept

    def file_content(self, owner: str, file_id: str) -> bytes:
        """Return the file's bytes (input, output or error file)."""
        self.get_file(owner, file_id)
        return self.store.read(f"files/{file_id}.data") or b""

    # Batches (API side) ---------------------------------------------------------------------------

    def create_batch(
        self, owner: str, input_file_id: str, endpoint: str, completion_window: str, metadata: Any = None
    ) -> dict[str, Any]:
        """Record a batch (status `validating`) and queue its start.

        Raises:
            BatchApiError: Unsupported endpoint or window, bad metadata, unknown input file, or one of more than
                `schema.MAX_REQUESTS` requests (OpenAI refuses the batch; it used to run the first 50,000 and
                write one error per extra line).
        """
        if endpoint not in schema.SUPPORTED_ENDPOINTS:
            supported = ", ".join(schema.SUPPORTED_ENDPOINTS)
            message = f"endpoint {endpoint!r} is not supported; use one of {supported}"
            raise BatchApiError(400, message, "invalid_endpoint", "endpoint")
        if completion_window not in schema.COMPLETION_WINDOWS:
            message = f"completion_window {completion_window!r} is not supported; use '24h'"
            raise BatchApiError(400, message, "invalid_completion_window", "completion_window")
        _check_metadata(metadata)
        file_record = self._file_record(owner, input_file_id)
        file = file_record["file"]
        if file["purpose"] != "batch":
            message = f"file {input_file_id} has purpose {file['purpose']!r}, not 'batch'"
            raise BatchApiError(400, message, "invalid_input_file", "input_file_id")
        requests = file_record.get("requests")
        if requests is None:  # uploaded before files recorded their count
            requests = schema.count_requests(self.store.read(f"files/{input_file_id}.data") or b"")
        if requests > schema.MAX_REQUESTS:
            message = (
                f"file {input_file_id} has {requests} requests; a batch holds at most {schema.MAX_REQUESTS}:"
                " split it into several files and batches"
            )
            raise BatchApiError(400, message, "too_many_requests", "input_file_id")
        batch_id, created_ns = schema.new_id("batch_"), time.time_ns()
        batch = schema.batch_object(
            batch_id,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            created_at=created_ns // 10**9,
            metadata=metadata,
            model=self.model,
        )
        # `indexed`: this version's batch, with its `queued` marker and open/ entry (`_adopt` takes in older ones).
        record = {"batch": batch, "owner": owner, "valid": 0, "created_ns": created_ns, "indexed": True}
        # The marker first: a read between the two writes would take its absence for a loss and queue a second start.
        self.redis.set(self._key(batch_id, "queued"), created_ns // 10**9, ex=_PROGRESS_TTL_S)
        self.store.write(f"batches/{batch_id}.json", _dumps(record))
        self.store.write(f"open/{batch_id}", b"")  # what `sweep` visits: not every batch ever made
        self.enqueue(TASK_START, [batch_id])
        return batch

    def get_batch(self, owner: str, batch_id: str) -> dict[str, Any]:
        """Return the Batch object, with live request counts while it runs.

        Raises:
            BatchApiError: 404 if there is no such batch for this caller.
        """
        record = self._record(batch_id)
        if record is None or record["owner"] != owner:
            raise BatchApiError(404, f"No such Batch object: {batch_id}", "batch_not_found", "batch_id")
        record = self._settle(batch_id, record)
        batch: dict[str, Any] = record["batch"]
        if batch["status"] in ("in_progress", "finalizing", "cancelling"):
            batch["request_counts"] = counts = self._counts(batch_id, record)
            if batch["status"] == "in_progress" and 0 < counts["total"] <= counts["completed"] + counts["failed"]:
                batch["status"] = "finalizing"  # every request is answered and the finalize task queued
        return batch

    def list_batches(self, owner: str, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        """List the caller's batches, newest first, in OpenAI's list shape (`after` pages on)."""
        batches = []
        for key in self.store.list("batches/"):
            raw = self.store.read(key)
            record = json.loads(raw) if raw else None
            if record is not None and record["owner"] == owner:
                batches.append(
                    (_created_key(record, record["batch"]), self._settle(record["batch"]["id"], record)["batch"])
                )
        # Batches are never deleted (OpenAI has no DELETE for them): an `after` not listed here is none of theirs.
        return _list_page(batches, after, max(1, min(limit, 100)), True, lambda _: None, "batch")

    def sweep(self) -> int:
        """Do for every open batch what a read of it does (see `_settle`); return how many are still open.

        Without it a batch moved on only when its owner read it: an expiry, a cancel's grace, a lost close or
        tasks lost with Redis waited for the next retrieve or list. Safe in every replica at once: `_settle`
        queues each close or restart once (compare-and-swap, SET NX). Hourly, it also runs `expire_tombstones`.
        """
        if self._tombstones_swept_at is None or time.monotonic() - self._tombstones_swept_at >= _TOMBSTONE_SWEEP_S:
            self._tombstones_swept_at = time.monotonic()
            self.expire_tombstones()
        if not self.store.exists(_ADOPTED_KEY):
            self._adopt_all()
        still_open = 0
        for key in self.store.list("open/"):
            batch_id = key.removeprefix("open/")
            record = self._record(batch_id)
            if record is None or self._settle(batch_id, record)["batch"]["status"] in schema.TERMINAL_STATUSES:
                self.store.delete(key)
            else:
                still_open += 1
        return still_open

    def _adopt_all(self) -> None:
        """Adopt every open batch an earlier version created (once per store: a marker records the scan)."""
        for key in self.store.list("batches/"):
            raw = self.store.read(key)
            record = json.loads(raw) if raw else None
            if record and not record.get("indexed") and record["batch"]["status"] not in schema.TERMINAL_STATUSES:
                self._adopt(record["batch"]["id"])
        self.store.write(_ADOPTED_KEY, b"")

    def _adopt(self, batch_id: str) -> dict[str, Any] | None:
        """Take in a batch created before the `queued` marker and the open/ index existed; return its record.

        Its tasks are in the queue (an upgrade keeps Redis), but without the marker the first read took it for a
        Redis loss and queued every unanswered request again: twice the engine work for requests run meanwhile.
        Its marker is set (NX: a resume already queued stays the only one), it joins the sweep's index, and its
        record says so. A batch whose tasks Redis lost before the upgrade is not told apart: it expires at the end
        of its window with what completed, as under the version that made it.
        """
        self.redis.set(self._key(batch_id, "queued"), int(time.time()), ex=_PROGRESS_TTL_S, nx=True)
        self.store.write(f"open/{batch_id}", b"")

        def indexed(record: dict[str, Any]) -> bool:
            record["indexed"] = True
            return True

        return self._update(batch_id, indexed)

    def cancel_batch(self, owner: str, batch_id: str) -> dict[str, Any]:
        """Stop a batch: queued requests are skipped, finished ones are kept, requests in flight may finish.

        The batch is `cancelling` while requests are in flight (at most `CANCEL_GRACE_S`), and `cancelled`, with
        the output and error files, once they are done and a consumer closed it. The close is queued by whichever
        comes last, this call or the last request in flight (which closes it itself), not behind the rest of the
        batch's requests.

        Raises:
            BatchApiError: 404 for an unknown batch, 409 if it already finished or is finalizing.
        """
        batch = self.get_batch(owner, batch_id)
        if batch["status"] in ("cancelling", "cancelled"):
            return batch
        if batch["status"] in schema.TERMINAL_STATUSES or batch["status"] == "finalizing":
            message = f"Cannot cancel a batch with status {batch['status']!r}"
            raise BatchApiError(409, message, "batch_not_cancellable", "batch_id")
        self.redis.set(self._key(batch_id, "cancel"), "1", ex=_PROGRESS_TTL_S)

        def cancelling(record: dict[str, Any]) -> bool:
            if record["batch"]["status"] in schema.TERMINAL_STATUSES or record["batch"]["status"] == "finalizing":
                return False
            record["batch"].update(status="cancelling", cancelling_at=int(time.time()))
            return True

        self._update(batch_id, cancelling)
        return self.get_batch(owner, batch_id)  # queues its close unless requests are in flight

    # Batches (worker side) ------------------------------------------------------------------------

    def start(self, batch_id: str, resume: bool = False) -> None:
        """Validate the input file, record line errors as results, queue one task per request without a result.

        The record says `in_progress` (with the count the finalize trigger needs) before any request is
        queued, and `queued` once all are: a start redelivered in between queues them again (results are
        written once, so a request queued twice is still answered once in the output).

        Args:
            batch_id: The batch.
            resume: Queue the batch again after Redis lost its tasks and progress sets: the input file and the
                stored results are the truth; progress is counted again from the results, and only the requests
                without one are queued.
        """
        record = self._record(batch_id)
        if record is None or record["batch"]["status"] not in ("validating", "in_progress"):
            return
        if record.get("queued") and not resume:
            return
        batch = record["batch"]
        data = self.store.read(f"files/{batch['input_file_id']}.data")
        if data is None:  # deleted (DELETE /v1/files/{id}) before the batch started
            message = f"the input file {batch['input_file_id']} was deleted before the batch started; upload it again"
            self._fail(batch_id, schema.ParsedInput([], [schema.LineError(0, None, "input_file_deleted", message)]))
            return
        parsed = schema.parse_input(data, batch["endpoint"])
        for error in parsed.errors:
            entry = schema.error_line(error.custom_id, error.code, error.message)
            self._write_result(batch_id, error.line, False, entry)
        if not parsed.requests:
            self._fail(batch_id, parsed)
            return

        def in_progress(record: dict[str, Any]) -> bool:
            if record["batch"]["status"] not in ("validating", "in_progress"):
                return False
            record["valid"] = len(parsed.requests)
            record["failed_lines"] = len(parsed.errors)
            record["batch"].update(
                status="in_progress",
                in_progress_at=record["batch"]["in_progress_at"] or int(time.time()),
                errors=schema.reported_errors(parsed.errors),
                request_counts={"total": parsed.total, "completed": 0, "failed": len(parsed.errors)},
            )
            return True

        if self._update(batch_id, in_progress) is None:
            return  # cancelled meanwhile: the cancel queued its close
        self.redis.set(self._key(batch_id, "queued"), int(time.time()), ex=_PROGRESS_TTL_S)
        answered = self._recount(batch_id, parsed.requests)
        if len(answered) == len(parsed.requests):
            self.enqueue(TASK_FINALIZE, [batch_id])  # every request was answered before Redis lost the close
        cancel = self._key(batch_id, "cancel")
        for i, request in enumerate(r for r in parsed.requests if r.line not in answered):
            # A cancel arriving while a large batch is queued stops the rest: every task queued after it would only
            # scale the consumers up (they scale on the queue's length) to skip it.
            if i % _CANCEL_CHECK_EVERY == 0 and self.redis.exists(cancel):
                return
            self.enqueue(TASK_REQUEST, [batch_id, request.line, request.custom_id, request.body])

        def queued(record: dict[str, Any]) -> bool:
            record["queued"] = True
            return True

        self._update(batch_id, queued)

    def _recount(self, batch_id: str, requests: list[schema.BatchRequest]) -> set[int]:
        """Count the requests that have a result into the progress sets (lost with Redis's data); return their lines."""
        lines = {request.line for request in requests}
        answered = set()
        for key in self.store.list(f"results/{batch_id}/"):
            line = int(key.rsplit("/", 1)[-1].removesuffix(".json"))
            if line in lines:  # not a line error: those are counted in the record's `failed_lines`
                self._count(batch_id, line)
                answered.add(line)
        return answered

    def _fail(self, batch_id: str, parsed: schema.ParsedInput) -> None:
        def failed(record: dict[str, Any]) -> bool:
            if record["batch"]["status"] not in ("validating", "in_progress"):
                return False  # cancelled while validating: it closes (or closed) `cancelled`, with these errors
            record["batch"].update(
                status="failed",
                failed_at=int(time.time()),
                errors=schema.reported_errors(parsed.errors)
                or schema.reported_errors([schema.LineError(0, None, "empty_file", "the input file has no requests")]),
                request_counts={"total": parsed.total, "completed": 0, "failed": parsed.total},
            )
            return True

        self._update(batch_id, failed)

    def run_request(self, batch_id: str, line: int, custom_id: str, body: dict[str, Any], call: Call) -> bool:
        """Run one request unless its batch was cancelled or it was already answered; write its result once.

        While it runs it is registered in flight (a Redis set): a batch cancelled meanwhile stays `cancelling`
        until it ends, and then this call closes the batch, with its answer, when it was the last one in flight.

        A request still queued when the batch's completion window ends is not run: it goes to the error file
        as `batch_expired`, as OpenAI does, and the batch ends `expired`.

        Returns:
            Whether the engine was called.
        """
        record = self._record(batch_id)
        if record is None or record["batch"]["status"] in schema.TERMINAL_STATUSES:
            return False  # e.g. the rest of a cancelled batch's queue: one read each
        cancel, running = self._key(batch_id, "cancel"), self._key(batch_id, "running")
        # In flight before the cancel flag is read: a cancel either sees this request running (and leaves closing
        # the batch to it) or this request sees the flag (and does not run). Never both missed. One member per
        # delivery, not per line: a copy delivered again while the first still runs would remove the line's
        # member as it ends, and the batch would close without the first copy's answer.
        delivery = f"{line}:{uuid.uuid4().hex}"
        self.redis.sadd(running, delivery)
        self.redis.expire(running, _PROGRESS_TTL_S)
        try:
            called = not self.redis.exists(cancel) and self._run(batch_id, line, custom_id, body, call, record)
        finally:
            self.redis.srem(running, delivery)
        fresh = self._record(batch_id) if self.redis.exists(cancel) else None
        if fresh is not None and fresh["batch"]["status"] == "cancelling":
            self.finalize(batch_id)  # the last request in flight closes the cancelled batch (finalize waits for it)
        return called

    def _run(
        self, batch_id: str, line: int, custom_id: str, body: dict[str, Any], call: Call, record: dict[str, Any]
    ) -> bool:
        batch, called = record["batch"], False
        if not self.store.exists(self._result_key(batch_id, line)):
            if time.time() > batch["expires_at"]:
                message = "This request could not be executed before the completion window expired."
                self._write_result(batch_id, line, False, schema.error_line(custom_id, "batch_expired", message))
            else:
                status, answer = call(batch["endpoint"], body)
                request_id = str(answer.get("id") or schema.new_id("req_"))
                ok = 200 <= status < 300
                self._write_result(batch_id, line, ok, schema.output_line(custom_id, status, answer, request_id))
                called = True
        self._count_and_maybe_finalize(batch_id, line, record)
        return called

    def finalize(self, batch_id: str, *, expire: bool = False) -> None:
        """Write the output and error files from the results and close the batch (idempotent).

        Args:
            batch_id: The batch.
            expire: Close it as `expired` (its window ended): every request of the input file without a result
                goes to the error file as `batch_expired`, whether or not its task still exists.
        """
        record = self._record(batch_id)
        if record is None or record["batch"]["status"] in schema.TERMINAL_STATUSES:
            return
        if self._in_flight_after_cancel(record):
            return  # the last request in flight (or the grace's end) closes it
        results: dict[int, tuple[bool, dict[str, Any]]] = {}
        for key in self.store.list(f"results/{batch_id}/"):
            raw = self.store.read(key)
            if raw:
                result = json.loads(raw)
                results[int(key.rsplit("/", 1)[-1].removesuffix(".json"))] = (bool(result["ok"]), result["line"])
        # A cancel that came after the last request was answered (a moment before this task ran) cancelled nothing:
        # the batch is `completed`, as it was when this task ran first and the cancel got a 409.
        all_answered = 0 < record["batch"]["request_counts"]["total"] <= len(results)
        cancel = record["batch"]["status"] == "cancelling" or bool(self.redis.exists(self._key(batch_id, "cancel")))
        cancelled = cancel and not all_answered
        input_total = None
        if expire and not cancelled:
            input_total = self._expire_missing(record["batch"], results)
        elif cancelled and not record.get("valid"):
            # Cancelled while validating: the start may still be writing the line errors (or not have begun), and
            # nothing writes them once the batch is closed. The input file names them all.
            parsed = self._input_errors(record["batch"], results)
            input_total = parsed.total if parsed else None
        ok_lines = [entry for _, (ok, entry) in sorted(results.items()) if ok]
        error_lines = [entry for _, (ok, entry) in sorted(results.items()) if not ok]
        expired = expire or any((line.get("error") or {}).get("code") == "batch_expired" for line in error_lines)
        owner = record["owner"]
        hex_id = batch_id.removeprefix("batch_")
        output_id = self._result_file(owner, f"file-{hex_id}o", f"{batch_id}_output.jsonl", ok_lines)
        error_id = self._result_file(owner, f"file-{hex_id}e", f"{batch_id}_error.jsonl", error_lines)
        now = int(time.time())

        def closed(record: dict[str, Any]) -> bool:
            batch = record["batch"]
            if batch["status"] in schema.TERMINAL_STATUSES:
                return False
            total = input_total or batch["request_counts"]["total"] or len(ok_lines) + len(error_lines)
            batch.update(
                output_file_id=output_id,
                error_file_id=error_id,
                finalizing_at=batch["finalizing_at"] or now,
                request_counts={"total": total, "completed": len(ok_lines), "failed": len(error_lines)},
            )
            if cancelled:
                batch.update(status="cancelled", cancelled_at=now)
            elif expired:
                batch.update(status="expired", expired_at=now)
            else:
                batch.update(status="completed", completed_at=now)
            return True

        self._update(batch_id, closed)

    # Helpers --------------------------------------------------------------------------------------

    def _expire_missing(self, batch: dict[str, Any], results: dict[int, tuple[bool, dict[str, Any]]]) -> int | None:
        """Add a `batch_expired` error for each input line without a result; return the input's request count.

        The input file is the durable list of the batch's requests: the queue and progress sets live in Redis,
        and after Redis lost its data (a restart without persistence, a failover) nothing else names them.
        """
        parsed = self._input_errors(batch, results)
        if parsed is None:
            return None  # deleted: only what has a result is reported
        message = "This request could not be executed before the completion window expired."
        for request in parsed.requests:
            results.setdefault(request.line, (False, schema.error_line(request.custom_id, "batch_expired", message)))
        return parsed.total

    def _input_errors(
        self, batch: dict[str, Any], results: dict[int, tuple[bool, dict[str, Any]]]
    ) -> schema.ParsedInput | None:
        """Add each of the input file's line errors without a result; return the parsed input (None if deleted)."""
        data = self.store.read(f"files/{batch['input_file_id']}.data")
        if data is None:
            return None
        parsed = schema.parse_input(data, batch["endpoint"])
        for error in parsed.errors:
            results.setdefault(error.line, (False, schema.error_line(error.custom_id, error.code, error.message)))
        return parsed

    def _in_flight_after_cancel(self, record: dict[str, Any]) -> bool:
        """Whether a cancelling batch still waits for requests in flight (within `CANCEL_GRACE_S` of the cancel)."""
        batch = record["batch"]
        if batch["status"] != "cancelling" or time.time() >= (batch["cancelling_at"] or 0) + CANCEL_GRACE_S:
            return False
        return int(self.redis.scard(self._key(batch["id"], "running"))) > 0

    def _settle(self, batch_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Queue the close of a batch nothing else will close, once; return the record as it is then.

        A cancelling batch closes once its requests in flight are done (or had their grace). A batch still open
        when its completion window ends is `finalizing` until a consumer closes it `expired`, with what completed
        in the output file: its tasks may be gone with Redis's data, and then no consumer would ever finalize it.
        """
        if record["batch"]["status"] not in schema.TERMINAL_STATUSES and not record.get("indexed"):
            record = self._adopt(batch_id) or record
        batch = record["batch"]
        if batch["status"] in schema.TERMINAL_STATUSES:
            return record
        if batch["status"] == "cancelling":
            if self._in_flight_after_cancel(record):
                return record
            expire = False
        elif time.time() >= batch["expires_at"]:
            expire = True
        else:
            # Its `queued` marker lives in the queue's Redis: gone, so are its tasks and progress (a restart without
            # persistence, a failover), and nothing would ever run the rest. One reader (NX) queues it again.
            if self.redis.set(self._key(batch_id, "queued"), int(time.time()), ex=_PROGRESS_TTL_S, nx=True):
                logger.warning("batch %s: its tasks were lost with Redis's data; queueing the rest again", batch_id)
                self.enqueue(TASK_START, [batch_id, True])
            return record
        now, marker = int(time.time()), self._key(batch_id, "closing")
        queued_at = record.get("closing_at")
        if queued_at is not None and now - queued_at < _CLOSE_RETRY_S and self.redis.exists(marker):
            return record  # its close is queued (or running): every read would queue another

        def closing(record: dict[str, Any]) -> bool:
            batch = record["batch"]
            if batch["status"] in schema.TERMINAL_STATUSES or record.get("closing_at") != queued_at:
                return False  # closed, or another read queued the close since this one read the record
            record["closing_at"] = now
            if expire:
                batch.update(status="finalizing", finalizing_at=batch["finalizing_at"] or now)
            return True

        if (closed := self._update(batch_id, closing)) is None:
            return self._record(batch_id) or record
        # Lives in the queue's Redis: lost with the task, and then the next read queues the close again.
        self.redis.set(marker, now, ex=_CLOSE_RETRY_S)
        self.enqueue(TASK_FINALIZE, [batch_id, expire])
        return closed

    def _key(self, batch_id: str, what: str) -> str:
        return f"{self.namespace}:{batch_id}:{what}"

    @staticmethod
    def _result_key(batch_id: str, line: int) -> str:
        return f"results/{batch_id}/{line:08d}.json"

    def _record(self, batch_id: str) -> dict[str, Any] | None:
        raw = self.store.read(f"batches/{batch_id}.json") if _safe_id(batch_id) else None
        return json.loads(raw) if raw else None

    def _update(self, batch_id: str, change: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        # Compare-and-swap: a cancel, a finalize and a start may race on one record.
        for _ in range(_CAS_TRIES):
            found = self.store.read_versioned(f"batches/{batch_id}.json")
            if found is None:
                return None
            record: dict[str, Any] = json.loads(found[0])
            if not change(record):
                return None
            if self.store.replace(f"batches/{batch_id}.json", _dumps(record), found[1]):
                return record
        raise StoreContention(f"batch {batch_id}: the record kept changing under {_CAS_TRIES} updates")

    def _write_result(self, batch_id: str, line: int, ok: bool, entry: dict[str, Any]) -> bool:
        return self.store.write_new(self._result_key(batch_id, line), _dumps({"ok": ok, "line": entry}))

    def _count(self, batch_id: str, line: int) -> None:
        done = self._key(batch_id, "done")
        self.redis.sadd(done, line)
        self.redis.expire(done, _PROGRESS_TTL_S)
        raw = self.store.read(self._result_key(batch_id, line))
        if raw and not json.loads(raw)["ok"]:
            failed = self._key(batch_id, "failed")
            self.redis.sadd(failed, line)
            self.redis.expire(failed, _PROGRESS_TTL_S)

    def _count_and_maybe_finalize(self, batch_id: str, line: int, record: dict[str, Any]) -> None:
        self._count(batch_id, line)
        done = self._key(batch_id, "done")
        if int(self.redis.scard(done)) >= int(record.get("valid") or 0) > 0:
            self.enqueue(TASK_FINALIZE, [batch_id])

    def _counts(self, batch_id: str, record: dict[str, Any]) -> dict[str, int]:
        done = int(self.redis.scard(self._key(batch_id, "done")))
        failed = int(self.redis.scard(self._key(batch_id, "failed")))
        total = int(record["batch"]["request_counts"]["total"])
        invalid = int(record.get("failed_lines") or 0)
        return {"total": total, "completed": done - failed, "failed": failed + invalid}

    def _result_file(self, owner: str, file_id: str, filename: str, lines: list[dict[str, Any]]) -> str | None:
        if not lines:
            return None
        data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        self._put_file(owner, file_id, filename, "batch_output", data)
        return file_id


_METADATA_PAIRS, _METADATA_KEY_CHARS, _METADATA_VALUE_CHARS = 16, 64, 512  # OpenAI's metadata limits


def _check_metadata(metadata: Any) -> None:
    """Refuse metadata OpenAI refuses: not an object of strings, over 16 pairs, keys over 64 or values over 512 chars.

    Raises:
        BatchApiError: 400 with param `metadata`, naming the pair and the limit.
    """

    def bad(message: str) -> BatchApiError:
        return BatchApiError(400, message, "invalid_metadata", "metadata")

    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise bad(f"metadata must be an object of string keys and string values, not {json_type(metadata)}")
    if len(metadata) > _METADATA_PAIRS:
        raise bad(f"metadata has {len(metadata)} pairs; at most {_METADATA_PAIRS} are allowed")
    for key, value in metadata.items():
        if len(key) > _METADATA_KEY_CHARS:
            raise bad(f"metadata key {key[:20]!r}... has {len(key)} characters; keys are at most {_METADATA_KEY_CHARS}")
        if not isinstance(value, str):
            raise bad(f"metadata[{key!r}] must be a string, not {json_type(value)}")
        if len(value) > _METADATA_VALUE_CHARS:
            limit = _METADATA_VALUE_CHARS
            raise bad(f"metadata[{key!r}] has {len(value)} characters; values are at most {limit}")


def _safe_id(object_id: str) -> bool:
    # Ids become store keys: letters, digits, '-' and '_' only.
    return bool(object_id) and len(object_id) <= 128 and all(c.isalnum() or c in "-_" for c in object_id)


def _created_key(record: dict[str, Any], obj: dict[str, Any]) -> tuple[int, str]:
    """Order files and batches by creation to the nanosecond, then id: a total order that later creations only extend.

    `created_at` is in whole seconds (OpenAI's field); ordered by it and then by the random id, a batch created
    later in the same second could land in the middle of a listing. Records written before `created_ns` existed
    count from the start of their second.
    """
    return int(record.get("created_ns") or obj["created_at"] * 10**9), str(obj["id"])


def _list_page(
    keyed: list[tuple[tuple[int, str], dict[str, Any]]],
    after: str | None,
    size: int,
    descending: bool,
    position: Callable[[str], tuple[int, str] | None],
    kind: str,
) -> dict[str, Any]:
    """Return OpenAI's list object: up to `size` items after the one with id `after`, in creation order.

    `keyed` pairs each item with its `_created_key`; `position` finds the key of an id not in `keyed` (filtered out,
    or deleted since the caller's last page), and the page continues from its place.

    Raises:
        BatchApiError: 400 if `after` names no item of the caller's, now or before.
    """
    keyed = sorted(keyed, key=lambda found: found[0], reverse=descending)
    if after is not None:
        cursor = next((key for key, item in keyed if item["id"] == after), None) or position(after)
        if cursor is None:
            message = f"after {after!r} is not one of your {kind} ids: pass the last_id of a page this list returned"
            raise BatchApiError(400, message, "invalid_cursor", "after")
        keyed = [(key, item) for key, item in keyed if (key < cursor if descending else key > cursor)]
    items = [item for _, item in keyed]
    page = items[:size]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > len(page),
    }
