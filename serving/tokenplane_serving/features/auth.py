"""Feature: client authentication (API keys from a mounted Secret, or Entra ID bearer tokens)."""

from __future__ import annotations

from functools import partial

from tokenplane_serving.auth import AuthMiddleware
from tokenplane_serving.features.base import FeatureContext, Wrapper

__all__ = ["feature"]


def feature(ctx: FeatureContext) -> Wrapper | None:
    """401 in the OpenAI error shape without a valid credential; off with `auth.mode: none`."""
    if ctx.args.auth.mode == "none":
        return None
    return partial(AuthMiddleware, auth=ctx.args.auth.model_dump())
