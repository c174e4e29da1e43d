"""Another tokenplane operator watching what this one watches: found from the kopf peering objects, pure.

kopf's peering keeps the replicas of one release apart (one peering object, one active replica), but two releases
have two peering objects and never see each other: both would create, scale and delete the same RayServices and
node pools. The chart refuses such an install with Helm's `lookup`, which `helm template`, dry runs and GitOps tools
(Argo CD renders with `helm template`) never run; the operator looks again when it starts, and, since two releases
started together both pass that look (neither has joined its peering yet), every poll interval while it runs: the
one with the lower peering priority (the later start) stops.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

__all__ = ["CHART_PREFIX", "outranking_operators", "overlapping_operators"]

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
    return sorted({sentence for sentence, _ in _overlaps(peerings, own, set(namespaces), now)})


def outranking_operators(
    peerings: Iterable[Mapping[str, Any]], *, own: str, namespaces: Iterable[str], priority: int, now: datetime
) -> list[str]:
    """Name the overlapping releases that keep running when both run: those with a live replica of higher priority.

    Two releases started together both pass the start-up check (neither has joined its peering yet). Once both have,
    each sees the other; the priority (from the start time, main.peering_priority) orders them the same way for
    both, so exactly one yields. An equal priority yields on both sides: both restart with new priorities.

    Args:
        peerings: As for `overlapping_operators`.
        own: This operator's peering name.
        namespaces: The namespaces this operator watches; none is every namespace.
        priority: This replica's kopf peering priority.
        now: The current time.

    Returns:
        One sentence per such release, sorted; empty when this operator may go on.
    """
    found = _overlaps(peerings, own, set(namespaces), now)
    return sorted({sentence for sentence, priorities in found if max(priorities) >= priority})


def _overlaps(
    peerings: Iterable[Mapping[str, Any]], own: str, watched: set[str], now: datetime
) -> list[tuple[str, list[int]]]:
    """Each overlapping live peering of another release: a sentence naming it, and its live replicas' priorities."""
    found = []
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
        live = [peer for peer in (peering.get("status") or {}).values() if _alive(peer, now)]
        if not live:
            continue  # installed but not running (refused, scaled to zero, or its replicas were killed)
        notes = meta.get("annotations") or {}
        release = f"{notes.get('meta.helm.sh/release-namespace', '?')}/{notes.get('meta.helm.sh/release-name', '?')}"
        scope = "every namespace" if cluster else f"namespace {meta.get('namespace')}"
        where = meta.get("name") if cluster else f"{meta.get('namespace')}/{meta.get('name')}"
        sentence = f"release {release}'s operator is running and watches {scope} ({peering.get('kind')} {where})"
        found.append((sentence, [_priority(peer) for peer in live]))
    return found


def _priority(peer: Mapping[str, Any]) -> int:
    try:
        return int(peer.get("priority", 0))
    except (TypeError, ValueError):
        return 0


def _alive(peer: Any, now: datetime) -> bool:
    """Whether a peering status entry (kopf's `{priority, lifetime, lastseen}`) has not expired."""
    if not isinstance(peer, Mapping):
        return False  # kopf writes null for a peer that left
    try:
        seen = datetime.fromisoformat(str(peer["lastseen"]))
        return seen + timedelta(seconds=int(peer.get("lifetime", 60))) > now
    except (KeyError, TypeError, ValueError):
        return False
