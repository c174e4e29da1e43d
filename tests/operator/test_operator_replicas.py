"""Two operator replicas, as the chart runs them (replicaCount 2, one peering object): only one ever acts.

kopf peering (its ClusterKopfPeering, which the chart creates): the replica that started first has the higher
priority; the other starts paused while it is alive, and resumes when it leaves (SIGTERM removes it from the
peering object at once; a killed one expires after the peering lifetime).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.operator.test_rbac import FAST, declare_peering, install, operator_container
from tests.support.arm_emulator import ArmEmulator
from tests.support.chart import render
from tests.support.kopf_harness import cr_body, declare_resources
from tests.support.kube_emulator import ApiServerEmulator
from tests.support.kuberay_peer import KubeRayPeer
from tests.support.operator_process import OperatorProcess
from tokenplane_operator.main import peering_priority

pytest.importorskip("helm_python")
pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

# kopf logs one line per handler run on an object: "[default/m1] Handler 'on_change' succeeded."
HANDLED = re.compile(r"\[(?P<ns>[^/\]]+)/(?P<name>[^\]]+)\] Handler '[^']+' (succeeded|failed)")


def handled(op: OperatorProcess) -> set[str]:
    """Names of the InferenceDeployments this replica ran a handler for."""
    return {m["name"] for m in HANDLED.finditer(op.log_path.read_text(errors="replace"))}


def peers(op: OperatorProcess) -> dict[str, int]:
    """The peering object's status: each replica's kopf identity and its priority."""
    wanted = ("clusterkopfpeerings", op.extra_env["TOKENPLANE_PEERING_NAME"])
    for (resource, _, name), obj in list(op.k.objects.items()):
        if (getattr(resource, "plural", ""), name) == wanted:
            return {identity: int(peer["priority"]) for identity, peer in (obj.get("status") or {}).items()}
    return {}


@pytest.fixture
async def replicas(
    kmock: ApiServerEmulator, wi_arm: ArmEmulator, tmp_path: Path, kuberay: KubeRayPeer
) -> AsyncIterator[tuple[OperatorProcess, OperatorProcess, str]]:
    """Replicas a and b of one release, started in turn, and a's kopf identity in the peering object."""
    declare_resources(kmock)
    declare_peering(kmock)
    objects = render({"replicaCount": 2})
    container = operator_container(objects)
    env = FAST | {e["name"]: e["value"] for e in container["env"] if e["name"] == "TOKENPLANE_PEERING_NAME"}
    pods = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        pods.append(OperatorProcess(kmock, wi_arm, tmp_path / name, env, args=tuple(container["args"][1:])))
    await install(pods[0], objects)
    await pods[0].start()
    # a's entry is the only one until b starts: how the test tells whose identity is whose.
    (a_identity,) = await pods[0].wait_for(lambda: peers(pods[0]), within=30, message="a in the peering object")
    await pods[1].start()
    yield pods[0], pods[1], a_identity
    for pod in pods:
        await pod.stop(kill=True)


async def test_two_replicas_never_both_act_and_the_standby_takes_over(
    replicas: tuple[OperatorProcess, OperatorProcess, str],
) -> None:
    a, b, a_identity = replicas
    joined = await a.wait_for(lambda: len(peers(a)) == 2 and peers(a), within=30, message="both replicas peered")
    # a started first, so it outranks b: b starts paused and a never hands over (with a random priority, a b drawing
    # higher resumed at once while a acted on until its watch brought b's entry, and both handled a CR).
    assert joined[a_identity] == max(joined.values()), joined
    for name in ("m1", "m2", "m3"):
        await a.create(cr_body(name))
    for name in ("m1", "m2", "m3"):
        await a.wait_ready(name, within=120)
    assert handled(a).isdisjoint(handled(b)), (handled(a), handled(b))
    active, standby = a, b
    assert "Pausing operations in favour of" not in a.log_path.read_text(errors="replace")
    assert handled(active) == {"m1", "m2", "m3"} and handled(standby) == set()
    assert len(a.arm.pool_names()) == 1, "the three share one pool"

    assert await active.stop() == 0, active.log_tail()  # a rolling update's SIGTERM: it leaves the peering
    await standby.create(cr_body("m4"))
    await standby.wait_ready("m4", within=120)
    assert "m4" in handled(standby) and "m4" not in handled(active)


def test_a_replica_started_a_millisecond_earlier_outranks_every_later_one() -> None:
    started = 1_800_000_000.0
    earlier = [peering_priority(started) for _ in range(100)]
    assert min(earlier) > max(peering_priority(started + 0.001) for _ in range(100)) > 0
    assert len(set(earlier)) > 1, "a random low part keeps same-millisecond replicas apart"
