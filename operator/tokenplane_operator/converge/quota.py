"""Regional vCPU quota against what a pool's autoscaler bounds can reach, before AKS refuses the PUT.

Azure meters GPU VMs in vCPUs, per region: a regular VM counts against its family's quota (e.g.
``standardNCadsH100v5Family``) and against the regional total (``cores``); a spot VM counts only against
the regional spot quota (``lowPriorityCores``). AKS preflight refuses a pool whose nodes would exceed any
of them (`QuotaExceeded`); the cluster autoscaler silently stops short. Checking first turns both into a
condition with numbers.

The region's usage counts only the nodes pools have now. Every other tokenplane pool counting against the same
quota may still grow to its maxCount (or, not created yet, be created): that headroom is claimed (`PoolClaim`),
and a pool is checked against what is free minus those claims. Without them two pools of one family each read
the same free vCPUs as theirs, both were created "sufficient", and the autoscaler of one stopped short.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from tokenplane_operator.desired.agentpool import DesiredAgentPool, ObservedAgentPool

__all__ = [
    "REGIONAL_CORES",
    "SPOT_CORES",
    "PoolClaim",
    "QuotaCheck",
    "QuotaPolicy",
    "QuotaReading",
    "QuotaUsage",
    "bound_pool",
    "check_quota",
    "existing_claims",
    "pending_claim",
]

REGIONAL_CORES = "cores"  # "Total Regional vCPUs" in the Compute usage API
SPOT_CORES = "lowPriorityCores"  # "Total Regional Low-priority vCPUs" (spot)


class QuotaPolicy(StrEnum):
    """What the operator does when the quota cannot cover a pool's maxCount."""

    BOUND = "bound"  # create/grow the pool only up to the nodes that fit (none fit: do not create)
    BLOCK = "block"  # do not create or grow the pool at all until the quota covers maxCount


@dataclass(frozen=True)
class QuotaUsage:
    """One row of the Compute usage API: a quota's limit and what is in use, in vCPUs.

    Attributes:
        name: The quota's name (``name.value``), e.g. ``standardNCadsH100v5Family`` or ``cores``.
        current: vCPUs in use in the region.
        limit: vCPUs allowed in the region.
    """

    name: str
    current: int
    limit: int

    @property
    def free(self) -> int:
        """Free vCPUs: what is still allowed (never negative: a limit lowered below use frees nothing)."""
        return max(0, self.limit - self.current)


