"""Keep a local deployment's own processes off the CPUs vLLM's CPU engine computes on.

vLLM's CPU worker binds its OpenMP threads to all but a reserved few of the CPUs it may use ("reserve 1 core for
the scheduler process", vllm/utils/ompmultiprocessing.py) and leaves everything else where the kernel puts it. Bare
vLLM has two such processes (its API server and engine core); a local tokenplane adds Ray's (GCS, raylet, agents,
Serve's controller and proxy, HAProxy) and the replica's. When the engine core's busy-wait keeps the reserved CPU
looking busy, the kernel puts them on the worker's CPU, where each wake-up stalls the forward pass: on 2 cores the
tiny model's decode step took 5.3 ms instead of 4.4-4.5 (c=1, 32 requests). Moved onto the CPUs the worker left
free, the step is back at 4.5-5.1 ms.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Placement", "descendants", "keep_off_engine_cpus"]

# Left where they are: the raylet forks Ray's new workers and an idle worker may become a new replica, whose engine
# must see every CPU when vLLM picks its own (it binds to the CPUs its process may use).
_FORKS_REPLICAS = ("raylet", "ray::IDLE")
# A replica whose engine has not bound its worker yet (it starts later, or is starting): it and its children stay,
# for the same reason. Once its worker is bound, the replica and its engine core move like the rest.
_STARTS_AN_ENGINE = "ray::ServeReplica"


@dataclass(frozen=True)
class Placement:
    """Where `keep_off_engine_cpus` left things.

    Attributes:
        engine_cpus: The CPUs vLLM bound its workers to.
        other_cpus: The CPUs the other processes now run on.
        moved: How many processes were moved.
    """

    engine_cpus: frozenset[int]
    other_cpus: frozenset[int]
    moved: int


def _children(proc: Path) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])  # comm may hold spaces and parentheses
                children.setdefault(parent, []).append(int(entry.name))
    return children


def _walk(root: int, children: dict[int, list[int]]) -> list[int]:
    tree, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        tree.append(pid)
        queue.extend(sorted(children.get(pid, ())))
    return tree


def descendants(root: int, proc: Path = Path("/proc")) -> list[int]:
    """Return `root` and every process below it, parents before children."""
    return _walk(root, _children(proc))


def _comm(pid: int, proc: Path) -> str:
    with contextlib.suppress(OSError):
        return (proc / str(pid) / "comm").read_text().strip()
    return ""


def _title(pid: int, proc: Path) -> str:
    # Ray's titles ("ray::ServeReplica:app:deployment") are longer than the 15 bytes of comm.
    with contextlib.suppress(OSError):
        return (proc / str(pid) / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    return ""


def keep_off_engine_cpus(
    root: int | None = None, proc: Path = Path("/proc"), previous: Placement | None = None
) -> Placement | None:
    """Move `root`'s process tree off the CPUs vLLM bound its engine workers to, onto the CPUs left.

    The engine's workers are the processes bound to a strict subset of the CPUs `root` may use; every thread of
    every other process of the tree gets the rest, except those that start Ray's new workers (`_FORKS_REPLICAS`) and
    replicas whose engine has not bound its worker yet (`_STARTS_AN_ENGINE`): a replica started later must still see
    every CPU when vLLM binds its engine. Call it once the engine runs, and again as replicas come and go, only in a
    process whose children are all the deployment's.

    Args:
        root: The process whose tree to place (this one by default).
        proc: The procfs mount.
        previous: What the last call did: the processes it moved are no engine, and the CPUs to share are the
            ones it shared (the root itself has moved since).

    Returns:
        What was done, or None when nothing could be: no process is bound (a GPU engine, or none running yet),
        or the engine holds every CPU; and where the system has no CPU affinities or no procfs (macOS).
    """
    if not hasattr(os, "sched_setaffinity") or not proc.is_dir():  # macOS: no affinities, no procfs
        return None
    root = os.getpid() if root is None else root
    allowed = (previous.engine_cpus | previous.other_cpus) if previous else frozenset(os.sched_getaffinity(root))
    moved_before = previous.other_cpus if previous else None
    children = _children(proc)
    tree = _walk(root, children)
    bound: dict[int, set[int]] = {}
    for pid in tree:
        with contextlib.suppress(OSError):  # exited meanwhile
            cpus = os.sched_getaffinity(pid)
            if cpus < allowed and frozenset(cpus) != moved_before:
                bound[pid] = cpus
    engine = set().union(*bound.values())
    others, starting = [], set()
    for pid in tree:
        if pid in bound or pid in starting or _comm(pid, proc).startswith(_FORKS_REPLICAS):
            continue
        below = _walk(pid, children)
        if _title(pid, proc).startswith(_STARTS_AN_ENGINE) and not any(p in bound for p in below):
            starting.update(below)  # its engine is not bound yet: it must still see every CPU
            continue
        others.append(pid)
    spare = allowed - engine
    if not engine or not spare:
        return None
    moved = 0
    for pid in others:
        with contextlib.suppress(OSError):  # an exiting process or thread: nothing to place
            for tid in os.listdir(proc / str(pid) / "task"):  # affinity is per thread; existing threads keep theirs
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), spare)
            moved += 1
    return Placement(frozenset(engine), spare, moved)
