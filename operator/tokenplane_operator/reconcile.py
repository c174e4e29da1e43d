"""The one imperative shell: observe Azure and Kubernetes, plan, diff, apply, and compute status."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from tokenplane_operator.adapters.kube import KubeObjects, KubeRejectedError, TransientKubeError
from tokenplane_operator.adapters.metrics import MetricsScraper
from tokenplane_operator.api.conditions import Reason
from tokenplane_operator.api.v1alpha1 import (
    GROUP,
    VERSION,
    AcceleratorKind,
    InferenceDeployment,
    InferenceDeploymentStatus,
    MetricsStatus,
    PlanStatus,
    ScalingStatus,
)
from tokenplane_operator.api.validation import InvalidSpecError, parse_inference_deployment
from tokenplane_operator.converge.diff import (
    Action,
    ActionKind,
    compute_actions,
    compute_release,
    drifted,
    merge_pool_demand,
    object_key,
)
from tokenplane_operator.converge.economics import Scrape, compute_economics, gpus_in_pods, merge_window, parse_scrape
from tokenplane_operator.converge.gauges import DeploymentGauges, deployment_gauges
from tokenplane_operator.converge.quota import (
    PoolClaim,
    QuotaCheck,
    QuotaReading,
    bound_pool,
    check_quota,
    existing_claims,
    pending_claim,
)
from tokenplane_operator.converge.scaling import scaling_from_pages
from tokenplane_operator.converge.status import (
    CloudFault,
    NodeSource,
    ObservedState,
    RayServiceObservation,
    compute_status,
)
from tokenplane_operator.desired.agentpool import (
    MANAGED_BY_TAG,
    POOL_LABEL,
    DesiredAgentPool,
    ObservedAgentPool,
    needs_replacement,
)
from tokenplane_operator.desired.bundle import DesiredState, build_desired_state
from tokenplane_operator.desired.config import RenderConfig
from tokenplane_operator.desired.naming import (
    CLUSTER_HASH_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    selector_labels,
    spec_hash,
)
from tokenplane_operator.desired.schedulable import check_head_fits
from tokenplane_operator.errors import (
    CloudRejectedError,
    OperationFailedError,
    TokenplaneError,
    TransientCloudError,
    is_quota_error,
)
from tokenplane_operator.plan.errors import PlanError, PlanErrorReason
from tokenplane_operator.plan.validation import check_deployment
from tokenplane_operator.settings import OperatorSettings

__all__ = [
    "AgentPools",
    "Clients",
    "PoolDemand",
    "ReconcileResult",
    "ReleaseResult",
    "collect_metrics",
    "forget_metrics",
    "latest_scaling",
    "pool_demand",
    "reconcile",
    "reconcile_owner",
    "release",
    "release_abandoned",
    "status_patch",
    "sweep_orphaned_pools",
]

# A failed list of the cluster's pools (ARM throttling, a blip) falls back on the last one up to this old: without
# it the round skipped the quota check, and a pool bounded by quota was grown to its full maxCount.
_POOL_LIST_FALLBACK_S = 600
_THROTTLE_KEY = "*"  # ARM throttles per subscription: one 429 holds back every pool
# A pool whose operation ended Failed for these is re-sent once the backoff ran out.
_RETRIED_FAILURES = frozenset({Reason.PROVISIONING_FAILED, Reason.QUOTA_EXCEEDED})


class AgentPools(Protocol):
    """What reconcile needs of Azure (implemented by `adapters.azure.AksAgentPools`)."""

    async def observe(self, name: str) -> ObservedAgentPool | None: ...  # noqa: D102
    async def begin_apply(self, desired: DesiredAgentPool) -> None: ...  # noqa: D102
    async def begin_delete(self, name: str) -> None: ...  # noqa: D102
    async def read_quota(self, vm_size: str) -> QuotaReading | None: ...  # noqa: D102
    async def list_managed(self) -> list[ObservedAgentPool]: ...  # noqa: D102
    async def close(self) -> None: ...  # noqa: D102


@dataclass(frozen=True)
class PoolDemand:
    """What one InferenceDeployment wants of a shared pool (kept in the operator's index).

    Attributes:
        owner: `namespace/name` of the deployment.
        pool: Its desired pool (bounds for itself alone).
        created: The deployment's `metadata.creationTimestamp` (RFC 3339, UTC: it sorts as the time does).
    """

    owner: str
    pool: DesiredAgentPool
    created: str = ""


@dataclass
class _Fault:
    fault: CloudFault
    until: datetime
    attempts: int
    retried: bool = False  # a failed pool operation was re-sent after this backoff


@dataclass
class Clients:
    """The I/O handles and the in-memory bookkeeping one operator process shares between reconciles.

    Attributes:
        kube: Kubernetes objects.
        pools: AKS agent pools, or None when no Azure settings are given (BYO and CPU still work).
        scraper: Reads the serving pods' metrics pages.
    """

    kube: KubeObjects
    pools: AgentPools | None
    scraper: MetricsScraper = field(default_factory=MetricsScraper)
    _faults: dict[str, _Fault] = field(default_factory=dict)
    _cache: dict[str, tuple[ObservedAgentPool | None, datetime]] = field(default_factory=dict)
    _locks: defaultdict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    # Last metrics scrape per deployment: pod name -> (scrape, monotonic time its page came in), the next window.
    _scrapes: dict[str, dict[str, tuple[Scrape, float]]] = field(default_factory=dict)
    _scaling: dict[str, ScalingStatus | None] = field(default_factory=dict)  # the policy's last decision read
    # Last quota read per VM size: (reading, or why there is none; when).
    _quota: dict[str, tuple[QuotaReading | str, datetime]] = field(default_factory=dict)
    # Last list of the cluster's tokenplane pools (their headroom is claimed on the quota), and when.
    _managed: tuple[list[ObservedAgentPool], datetime] | None = None
    # Operations started per pool: a deployment that waited for the pool's lock sees whether another one wrote.
    _pool_writes: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))

    async def close(self) -> None:
        """Close every client."""
        await self.kube.close()
        await self.scraper.close()
        if self.pools is not None:
            await self.pools.close()


@dataclass(frozen=True)
class ReconcileResult:
    """What a reconcile round did and what it found.

    Attributes:
        status: The status to write.
        gauges: The status as the operator's per-deployment metrics.
        actions: What was done (or waited for), in order, each with its reason.
        retry_after_s: When to come back sooner than the timer (a fault), or None.
        faults: Newly hit faults, for warning events.
        invalid: The spec is invalid: a permanent error until it changes.
    """

    status: InferenceDeploymentStatus
    gauges: DeploymentGauges
    actions: list[Action]
    retry_after_s: float | None = None
    faults: list[CloudFault] = field(default_factory=list)
    invalid: bool = False

    @property
    def outcome(self) -> Literal["success", "fault", "invalid"]:
        """How the round ended: the spec is invalid, a fault makes it come back early, or it went through."""
        if self.invalid:
            return "invalid"
        return "fault" if self.retry_after_s is not None else "success"


@dataclass(frozen=True)
class ReleaseResult:
    """Progress of releasing what a deleted deployment used.

    Attributes:
        actions: What was done or is awaited.
        done: Everything is released (the finalizer may go).
        retry_after_s: When to look again if not done.
    """

    actions: list[Action]
    done: bool
    retry_after_s: float


def status_patch(status: InferenceDeploymentStatus, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the merge patch for `.status`: our fields set, the ones now empty removed (None).

    `metrics` is left alone: the metrics collector owns it. Given the `current` status, only what differs: a
    round that changes nothing writes nothing (no write, no watch event, for each of thousands of CRs every poll).
    """
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"metrics"})
    keys = [f.alias or n for n, f in InferenceDeploymentStatus.model_fields.items() if n != "metrics"]
    patch = {key: dumped.get(key) for key in keys}
    if current is None:
        return patch
    for key, value in patch.items():
        had = current.get(key)
        if isinstance(value, dict) and isinstance(had, dict):
            # A merge patch merges objects: a field now empty (nodePool.movingTo once the move is done) is removed
            # only by naming it null.
            patch[key] = {**dict.fromkeys(had.keys() - value.keys()), **value}
    return {key: value for key, value in patch.items() if current.get(key) != value}


