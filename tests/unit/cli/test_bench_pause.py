"""`make bench` pauses the server it is not measuring: every process of that server's session, children included."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tokenplane_cli.bench.local import Server, _session_pids, _signal_session, _stop


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2]


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_the_whole_session_is_stopped_and_resumed_and_a_stopped_server_still_stops(tmp_path: Path) -> None:
    # A leader with a child in its own process group, as Ray's workers are: the session, not the group, holds both.
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=False,"
        " preexec_fn=os.setpgrp)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    assert process.stdout is not None
    child = int(process.stdout.readline())
    server = Server("fake", process, "http://127.0.0.1:9", 0.0, tmp_path / "log")
    pids = _session_pids(process.pid)
    assert {process.pid, child} <= set(pids)

    _signal_session(server, signal.SIGSTOP)
    assert _wait_for(lambda: _state(process.pid) == "T" and _state(child) == "T")
    _signal_session(server, signal.SIGCONT)
    assert _wait_for(lambda: _state(process.pid) != "T" and _state(child) != "T")

    _signal_session(server, signal.SIGSTOP)
    _stop(server)  # resumes first, so SIGTERM is handled, then kills what is left of the session
    assert process.poll() is not None
    assert _wait_for(lambda: not Path(f"/proc/{child}").exists() or _state(child) == "Z")
