"""Two local replicas behind Entra ID auth: token checks, prefix affinity, draining streams."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from openai import OpenAI

from tests.serving.conftest import MODEL_ID, free_port, stop_shared_server
from tokenplane_serving.args import ServingArgs
from tokenplane_serving.local import LocalServer, serve_local

pytestmark = [pytest.mark.serving, pytest.mark.timeout(900)]

TENANT = "7f1c2e4a-0000-4000-8000-0000000000aa"
AUDIENCE = "api://tokenplane-test"
KID = "test-key-1"


class Issuer:
    """A local stand-in for Entra ID: an RSA key pair, its JWKS file, and a token minter."""

    def __init__(self, directory: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks_path = directory / "jwks.json"
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks_path.write_text(json.dumps({"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]}))

    def token(self, *, key: Any = None, ttl_s: int = 600, **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": f"https://login.microsoftonline.com/{TENANT}/v2.0",
            "aud": AUDIENCE,
            "sub": "user-1",
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            **overrides,
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": KID})


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("entra"))


def routing_args(tiny_model_dir: Path, issuer: Issuer, *, policy: str, replicas: int) -> ServingArgs:
    return ServingArgs.model_validate(
        {
            "model": {"id": MODEL_ID, "source": str(tiny_model_dir)},
            "accelerator": {"kind": "cpu", "cpu_kv_cache_gib": 1},
            "engine": {"dtype": "bfloat16", "max_model_len": 1024, "enforce_eager": True, "max_num_seqs": 8},
            "scaling": {"min_replicas": replicas, "max_replicas": replicas},
            "routing": {"policy": policy},
            "auth": {
                "mode": "entra_id",
                "entra_tenant_id": TENANT,
                "entra_audience": AUDIENCE,
                "entra_jwks_path": str(issuer.jwks_path),
            },
            "drain_grace_period_s": 120,
        }
    )


@pytest.fixture(scope="module")
def routing_server(tiny_model_dir: Path, issuer: Issuer) -> Iterator[LocalServer]:
    # One Ray per process: the shared single-replica server goes first (these tests are sorted last).
    stop_shared_server()
    args = routing_args(tiny_model_dir, issuer, policy="prefix_affinity", replicas=2)
    started = time.monotonic()
    server = serve_local(args, port=free_port(), block=False, timeout_s=600, metrics_port=free_port())
    # serve_local is ready when one replica answers; the router spreads requests, so wait for both, and for
    # HAProxy to load the second replica's server (a request routed there before its reload hung once, 60 s).
    wait_ready(server, replicas=2)
    time.sleep(5)
    print(f"\n[routing_server] 2 replicas ready after {time.monotonic() - started:.1f}s")
    try:
        yield server
    finally:
        server.stop()


def redeploy(server: LocalServer, args: ServingArgs) -> None:
    from ray import serve

    from tokenplane_serving.app import build_app

    serve.run(build_app(args), name=args.app_name, route_prefix="/", blocking=False)


def wait_ready(server: LocalServer, replicas: int, timeout_s: float = 400) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{server.base_url}/-/ready", timeout=10) as response:
                model = json.loads(response.read())["models"][MODEL_ID]
                if model["ready"] and model["running_replicas"] == replicas:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"not ready with {replicas} replicas after {timeout_s}s")


def per_replica(metrics_url: str, name: str) -> Counter[str]:
    """Sum of a vLLM counter per Ray Serve replica."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith(name + "{"):
            replica = re.search(r'ReplicaId="([^"]+)"', line)
            if replica:
                counts[replica.group(1)] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def placement(server: LocalServer, token: str, prompts: list[str], concurrency: int = 1) -> Counter[str]:
    """Send `prompts`, `concurrency` at a time; return how many each replica served.

    Counted from prompt tokens per replica (each prompt brings hundreds), so the one-token readiness
    probes a replica runs on its own do not count as placements.
    """
    assert server.metrics_url
    tokens_per_request = min(len(p) for p in prompts) // 8  # a safe lower bound for the tiny model's tokenizer
    before = per_replica(server.metrics_url, "ray_vllm_prompt_tokens_total")
    client = OpenAI(base_url=server.openai_base_url, api_key=token, max_retries=0, timeout=60)

    def one(prompt: str) -> None:
        client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=16, temperature=0)

    for start in range(0, len(prompts), concurrency):
        batch = [threading.Thread(target=one, args=(p,)) for p in prompts[start : start + concurrency]]
        for t in batch:
            t.start()
        for t in batch:
            t.join()
    time.sleep(3)  # one metrics report interval
    after = per_replica(server.metrics_url, "ray_vllm_prompt_tokens_total")
    after.subtract(before)
    total = sum(after.values())
    # Prompts are about as long, so each replica's share of prompt tokens is its share of requests.
    return Counter({k: round(len(prompts) * v / total) for k, v in after.items() if v >= tokens_per_request})


LONG_PREFIX = (
    "Cloud platforms rent computers by the hour. A cluster groups many machines together, and a scheduler "
    "decides where each piece of work should run. Graphics processors are good at the arithmetic that neural "
    "networks need, so they are in high demand and cost more than ordinary processors. "
) * 8  # several 128-token CPU KV blocks: prefix caching hits whole blocks only


# --- Entra ID -------------------------------------------------------------------------------------


