"""Send work to another stage by queue and actor name, never by importing its actor module.

The broker message carries ids (and the lane), never bodies: PostgreSQL is the source of truth
and the reconciler re-drives anything a lost broker message leaves behind. Call ``to_stage``
only after the transaction that recorded the work has committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dramatiq

from common.broker import actor_name, queue_name
from common.config import settings

# stage -> (actor base name); queue is "<stage>_<lane>", actor "<base>_<lane>".
STAGES: dict[str, str] = {
    "processing": "process_messages",
    "routing": "route_messages",
    "sms": "send_sms",
}


def to_stage(stage: str, lane: str, ids: Sequence[int], *, delay_ms: int | None = None) -> None:
    """Enqueue ``ids`` for ``stage`` in ``lane``, split into batches of at most BATCH_SIZE."""
    broker = dramatiq.get_broker()
    size = settings.postroom_batch_size
    for start in range(0, len(ids), size):
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=queue_name(stage, lane),
            actor_name=actor_name(STAGES[stage], lane),
            args=(list(ids[start : start + size]),),
            kwargs={},
            options={},
        )
        broker.enqueue(message, delay=delay_ms if delay_ms and delay_ms > 0 else None)


def by_lane(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[int]]:
    """Group moved messages (dicts with id, priority, channel) by (lane, channel), keeping order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        groups.setdefault((row["priority"], row["channel"]), []).append(row["id"])
    return groups


def hand_on(stage: str | None, moved: Sequence[dict[str, Any]]) -> None:
    """Enqueue moved messages for ``stage`` by lane; ``stage=None`` sends each to its channel's sender."""
    for (lane, channel), ids in by_lane(moved).items():
        to_stage(stage or channel, lane, ids)
