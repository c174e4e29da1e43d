"""ASGI helpers for the peers tests put behind a middleware."""

from __future__ import annotations

from tokenplane_serving.features.base import Receive

__all__ = ["read_body"]


async def read_body(receive: Receive) -> bytes:
    """Read a request's whole body from its `http.request` messages."""
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body", False):
            return raw
