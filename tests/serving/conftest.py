"""Shared serving fixtures: one tiny model, served once per session by a real Ray Serve + vLLM."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenplane_serving.args import ServingArgs
from tokenplane_serving.local import LocalServer, serve_local
from tokenplane_serving.tinymodel import write_tiny_model

REPO_TINY = Path(__file__).resolve().parents[2] / "models" / "tiny"
MODEL_ID = "tiny"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Reuse `make model`'s output when it is there; write_tiny_model is idempotent either way.
    if (REPO_TINY / "tokenplane_tiny.json").exists():
        return write_tiny_model(REPO_TINY)
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_serving_args(tiny_model_dir: Path) -> ServingArgs:
    return ServingArgs.model_validate(
        {
            "model": {"id": MODEL_ID, "source": str(tiny_model_dir)},
            "accelerator": {"kind": "cpu", "cpu_kv_cache_gib": 1},
            "engine": {"dtype": "bfloat16", "max_model_len": 1024, "enforce_eager": True, "max_num_seqs": 16},
        }
    )


@pytest.fixture(scope="session")
def tiny_server(tiny_serving_args: ServingArgs) -> Iterator[LocalServer]:
    """The one real Ray Serve + vLLM instance of the run (about a minute to start on 2 cores)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    started = time.monotonic()
    server = serve_local(tiny_serving_args, port=_free_port(), block=False, timeout_s=480)
    print(f"\n[tiny_server] ready after {time.monotonic() - started:.1f}s at {server.base_url}")
    try:
        yield server
    finally:
        server.stop()
