"""Another tokenplane operator watching what this one watches: found from the kopf peering objects, pure.

kopf's peering keeps the replicas of one release apart (one peering object, one active replica), but two releases
have two peering objects and never see each other: both would create, scale and delete the same RayServices and
node pools. The chart refuses such an install with Helm's `lookup`, which `helm template`, dry runs and GitOps tools
(Argo CD renders with `helm template`) never run; the operator looks again when it starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

__all__ = ["CHART_PREFIX", "overlapping_operators"]

# The chart's `helm.sh/chart` label on its peering objects: `tokenplane-<version>`.
CHART_PREFIX = "tokenplane-"


def overlapping_operators(
    peerings: Iterable[Mapping[str, Any]], *, own: str, namespaces: Iterable[str], now: datetime
) -> list[str]:
    """Name the other tokenplane releases whose live operator watches a namespace this one watches.

    Args:
        peerings: ClusterKopfPeering and KopfPeering objects (a cluster-wide operator's, and each watched
            namespace's of a namespaced one).
        own: This operator's peering name: its own peering objects (its other replicas) are not another's.
        namespaces: The namespaces this operator watches; none is every namespace.
        now: The current time, to tell live peers from the expired entries a killed replica leaves.

    Returns:
        One sentence per overlapping release, sorted; empty when no other live release overlaps.
    """
    watched = set(namespaces)
    found = set()
    for peering in peerings:
        meta = peering.get("metadata") or {}
        labels = meta.get("labels") or {}
        if not str(labels.get("helm.sh/chart", "")).startswith(CHART_PREFIX):
            continue
        cluster = peering.get("kind") == "ClusterKopfPeering"
        if not (cluster or not watched or meta.get("namespace") in watched):
            continue
        # Ours: the ClusterKopfPeering of a cluster-wide operator, the KopfPeerings of a namespaced one. Releases
        # share the name (the chart's full name), so a same-named object of the other kind is another release's.
        if meta.get("name") == own and cluster == (not watched):
            continue
        if not any(_alive(peer, now) for peer in (peering.get("status") or {}).values()):
            continue  # installed but not running (refused, scaled to zero, or its replicas were killed)
        notes = meta.get("annotations") or {}
        release = f"{notes.get('meta.helm.sh/release-namespace', '?')}/{notes.get('meta.helm.sh/release-name', '?')}"
        scope = "every namespace" if cluster else f"namespace {meta.get('namespace')}"
        where = meta.get("name") if cluster else f"{meta.get('namespace')}/{meta.get('name')}"
        found.add(f"release {release}'s operator is running and watches {scope} ({peering.get('kind')} {where})")
    return sorted(found)


def _alive(peer: Any, now: datetime) -> bool:
    """Whether a peering status entry (kopf's `{priority, lifetime, lastseen}`) has not expired."""
    if not isinstance(peer, Mapping):
        return False  # kopf writes null for a peer that left
    try:
        seen = datetime.fromisoformat(str(peer["lastseen"]))
        return seen + timedelta(seconds=int(peer.get("lifetime", 60))) > now
    except (KeyError, TypeError, ValueError):
        return False
