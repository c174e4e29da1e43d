"""One short real `tokenplane bench` run against the session's Ray Serve + vLLM on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.serving.conftest import API_KEYS, MAX_ONGOING, MODEL_ID
from tokenplane_cli import app
from tokenplane_serving.local import LocalServer

pytestmark = pytest.mark.serving

REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS = 12, 48, 16


def test_bench_report_agrees_with_the_servers_usage(
    tiny_server: LocalServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    saved = tmp_path / "requests.jsonl"
    args = [
        "bench", tiny_server.base_url, "--api-key", API_KEYS[0], "--model", MODEL_ID,
        "--concurrency", str(MAX_ONGOING), "-n", str(REQUESTS),
        "--input-tokens", str(INPUT_TOKENS), "--output-tokens", str(OUTPUT_TOKENS),
        "--tokenizer", str(tiny_model_dir), "--goodput", "ttft:60000", "--vm-size", "Standard_NC24ads_A100_v4",
        "-o", "json", "--save-requests", str(saved),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = [json.loads(line) for line in saved.read_text().splitlines()]

    assert report["completed"] == REQUESTS == len(rows) and report["failed"] == 0
    # ignore_eos: every answer is exactly max_tokens long, by the server's own count.
    assert all(r["completion_tokens"] == OUTPUT_TOKENS for r in rows)
    assert report["total_output_tokens"] == REQUESTS * OUTPUT_TOKENS
    # Prompts cut with the model's tokenizer: the server counts the same content plus one fixed template overhead.
    overheads = {r["prompt_tokens"] - INPUT_TOKENS for r in rows}
    assert len(overheads) == 1 and 0 <= overheads.pop() < 32
    assert report["total_input_tokens"] == sum(r["prompt_tokens"] for r in rows)
    for r in rows:
        assert 0 < r["ttft"] <= r["e2el"]
        assert r["e2el"] == pytest.approx(r["ttft"] + sum(r["itl"]), abs=1e-3)
    assert report["mean_ttft_ms"] <= report["mean_e2el_ms"]
    assert report["output_throughput"] == pytest.approx(report["total_output_tokens"] / report["duration"])
    assert report["request_goodput"] == pytest.approx(report["request_throughput"])  # a 60 s TTFT SLO
    assert report["gpus"] == 1 and report["usd_per_million_output_tokens"] > 0
