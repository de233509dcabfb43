"""Routing stage actors, one per lane: queues ``routing_urgent`` and ``routing_bulk``."""

from __future__ import annotations

from common import dispatch
from common.broker import lane_actors
from common.db.connection import transaction
from services.routing.channels import route_batch


def route_messages(ids: list[int]) -> None:
    with transaction():
        moved = route_batch(ids)
    dispatch.hand_on(None, moved)


ACTORS = lane_actors("routing", route_messages)
