"""serve_local's preflight errors (one clear line, raised before Ray starts) and what its start runs early."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from tokenplane_serving.args import ServingArgs
from tokenplane_serving.local import LocalServeError, LocalServer, main, serve_local


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


def _process_started(actor: Any) -> int:
    """The actor's process start time, in clock ticks since boot (/proc/PID/stat, field 22)."""
    import ray

    pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


def test_the_telemetry_agent_starts_before_the_replica_that_waits_for_it(
    tiny_server: LocalServer, tiny_serving_args: ServingArgs
) -> None:
    import ray
    from ray.util import list_named_actors

    # A replica blocks on Ray Serve LLM's telemetry actor once its engine runs; build_app starts that actor
    # first, so its worker boots while the replica starts instead of after the engine (3.6-4.7 s measured).
    agent = ray.get_actor("llm_serve_telemetry", namespace="llm_serve_telemetry")
    replicas = [
        ray.get_actor(named["name"], namespace=named["namespace"])
        for named in list_named_actors(all_namespaces=True)
        if named["name"].startswith(f"SERVE_REPLICA::{tiny_serving_args.app_name}#")
    ]
    assert replicas, "no replica of the served app found"
    assert _process_started(agent) < min(_process_started(replica) for replica in replicas)