def pool_demand(body: Mapping[str, Any], settings: OperatorSettings) -> PoolDemand | None:
    """Compute which managed pool a CR body wants, or None (invalid, BYO, CPU, or not plannable).

    Args:
        body: An InferenceDeployment body.
        settings: Operator settings (for rendering).

    Returns:
        The deployment's demand on its pool.
    """
    meta = body.get("metadata") or {}
    spec = json.dumps(body.get("spec"), sort_keys=True)
    pool = _desired_pool(str(meta.get("namespace")), str(meta.get("name")), spec, settings.render_config())
    return None if pool is None else PoolDemand(_owner(body), pool, str(meta.get("creationTimestamp") or ""))


@functools.lru_cache(maxsize=8192)
def _desired_pool(namespace: str, name: str, spec: str, config: RenderConfig) -> DesiredAgentPool | None:
    # Cached: the index recomputes on every event of every CR (status writes included), the spec rarely changes.
    body = {"metadata": {"namespace": namespace, "name": name}, "spec": json.loads(spec)}
    try:
        deployment = parse_inference_deployment(body)
        if check_deployment(deployment):
            return None
        return build_desired_state(deployment, config).agent_pool
    except (InvalidSpecError, PlanError):
        return None


async def reconcile(
    body: Mapping[str, Any],
    *,
    clients: Clients,
    settings: OperatorSettings,
    now: datetime,
    demand: Mapping[str, Collection[PoolDemand]] | None = None,
) -> ReconcileResult:
    """Make the cluster match one InferenceDeployment, then say truthfully where it stands.

    Observe (Azure pool, previous pool, owned objects) → plan (desired state) → diff (ordered actions)
    → apply (start LROs; never wait for them) → status from the snapshot. An invalid spec makes no
    cloud or cluster call at all.

    Args:
        body: The InferenceDeployment as the API server has it.
        clients: Shared clients and bookkeeping.
        settings: Operator settings.
        now: The current time (for conditions and backoff).
        demand: Every deployment's pool demand, by pool name (the kopf index); None to list CRs instead.

    Returns:
        The result: status, actions with reasons, and when to come back.
    """
    meta = body.get("metadata") or {}
    generation = int(meta.get("generation") or 0)
    previous_status = _previous_status(body)
    previous_conditions = previous_status.conditions if previous_status else []

    def result(deployment: InferenceDeployment | None, observed: ObservedState, **kw: Any) -> ReconcileResult:
        status = compute_status(
            deployment,
            observed,
            generation=generation,
            now=now,
            previous_conditions=previous_conditions,
            scaling=previous_status.scaling if previous_status else None,
        )
        return ReconcileResult(status=status, gauges=deployment_gauges(status, deployment), **kw)

    try:
        deployment = parse_inference_deployment(body)
        problems = check_deployment(deployment)
    except InvalidSpecError as err:
        problems = err.problems
    if problems:
        return result(None, ObservedState(problems=tuple(map(str, problems))), actions=[], invalid=True)

    config = settings.render_config()
    try:
        desired = build_desired_state(deployment, config)
    except PlanError as err:
        reason = Reason.DOES_NOT_FIT if err.reason is PlanErrorReason.DOES_NOT_FIT else Reason.INVALID_SPEC
        message = err.message if err.field is None else f"{err.field}: {err.message}"
        return result(deployment, ObservedState(plan_error=(reason, message)), actions=[], invalid=True)
    # The head's requests and the system node are operator settings: a head no system node holds stays Pending.
    if head := check_head_fits(desired, config):
        message = "; ".join(f"{p.where}: {p.message}" for p in head)
        return result(deployment, ObservedState(plan_error=(Reason.DOES_NOT_FIT, message)), actions=[], invalid=True)

    async with clients._locks[f"cr:{_owner(body)}"]:
        return await _reconcile_valid(
            body, desired, clients=clients, settings=settings, now=now, demand=demand, done=result
        )


async def reconcile_owner(
    namespace: str,
    name: str,
    *,
    clients: Clients,
    settings: OperatorSettings,
    now: datetime,
    demand: Mapping[str, Collection[PoolDemand]] | None = None,
) -> ReconcileResult | None:
    """Reconcile an InferenceDeployment because something it owns changed, and write its status.

    KubeRay reports progress on the RayService; reacting to that (instead of waiting for the next poll) turns a
    deployment Ready within seconds of its RayService.

    Args:
        namespace: The owner's namespace.
        name: The owner's name.
        clients: Shared clients and bookkeeping.
        settings: Operator settings.
        now: The current time.
        demand: Every deployment's pool demand (the kopf index), or None to list CRs.

    Returns:
        The result, or None when the owner is gone or being deleted.

    Raises:
        TokenplaneError: The API server failed; the poll catches up.
    """
    api_version = f"{GROUP}/{VERSION}"
    body = await clients.kube.get("InferenceDeployment", api_version, namespace, name)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    result = await reconcile(body, clients=clients, settings=settings, now=now, demand=demand)
    if patch := status_patch(result.status, body.get("status") or {}):
        await clients.kube.patch_status("InferenceDeployment", api_version, namespace, name, patch)
    return result


