"""Processing stage actors, one per lane: queues ``processing_urgent`` and ``processing_bulk``."""

from __future__ import annotations

from common import dispatch
from common.broker import lane_actors
from common.db.connection import transaction
from services.processing.rendering import render_batch


def process_messages(ids: list[int]) -> None:
    with transaction():
        moved = render_batch(ids)
    dispatch.hand_on("routing", moved)


ACTORS = lane_actors("processing", process_messages)
