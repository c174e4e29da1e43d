"""`make bench`'s hold on the servers' sessions: every process of a session, children included, is paused with the
server not being measured, and runs below the client's priority."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tokenplane_cli.bench.local import SERVER_NICENESS, Server, _below_the_client, _session_pids, _signal_session, _stop


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


def test_a_server_session_and_the_children_it_starts_later_run_below_the_client(tmp_path: Path) -> None:
    # The leader starts its child after it was lowered, as `tokenplane up` starts Ray and vLLM seconds after launch.
    script = (
        "import subprocess, sys, time\n"
        "sys.stdin.readline()\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
    )
    assert process.stdin is not None and process.stdout is not None
    server = Server("fake", process, "http://127.0.0.1:9", 0.0, tmp_path / "log")
    try:
        _below_the_client(process.pid)
        process.stdin.write(b"go\n")
        process.stdin.flush()
        child = int(process.stdout.readline())
        expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + SERVER_NICENESS)
        assert os.getpriority(os.PRIO_PROCESS, process.pid) == expected
        assert os.getpriority(os.PRIO_PROCESS, child) == expected
        autogroup = Path(f"/proc/{child}/autogroup")
        if autogroup.exists():  # kernels built with autogroups: the session's group, the child's too
            assert autogroup.read_text().split()[-1] == str(SERVER_NICENESS)
    finally:
        _stop(server)