@dataclass(frozen=True)
class QuotaReading:
    """What Azure said about one VM size's quota in the cluster's region.

    Attributes:
        region: The cluster's Azure region.
        vm_size: The VM size asked about.
        family: The quota family of the size (the resource SKU's ``family``).
        vcpus_per_node: vCPUs one VM of the size counts against quota.
        usages: Every usage row of the region, keyed by name in lower case (Azure's case varies).
        sizes: The region's VM sizes, lower case, to (quota family, vCPUs): how other pools' nodes count.
    """

    region: str
    vm_size: str
    family: str
    vcpus_per_node: int
    usages: Mapping[str, QuotaUsage]
    sizes: Mapping[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolClaim:
    """Nodes another tokenplane pool may still add: quota it can take before this pool's nodes would get it.

    Attributes:
        name: The other pool.
        vm_size: Its VM size.
        spot: Whether its VMs are spot (they count only against the spot quota).
        nodes: Nodes it may still add: maxCount minus its nodes for an existing pool, maxCount for a pending one.
    """

    name: str
    vm_size: str
    spot: bool
    nodes: int


@dataclass(frozen=True)
class QuotaCheck:
    """A pool's reach against the quotas it counts against.

    Attributes:
        reading: What the check is based on.
        limiting: The quota with the least room (family, regional, or spot).
        wanted_nodes: The pool's maxCount as the deployments sharing it ask for it.
        floor_nodes: The pool's minCount (their minReplicas): below it replicas the spec requires stay Pending.
        current_nodes: Nodes the pool has now (already part of the usage).
        needed_vcpus: vCPUs the pool still needs to reach `wanted_nodes`.
        available_vcpus: vCPUs the limiting quota still allows.
        reachable_nodes: Nodes the pool can reach within every quota.
        short: Every quota that cannot cover `needed_vcpus` (the limiting one first): each must be raised.
        claimed: vCPUs other tokenplane pools may still take, per quota (lower-case name); not available here.
        claimed_by: The pools claiming part of the limiting quota.
    """

    reading: QuotaReading
    limiting: QuotaUsage
    wanted_nodes: int
    current_nodes: int
    needed_vcpus: int
    available_vcpus: int
    reachable_nodes: int
    short: tuple[QuotaUsage, ...] = ()
    claimed: Mapping[str, int] = field(default_factory=dict)
    claimed_by: tuple[str, ...] = ()
    floor_nodes: int = 0

    @property
    def sufficient(self) -> bool:
        """Whether maxCount fits within every quota."""
        return self.reachable_nodes >= self.wanted_nodes

    def describe(self) -> str:
        """One sentence naming the family, the region, and the needed and available vCPUs."""
        reading, limiting = self.reading, self.limiting
        which = "" if limiting.name.lower() == reading.family.lower() else f" (limited by the {limiting.name} quota)"
        kind = "spot vCPUs" if limiting.name.lower() == SPOT_CORES.lower() else f"vCPUs of {reading.family}"
        claimed = self.claimed.get(limiting.name.lower(), 0)
        others = f", {claimed} claimed by other tokenplane pools ({', '.join(self.claimed_by)})" if claimed else ""
        return (
            f"{self.wanted_nodes} x {reading.vm_size} need {self.needed_vcpus} more {kind} "
            f"in {reading.region}, {self.available_vcpus} available{which}: "
            f"limit {limiting.limit}, in use {limiting.current}{others}; {_nodes(self.reachable_nodes)} fit"
            + (
                f", not even the pool's floor of {_nodes(self.floor_nodes)} (spec.scaling.minReplicas): the replicas "
                "it holds beyond those stay Pending"
                if self.floor_below
                else ""
            )
        )

    @property
    def floor_below(self) -> bool:
        """Whether the quota cannot hold even the pool's minCount (minReplicas raised past it)."""
        return self.reachable_nodes < self.floor_nodes

    def remedy(self) -> str:
        """Say what to change when the quota falls short: the quotas to raise and to what, or the fields to lower."""
        rows = self.short or (self.limiting,)
        raises = " and ".join(
            f"{row.name} to {row.current + self.claimed.get(row.name.lower(), 0) + self.needed_vcpus}" for row in rows
        )
        return (
            f"To get all {_nodes(self.wanted_nodes)}, request a quota increase in {self.reading.region} ({raises} "
            "vCPUs: Azure portal > Quotas > Compute, or `az quota update`); or lower spec.scaling.maxReplicas"
            + (" and spec.scaling.minReplicas" if self.floor_below else "")
            + f" (or choose another spec.hardware.vmSize) so that the pool needs at most {_nodes(self.reachable_nodes)}"
        )


def _nodes(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"


def _quotas_of(spot: bool, family: str) -> tuple[str, ...]:
    """Name the quotas a VM counts against: the spot quota alone, or its family's and the regional total."""
    return (SPOT_CORES,) if spot else (family, REGIONAL_CORES)


def _counts_against(row: str, spot: bool, family: str) -> bool:
    """Whether a VM (spot or not, of `family`) counts against the quota named `row`."""
    return row.lower() in {name.lower() for name in _quotas_of(spot, family)}


def check_quota(
    pool: DesiredAgentPool, current_nodes: int, reading: QuotaReading, claims: Iterable[PoolClaim] = ()
) -> QuotaCheck | None:
    """Compare what a pool's maxCount can reach with the quotas its VMs count against.

    Args:
        pool: The desired (merged) pool.
        current_nodes: Nodes the pool has now; they are already counted in the usage.
        reading: The region's usage and the size's family and vCPUs.
        claims: Nodes other tokenplane pools may still add; those counting against a quota of this pool
            (by their size's family in `reading.sizes`, and spot or not) are not free for it.

    Returns:
        The check, or None when none of the applicable quotas is in the reading.
    """
    names = _quotas_of(pool.spot, reading.family)
    rows = [row for name in names if (row := reading.usages.get(name.lower())) is not None]
    if not rows or reading.vcpus_per_node <= 0:
        return None
    claimed: dict[str, int] = {}
    claimers: dict[str, list[str]] = {}
    for claim in claims:
        family, vcpus_each = reading.sizes.get(claim.vm_size.lower(), ("", 0))
        if claim.name == pool.name or claim.nodes <= 0 or vcpus_each <= 0:
            continue
        for row in rows:
            if _counts_against(row.name, claim.spot, family):
                claimed[row.name.lower()] = claimed.get(row.name.lower(), 0) + claim.nodes * vcpus_each
                claimers.setdefault(row.name.lower(), []).append(claim.name)

    def free(row: QuotaUsage) -> int:
        return max(0, row.free - claimed.get(row.name.lower(), 0))

    limiting = min(rows, key=free)
    vcpus = reading.vcpus_per_node
    needed = max(0, pool.max_count - current_nodes) * vcpus
    return QuotaCheck(
        reading=reading,
        limiting=limiting,
        wanted_nodes=pool.max_count,
        current_nodes=current_nodes,
        needed_vcpus=needed,
        available_vcpus=free(limiting),
        reachable_nodes=current_nodes + free(limiting) // vcpus,
        short=tuple(sorted((row for row in rows if free(row) < needed), key=free)),
        claimed=claimed,
        claimed_by=tuple(sorted(claimers.get(limiting.name.lower(), ()))),
        floor_nodes=pool.min_count,
    )


def bound_pool(
    pool: DesiredAgentPool, check: QuotaCheck | None, policy: QuotaPolicy, existing: ObservedAgentPool | None
) -> DesiredAgentPool | None:
    """Return the pool to apply under the quota policy.

    Args:
        pool: The desired (merged) pool.
        check: The quota check, or None when the quota could not be read (the pool is applied as is).
        policy: Bound the pool to the nodes that fit, or never create or grow it past the quota.
        existing: The pool as it exists, or None.

    Returns:
        The pool itself when it fits; else, under `bound`, the pool with maxCount (and minCount) lowered to
        the nodes that fit, and under `block` an existing pool's bounds never raised. When nothing fits an
        existing pool keeps its bounds, and a missing one is not created (None).
    """
    if check is None or check.sufficient:
        return pool
    if policy is QuotaPolicy.BOUND:
        high = check.reachable_nodes
    else:
        high = 0 if existing is None else min(pool.max_count, existing.max_count or 0)
    if high < 1:
        if existing is None:
            return None
        low, high = existing.min_count or 0, max(1, existing.max_count or existing.count or 1)
        return pool.model_copy(update={"min_count": min(low, high), "max_count": high})
    return pool.model_copy(update={"max_count": high, "min_count": min(pool.min_count, high)})


def existing_claims(pools: Iterable[ObservedAgentPool], pool_name: str) -> list[PoolClaim]:
    """Return what the other existing tokenplane pools may still add: each up to its maxCount (deleting ones none)."""
    return [
        PoolClaim(other.name, other.vm_size, other.spot, max(0, (other.max_count or 0) - (other.count or 0)))
        for other in pools
        if other.name != pool_name and other.provisioning_state != "Deleting"
    ]


def pending_claim(
    pool: DesiredAgentPool, reading: QuotaReading, claims: Iterable[PoolClaim], policy: QuotaPolicy
) -> PoolClaim | None:
    """Return what a pool not created yet will take of the quota, once its own check (against `claims`) is applied.

    A pending pool claims the nodes it will be created with, not its maxCount: under `bound` what fits, under
    `block` nothing unless all of it fits. Claiming a pool that is held back would hold back every pool after it.

    Args:
        pool: The pending pool (merged demand).
        reading: A reading of the region (any size's: the usage rows are the region's); its `sizes` give the
            pool's family and vCPUs.
        claims: What the pools before it claim.
        policy: The operator's quota policy.

    Returns:
        The claim, or None when the pool will not be created.
    """
    family, vcpus = reading.sizes.get(pool.vm_size.lower(), ("", 0))
    if vcpus <= 0:
        return PoolClaim(pool.name, pool.vm_size, pool.spot, pool.max_count)  # a size check_quota cannot count
    own = replace(reading, vm_size=pool.vm_size, family=family, vcpus_per_node=vcpus)
    bounded = bound_pool(pool, check_quota(pool, 0, own, claims), policy, None)
    return None if bounded is None else PoolClaim(pool.name, pool.vm_size, pool.spot, bounded.max_count)
