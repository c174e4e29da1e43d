"""Benchmark: does batch fill the valleys? Interactive latency with and without a batch running, and batch tokens.

Run with `pytest --benchmark -m benchmark -s tests/serving/test_batch_benchmark.py` (under the live lock). It
prints the numbers; it asserts only what must hold whatever the machine: every request answered.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.serving.conftest import API_KEYS, MODEL_ID
from tokenplane_serving.local import LocalServer

pytestmark = [pytest.mark.serving, pytest.mark.benchmark]

INTERACTIVE_REQUESTS, INTERACTIVE_CONCURRENCY, INTERACTIVE_TOKENS = 30, 2, 16
BATCH_REQUESTS, BATCH_TOKENS = 40, 64
CONSUMER_CONCURRENCY = 2  # tiny_serving_args' batch.concurrency, one consumer


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18]


def interactive_round(client: openai.OpenAI) -> tuple[list[float], int, float]:
    def one(i: int) -> tuple[float, int]:
        started = time.monotonic()
        answer = client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": f"Question {i}: what is the colour of the sky?"}],
            max_tokens=INTERACTIVE_TOKENS,
            temperature=0,
        )
        assert answer.usage is not None
        return time.monotonic() - started, answer.usage.completion_tokens

    started = time.monotonic()
    with ThreadPoolExecutor(INTERACTIVE_CONCURRENCY) as pool:
        results = list(pool.map(one, range(INTERACTIVE_REQUESTS)))
    return [r[0] for r in results], sum(r[1] for r in results), time.monotonic() - started


def test_interactive_p95_with_and_without_a_batch(tiny_server: LocalServer) -> None:
    client = openai.OpenAI(base_url=tiny_server.openai_base_url, api_key=API_KEYS[0], max_retries=0)
    interactive_round(client)  # warm up
    alone, alone_tokens, alone_s = interactive_round(client)

    rows = [
        {
            "custom_id": f"b{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": f"Write a long story number {i}"}],
                "max_tokens": BATCH_TOKENS,
                "ignore_eos": True,
            },
        }
        for i in range(BATCH_REQUESTS)
    ]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    uploaded = client.files.create(file=("bench.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while (counts := client.batches.retrieve(batch.id).request_counts) is None or counts.completed < 1:
        assert time.monotonic() < deadline, "the batch did not start"
        time.sleep(0.2)
    batch_started = time.monotonic()
    mixed: dict[str, Any] = {}
    done = threading.Event()

    def run_interactive() -> None:
        mixed["latencies"], mixed["tokens"], mixed["seconds"] = interactive_round(client)
        done.set()

    worker = threading.Thread(target=run_interactive)
    worker.start()
    worker.join(timeout=300)
    assert done.is_set()
    while (final := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline + 300, final.request_counts
        time.sleep(0.5)
    batch_s = time.monotonic() - batch_started
    assert final.status == "completed" and final.request_counts is not None
    assert final.request_counts.completed == BATCH_REQUESTS
    output = [json.loads(x) for x in client.files.content(final.output_file_id or "").content.splitlines()]
    batch_tokens = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in output)

    report = {
        "interactive_alone": {
            "p50_s": round(statistics.median(alone), 3),
            "p95_s": round(p95(alone), 3),
            "tokens_per_s": round(alone_tokens / alone_s, 1),
        },
        "interactive_with_batch": {
            "p50_s": round(statistics.median(mixed["latencies"]), 3),
            "p95_s": round(p95(mixed["latencies"]), 3),
            "tokens_per_s": round(mixed["tokens"] / mixed["seconds"], 1),
        },
        "batch": {
            "requests": BATCH_REQUESTS,
            "output_tokens": batch_tokens,
            "seconds_after_first_answer": round(batch_s, 1),
            "tokens_per_s": round(batch_tokens / batch_s, 1),
        },
    }
    # One CPU replica stands for one GPU: the replica-hour is the unit tokens per GPU-hour are counted in.
    report["tokens_per_replica_hour"] = {
        "interactive_alone": round(alone_tokens / alone_s * 3600),
        "batch_gained": round(batch_tokens / batch_s * 3600),
    }
    # The control: the same load sent as interactive traffic (priority 0, same concurrency as the consumers).
    stop = threading.Event()

    def background() -> None:
        i = 0
        while not stop.is_set():
            client.chat.completions.create(
                model=MODEL_ID,
                max_tokens=BATCH_TOKENS,
                extra_body={"ignore_eos": True},
                messages=[{"role": "user", "content": f"Write a long story number {i}"}],
            )
            i += 1

    loaders = [threading.Thread(target=background) for _ in range(CONSUMER_CONCURRENCY)]
    for loader in loaders:
        loader.start()
    time.sleep(2)
    same, same_tokens, same_s = interactive_round(client)
    stop.set()
    for loader in loaders:
        loader.join(timeout=120)
    report["interactive_with_same_load_unprioritized"] = {
        "p50_s": round(statistics.median(same), 3),
        "p95_s": round(p95(same), 3),
        "tokens_per_s": round(same_tokens / same_s, 1),
    }
    report["p95_ratio_with_batch"] = round(
        report["interactive_with_batch"]["p95_s"] / report["interactive_alone"]["p95_s"], 2
    )
    print("\n[batch benchmark]", json.dumps(report, indent=2))
