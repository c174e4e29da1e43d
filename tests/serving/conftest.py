"""Shared serving fixtures: one tiny model, served once per session by a real Ray Serve + vLLM.

The shared server carries everything the single-replica tests need at once (two API keys, a LoRA
adapter, a small backpressure budget, the response cache, the Batch API), so the session pays for one engine start.
Its model and adapter come from Azure Blob (Azurite), as a cluster deployment's `az://` sources do. The cache's
Redis runs only while test_cache_live.py runs: for every other test Redis is down, so they see the engine's own
answers (and the cache's outage path runs all session). Entra ID and
two-replica routing share a second instance (test_routing.py).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.azurite import Azurite
from tests.support.redis_server import RedisServer
from tokenplane_serving.args import ServingArgs
from tokenplane_serving.blob_uri import BLOB_CREDENTIAL_ENV
from tokenplane_serving.local import LocalServer, serve_local
from tokenplane_serving.mapping import FAST_PATH_ENV
from tokenplane_serving.tinymodel import write_tiny_lora, write_tiny_model

# Ray Serve LLM reads its direct-streaming switch once per process, when first imported: set it before
# any test imports ray.serve.llm (serve_local sets the same for its own Ray).
os.environ.update(FAST_PATH_ENV)

_STARTED: list[LocalServer] = []

REPO_TINY = Path(__file__).resolve().parents[2] / "models" / "tiny"
MODEL_ID = "tiny"
ADAPTER = "sql"
API_KEYS = ("tp-key-alpha-0123456789", "tp-key-beta-9876543210")
# A caller of its own for the rate-limit test, so exhausting its budget leaves the other tests' alone.
LIMITED_KEY = "tp-key-limited-5555555555"
TOKENS_PER_MINUTE, REQUESTS_PER_MINUTE = 200_000, 6_000
# In flight per replica and queued at the ingress: small, so an overload test needs few requests.
MAX_ONGOING, MAX_QUEUED = 4, 4
# The environment variable the replicas read the response cache's Redis URL from (the operator's name for it).
CACHE_REDIS_URL_ENV = "TOKENPLANE_CACHE_REDIS_URL"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Reuse `make model`'s output when it is there; write_tiny_model is idempotent either way.
    if (REPO_TINY / "tokenplane_tiny.json").exists():
        return write_tiny_model(REPO_TINY)
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_lora_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_lora(tmp_path_factory.mktemp("adapters") / ADAPTER, tiny_model_dir, rank=8, alpha=16)


@pytest.fixture(scope="session")
def api_keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Secret-like mount: one key per file (trailing newline as `kubectl create secret` leaves it)."""
    keys = tmp_path_factory.mktemp("api-keys")
    for name, key in zip(("current", "next", "limited"), (*API_KEYS, LIMITED_KEY), strict=True):
        (keys / name).write_text(key + "\n")
    return keys


# Batch on the shared server: a request whose consumer died is redelivered after this long.
BATCH_REDELIVERY_S = 8


@pytest.fixture(scope="session")
def cache_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The shared server's cache store: its port is reserved here, the server is started only by the cache tests."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def blob_download_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the shared server's replica downloads its `az://` model and adapter (test_blob.py compares them)."""
    return tmp_path_factory.mktemp("blob-cache")


@pytest.fixture(scope="session")
def tiny_serving_args(
    azurite: Azurite,
    tiny_model_dir: Path,
    tiny_lora_dir: Path,
    api_keys_dir: Path,
    blob_download_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> ServingArgs:
    model_uri = azurite.upload_dir(tiny_model_dir, "served", MODEL_ID)
    adapter_uri = azurite.upload_dir(tiny_lora_dir, "served", f"adapters/{ADAPTER}")
    return ServingArgs.model_validate(
        {
            "model": {"id": MODEL_ID, "source": model_uri},
            "download_dir": str(blob_download_dir),
            "accelerator": {"kind": "cpu", "cpu_kv_cache_gib": 1},
            "engine": {"dtype": "bfloat16", "max_model_len": 1024, "enforce_eager": True, "max_num_seqs": 16},
            "lora": {"adapters": [{"name": ADAPTER, "source": adapter_uri}], "max_lora_rank": 8},
            "auth": {"mode": "api_key", "api_keys_dir": str(api_keys_dir)},
            "rate_limits": {"tokens_per_minute": TOKENS_PER_MINUTE, "requests_per_minute": REQUESTS_PER_MINUTE},
            # serve_local starts a redis-server for the batch queue; the store is a directory of this run.
            "batch": {
                "enabled": True,
                "store": str(tmp_path_factory.mktemp("batch-store")),
                "concurrency": 2,
                "redelivery_timeout_s": BATCH_REDELIVERY_S,
            },
            "backpressure": {
                "max_ongoing_requests": MAX_ONGOING,
                "max_queued_requests": MAX_QUEUED,
                "status_code": 429,
                "retry_after_s": 2,
            },
            "cache": {"enabled": True, "ttl_s": 600, "redis_url_env": CACHE_REDIS_URL_ENV},
        }
    )


@pytest.fixture(scope="session")
def tiny_server(tiny_serving_args: ServingArgs, cache_redis: RedisServer, azurite: Azurite) -> Iterator[LocalServer]:
    """The one real Ray Serve + vLLM instance of the run (about a minute to start on 2 cores)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # Ray's processes inherit these, as pods get them from Secrets (spec.model.accessSecretRef, the cache's Redis).
    os.environ[CACHE_REDIS_URL_ENV] = cache_redis.url
    os.environ[BLOB_CREDENTIAL_ENV] = azurite.connection_string
    started = time.monotonic()
    server = serve_local(tiny_serving_args, port=free_port(), block=False, timeout_s=480, metrics_port=free_port())
    print(f"\n[tiny_server] ready after {time.monotonic() - started:.1f}s at {server.base_url}")
    _STARTED.append(server)
    try:
        yield server
    finally:
        server.stop()


def stop_shared_server() -> None:
    """Stop the shared server early: Ray runs once per process, and the routing tests need their own."""
    for server in _STARTED:
        server.stop()


# Fixtures that stop the shared server to start their own (Ray runs once per process).
OWN_SERVER_FIXTURES = ("routing_server", "scaled_server")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests on a server of their own stop the shared one, so they run after everything that uses it, grouped
    # by fixture so each of those servers starts once.
    def order(item: pytest.Item) -> int:
        names = getattr(item, "fixturenames", ())
        return next((i + 1 for i, name in enumerate(OWN_SERVER_FIXTURES) if name in names), 0)

    items.sort(key=order)
