"""Routing: decide which sender takes each queued message.

Today every channel maps to its own sender and the lane is the message's priority; suppression,
quiet hours and fallback add their decisions here. A message whose channel has no sender fails
with that reason rather than waiting forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common import lifecycle

SENDER_CHANNELS = frozenset({"sms", "http"})


def route_batch(ids: Sequence[int]) -> list[dict[str, Any]]:
    """Claim queued messages among ``ids``; return those routed to a sender."""
    moved = lifecycle.advance(ids, ["queued"], "routed")
    unroutable = [m["id"] for m in moved if m["channel"] not in SENDER_CHANNELS]
    if unroutable:
        lifecycle.advance(unroutable, ["routed"], "failed", detail={"error": "no sender for this channel"})
    return [m for m in moved if m["channel"] in SENDER_CHANNELS]
