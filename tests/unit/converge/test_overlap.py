"""Another tokenplane release's live operator over a namespace this one watches is found; nothing else is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokenplane_operator.converge.overlap import outranking_operators, overlapping_operators

NOW = datetime(2026, 11, 28, 18, 0, tzinfo=UTC)


def peering(name: str, namespace: str | None = None, *, seen_s_ago: float = 5, chart: str = "tokenplane-0.1.0") -> Any:
    """A peering object as the chart makes it and kopf keeps it (one replica, 60-s lifetime)."""
    lastseen = (NOW - timedelta(seconds=seen_s_ago)).isoformat()
    meta: dict[str, Any] = {
        "name": name,
        "labels": {"helm.sh/chart": chart},
        "annotations": {"meta.helm.sh/release-name": name, "meta.helm.sh/release-namespace": "ops"},
    }
    if namespace:
        meta["namespace"] = namespace
    kind = "KopfPeering" if namespace else "ClusterKopfPeering"
    return {"kind": kind, "metadata": meta, "status": {"pod-1": {"priority": 7, "lifetime": 60, "lastseen": lastseen}}}


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        (peering("a"), ["ai"]),  # a cluster-wide operator beside a namespaced one
        (peering("a", "ai"), []),  # a namespaced one beside a cluster-wide one
        (peering("a", "ai"), ["web", "ai"]),  # two sharing a namespace
        (peering("a"), []),  # two cluster-wide
        # Releases in two namespaces share the chart's full name: a same-named object of the other kind is theirs.
        (peering("b", "ai"), []),
        (peering("b"), ["ai"]),
    ],
)
def test_a_live_release_over_a_shared_namespace_is_named(theirs: Any, ours: list[str]) -> None:
    (found,) = overlapping_operators([theirs], own="b", namespaces=ours, now=NOW)
    name = theirs["metadata"]["name"]
    assert found.startswith(f"release ops/{name}'s operator is running and watches ")
    assert found.endswith(f"(ClusterKopfPeering {name})" if theirs["kind"] == "ClusterKopfPeering" else f"/{name})")


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        (peering("b"), []),  # this release's own peering (its other replicas)
        (peering("b", "ai"), ["ai", "web"]),  # the same, namespaced
        (peering("a", "web"), ["ai"]),  # namespaces of their own
        (peering("a", seen_s_ago=61), []),  # a killed replica's entry, expired
        (peering("a", chart="other-operator-2.0"), []),  # another kopf operator
        ({**peering("a"), "status": {"pod-1": None}}, []),  # a replica that left
        ({**peering("a"), "status": {}}, []),  # installed, never ran (refused, or scaled to zero)
    ],
)
def test_nothing_else_counts(theirs: Any, ours: list[str]) -> None:
    assert overlapping_operators([theirs], own="b", namespaces=ours, now=NOW) == []


def test_of_two_releases_started_together_exactly_one_yields() -> None:
    # Neither was live at the other's start-up check; now both are. Their priorities (7 and 9) order them alike.
    theirs = peering("a", "ai")  # a live replica of priority 7
    assert outranking_operators([theirs], own="b", namespaces=["ai"], priority=9, now=NOW) == []
    (found,) = outranking_operators([theirs], own="b", namespaces=["ai"], priority=5, now=NOW)
    assert found.startswith("release ops/a's operator is running and watches namespace ai")
    assert outranking_operators([theirs], own="b", namespaces=["ai"], priority=7, now=NOW) == [found]  # tie: both
    assert outranking_operators([theirs], own="b", namespaces=["web"], priority=5, now=NOW) == []
