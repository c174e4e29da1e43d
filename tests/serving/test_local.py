"""serve_local's preflight errors (one clear line, raised before Ray starts) and what its start runs early."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tokenplane_serving.args import ServingArgs
from tokenplane_serving.auth import ApiKeyStore, AuthError
from tokenplane_serving.local import (
    API_KEY_ENV,
    LocalServeError,
    LocalServer,
    _curl_line,
    local_api_keys,
    main,
    serve_local,
)


def args_for(source: str) -> ServingArgs:
    return ServingArgs.model_validate({"model": {"id": "tiny", "source": source}, "accelerator": {"kind": "cpu"}})


def _ray_running() -> bool:
    return "ray" in sys.modules and bool(__import__("ray").is_initialized())


def test_missing_model_dir(tmp_path: Path) -> None:
    # The shared server may already run in this process; the failed call must not start Ray of its own.
    running_before = _ray_running()
    with pytest.raises(LocalServeError, match=r"model directory .*missing.* not found") as info:
        serve_local(args_for(str(tmp_path / "missing")), block=False)
    assert "\n" not in str(info.value)
    assert _ray_running() == running_before


def test_port_in_use(tiny_model_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LocalServeError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve_local(args_for(str(tiny_model_dir)), port=port, block=False)


def test_main_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args_file = tmp_path / "args.yaml"
    args_file.write_text(f"model: {{id: tiny, source: {tmp_path / 'nope'}}}\naccelerator: {{kind: cpu}}\n")
    assert main([str(args_file)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model directory")
    assert "Traceback" not in err
    args_file.write_text("model: {id: tiny}\n")
    assert main([str(args_file)]) == 1
    assert "invalid serving args" in capsys.readouterr().err


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: [1] is the parent's pid, [19] the start time in ticks."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, IndexError):  # gone meanwhile
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


@pytest.mark.serving  # on the shared live server
def test_the_telemetry_agent_boots_while_vllm_starts_not_after(
    tiny_server: LocalServer, tiny_serving_args: ServingArgs
) -> None:
    import ray
    from ray.util import list_named_actors

    # A replica blocks on Ray Serve LLM's telemetry actor once its engine runs; it asks for that actor as soon
    # as vLLM's engine process runs, so the actor's process starts before vLLM's last process (its model
    # worker), not after the engine is up (3.4-4.5 s more of every cold start).
    agent = ray.get_actor("llm_serve_telemetry", namespace="llm_serve_telemetry")
    agent_pid = ray.get(agent.__ray_call__.remote(lambda self: os.getpid()))
    replicas = [
        ray.get_actor(named["name"], namespace=named["namespace"])
        for named in list_named_actors(all_namespaces=True)
        # The app's model servers (Ray's LLM router, also in the app with LoRA, starts no engine).
        if named["name"].startswith(f"SERVE_REPLICA::{tiny_serving_args.app_name}#TokenplaneLLMServer")
    ]
    assert replicas, "no model server replica of the served app found"
    for replica in replicas:
        engine_processes = _descendants(ray.get(replica.__ray_call__.remote(lambda self: os.getpid())))
        assert engine_processes, "the replica has no vLLM processes"
        last_started = max(int(_stat(pid)[19]) for pid in engine_processes)
        assert int(_stat(agent_pid)[19]) < last_started


def _key_args(tmp_path: Path, keys_dir: str) -> ServingArgs:
    return ServingArgs.model_validate(
        {
            "model": {"id": "tiny", "source": str(tmp_path)},
            "accelerator": {"kind": "cpu"},
            "auth": {"mode": "api_key", "api_keys_dir": keys_dir},
        }
    )


@pytest.mark.parametrize("chosen", ["tp-mine-0123456789", None])
def test_a_local_api_key_deployment_serves_a_key_the_client_can_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chosen: str | None
) -> None:
    # The CR's keys are a Secret the cluster mounts at /etc/tokenplane/api-keys: locally every request was a 401.
    if chosen:
        monkeypatch.setenv(API_KEY_ENV, chosen)
    else:
        monkeypatch.delenv(API_KEY_ENV, raising=False)
    console = Console(record=True, width=200)
    served, key, remove = local_api_keys(_key_args(tmp_path, "/etc/tokenplane/api-keys"), console)
    assert key is not None and remove is not None
    assert key == chosen if chosen else key.startswith("tp-local-") and len(key) > 25
    keys_dir = Path(str(served.auth.api_keys_dir))
    assert ApiKeyStore(keys_dir).check(key) == "key:local"  # the replica's own check accepts it
    with pytest.raises(AuthError):
        ApiKeyStore(keys_dir).check("tp-something-else")
    assert key in console.export_text()
    server = LocalServer(base_url="http://127.0.0.1:8000", model_id="tiny", api_key=key)
    assert f"-H 'Authorization: Bearer {key}'" in _curl_line(server)
    remove()
    assert not keys_dir.exists()


def test_a_keys_directory_that_exists_is_served_as_it_is(tmp_path: Path) -> None:
    args = _key_args(tmp_path, str(tmp_path))
    served, key, remove = local_api_keys(args, Console(record=True))
    assert (served, key, remove) == (args, None, None)
