"""The reconciler: nothing accepted is lost when a broker message is.

Work is enqueued after its transaction commits, and the broker (Redis) may be flushed at any
time, so the database is checked instead: a message waiting on a stage past its deadline is
re-enqueued to that stage; a retry parked for longer than a broker delay is promoted when due;
a message left in ``sending`` by a sender that died mid-call is failed as interrupted (its
outcome at the provider is unknown, and sending it again could send it twice); and receipts
that raced their send are applied. Rows are taken with ``FOR UPDATE SKIP LOCKED`` so several
scheduler replicas can run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dramatiq

from common import dispatch, lifecycle, metrics
from common.broker import LANES, queue_name
from common.db.connection import fetch_dicts, transaction
from common.receipts import apply_pending_receipts

BATCH = 5000
SENDER_STAGES = [stage for stage in dispatch.STAGES if stage not in ("processing", "routing")]


def _touch(where: str, params: Sequence[Any], *, count_redrive: bool) -> list[dict[str, Any]]:
    """Reset the wait clock of matching rows (so each is re-driven once per deadline) and return them."""
    return fetch_dicts(
        f"""
        WITH stuck AS (
            SELECT id FROM message WHERE {where}
            ORDER BY status_changed_at LIMIT {BATCH} FOR UPDATE SKIP LOCKED
        ), touched AS (
            UPDATE message m SET status_changed_at = now(), redrives = redrives + {int(count_redrive)}
            FROM stuck WHERE m.id = stuck.id
            RETURNING m.id, m.status, m.priority, m.channel, m.redrives
        ), ev AS (
            INSERT INTO message_event (message_id, status, detail)
            SELECT id, status, jsonb_build_object('redriven', true, 'redrives', redrives) FROM touched
        )
        SELECT * FROM touched
        """,
        params,
    )


def busy_queues() -> list[str]:
    """Keys ("status:channel:lane") of stages whose broker queue still holds work.

    Rows waiting on such a stage are most likely in that backlog, not lost: re-driving them would
    only enqueue duplicates. A lost message is re-driven once its stage's queue has drained.
    """
    broker = dramatiq.get_broker()
    client = broker.client  # type: ignore[attr-defined]
    busy = []
    for lane in LANES:
        for status, stage in (("accepted", "processing"), ("queued", "routing")):
            if client.llen(f"{broker.namespace}:{queue_name(stage, lane)}"):  # type: ignore[attr-defined]
                busy.append(f"{status}::{lane}")
        for channel in SENDER_STAGES:
            if client.llen(f"{broker.namespace}:{queue_name(channel, lane)}"):  # type: ignore[attr-defined]
                busy.append(f"routed:{channel}:{lane}")
    return busy


def redrive_stuck(deadline_seconds: float, max_redrives: int) -> dict[str, int]:
    """Re-enqueue messages waiting on a stage longer than ``deadline_seconds`` past their due time.

    A message re-driven ``max_redrives`` times without moving on is poison (its stage fails on it
    every time; the failures are in the dead-letter list): it is failed instead of re-driven forever.
    """
    with transaction():
        rows = _touch(
            # Both bounds are range conditions on indexed columns, so a large healthy backlog is
            # not scanned every pass (only rows past the deadline are visited).
            "status IN ('accepted', 'queued', 'routed') AND status_changed_at < now() - make_interval(secs => %s)"
            " AND (due_at IS NULL OR due_at < now() - make_interval(secs => %s))"
            " AND NOT (status || ':' || CASE status WHEN 'routed' THEN channel ELSE '' END || ':' || priority) = ANY(%s)",
            (deadline_seconds, deadline_seconds, busy_queues()),
            count_redrive=True,
        )
        poison = [r["id"] for r in rows if r["redrives"] > max_redrives]
        if poison:
            error = f"stuck: re-driven {max_redrives} times without progress (see postroom dead-letters list)"
            lifecycle.advance(poison, list(lifecycle.WAITING_FOR), "failed", detail={"error": error, "error_code": "stuck"})
    rows = [r for r in rows if r["id"] not in set(poison)]
    _enqueue(rows)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    for status, n in counts.items():
        metrics.REDRIVEN.labels(status=status).inc(n)
    if poison:
        counts["stuck"] = len(poison)
    return counts


def promote_parked(short_wait_seconds: float) -> int:
    """Enqueue retries whose wait was too long for a broker delay, now that they are due."""
    with transaction():
        rows = _touch(
            "status = 'routed' AND due_at <= now()"
            " AND due_at > status_changed_at + make_interval(secs => %s)",
            (short_wait_seconds,),
            count_redrive=False,
        )
    _enqueue(rows)
    return len(rows)


def fail_interrupted(timeout_seconds: float) -> int:
    """Fail messages stuck in ``sending``: their sender died during the provider call."""
    with transaction():
        stuck = fetch_dicts(
            "SELECT id FROM message WHERE status = 'sending'"
            " AND status_changed_at < now() - make_interval(secs => %s) LIMIT %s FOR UPDATE SKIP LOCKED",
            (timeout_seconds, BATCH),
        )
        moved = lifecycle.advance(
            [r["id"] for r in stuck], ["sending"], "failed",
            detail={"error": "interrupted: the sender stopped during the provider call; outcome unknown, not resent",
                    "error_code": "interrupted"},
        )
    if moved:
        metrics.REDRIVEN.labels(status="sending").inc(len(moved))
    return len(moved)


def sweep_receipts() -> int:
    with transaction():
        return apply_pending_receipts("twilio")


def _enqueue(rows: Sequence[dict[str, Any]]) -> None:
    for status in lifecycle.WAITING_FOR:
        group = [r for r in rows if r["status"] == status]
        stage = lifecycle.WAITING_FOR[status]
        dispatch.hand_on(None if stage == "sender" else stage, group)
