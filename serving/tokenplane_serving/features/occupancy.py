"""Feature: count the requests holding a replica slot (the inner side of `tokenplane_serving.occupancy`).

Ray calls the feature layer only once a request holds one of the replica's `max_ongoing_requests` slots, so
entering it is the moment a request stops waiting. Always on, and first: every request that holds a slot
counts, whatever the features inside answer.
"""

from __future__ import annotations

from tokenplane_serving.features.base import ASGIApp, FeatureContext, Receive, Scope, Send, Wrapper
from tokenplane_serving.occupancy import OCCUPANCY, TICKET_KEY, Occupancy

__all__ = ["AdmittedMiddleware", "feature"]


class AdmittedMiddleware:
    """Marks each HTTP request admitted when it enters, and finished when it leaves."""

    def __init__(self, app: ASGIApp, occupancy: Occupancy = OCCUPANCY) -> None:
        """Wrap `app`."""
        self.app = app
        self._occupancy = occupancy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the request as holding a slot while the inner app runs."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self._occupancy.admit(scope.get(TICKET_KEY))
        try:
            await self.app(scope, receive, send)
        finally:
            self._occupancy.finish()


def feature(ctx: FeatureContext) -> Wrapper:
    """Count slot holders (always on: the replica's waiting and ongoing gauges read it)."""
    return AdmittedMiddleware
