"""`keep_off_engine_cpus` on a real process tree: an "engine" bound to one CPU, a sibling, a grandchild, a raylet."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenplane_serving.cpu_placement import descendants, keep_off_engine_cpus

ALLOWED = frozenset(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 CPUs to split")

# A root that starts: an engine-like child bound to the first CPU (as vLLM's worker binds itself), a plain child
# with a child of its own, and a program named `raylet`; each writes its pid, then all sleep.
ROOT = """
import os, subprocess, sys, time
engine_cpu, out, raylet = int(sys.argv[1]), sys.argv[2], sys.argv[3]
bind = f"import os, time; os.sched_setaffinity(0, {{{engine_cpu}}}); time.sleep(60)"
engine = subprocess.Popen([sys.executable, "-c", bind])
middle = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print(p.pid, flush=True); "
    "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
grandchild = int(middle.stdout.readline())
ray = subprocess.Popen([raylet, "60"])
with open(out, "w") as f:
    f.write(f"{engine.pid} {middle.pid} {grandchild} {ray.pid}")
time.sleep(60)
"""


def _wait_bound(pid: int, cpus: set[int]) -> None:
    deadline = time.monotonic() + 10
    while os.sched_getaffinity(pid) != cpus:
        assert time.monotonic() < deadline, "the engine-like child did not bind itself"
        time.sleep(0.05)


@contextlib.contextmanager
def _tree(script: str, pids_file: Path, *args: str, count: int) -> Iterator[tuple[int, list[int]]]:
    """Run `script` as a root process; yield its pid and the `count` pids it writes to `pids_file`; kill the tree."""
    root = subprocess.Popen([sys.executable, "-c", script, str(min(ALLOWED)), str(pids_file), *args])
    try:
        deadline = time.monotonic() + 20
        while not pids_file.exists() or len(pids_file.read_text().split()) < count:
            assert time.monotonic() < deadline, "the process tree did not start"
            time.sleep(0.05)
        yield root.pid, [int(pid) for pid in pids_file.read_text().split()]
    finally:
        for pid in descendants(root.pid)[::-1]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        root.wait()


def test_moves_the_tree_off_the_engine_cpu_and_leaves_the_engine_and_raylet(tmp_path: Path) -> None:
    engine_cpu = min(ALLOWED)
    raylet = tmp_path / "raylet"  # the kernel names a process after its executable
    shutil.copy(shutil.which("sleep") or "/bin/sleep", raylet)
    with _tree(ROOT, tmp_path / "pids", str(raylet), count=4) as (root, (engine, middle, grandchild, ray)):
        _wait_bound(engine, {engine_cpu})
        assert set(descendants(root)) >= {root, engine, middle, grandchild, ray}

        placement = keep_off_engine_cpus(root)

        assert placement is not None
        assert placement.engine_cpus == {engine_cpu}
        assert placement.other_cpus == ALLOWED - {engine_cpu}
        assert placement.moved == 3  # root, middle, grandchild
        for pid in (root, middle, grandchild):
            for tid in os.listdir(f"/proc/{pid}/task"):
                assert os.sched_getaffinity(int(tid)) == ALLOWED - {engine_cpu}, (pid, tid)
        assert os.sched_getaffinity(engine) == {engine_cpu}
        assert os.sched_getaffinity(ray) == ALLOWED  # new replicas fork from it and must see every CPU


def test_does_nothing_without_a_bound_engine() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run(['sleep', '30'])"])
    try:
        assert keep_off_engine_cpus(child.pid) is None  # like a GPU engine: nobody is bound
        assert os.sched_getaffinity(child.pid) == ALLOWED
    finally:
        child.kill()
        child.wait()


def test_does_nothing_without_procfs(tmp_path: Path) -> None:
    assert keep_off_engine_cpus(os.getpid(), proc=tmp_path / "no-proc") is None


# A root with an engine bound to the first CPU, and a replica (named as Ray names it) whose engine child binds itself
# only once the file `go` exists: a replica started after the first placement. (Started under another argv[0],
# Python cannot tell its own executable: the replica is given the path.)
LATE_REPLICA = """
import os, subprocess, sys, time
engine_cpu, out, go = int(sys.argv[1]), sys.argv[2], sys.argv[3]
bind = f"import os, time; os.sched_setaffinity(0, {{{engine_cpu}}}); time.sleep(60)"
engine = subprocess.Popen([sys.executable, "-c", bind])
late = (f"import os, time\\nwhile not os.path.exists({go!r}): time.sleep(0.05)\\n"
        f"os.sched_setaffinity(0, {{{engine_cpu}}})\\ntime.sleep(60)")
replica = subprocess.Popen(["ray::ServeReplica:llm:x", "-c", "import subprocess, sys, time; "
    f"p = subprocess.Popen([{sys.executable!r}, '-c', {late!r}]); print(p.pid, flush=True); time.sleep(60)"],
    executable=sys.executable, stdout=subprocess.PIPE, text=True)
child = int(replica.stdout.readline())
with open(out, "w") as f:
    f.write(f"{engine.pid} {replica.pid} {child}")
time.sleep(60)
"""


def test_a_replica_is_left_alone_until_its_engine_is_bound_then_placed_like_the_rest(tmp_path: Path) -> None:
    engine_cpu = min(ALLOWED)
    spare = ALLOWED - {engine_cpu}
    go = tmp_path / "go"
    with _tree(LATE_REPLICA, tmp_path / "pids", str(go), count=3) as (root, (engine, replica, child)):
        _wait_bound(engine, {engine_cpu})

        first = keep_off_engine_cpus(root)

        assert first is not None and first.other_cpus == spare
        assert os.sched_getaffinity(root) == spare
        # Its engine will bind from the CPUs it may use: moved now, it would bind to the spare ones.
        assert os.sched_getaffinity(replica) == ALLOWED and os.sched_getaffinity(child) == ALLOWED

        go.touch()
        _wait_bound(child, {engine_cpu})
        second = keep_off_engine_cpus(root, previous=first)

        # The root moved by the first call is no engine, and the CPUs shared are still all of them.
        assert second is not None and second.engine_cpus == {engine_cpu} and second.other_cpus == spare
        assert os.sched_getaffinity(replica) == spare
        assert os.sched_getaffinity(child) == {engine_cpu}
        assert keep_off_engine_cpus(root) is None  # without `previous`, the moved root sees only the spare CPUs
