"""The AI stage's reconciler duties: re-drive turns a lost broker message left waiting, hand off
turns that never get answered, and settle the AI quota's reservations.

An inbound message the AI stage owes a turn waits ``received`` with its plan lane in ``ai_lane``
(the partial index ``message_ai_waiting``). One waiting longer than the stage deadline, due, and
held nowhere in the broker is re-enqueued to ``ai_<lane>`` (compare-and-set on its wait clock, so
of two schedulers one wins). A parked retry (a wait longer than a broker delay) is handed on as
soon as it falls due, without counting as a re-drive; a turn re-driven POSTROOM_AI_MAX_ATTEMPTS
times without moving on is handed to a person (by the AI stage's own ``hand_off_stuck``: the
message and the move are its) with the chatbot's fallback message (``stuck``): the customer is
always told.
"""

from __future__ import annotations

from common import dispatch, lifecycle, metrics, usage
from common.config import settings
from common.db.connection import fetch_dicts, transaction
from services.processing import ai
from services.scheduler.reconciler import broker_held_ids

BATCH = 5000

# Due, and either waiting past the stage deadline (the broker lost it) or a parked retry whose
# wait was too long for a broker delay and has just run out (it goes at once, not a deadline later).
_DUE = """(due_at IS NULL OR due_at <= now())
  AND (status_changed_at < now() - make_interval(secs => %(deadline)s)
       OR due_at > status_changed_at + make_interval(secs => %(short)s))"""
_WAITING = """
SELECT id, ai_lane FROM message
WHERE direction = 'inbound' AND status = 'received' AND ai_lane IS NOT NULL AND """ + _DUE + """
ORDER BY status_changed_at, id LIMIT %(limit)s
"""
# A parked retry (due after its last change) falling due is not a re-drive; anything else is.
_TOUCH = """
UPDATE message SET status_changed_at = now(),
       redrives = redrives + CASE WHEN due_at IS NOT NULL AND due_at > status_changed_at THEN 0 ELSE 1 END
WHERE id = ANY(%(ids)s) AND (status || '') = 'received' AND ai_lane IS NOT NULL AND """ + _DUE + """
RETURNING id, ai_lane, redrives
"""


def redrive(deadline_seconds: float, max_attempts: int) -> dict[str, int]:
    """Re-enqueue waiting turns the broker lost and parked retries now due; hand off those
    re-driven too often."""
    found = {"deadline": deadline_seconds, "short": lifecycle.SHORT_WAIT_SECONDS, "limit": BATCH}
    with transaction():
        waiting = fetch_dicts(_WAITING, found)
    if not waiting:
        return {}
    held = broker_held_ids({f"ai_{lane}" for lane in {r["ai_lane"] for r in waiting}})
    lost = [r["id"] for r in waiting if r["id"] not in held]
    if not lost:
        return {}
    with transaction():
        touched = fetch_dicts(_TOUCH, {**found, "ids": lost})
    stuck = [r["id"] for r in touched if r["redrives"] > max_attempts]
    again: dict[str, list[int]] = {}
    for row in touched:
        if row["redrives"] <= max_attempts:
            again.setdefault(row["ai_lane"], []).append(row["id"])
    for lane, ids in again.items():
        dispatch.to_stage("ai", lane, ids)
    if again:
        metrics.REDRIVEN.labels(status="received").inc(sum(len(ids) for ids in again.values()))
    if stuck:
        ai.hand_on(ai.hand_off_stuck(stuck))
    return {"ai_redriven": sum(len(ids) for ids in again.values()), "ai_stuck": len(stuck)}


def settle_quota() -> int:
    """Settle the AI quota's reservations whose reply was sent (used) or failed, or whose turn
    made none within the lease (given back); returns how many were settled."""
    with transaction():
        used, released = usage.settle(settings.postroom_ai_lease_seconds)
    return used + released
