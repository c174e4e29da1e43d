"""Desired x observed → the ordered actions that close the gap, each with the reason it is needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tokenplane_operator.converge.status import ObservedState
from tokenplane_operator.desired.agentpool import DesiredAgentPool, ObservedAgentPool, needs_replacement
from tokenplane_operator.desired.schedulable import parse_quantity

__all__ = [
    "Action",
    "ActionKind",
    "compute_actions",
    "compute_release",
    "drifted",
    "merge_pool_demand",
    "object_key",
    "pool_drift",
]


class ActionKind(StrEnum):
    """What an action does; the value is the Kubernetes event reason."""

    CREATE_POOL = "CreatePool"  # start creating the agent pool of a hardware class
    REPLACE_POOL = "ReplacePool"  # create the new pool after a change AKS cannot make in place
    UPDATE_POOL = "UpdatePool"  # change autoscaler bounds, labels or tags in place (or retry a failure)
    RELEASE_POOL = "ReleasePool"  # delete a pool no InferenceDeployment needs any more
    DETACH_POOL = "DetachPool"  # stop using a pool other deployments still need (no cloud call)
    APPLY_SERVICE = "ApplyService"
    APPLY_NETWORK_POLICY = "ApplyNetworkPolicy"
    APPLY_RAYSERVICE = "ApplyRayService"
    REPLACE_RAYSERVICE = "ReplaceRayService"  # delete it so the next round creates it on a new Ray cluster
    WAIT = "Wait"  # nothing to do but look again later


@dataclass(frozen=True)
class Action:
    """One step of a reconcile round.

    Attributes:
        kind: What to do.
        target: What it is done to: an agent pool name, or `Kind/name` of a Kubernetes object.
        reason: Why, for events, logs and condition messages.
    """

    kind: ActionKind
    target: str
    reason: str

    @property
    def changes_something(self) -> bool:
        """Whether the action writes (and deserves an event), as opposed to waiting."""
        return self.kind is not ActionKind.WAIT


def drifted(desired: Any, observed: Any) -> bool:
    """Whether a field the operator sets reads back different from what it wrote.

    Only what `desired` names is compared: a key it lacks (an API-server default such as a Service's clusterIP or
    a port's nodePort, or a field KubeRay adds) is not drift, so a defaulted object is not rewritten every round,
    and a hand edit of any field we set is. A list must keep its length, each item compared the same way; a null,
    empty object or list, or zero value the operator sets matches an absent field (the API server drops them).
    Resource quantities (`requests`, `limits`, `sizeLimit`) compare by value: `0.5` and `500m` are one amount,
    whichever spelling reads back (a custom resource keeps what was written; a hand edit or webhook may respell it).

    Args:
        desired: What the operator writes (a `spec`, or any part of one).
        observed: What the API server has at the same place.

    Returns:
        True when a field the operator sets is missing or holds another value.
    """
    if desired is None or desired == {}:
        return False
    if desired == []:
        return observed not in (None, [])
    if isinstance(desired, dict):
        have = observed if isinstance(observed, dict) else {}
        return not isinstance(observed, dict) or any(
            _field_drifted(key, value, have.get(key)) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            not isinstance(observed, list)
            or len(observed) != len(desired)
            or any(drifted(want, have) for want, have in zip(desired, observed, strict=True))
        )
    if observed is None and not desired:
        return False  # false, 0 or "": a Go API server omits a zero value (omitempty) when it answers
    return bool(desired != observed or type(desired) is not type(observed))


def _field_drifted(key: str, desired: Any, observed: Any) -> bool:
    """`drifted` for one field, comparing the resource quantities a Pod spec holds by value."""
    if key in ("requests", "limits") and isinstance(desired, dict) and isinstance(observed, dict):
        return any(_quantity_drifted(want, observed.get(name)) for name, want in desired.items())
    if key == "sizeLimit":
        return _quantity_drifted(desired, observed)
    return drifted(desired, observed)


def _quantity_drifted(desired: Any, observed: Any) -> bool:
    try:
        return parse_quantity(desired) != parse_quantity(observed)
    except (TypeError, ValueError):  # absent, or not a quantity: only the same value matches
        return drifted(desired, observed)


def object_key(kind: str, name: str) -> str:
    """Return the `Kind/name` key objects are compared under."""
    return f"{kind}/{name}"


def merge_pool_demand(pools: Sequence[DesiredAgentPool], *, max_nodes: int = 1000) -> DesiredAgentPool:
    """Merge what several deployments want of one shared pool into the pool to apply.

    Node bounds add up (each deployment brings its own replicas), capped at `max_nodes`. Everything
    else comes from the first pool in the given order, so callers pass a stable order (by namespace/name).

    Args:
        pools: The desired pools of every deployment of one hardware class (same name); not empty.
        max_nodes: Cap on the merged maxCount (AKS allows 1000 per pool).

    Returns:
        The merged desired pool.
    """
    first = pools[0]
    high = min(max_nodes, sum(p.max_count for p in pools))
    low = min(high, sum(p.min_count for p in pools))
    return first.model_copy(update={"min_count": low, "max_count": high})


def pool_drift(desired: DesiredAgentPool, observed: ObservedAgentPool) -> list[str]:
    """List the in-place changes (autoscaler bounds, our labels and tags) between two pools.

    Returns:
        One `field: have -> want` string per difference; empty when the pool is as desired.
    """
    changes = []
    if observed.min_count != desired.min_count or observed.max_count != desired.max_count:
        have, want = f"{observed.min_count}..{observed.max_count}", f"{desired.min_count}..{desired.max_count}"
        changes.append(f"autoscaling {have} -> {want}")
    for name, want_map, have_map in (
        ("nodeLabels", desired.effective_labels, observed.node_labels),
        ("tags", desired.effective_tags, observed.tags),
    ):
        missing = {k: v for k, v in want_map.items() if have_map.get(k) != v}
        if missing:
            changes.append(f"{name} {sorted(missing)}")
    return changes


def compute_actions(
    *,
    desired_pool: DesiredAgentPool | None,
    desired_hashes: Mapping[str, str],
    observed_hashes: Mapping[str, str | None],
    observed: ObservedState,
    previous_pool_claimed: bool = False,
    cluster_change: str | None = None,
) -> list[Action]:
    """Order what must happen this round: the pool first, then Service, NetworkPolicy, RayService, release.

    The RayService is applied only on a usable pool, so during a move the old RayService keeps serving
    from the old pool until the new one is up; the old pool is released only once the new spec serves.

    Args:
        desired_pool: The merged pool to run on, or None (bring-your-own or local).
        desired_hashes: Spec hash of every desired Kubernetes object, keyed by `object_key`.
        observed_hashes: The spec-hash annotation of each object as it exists (None: absent).
        observed: This round's snapshot (pool, previous pool, cloud fault, RayService).
        previous_pool_claimed: Whether another deployment still needs `observed.previous_pool`.
        cluster_change: Why the RayService needs a new Ray cluster that KubeRay will not make itself
            (`upgradeStrategy: None` ignores rayClusterConfig changes); None when it does not.

    Returns:
        The actions in the order to run them.
    """
    actions = [] if desired_pool is None else _pool_actions(desired_pool, observed)
    for key, want in desired_hashes.items():
        have = observed_hashes.get(key)
        if have == want:
            continue
        kind = key.partition("/")[0]
        if kind == "RayService" and not observed.pool_ready:
            continue  # the pool's wait action already says why
        if kind == "RayService" and have is not None and cluster_change is not None:
            actions.append(Action(ActionKind.REPLACE_RAYSERVICE, key, cluster_change))
            continue
        why = "it does not exist" if have is None else f"spec hash {have} -> {want}"
        actions.append(Action(_APPLY_KINDS.get(kind, ActionKind.APPLY_RAYSERVICE), key, why))
    previous = observed.previous_pool
    if previous is not None and _moved(observed, desired_hashes, observed_hashes):
        if observed.previous_pool_pods:
            why = f"{observed.previous_pool_pods} pod(s) of the deployment still run there"
            actions.append(Action(ActionKind.WAIT, previous, why))
        elif previous_pool_claimed:
            actions.append(Action(ActionKind.DETACH_POOL, previous, "other InferenceDeployments still use it"))
        else:
            actions.append(Action(ActionKind.RELEASE_POOL, previous, "no InferenceDeployment uses it any more"))
    return actions


_APPLY_KINDS = {
    "Service": ActionKind.APPLY_SERVICE,
    "NetworkPolicy": ActionKind.APPLY_NETWORK_POLICY,
    "RayService": ActionKind.APPLY_RAYSERVICE,
}


def _moved(observed: ObservedState, desired: Mapping[str, str], have: Mapping[str, str | None]) -> bool:
    """Whether the deployment now serves from its new pool: the new pool is up, the new spec is ready."""
    rayservice_current = all(have.get(k) == v for k, v in desired.items() if k.startswith("RayService/"))
    serving = observed.rayservice is not None and observed.rayservice.ready
    return observed.pool_ready and rayservice_current and serving


def _pool_actions(desired: DesiredAgentPool, observed: ObservedState) -> list[Action]:
    name, pool, fault = desired.name, observed.pool, observed.cloud_fault
    if fault is not None:
        return [Action(ActionKind.WAIT, name, f"{fault.reason}: retrying in {fault.retry_after_s:.0f}s")]
    if pool is None:
        if observed.previous_pool is not None:
            why = observed.replace_reason or "the hardware class changed"
            return [Action(ActionKind.REPLACE_POOL, name, f"replaces {observed.previous_pool}: {why}")]
        return [Action(ActionKind.CREATE_POOL, name, f"no agent pool for hardware class {desired.hardware_class}")]
    if pool.in_progress:
        return [Action(ActionKind.WAIT, name, f"agent pool is {pool.provisioning_state}")]
    if pool.provisioning_state == "Failed":
        detail = ": ".join(p for p in (pool.error_code, pool.error_message) if p) or "no detail"
        return [Action(ActionKind.UPDATE_POOL, name, f"retrying after the last operation failed ({detail})")]
    stuck = needs_replacement(desired, pool)
    if stuck is not None:
        # Same hardware class, same name, yet an immutable field differs (e.g. osSKU between two users).
        return [Action(ActionKind.WAIT, name, f"cannot apply: {stuck}")]
    drift = pool_drift(desired, pool)
    if drift:
        return [Action(ActionKind.UPDATE_POOL, name, "; ".join(drift))]
    return []


def compute_release(pool: str, observed: ObservedAgentPool | None, users: Sequence[str]) -> Action | None:
    """Decide what releasing one pool needs when a deployment no longer uses it.

    Args:
        pool: The pool name.
        observed: The pool as Azure reports it (None: already gone).
        users: `namespace/name` of the other deployments that still need it.

    Returns:
        Detach when others use it, Release to start the deletion, Wait while it is being deleted,
        or None when it is gone or is not tokenplane's (someone else's pool of the same name is never deleted).
    """
    if users:
        return Action(ActionKind.DETACH_POOL, pool, f"still used by {', '.join(sorted(users))}")
    if observed is None or not observed.managed:
        return None
    if observed.provisioning_state == "Deleting":
        return Action(ActionKind.WAIT, pool, "agent pool is Deleting")
    state = observed.provisioning_state
    return Action(ActionKind.RELEASE_POOL, pool, f"no InferenceDeployment uses it any more (it is {state})")
