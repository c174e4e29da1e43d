"""Feature: the OpenAI Batch API endpoints (`/v1/files`, `/v1/batches`), when `batch.enabled`.

Files: upload, list, retrieve, content, delete. Batches: create, list, retrieve, cancel.

Every replica answers them from the shared store and Redis (`tokenplane_serving.batch.jobs`), so any
replica HAProxy picks serves any batch; the work itself runs in the batch consumers. Files and batches
belong to the caller auth found (an API key's name, a token's subject): another caller gets a 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qs

from tokenplane_serving.args import ServingArgs
from tokenplane_serving.auth import openai_error_body
from tokenplane_serving.batch.jobs import BatchApiError, BatchJobs, StoreContention, file_too_large
from tokenplane_serving.features.base import (
    PRINCIPAL_KEY,
    ASGIApp,
    FeatureContext,
    Receive,
    Scope,
    Send,
    Wrapper,
    send_json,
)
from tokenplane_serving.openai_json import json_type

__all__ = ["BatchApiMiddleware", "feature"]

logger = logging.getLogger(__name__)

_ID = r"([A-Za-z0-9_-]{1,128})"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/v1/files$"), "create_file"),
    ("GET", re.compile(r"^/v1/files$"), "list_files"),
    ("GET", re.compile(rf"^/v1/files/{_ID}$"), "get_file"),
    ("DELETE", re.compile(rf"^/v1/files/{_ID}$"), "delete_file"),
    ("GET", re.compile(rf"^/v1/files/{_ID}/content$"), "file_content"),
    ("POST", re.compile(r"^/v1/batches$"), "create_batch"),
    ("GET", re.compile(r"^/v1/batches$"), "list_batches"),
    ("GET", re.compile(rf"^/v1/batches/{_ID}$"), "get_batch"),
    ("POST", re.compile(rf"^/v1/batches/{_ID}/cancel$"), "cancel_batch"),
]
_MULTIPART_SLACK = 64 * 1024  # form fields and part headers around the file


def _route(method: str, path: str) -> tuple[str, tuple[str, ...]] | None:
    for verb, pattern, handler in _ROUTES:
        found = pattern.match(path)
        if found and method == verb:
            return handler, found.groups()
    return None


def _query(scope: Scope) -> dict[str, list[str]]:
    """Parse the query string; bytes that are not UTF-8 (a raw client's) become U+FFFD, as parse_qs decodes `%FF`."""
    return parse_qs(scope.get("query_string", b"").decode("utf-8", "replace"))


def _limit(query: dict[str, list[str]], default: int, most: int) -> int:
    """Read a list's `limit` query parameter: an integer from 1 to `most`, else a 400 saying so."""
    raw = query.get("limit", [str(default)])[0]
    # ASCII digits only: str.isdigit() also passes "²", which int() refuses (a 503 "store unavailable").
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= most:
        raise BatchApiError(400, f"limit must be an integer from 1 to {most}, not {raw!r}", "invalid_limit", "limit")
    return int(raw)


# Where an outage's exceptions come from: the Blob store (azure), the local store (OSError), Redis, and the Celery
# broker. Told apart by module, so this layer imports none of them (only the store talks to Azure).
_OUTAGE_PACKAGES = frozenset({"azure", "redis", "kombu", "celery"})


def _is_outage(err: Exception) -> bool:
    """Whether `err` is the store, Redis or the broker failing (503, retry later), not a bug (500)."""
    if isinstance(err, (OSError, StoreContention)):
        return True
    return any(cls.__module__.split(".")[0] in _OUTAGE_PACKAGES for cls in type(err).__mro__)


class BatchApiMiddleware:
    """Answers the Batch API routes; everything else goes to the inner app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        jobs: Callable[[], BatchJobs],
        max_file_bytes: int,
        sweep_interval_s: float = 0,
    ) -> None:
        """Wrap `app` and start sweeping open batches in the background.

        Args:
            app: The inner ASGI app.
            jobs: Returns the batch lifecycle (connected on first use, so a replica starts without Redis).
            max_file_bytes: Largest accepted upload.
            sweep_interval_s: Seconds between `BatchJobs.sweep` runs (0: none; replicas use `batch.sweep_interval_s`).
        """
        self.app = app
        self._make_jobs = jobs
        self._jobs: BatchJobs | None = None
        self._max = max_file_bytes
        self._stopped = threading.Event()
        if sweep_interval_s > 0:
            threading.Thread(target=self._sweep, args=(sweep_interval_s,), name="batch-sweep", daemon=True).start()

    def _sweep(self, interval_s: float) -> None:
        # Its own lifecycle (own Redis connection): the API's is made on an event loop's worker thread.
        jobs: BatchJobs | None = None
        while not self._stopped.wait(interval_s):
            try:
                jobs = jobs or self._make_jobs()
                jobs.sweep()
            except Exception as err:  # an outage: the next sweep tries again
                logger.warning("batch sweep failed: %s: %s", type(err).__name__, err)

    def stop(self) -> None:
        """Stop the background sweep (after the current one)."""
        self._stopped.set()

    async def _lifecycle(self) -> BatchJobs:
        if self._jobs is None:
            self._jobs = await asyncio.to_thread(self._make_jobs)
        return self._jobs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route Batch API requests; pass the rest on."""
        if scope["type"] != "http" or not scope["path"].startswith(("/v1/files", "/v1/batches")):
            await self.app(scope, receive, send)
            return
        route = _route(scope["method"], scope["path"])
        if route is None:
            message = f"Unknown route {scope['method']} {scope['path']} of the Batch API."
            await send_json(send, 404, openai_error_body(message, "invalid_request_error", "unknown_url"))
            return
        owner = str(scope.get(PRINCIPAL_KEY) or "")
        try:
            jobs = await self._lifecycle()
            result = await getattr(self, f"_{route[0]}")(jobs, owner, scope, receive, *route[1])
        except BatchApiError as err:
            await send_json(send, err.status, json.dumps(err.body()).encode())
            return
        except Exception as err:  # answer, and keep serving the rest
            if _is_outage(err):
                logger.warning("batch API %s %s failed: %s", scope["method"], scope["path"], err)
                message = f"The batch store or queue is unavailable ({type(err).__name__}); retry later."
                await send_json(send, 503, openai_error_body(message, "server_error", "batch_unavailable"))
            else:  # a bug: a retry meets it again, so no Retry-After, and the traceback goes to the log
                logger.exception("batch API %s %s failed", scope["method"], scope["path"])
                message = f"The batch API failed on this request ({type(err).__name__}); see the server's log."
                await send_json(send, 500, openai_error_body(message, "server_error", "internal_error"))
            return
        if isinstance(result, bytes):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/jsonl"),
                        (b"content-length", str(len(result)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": result})
            return
        await send_json(send, 200, json.dumps(result).encode())

    async def _read_json(self, receive: Receive) -> dict[str, Any]:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > 1024 * 1024:
                raise BatchApiError(413, "The request body is over 1 MiB.", "request_too_large")
            if not message.get("more_body", False):
                break
        try:
            body = json.loads(b"".join(chunks))
        except ValueError as err:
            raise BatchApiError(400, f"The body is not valid JSON: {err}", "invalid_json") from None
        if not isinstance(body, dict):
            raise BatchApiError(400, "The body must be a JSON object.", "invalid_json")
        return body

    async def _create_file(self, jobs: BatchJobs, owner: str, scope: Scope, receive: Receive) -> Any:
        from starlette.requests import Request

        length = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self._max + _MULTIPART_SLACK:
            raise file_too_large(int(length), self._max)  # refused before the replica reads it
        try:
            # A text field may be as large as a file: `file` sent as one is then named as such, not as a part
            # "exceeding 1024KB" (starlette's default for fields).
            form = await Request(scope, receive).form(max_files=1, max_fields=8, max_part_size=self._max + 1)
        except Exception as err:  # starlette's MultiPartException and parser errors
            message = f"Send multipart/form-data with `file` and `purpose` ({err})."
            raise BatchApiError(400, message, "invalid_form") from None
        upload, purpose = form.get("file"), form.get("purpose")
        if isinstance(upload, str):
            # curl's `-F 'file=<batch.jsonl'` (and any part without a filename) sends the content as a text field.
            message = (
                "The `file` part has no filename, so it arrived as a text field, not a file. Send the JSONL as a file"
                " part: curl -F file=@batch.jsonl (from stdin: -F 'file=@-;filename=batch.jsonl'), not -F 'file=<...'."
            )
            raise BatchApiError(400, message, "file_without_filename", "file")
        if upload is None:
            message = "Missing the `file` part: send the JSONL input as a file part named `file` (curl -F file=@x)."
            raise BatchApiError(400, message, "missing_file", "file")
        if not isinstance(purpose, str):
            raise BatchApiError(400, "Missing the `purpose` field; use 'batch'.", "missing_purpose", "purpose")
        data = await upload.read()
        await form.close()
        return await asyncio.to_thread(jobs.create_file, owner, upload.filename or "batch.jsonl", purpose, data)

    async def _get_file(self, jobs: BatchJobs, owner: str, scope: Scope, receive: Receive, file_id: str) -> Any:
        return await asyncio.to_thread(jobs.get_file, owner, file_id)

    async def _list_files(self, jobs: BatchJobs, owner: str, scope: Scope, receive: Receive) -> Any:
        query = _query(scope)
        limit = _limit(query, 10_000, 10_000)
        order = query.get("order", ["desc"])[0]
        if order not in ("asc", "desc"):
            raise BatchApiError(400, f"order must be 'asc' or 'desc', not {order!r}", "invalid_order", "order")
        purpose, after = query.get("purpose", [None])[0], query.get("after", [None])[0]
        return await asyncio.to_thread(
            partial(jobs.list_files, owner, purpose=purpose, after=after, limit=limit, order=order)
        )

    async def _delete_file(self, jobs: BatchJobs, owner: str, scope: Scope, receive: Receive, file_id: str) -> Any:
        return await asyncio.to_thread(jobs.delete_file, owner, file_id)

    async def _file_content(self, jobs: BatchJobs, owner: str, scope: Scope, receive: Receive, file_id: str) -> Any:
        return await asyncio.to_thread(jobs.file_content, owner, file_id)

    async def _create_batch(self, jobs: BatchJobs, owner: str, scope: Scope, receive: Receive) -> Any:
        body = await self._read_json(receive)
        for field in ("input_file_id", "endpoint", "completion_window"):
            if body.get(field) is None:
                message = f"Missing required parameter: '{field}' (a string)."
                raise BatchApiError(400, message, "missing_required_parameter", field)
            if not isinstance(body[field], str):
                # OpenAI's wording; "missing" sent the caller looking for a field that was there.
                message = f"Invalid type for '{field}': expected a string, but got {json_type(body[field])} instead."
                raise BatchApiError(400, message, "invalid_type", field)
        create = jobs.create_batch
        window, metadata = body["completion_window"], body.get("metadata")
        return await asyncio.to_thread(create, owner, body["input_file_id"], body["endpoint"], window, metadata)

    async def _list_batches(self, jobs: BatchJobs, owner: str, scope: Scope, receive: Receive) -> Any:
        query = _query(scope)
        limit = _limit(query, 20, 100)  # OpenAI's range: 0 and 500 were clamped to 1 and 100
        return await asyncio.to_thread(jobs.list_batches, owner, query.get("after", [None])[0], limit)

    async def _get_batch(self, jobs: BatchJobs, owner: str, scope: Scope, receive: Receive, batch_id: str) -> Any:
        return await asyncio.to_thread(jobs.get_batch, owner, batch_id)

    async def _cancel_batch(self, jobs: BatchJobs, owner: str, scope: Scope, receive: Receive, batch_id: str) -> Any:
        return await asyncio.to_thread(jobs.cancel_batch, owner, batch_id)


def feature(ctx: FeatureContext) -> Wrapper | None:
    """On when the deployment enables the Batch API."""
    args: ServingArgs = ctx.args
    if not args.batch.enabled:
        return None

    def make_jobs() -> BatchJobs:
        from tokenplane_serving.batch.consumer import open_jobs

        return open_jobs(args)

    def wrap(app: ASGIApp) -> ASGIApp:
        max_file_bytes, sweep_interval_s = args.batch.max_file_mib * 1024 * 1024, args.batch.sweep_interval_s
        return BatchApiMiddleware(app, jobs=make_jobs, max_file_bytes=max_file_bytes, sweep_interval_s=sweep_interval_s)

    return wrap
