"""Feature: `GET /-/ready`, per-model readiness for the operator's `Ready` condition and load balancers.

A model is ready when a replica generated a token within the last seconds (client traffic counts; an
idle replica runs a one-token probe). A deployment the controller reports with no running replica
(scaled to zero) is reported as such without waking it.
"""

from __future__ import annotations

import json
from typing import Any

from tokenplane_serving.features.base import ASGIApp, FeatureContext, Receive, Scope, Send, Wrapper, send_json

__all__ = ["READY_PATH", "ReadinessMiddleware", "feature"]

READY_PATH = "/-/ready"


class ReadinessMiddleware:
    """Answers `GET /-/ready` from the replica's own readiness and the controller's replica count."""

    def __init__(self, app: ASGIApp, *, ctx: FeatureContext) -> None:
        """Wrap `app`."""
        self.app = app
        self._ctx = ctx

    async def _report(self) -> tuple[int, dict[str, Any]]:
        running = await self._ctx.replica.running_replicas()
        entry: dict[str, Any] = {"running_replicas": running}
        if running == 0:
            entry.update(ready=False, reason="NoRunningReplica")
        else:
            try:
                replica = await self._ctx.replica.readiness()
                entry.update(replica)
                entry["reason"] = "CompletionSucceeded" if replica["ready"] else "CompletionFailed"
            except Exception as err:  # reported, not raised: a probe must always get an answer
                entry.update(ready=False, reason="ReplicaUnresponsive", error=type(err).__name__)
        ready = bool(entry["ready"])
        return (200 if ready else 503), {"ready": ready, "models": {self._ctx.args.model.id: entry}}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer the readiness path; pass everything else on."""
        if scope["type"] == "http" and scope["path"] == READY_PATH and scope["method"] in ("GET", "HEAD"):
            status, body = await self._report()
            await send_json(send, status, json.dumps(body).encode())
            return
        await self.app(scope, receive, send)


def feature(ctx: FeatureContext) -> Wrapper:
    """Answer `/-/ready` (always on: the operator's `Ready` condition reads it)."""

    def wrap(app: ASGIApp) -> ASGIApp:
        return ReadinessMiddleware(app, ctx=ctx)

    return wrap
