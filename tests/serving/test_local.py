"""serve_local's preflight errors: one clear line, raised before Ray starts."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tokenplane_serving.args import ServingArgs
from tokenplane_serving.local import LocalServeError, main, serve_local


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