@dataclass
class _PoolSnapshot:
    """What Azure said of the deployment's pool (and of the pool it is moving away from) this round."""

    merged: DesiredAgentPool | None = None  # the pool with every sharing deployment's bounds added up
    observed: ObservedAgentPool | None = None
    previous_pool: str | None = None  # the pool status named, while a move away from it is unfinished
    replace_reason: str | None = None
    previous_claimed: bool = False  # another deployment still needs the previous pool
    turned_away: str | None = None  # the pool a move headed to (status names it) that the spec no longer asks for
    fault: CloudFault | None = None
    new_faults: list[CloudFault] = field(default_factory=list)
    quota: QuotaCheck | None = None
    quota_error: str | None = None


@dataclass(frozen=True)
class _ObjectsSnapshot:
    """The Kubernetes objects the deployment should own, and what the API server has of each."""

    desired: dict[str, dict[str, Any]]
    desired_hashes: dict[str, str]
    existing: dict[str, dict[str, Any] | None]

    def observed_hashes(self) -> dict[str, str | None]:
        """Return the spec hash of each existing object: its annotation, or the hash of its spec if edited by hand."""
        hashes: dict[str, str | None] = {}
        for key, obj in self.existing.items():
            if obj is None:
                hashes[key] = None
                continue
            spec = obj.get("spec") or {}
            # `kubectl edit` keeps our annotation: the fields we set are compared themselves (those alone, so what
            # the API server defaults or KubeRay adds is no edit), and a hand edit of any of them is undone.
            annotated = ((obj.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
            hashes[key] = spec_hash(spec) if drifted(self.desired[key]["spec"], spec) else annotated
        return hashes


async def _reconcile_valid(
    body: Mapping[str, Any],
    desired: DesiredState,
    *,
    clients: Clients,
    settings: OperatorSettings,
    now: datetime,
    demand: Mapping[str, Collection[PoolDemand]] | None,
    done: Callable[..., ReconcileResult],
) -> ReconcileResult:
    """Observe, diff, apply and report, for a deployment whose spec is valid and whose plan is resolved."""
    deployment, plan = desired.deployment, desired.plan
    pools = await _observe_pools(body, desired, clients=clients, settings=settings, now=now, demand=demand)
    try:
        objects = await _observe_objects(body, desired, clients.kube)
    except TransientKubeError as err:
        return done(deployment, ObservedState(plan=plan), actions=[], retry_after_s=err.retry_after_s or 5.0)
    observed = _observed_state(deployment, desired, plan, pools, objects)
    if pools.previous_pool is not None:
        observed = _replace(observed, previous_pool_pods=await _pods_on(clients.kube, deployment, pools.previous_pool))
    released: list[Action] = []
    if pools.turned_away is not None:
        try:
            released = await _release_turned_away(pools.turned_away, _owner(body), clients, settings)
        except TokenplaneError as err:  # status keeps naming it: the next round tries again
            pools.new_faults.append(_record(clients, pools.turned_away, err, now, settings))
            observed = _replace(observed, turned_away_pool=pools.turned_away)
    actions = released + compute_actions(
        desired_pool=pools.merged,
        desired_hashes=objects.desired_hashes,
        observed_hashes=objects.observed_hashes(),
        observed=observed,
        previous_pool_claimed=pools.previous_claimed,
        cluster_change=_cluster_change(objects, desired),
    )
    applied = await _apply_actions(
        actions, desired, objects, pools, observed, owner=body, clients=clients, settings=settings, now=now
    )
    if applied.stop is not None:
        return done(deployment, applied.observed, actions=actions, **applied.stop)
    observed = await _after_apply(actions, applied, pools.merged, clients=clients, settings=settings, now=now)
    fault = observed.cloud_fault
    return done(
        deployment,
        observed,
        actions=actions,
        retry_after_s=fault.retry_after_s if fault else None,
        faults=pools.new_faults,
    )


async def _release_turned_away(name: str, owner: str, clients: Clients, settings: OperatorSettings) -> list[Action]:
    """Release a pool a move headed to when the spec no longer asks for it and no other deployment needs it.

    Edits kopf merges into no change (vmSize A -> B -> A) after a poll created B reach no change handler, so
    `release_abandoned` never sees them: status, which named B as the pool moved to, is what remembers it.

    Raises:
        TokenplaneError: Azure or Kubernetes failed.
    """
    assert clients.pools is not None
    users = await _users(name, owner, clients, settings)
    action = compute_release(name, None if users else await clients.pools.observe(name), users)
    if action is None:
        return []
    if action.kind is ActionKind.RELEASE_POOL:
        await clients.pools.begin_delete(name)
        clients._cache.pop(name, None)
    return [action]


async def _observe_pools(
    body: Mapping[str, Any],
    desired: DesiredState,
    *,
    clients: Clients,
    settings: OperatorSettings,
    now: datetime,
    demand: Mapping[str, Collection[PoolDemand]] | None,
) -> _PoolSnapshot:
    """Read the deployment's pool and any pool it is moving away from; a failure becomes a fault, never raises."""
    owner = _owner(body)
    previous_status = _previous_status(body)
    status_pool = previous_status.node_pool if previous_status else None
    snap = _PoolSnapshot(previous_pool=status_pool.name if status_pool else None)
    if desired.agent_pool is not None and clients.pools is None:
        snap.fault = CloudFault(
            Reason.CLOUD_ERROR, "the operator has no Azure settings (TOKENPLANE_SUBSCRIPTION_ID...)", 3600, True
        )
        return snap
    if desired.agent_pool is None and snap.previous_pool is None:
        return snap
    if desired.agent_pool is not None:
        snap.merged = await _merged_demand(desired.agent_pool, owner, clients, settings, demand)
    merged = snap.merged
    if status_pool is not None and status_pool.moving_to not in (None, status_pool.name, merged and merged.name):
        snap.turned_away = status_pool.moving_to
    if snap.previous_pool is not None and (merged is None or snap.previous_pool == merged.name):
        snap.previous_pool = None
    snap.fault = _active_fault(clients, merged.name if merged else "", now)
    if snap.fault is not None:
        return snap
    try:
        if merged is not None:
            snap.observed = await _observe(clients, merged.name, now, settings)
        if snap.previous_pool is not None:
            old = await _observe(clients, snap.previous_pool, now, settings)
            if old is None or old.provisioning_state == "Deleting":
                snap.previous_pool = None  # already released (perhaps by us before a restart)
            elif merged is not None:
                snap.replace_reason = needs_replacement(merged, old) or "the hardware class changed"
            snap.previous_claimed = snap.previous_pool is not None and bool(
                await _users(snap.previous_pool, owner, clients, settings)
            )
        if merged is not None and snap.observed is not None and not snap.observed.managed:
            # Not ours (no managed-by tag): updating it would take it over, and releasing it delete someone's nodes.
            message = (
                f"agent pool {merged.name} exists but tokenplane did not create it (no {MANAGED_BY_TAG} tag); "
                "rename or delete that pool"
            )
            snap.fault = CloudFault(Reason.CLOUD_ERROR, message, settings.rejected_retry_s, stalled=True)
            snap.observed = None  # nor is it a pool to schedule onto
        elif merged is not None and snap.observed is not None:
            snap.fault = _note_pool_failure(clients, merged.name, snap.observed, now, settings, snap.new_faults)
    except TokenplaneError as err:
        snap.fault = _record(clients, merged.name if merged else snap.previous_pool or "", err, now, settings)
        snap.new_faults.append(snap.fault)
    if merged is not None and snap.fault is None:
        await _bound_by_quota(snap, merged, clients, settings, now, demand)
    return snap


async def _bound_by_quota(
    snap: _PoolSnapshot,
    merged: DesiredAgentPool,
    clients: Clients,
    settings: OperatorSettings,
    now: datetime,
    demand: Mapping[str, Collection[PoolDemand]] | None,
) -> None:
    """Check the region's vCPU quota before the pool is created or grown: bound it, or hold it back, by policy.

    What is free is shared with the operator's other pools (`_quota_claims`): each was checked against the same
    usage, and the usage counts only the nodes they have now, not those their autoscalers may still add.
    """
    assert clients.pools is not None
    key = merged.vm_size.lower()
    cached = clients._quota.get(key)
    if cached is None or now - cached[1] >= timedelta(seconds=settings.quota_cache_ttl_s):
        async with clients._locks[f"quota:{key}"]:  # one read for every deployment that found it stale
            latest = clients._quota.get(key)
            if latest is None or latest is cached:
                try:
                    reading = await clients.pools.read_quota(merged.vm_size) or f"the region lists no {merged.vm_size}"
                except TokenplaneError as err:
                    reading = str(err)  # unreadable quota (permissions, throttling) never blocks the pool
                clients._quota[key] = (reading, now)
            cached = clients._quota[key]
    if not isinstance(cached[0], QuotaReading):
        snap.quota_error = cached[0]
        return
    current = (snap.observed.count or 0) if snap.observed is not None else 0
    try:
        # The pool this one replaces goes once the move is done (unless another deployment keeps it): the headroom
        # it may still add is not kept from its replacement.
        replaced = snap.previous_pool if not snap.previous_claimed else None
        claims = await _quota_claims(merged, snap.observed is not None, cached[0], clients, settings, now, demand)
        claims = [claim for claim in claims if claim.name != replaced]
    except TokenplaneError as err:
        snap.quota_error = f"cannot list the cluster's agent pools: {err}"  # never blocks the pool, as above
        return
    snap.quota = check_quota(merged, current, cached[0], claims)
    bounded = bound_pool(merged, snap.quota, settings.quota_policy, snap.observed)
    if bounded is None and snap.quota is not None:
        # Not recorded as a fault: the next round reads the quota again and creates the pool once it fits.
        message = f"{snap.quota.describe()}. {snap.quota.remedy()}"
        snap.fault = CloudFault(Reason.QUOTA_EXCEEDED, message, settings.poll_interval_s, stalled=True)
    snap.merged = bounded or merged


async def _quota_claims(
    merged: DesiredAgentPool,
    exists: bool,
    reading: QuotaReading,
    clients: Clients,
    settings: OperatorSettings,
    now: datetime,
    demand: Mapping[str, Collection[PoolDemand]] | None,
) -> list[PoolClaim]:
    """Nodes the operator's other pools may still add, which the quota must keep for them.

    Every existing tokenplane pool claims up to its maxCount. A pool not created yet is claimed too, by a pool
    not created yet either that was asked for later (its first deployment's creation time, then the pool's name),
    with what its own check will let it have (`pending_claim`): two deployments created together are each checked
    once against the other, not both against the same free vCPUs, nor each held back for the other, nor for a pool
    the quota holds back. First come, first served: by name (a hash), a deployment created later took the quota
    from one waiting for it.
    """
    assert clients.pools is not None
    listed = clients._managed
    if listed is None or now - listed[1] >= timedelta(seconds=settings.quota_cache_ttl_s):
        async with clients._locks["quota:pools"]:
            current = clients._managed
            if current is None or current is listed:
                try:
                    current = clients._managed = (await clients.pools.list_managed(), now)
                except TokenplaneError:
                    if listed is None or now - listed[1] >= timedelta(seconds=_POOL_LIST_FALLBACK_S):
                        raise
                    current = listed
            listed = current
    pools = {pool.name for pool in listed[0] if pool.provisioning_state != "Deleting"}
    claims = existing_claims(listed[0], merged.name)
    if exists:
        return claims
    demands = demand if demand is not None else await _demands(clients, settings)

    def asked(name: str) -> tuple[str, str]:
        return min((d.created for d in demands.get(name, ())), default=""), name

    own = asked(merged.name)
    for name, users in sorted(demands.items(), key=lambda item: asked(item[0])):
        if asked(name) >= own:
            break
        if name not in pools and users:
            ordered = sorted(users, key=lambda d: d.owner)
            pending = merge_pool_demand([d.pool for d in ordered], max_nodes=settings.max_pool_nodes)
            claim = pending_claim(pending, reading, claims, settings.quota_policy)
            if claim is not None:
                claims.append(claim)
    return claims


async def _observe_objects(body: Mapping[str, Any], desired: DesiredState, kube: KubeObjects) -> _ObjectsSnapshot:
    """Read each Kubernetes object the deployment should own.

    Raises:
        TransientKubeError: The API server did not answer; the caller comes back soon.
    """
    owned = {
        object_key(obj["kind"], obj["metadata"]["name"]): _owned(obj, body) for obj in desired.kubernetes_objects()
    }
    found = await asyncio.gather(*(_get(kube, obj) for obj in owned.values()))
    uid = (body.get("metadata") or {}).get("uid")
    return _ObjectsSnapshot(
        desired=owned,
        desired_hashes={key: obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION] for key, obj in owned.items()},
        # One a deleted namesake owned (the CR recreated at once) is as good as gone: the garbage collector deletes
        # it once it sees that owner's uid gone. Applying it again hands it to this CR before that.
        existing={
            key: None if obj is not None and _controller_uid(obj) not in (None, uid) else obj
            for key, obj in zip(owned, found, strict=True)
        },
    )


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    """Return the uid of the InferenceDeployment controlling an object, or None."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r.get("uid") for r in refs if r.get("controller") and r.get("kind") == "InferenceDeployment"), None)


def _observed_state(
    deployment: InferenceDeployment,
    desired: DesiredState,
    plan: PlanStatus,
    pools: _PoolSnapshot,
    objects: _ObjectsSnapshot,
) -> ObservedState:
    """Put what was read into the one snapshot that the diff and the status both read."""
    hardware = deployment.spec.hardware
    source = (
        NodeSource.LOCAL
        if hardware.accelerator is AcceleratorKind.CPU
        else NodeSource.EXISTING
        if hardware.node_pool.existing is not None
        else NodeSource.MANAGED
    )
    rs_key = object_key("RayService", desired.rayservice["metadata"]["name"])
    service_exists = objects.existing.get(object_key("Service", desired.service["metadata"]["name"]))
    merged = pools.merged
    return ObservedState(
        node_source=source,
        pool_name=merged.name if merged else None,
        pool=pools.observed,
        pool_bounds=(merged.min_count, merged.max_count) if merged else None,
        previous_pool=pools.previous_pool,
        replace_reason=pools.replace_reason,
        existing_selector=hardware.node_pool.existing.node_selector if hardware.node_pool.existing else {},
        cloud_fault=pools.fault,
        rayservice=_rayservice(
            objects.existing.get(rs_key), objects.observed_hashes()[rs_key], objects.desired_hashes[rs_key]
        ),
        endpoint_url=desired.endpoint_url if service_exists else None,
        plan=plan,
        quota=pools.quota,
        quota_error=pools.quota_error,
    )


_POOL_WRITES = (ActionKind.CREATE_POOL, ActionKind.REPLACE_POOL, ActionKind.UPDATE_POOL)


@dataclass
class _Applied:
    """The snapshot as the applied actions left it; `stop` holds the result's fields when a failure ends the round."""

    observed: ObservedState
    rayservice_written: bool = False
    stop: dict[str, Any] | None = None


async def _apply_actions(
    actions: list[Action],
    desired: DesiredState,
    objects: _ObjectsSnapshot,
    pools: _PoolSnapshot,
    observed: ObservedState,
    *,
    owner: Mapping[str, Any],
    clients: Clients,
    settings: OperatorSettings,
    now: datetime,
) -> _Applied:
    """Carry out the actions in order: start pool operations (never wait for them) and write objects."""
    applied = _Applied(observed)
    merged = pools.merged
    for action in actions:
        try:
            await _apply_one(
                action, desired, objects, merged, applied, owner=owner, clients=clients, settings=settings, now=now
            )
        except TransientKubeError as err:
            applied.stop = {"retry_after_s": err.retry_after_s or 5.0}
            return applied
        except KubeRejectedError as err:
            fault = CloudFault(Reason.SERVING_FAILED, str(err), settings.rejected_retry_s, True)
            applied.observed = _replace(applied.observed, cloud_fault=fault)
            applied.stop = {"retry_after_s": fault.retry_after_s, "faults": [fault]}
            return applied
        except TokenplaneError as err:
            fault = _record(clients, merged.name if merged else action.target, err, now, settings)
            pools.new_faults.append(fault)
            applied.observed = _replace(applied.observed, cloud_fault=fault)
            break
        else:
            if action.kind in _POOL_WRITES:
                assert merged is not None
                # A failed operation's backoff keeps growing until the pool is seen Succeeded.
                _clear(clients, merged.name, keep_failed=True)
    return applied


async def _apply_one(
    action: Action,
    desired: DesiredState,
    objects: _ObjectsSnapshot,
    merged: DesiredAgentPool | None,
    applied: _Applied,
    *,
    owner: Mapping[str, Any],
    clients: Clients,
    settings: OperatorSettings,
    now: datetime,
) -> None:
    """Carry out one action, noting in `applied` what it changed of the snapshot."""
    if action.kind in _POOL_WRITES:
        assert clients.pools is not None and merged is not None
        writes = clients._pool_writes[merged.name]
        async with clients._locks[f"pool:{merged.name}"]:
            if clients._pool_writes[merged.name] != writes:
                # Another deployment of the class started an operation while this one waited: the pool is busy
                # now, and a later round sends what this deployment adds (one PUT, not one per deployment).
                return
            fresh = await _observe(clients, merged.name, now, settings, fresh=True)
            if fresh is None and action.kind is ActionKind.REPLACE_POOL:
                # Write-ahead: status names the new pool before it is billed, so an operator that dies before this
                # round's status patch still finds it (and releases it if the spec went back to the old pool).
                meta = owner.get("metadata") or {}
                moving = {"nodePool": {"movingTo": merged.name}}
                await clients.kube.patch_status(
                    "InferenceDeployment", f"{GROUP}/{VERSION}", meta.get("namespace", ""), meta.get("name", ""), moving
                )
            if fresh is None or not fresh.in_progress:
                await clients.pools.begin_apply(merged)
                clients._pool_writes[merged.name] += 1
            clients._cache.pop(merged.name, None)
            clients._quota.pop(merged.vm_size.lower(), None)  # the pool's nodes change the usage
            clients._managed = None  # and its bounds what it claims of the quota
    elif action.kind is ActionKind.RELEASE_POOL:
        assert clients.pools is not None
        await clients.pools.begin_delete(action.target)
        clients._cache.pop(action.target, None)
        applied.observed = _replace(applied.observed, previous_pool=None)
    elif action.kind is ActionKind.DETACH_POOL:
        applied.observed = _replace(applied.observed, previous_pool=None)
    elif action.kind is ActionKind.REPLACE_RAYSERVICE:
        await clients.kube.delete(objects.desired[action.target])
        applied.observed = _replace(
            applied.observed, rayservice=None, rollout=f"replacing the Ray cluster: {action.reason}"
        )
    elif action.kind is not ActionKind.WAIT:
        await clients.kube.apply(objects.desired[action.target])
        applied.rayservice_written |= action.kind is ActionKind.APPLY_RAYSERVICE
        if action.kind is ActionKind.APPLY_SERVICE:
            applied.observed = _replace(applied.observed, endpoint_url=desired.endpoint_url)


async def _after_apply(
    actions: list[Action],
    applied: _Applied,
    merged: DesiredAgentPool | None,
    *,
    clients: Clients,
    settings: OperatorSettings,
    now: datetime,
) -> ObservedState:
    """Re-read a pool whose operation was just started, and mark a just-written RayService as not yet seen."""
    observed = applied.observed
    if observed.cloud_fault is None and merged is not None and any(a.kind in _POOL_WRITES for a in actions):
        # If this read fails the next round observes again; the actions already say what was started.
        with contextlib.suppress(TokenplaneError):
            observed = _replace(observed, pool=await _observe(clients, merged.name, now, settings))
    if applied.rayservice_written:
        # KubeRay has not seen the new spec yet: not ready until it says so.
        observed = _replace(observed, rayservice=RayServiceObservation(current=True, message="spec just applied"))
    return observed


async def release(body: Mapping[str, Any], *, clients: Clients, settings: OperatorSettings) -> ReleaseResult:
    """Release the pools a deleted deployment used, unless other deployments still need them.

    Covers the pool in status (also one still provisioning, or the old one mid-move) and the pool the spec
    asks for. Owned Kubernetes objects go by owner reference; Azure pools need this explicit step.

    Args:
        body: The InferenceDeployment being deleted.
        clients: Shared clients.
        settings: Operator settings.

    Returns:
        The actions and whether everything is released.

    Raises:
        TokenplaneError: Azure or Kubernetes failed; the caller retries (the finalizer stays).
    """
    owner = _owner(body)
    names = _pools_in_use(body, settings)
    if not names or clients.pools is None:
        return ReleaseResult([], True, 0)
    actions: list[Action] = []
    pending = False
    async with clients._locks[f"cr:{owner}"]:
        for name in sorted(names):
            users = await _users(name, owner, clients, settings)
            observed = None if users else await clients.pools.observe(name)
            action = compute_release(name, observed, users)
            if action is None:
                continue
            actions.append(action)
            if action.kind is ActionKind.RELEASE_POOL:
                await clients.pools.begin_delete(name)
                clients._cache.pop(name, None)
            pending |= action.kind in (ActionKind.RELEASE_POOL, ActionKind.WAIT)
    return ReleaseResult(actions, not pending, settings.poll_interval_s)


async def sweep_orphaned_pools(
    *, clients: Clients, settings: OperatorSettings, unused_since: dict[str, datetime], now: datetime
) -> list[Action]:
    """Release tokenplane's agent pools that no InferenceDeployment uses, once unused for `orphan_grace_s`.

    A pool is created before its deployment's status names it; a crash between the two, then a deletion or a
    spec edit, left a billed pool that no CR's finalizer would release. Only pools carrying our managed-by tag
    are candidates (never the system pool nor BYO pools). A pool in use by any CR of the cluster (its spec asks for
    it, or its status names it, also mid-move and while it is being deleted) is kept, as is one with an operation
    in flight (being created right now).

    Args:
        clients: Shared clients.
        settings: Operator settings (rendering, to know the pool each spec asks for; the grace period).
        unused_since: When each pool was first seen unused; the caller keeps it between sweeps.
        now: The current time.

    Returns:
        The releases started (and the pools still being deleted).

    Raises:
        TokenplaneError: Azure or Kubernetes failed; the next sweep tries again.
    """
    if clients.pools is None:
        return []
    pools = await clients.pools.list_managed()
    # Listed after the pools: a pool in that list was created for a CR this list holds (or that is gone since).
    used = {name for item in await clients.kube.list_inference_deployments() for name in _pools_in_use(item, settings)}
    unused = {pool.name: pool for pool in pools if pool.name not in used}
    for name in set(unused_since) - set(unused):
        del unused_since[name]  # used again (or gone): its grace starts over if it is ever unused again
    actions = []
    for name, pool in sorted(unused.items()):
        first = unused_since.setdefault(name, now)
        if pool.in_progress or now - first < timedelta(seconds=settings.orphan_grace_s):
            continue
        async with clients._locks[f"pool:{name}"]:
            # Read both again: a CR may have claimed it since the listing.
            users = await _users(name, "", clients, settings)
            action = compute_release(name, None if users else await clients.pools.observe(name), users)
            if action is None or action.kind is not ActionKind.RELEASE_POOL:
                continue
            await clients.pools.begin_delete(name)
            clients._cache.pop(name, None)
        unused_since.pop(name, None)
        actions.append(replace(action, reason=f"no InferenceDeployment has used it for {now - first}"))
    return actions


async def release_abandoned(
    old: Mapping[str, Any], body: Mapping[str, Any], *, clients: Clients, settings: OperatorSettings
) -> list[Action]:
    """Release the pool an edit moved away from before the deployment ever ran on it.

    Status names only the pool served from (the old one, during a move), so a pool created for a spec that was
    edited again before the move finished (vmSize A -> B -> A, or -> C) was named nowhere and left running.

    Args:
        old: The spec as last handled (kopf's `old`): the pool it wanted may have been created.
        body: The InferenceDeployment now.
        clients: Shared clients.
        settings: Operator settings.

    Returns:
        What was done for each abandoned pool (release, detach, or wait while it is Deleting).

    Raises:
        TokenplaneError: Azure or Kubernetes failed; the caller retries.
    """
    if clients.pools is None:
        return []
    before = {"metadata": body.get("metadata") or {}, "spec": old.get("spec")}
    actions = []
    async with clients._locks[f"cr:{_owner(body)}"]:
        for name in sorted(_pools_in_use(before, settings) - _pools_in_use(body, settings)):
            users = await _users(name, _owner(body), clients, settings)
            action = compute_release(name, None if users else await clients.pools.observe(name), users)
            if action is not None and action.kind is ActionKind.RELEASE_POOL:
                await clients.pools.begin_delete(name)
                clients._cache.pop(name, None)
            if action is not None:
                actions.append(action)
    return actions


async def collect_metrics(
    body: Mapping[str, Any], *, clients: Clients, settings: OperatorSettings, now: datetime, clock: Callable[[], float]
) -> MetricsStatus | None:
    """Scrape the deployment's Ray pods and turn the window since the previous scrape into status metrics.

    Args:
        body: The InferenceDeployment.
        clients: Shared clients; they keep the previous scrape.
        settings: Operator settings (the metrics port).
        now: Wall time, stamped on the result.
        clock: Monotonic seconds, read as each pod's page comes in: a pod's window runs between its own two pages,
            not between two timer ticks (a tick may wait for a reconcile slot) nor until the slowest pod answered.

    Returns:
        The metrics, or None for the first scrape, when no pod answered, or when no pod spans the window (no
        GPU pod, when the deployment has GPU pods: the head alone says nothing per GPU).

    Raises:
        TokenplaneError: The pods could not be listed; the next collection tries again.
    """
    meta = body.get("metadata") or {}
    key = str(meta.get("uid") or _owner(body))
    pods = await clients.kube.list_pods(meta.get("namespace") or "default", selector_labels(str(meta.get("name"))))
    running = {
        pod["metadata"]["name"]: pod
        for pod in pods
        if (pod.get("status") or {}).get("phase") == "Running" and (pod.get("status") or {}).get("podIP")
    }

    async def timed_scrape(url: str) -> tuple[str, float]:
        page = await clients.scraper.scrape(url)
        return page, clock()

    urls = {name: f"http://{pod['status']['podIP']}:{settings.metrics_port}/metrics" for name, pod in running.items()}
    pages = await asyncio.gather(*(timed_scrape(url) for url in urls.values()), return_exceptions=True)
    answered = {name: page for name, page in zip(urls, pages, strict=True) if isinstance(page, tuple)}
    clients._scaling[key] = scaling_from_pages((text for text, _ in answered.values()), now)
    previous = clients._scrapes.get(key)
    if not answered:
        return None
    scrapes = clients._scrapes[key] = {name: (parse_scrape(text), at) for name, (text, at) in answered.items()}
    if previous is None:
        return None
    spanning = sorted(previous.keys() & scrapes.keys())
    gpus = gpus_in_pods(running[name] for name in spanning)
    # No GPU pod spans the window though the deployment has some (KubeRay creates the head first; a worker may be
    # Pending or just started): the head's tokens per deployment are not a per-GPU number, as they are on CPUs.
    if not spanning or (not gpus and gpus_in_pods(pods)):
        return None
    before, after = merge_window({n: previous[n][0] for n in spanning}, {n: scrapes[n][0] for n in spanning})
    # Each pod counted over its own window: the tokens summed over their mean is the sum of rates of pods alike.
    elapsed_s = sum(scrapes[n][1] - previous[n][1] for n in spanning) / len(spanning)
    return compute_economics(before, after, elapsed_s=elapsed_s, gpus=gpus, now=now)


def latest_scaling(body: Mapping[str, Any], clients: Clients) -> ScalingStatus | None:
    """Return the autoscaling decision read by the deployment's last `collect_metrics`, if the policy reported one."""
    meta = body.get("metadata") or {}
    return clients._scaling.get(str(meta.get("uid") or _owner(body)))


def forget_metrics(body: Mapping[str, Any], clients: Clients) -> None:
    """Drop the scrape kept for a deleted deployment."""
    meta = body.get("metadata") or {}
    clients._scrapes.pop(str(meta.get("uid") or _owner(body)), None)
    clients._scaling.pop(str(meta.get("uid") or _owner(body)), None)


# --- helpers -------------------------------------------------------------------------------------------


def _owner(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def _previous_status(body: Mapping[str, Any]) -> InferenceDeploymentStatus | None:
    try:
        return InferenceDeploymentStatus.model_validate(body.get("status") or {})
    except ValueError:
        return None  # a status we cannot read is recomputed from scratch


def _cluster_change(objects: _ObjectsSnapshot, desired: DesiredState) -> str | None:
    """Say why the RayService needs a new Ray cluster KubeRay will not start itself, or None.

    With `upgradeStrategy: None` KubeRay ignores rayClusterConfig changes (shouldPrepareNewCluster,
    ray-operator/controllers/ray/rayservice_controller.go), so the operator replaces the RayService.
    """
    rs = desired.rayservice
    have = objects.existing.get(object_key("RayService", rs["metadata"]["name"]))
    if have is None or rs["spec"]["upgradeStrategy"]["type"] != "None":
        return None
    old = ((have.get("metadata") or {}).get("annotations") or {}).get(CLUSTER_HASH_ANNOTATION)
    new = rs["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
    if old is None or old == new:
        return None
    return (
        f"the Ray cluster spec changed (cluster hash {old} -> {new}) and KubeRay's upgradeStrategy None does not "
        "roll it out; serving pauses until the new cluster is Ready, no extra GPUs are used"
    )


async def _pods_on(kube: KubeObjects, deployment: InferenceDeployment, pool: str) -> int:
    """Count the deployment's pods scheduled onto a pool (its label in their nodeSelector)."""
    pods = await kube.list_pods(deployment.namespace, selector_labels(deployment.name))
    return sum(
        1
        for pod in pods
        if ((pod.get("spec") or {}).get("nodeSelector") or {}).get(POOL_LABEL) == pool
        and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )


def _owned(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """Return the object with a controller owner reference, so Kubernetes collects it with its owner."""
    child = copy.deepcopy(dict(obj))
    meta = owner.get("metadata") or {}
    child["metadata"]["ownerReferences"] = [
        {
            "apiVersion": owner.get("apiVersion", "tokenplane.io/v1alpha1"),
            "kind": owner.get("kind", "InferenceDeployment"),
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    return child


async def _get(kube: KubeObjects, obj: Mapping[str, Any]) -> dict[str, Any] | None:
    meta = obj["metadata"]
    return await kube.get(obj["kind"], obj["apiVersion"], meta["namespace"], meta["name"])


def _rayservice(obj: Mapping[str, Any] | None, have_hash: str | None, want_hash: str) -> RayServiceObservation | None:
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    # KubeRay's observedGeneration lags metadata.generation until it has acted on our last write.
    seen = status.get("observedGeneration")
    caught_up = seen is None or int(seen) >= int(meta.get("generation") or 0)
    return RayServiceObservation.from_status(status, current=have_hash == want_hash and caught_up)


async def _merged_demand(
    own: DesiredAgentPool,
    owner: str,
    clients: Clients,
    settings: OperatorSettings,
    demand: Mapping[str, Collection[PoolDemand]] | None,
) -> DesiredAgentPool:
    """Return the deployment's pool with the bounds of every deployment sharing it added up."""
    if demand is None:
        others = await _demands(clients, settings)
        users = [d for d in others.get(own.name, ()) if d.owner != owner]
    else:
        users = [d for d in demand.get(own.name, ()) if d.owner != owner]
    ordered = sorted([*users, PoolDemand(owner, own)], key=lambda d: d.owner)
    return merge_pool_demand([d.pool for d in ordered], max_nodes=settings.max_pool_nodes)


async def _demands(clients: Clients, settings: OperatorSettings) -> dict[str, list[PoolDemand]]:
    found: dict[str, list[PoolDemand]] = defaultdict(list)
    for item in await clients.kube.list_inference_deployments():
        if (item.get("metadata") or {}).get("deletionTimestamp"):
            continue
        found_demand = pool_demand(item, settings)
        if found_demand is not None:
            found[found_demand.pool.name].append(found_demand)
    return found


def _pools_in_use(body: Mapping[str, Any], settings: OperatorSettings) -> set[str]:
    """Pools a deployment uses: the one its spec asks for and those its status names (maybe mid-move)."""
    names = set()
    demand = pool_demand(body, settings)
    if demand is not None:
        names.add(demand.pool.name)
    status = _previous_status(body)
    if status is not None and status.node_pool is not None and status.node_pool.managed:
        names.update(name for name in (status.node_pool.name, status.node_pool.moving_to) if name)
    return names


async def _users(pool: str, owner: str, clients: Clients, settings: OperatorSettings) -> list[str]:
    """Other live deployments that need the pool, from an authoritative list (never a cache)."""
    users = []
    for item in await clients.kube.list_inference_deployments():
        if _owner(item) == owner or (item.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if pool in _pools_in_use(item, settings):
            users.append(_owner(item))
    return users


async def _observe(
    clients: Clients, name: str, now: datetime, settings: OperatorSettings, *, fresh: bool = False
) -> ObservedAgentPool | None:
    """Read a pool, sharing one read between the deployments of a class for `pool_cache_ttl_s`.

    One read at a time per pool: the deployments that find the cache stale together wait for that read instead
    of each sending its own (1,000 deployments of four classes arriving at once made hundreds of reads).
    """
    assert clients.pools is not None
    ttl = timedelta(seconds=settings.pool_cache_ttl_s)
    cached = clients._cache.get(name)
    if not fresh and cached is not None and now - cached[1] < ttl:
        return cached[0]
    async with clients._locks[f"read:{name}"]:
        latest = clients._cache.get(name)
        if not fresh and latest is not None and latest is not cached:
            return latest[0]  # read by another deployment while this one waited
        observed = await clients.pools.observe(name)
        clients._cache[name] = (observed, now)
    return observed


def _active_fault(clients: Clients, key: str, now: datetime) -> CloudFault | None:
    for k in (_THROTTLE_KEY, key):
        entry = clients._faults.get(k)
        if entry is not None and now < entry.until:
            remaining = (entry.until - now).total_seconds()
            return CloudFault(entry.fault.reason, entry.fault.message, remaining, entry.fault.stalled)
    return None


def _record(clients: Clients, key: str, err: TokenplaneError, now: datetime, settings: OperatorSettings) -> CloudFault:
    """Classify an error, remember it with its retry time, and return it."""
    previous = clients._faults.get(key)
    attempts = previous.attempts + 1 if previous else 1
    backoff = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (attempts - 1))
    if isinstance(err, TransientCloudError) and err.throttled:
        fault = CloudFault(Reason.THROTTLED, err.message, err.retry_after_s or settings.throttle_default_s)
        key = _THROTTLE_KEY
    elif isinstance(err, TransientCloudError | TransientKubeError):
        fault = CloudFault(Reason.CLOUD_ERROR, str(err), err.retry_after_s or backoff)
    elif isinstance(err, CloudRejectedError):
        reason = {"QuotaExceeded": Reason.QUOTA_EXCEEDED, "SkuNotAvailable": Reason.SKU_NOT_AVAILABLE}.get(
            err.reason, Reason.CLOUD_ERROR
        )
        fault = CloudFault(reason, err.message, settings.rejected_retry_s, stalled=True)
    elif isinstance(err, OperationFailedError) and is_quota_error(err.code, err.message):
        # The PUT was accepted, then the operation failed for quota: a human acts, as for a refused PUT.
        fault = CloudFault(Reason.QUOTA_EXCEEDED, str(err), settings.rejected_retry_s, stalled=True)
    elif isinstance(err, OperationFailedError):
        fault = CloudFault(Reason.PROVISIONING_FAILED, str(err), backoff)
    else:
        fault = CloudFault(Reason.CLOUD_ERROR, str(err), backoff)
    clients._faults[key] = _Fault(fault, now + timedelta(seconds=fault.retry_after_s), attempts)
    return fault


def _note_pool_failure(
    clients: Clients,
    name: str,
    pool: ObservedAgentPool,
    now: datetime,
    settings: OperatorSettings,
    new_faults: list[CloudFault],
) -> CloudFault | None:
    """Record a Failed pool operation so it is retried after a backoff, not on every round."""
    if pool.provisioning_state != "Failed":
        if pool.succeeded:
            _clear(clients, name)
        return None
    entry = clients._faults.get(name)
    if entry is not None and entry.fault.reason in _RETRIED_FAILURES and not entry.retried:
        entry.retried = True  # its backoff ran out (else we would not be here): retry now
        return None
    message = ": ".join(p for p in (pool.error_code, pool.error_message) if p) or "the operation failed"
    fault = _record(clients, name, OperationFailedError(pool.error_code or "Failed", message), now, settings)
    new_faults.append(fault)
    return fault


def _clear(clients: Clients, key: str, *, keep_failed: bool = False) -> None:
    entry = clients._faults.get(key)
    if entry is not None and not (keep_failed and entry.fault.reason is Reason.PROVISIONING_FAILED):
        del clients._faults[key]
    clients._faults.pop(_THROTTLE_KEY, None)


def _replace(observed: ObservedState, **changes: Any) -> ObservedState:
    return replace(observed, **changes)