def test_entra_valid_token_accepted(routing_server: LocalServer, issuer: Issuer) -> None:
    client = OpenAI(base_url=routing_server.openai_base_url, api_key=issuer.token(), max_retries=0, timeout=60)
    assert client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=2).choices[0].text is not None
    v1 = issuer.token(iss=f"https://sts.windows.net/{TENANT}/")
    assert OpenAI(base_url=routing_server.openai_base_url, api_key=v1, max_retries=0).models.list().data


@pytest.mark.parametrize(
    ("case", "expected_code"),
    [
        ("expired", "expired_token"),
        ("wrong_audience", "invalid_token"),
        ("wrong_signature", "invalid_token"),
        ("wrong_issuer", "invalid_token"),
        ("garbage", "invalid_token"),
    ],
)
def test_entra_bad_tokens_rejected(routing_server: LocalServer, issuer: Issuer, case: str, expected_code: str) -> None:
    tokens = {
        "expired": lambda: issuer.token(ttl_s=-3600),
        "wrong_audience": lambda: issuer.token(aud="api://someone-else"),
        "wrong_signature": lambda: issuer.token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "wrong_issuer": lambda: issuer.token(iss="https://login.microsoftonline.com/other-tenant/v2.0"),
        "garbage": lambda: "not.a.jwt",
    }
    token = tokens[case]()
    response = httpx.get(
        f"{routing_server.openai_base_url}/models", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == expected_code
    assert token not in response.text


# --- routing and draining -------------------------------------------------------------------------


def test_prefix_affinity_keeps_a_shared_prefix_on_one_replica(routing_server: LocalServer, issuer: Issuer) -> None:
    assert routing_server.metrics_url
    hits_before = per_replica(routing_server.metrics_url, "ray_vllm_prefix_cache_hits_total")
    prefix = "A different shared system prompt. " + LONG_PREFIX
    placed = placement(routing_server, issuer.token(), [f"{prefix} Question {i}:" for i in range(8)])
    hits = per_replica(routing_server.metrics_url, "ray_vllm_prefix_cache_hits_total")
    hits.subtract(hits_before)
    print(f"\n[prefix_affinity] per replica: {dict(placed)}; prefix-cache hit tokens: {dict(hits)}")
    assert len(placed) == 1, f"shared-prefix requests were split: {dict(placed)}"
    replica = placed.most_common(1)[0][0]
    assert hits[replica] > 0  # the prefix-cache hit metric moved on the replica that got them
    # The control: unrelated prompts (under Ray's 10% match rate) go to the replica holding the least cached text,
    # so they spread. Before routers.py, Ray's pick-only path sent every request, related or not, to one replica.
    words = ("Apples", "Bridges", "Comets", "Deserts", "Engines", "Forests", "Glaciers", "Harbors")
    unrelated = placement(routing_server, issuer.token(), [f"{word}. {LONG_PREFIX}" for word in words])
    print(f"[prefix_affinity] unrelated prompts per replica: {dict(unrelated)}")
    assert len(unrelated) == 2, f"unrelated prompts all went to one replica: {dict(unrelated)}"


def serve_replicas() -> set[str]:
    """The LLM deployment's replica actors Ray has now (Serve names them `SERVE_REPLICA::app#deployment#id`)."""
    import ray

    names = (actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True))
    return {name for name in names if name.startswith("SERVE_REPLICA::") and "LLMServer" in name}


def test_streams_survive_a_replica_drain(routing_server: LocalServer, issuer: Issuer, tiny_model_dir: Path) -> None:
    token = issuer.token()
    max_tokens, streams = 300, 4
    results: dict[int, tuple[int, str | None]] = {}
    first_chunk = threading.Barrier(streams + 1, timeout=120)

    def stream(i: int) -> None:
        client = OpenAI(base_url=routing_server.openai_base_url, api_key=token, max_retries=0, timeout=300)
        chunks, finish, signalled = 0, None, False
        for chunk in client.completions.create(
            model=MODEL_ID,
            prompt=f"Story {i}: once upon a time",
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
            stream_options={"include_usage": True},
        ):
            if chunk.choices:
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                chunks = chunk.usage.completion_tokens
            if not signalled:
                signalled = True
                first_chunk.wait()
        results[i] = (chunks, finish)

    serving_streams = serve_replicas()
    assert len(serving_streams) == 2, serving_streams
    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    first_chunk.wait()
    started = time.monotonic()
    # Down to one replica. The replica count is part of the LLM config Ray hands each replica, so Serve replaces
    # both replicas with one new one: every stream runs on a replica being stopped, which must finish it first.
    redeploy(routing_server, routing_args(tiny_model_dir, issuer, policy="prefix_affinity", replicas=1))
    for t in threads:
        t.join(timeout=300)
    print(f"\n[drain] streams {results} finished {time.monotonic() - started:.1f}s after the scale-down")
    assert results == {i: (max_tokens, "length") for i in range(streams)}
    wait_ready(routing_server, replicas=1, timeout_s=180)
    deadline = time.monotonic() + 60
    while serve_replicas() & serving_streams and time.monotonic() < deadline:
        time.sleep(1)
    remaining = serve_replicas()
    assert len(remaining) == 1 and not remaining & serving_streams, (remaining, serving_streams)
    client = OpenAI(base_url=routing_server.openai_base_url, api_key=token, max_retries=0, timeout=60)
    assert client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=2).choices
