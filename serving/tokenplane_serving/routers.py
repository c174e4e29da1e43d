"""Ray's affinity routers, fixed for the way direct streaming asks them.

With direct streaming, HAProxy asks Ray Serve LLM's router deployment which replica takes a request
(`ray/llm/_internal/serve/core/ingress/router.py` `_pick_replica`: `handle.choose_replica(..., _reserve=False)`).
That pick-only path (`ray/serve/_private/router.py`, the `reserve=False` branch) takes element 0 of the router's
first rank and never calls `on_request_routed`. Ray's routers are written for the reserving path, so there:

- `PrefixCacheAffinityRouter` never inserts a prompt into its prefix tree (only `on_request_routed` does), every
  prompt matches 0%, the "least cached text" fallback returns every replica in the order they were added, and
  element 0 is always the replica that became ready first: all traffic on one replica.
- `ConsistentHashRouter` returns all replicas as one rank for a request without a session header: the same.

Both subclasses below pick one replica at random from the best rank and, for the prefix router, record the
prompt as routed, so the rank they return is the decision. On Ray's reserving path the same code is harmless:
the prompt is inserted a second time (the tree's insert is idempotent) and the rank holds one replica.
"""

from __future__ import annotations

import random
from typing import Any, cast

from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter
from ray.serve.llm.request_router import PrefixCacheAffinityRouter
from ray.serve.request_router import PendingRequest, RunningReplica

__all__ = ["PrefixAffinityRouter", "SessionAffinityRouter"]


def _one_of_the_best(ranks: list[list[RunningReplica]]) -> list[list[RunningReplica]]:
    if not ranks or len(ranks[0]) < 2:
        return ranks
    return [[random.choice(ranks[0])], *ranks[1:]]


class PrefixAffinityRouter(PrefixCacheAffinityRouter):
    """Ray's prefix-cache affinity, with the routed prompt recorded on the pick-only path."""

    # Ray annotates a flat list here but returns ranks (a list of lists), as RequestRouter.choose_replicas does.
    async def choose_replicas(  # type: ignore[override]
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        """Ray's ranking, narrowed to one replica of the best rank, which is recorded as holding the prompt."""
        ranks = _one_of_the_best(cast(Any, await super().choose_replicas(candidate_replicas, pending_request)))
        if pending_request is not None and ranks and ranks[0]:
            # No result exists yet on the pick-only path; Ray's prefix router reads only the request and replica.
            self.on_request_routed(pending_request, ranks[0][0].replica_id, cast(Any, None))
        return ranks


class SessionAffinityRouter(ConsistentHashRouter):
    """Ray's consistent-hash session affinity; requests without a session spread at random, not to replica 0."""

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        """Ray's hash ranking; a request without a session key gets one replica at random."""
        return _one_of_the_best(await super().choose_replicas(candidate_replicas, pending_request))
