"""Recurring schedules, materialised: each occurrence becomes a ``scheduled`` message shortly
before its time (invariant 5: the time lives in the database, the scheduler promotes it when due).

A schedule due soon (``next_run_at`` within the horizon) is taken with ``FOR UPDATE SKIP
LOCKED``; its occurrences up to the horizon are inserted as messages whose idempotency key is the
occurrence's dedupe key (``sched:<id>:<UTC minute>``), and ``next_run_at`` moves on to the
occurrence after them, all in one transaction. Two scheduler replicas never take the same row at
once, and should one ever insert an occurrence again (a stale read, a schedule moved back), the
unique key makes the insert a no-op that is not counted: an occurrence is sent at most once.

After an outage the scheduler does not send a backlog: of the occurrences it missed, only the
latest is sent, and only if it is at most ``LATE_LIMIT`` late (as a Kubernetes CronJob does with
its starting deadline); the rest are skipped and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain
from typing import Any

from common import intake
from common.db.connection import fetch, fetch_dicts, transaction
from common.occurrences import MATERIALISE_AHEAD, Plan
from common.recurrence import occurrence_key

log = logging.getLogger("postroom.scheduler.recurring")
HORIZON_SECONDS = MATERIALISE_AHEAD.total_seconds()
LATE_LIMIT = timedelta(hours=1)
BATCH = 500
RETRY_BROKEN = timedelta(minutes=5)  # a schedule whose occurrences cannot be computed is tried again then


@dataclass(frozen=True)
class Firing:
    """What one pass does with one schedule."""

    due: list[datetime]  # occurrences to materialise now, earliest first
    following: datetime | None  # the occurrence after them (None: none before the end)
    skipped: int  # occurrences missed and not sent (at least this many)


def fire(plan: Plan, next_run_at: datetime, now: datetime, horizon: timedelta,
         late_limit: timedelta = LATE_LIMIT) -> Firing:
    """The occurrences of a schedule to materialise at ``now``: from ``next_run_at`` (the next one
    not yet materialised) up to ``now + horizon``, less those missed, and no more than may be sent."""
    oldest = now - late_limit
    skipped = 0
    stream: Iterator[datetime]
    if next_run_at >= oldest:
        stream = chain([next_run_at], plan.recurrence.after(next_run_at, start=plan.start, end=plan.end))
    else:  # long missed: start from the late limit rather than walk the whole gap
        skipped = 1
        stream = plan.recurrence.after(oldest, start=plan.start, end=plan.end)
    due: list[datetime] = []
    following = None
    for at in stream:
        if at > now + horizon:
            following = at
            break
        due.append(at)
    late = [at for at in due if at < now]
    kept = late[-1:] + [at for at in due if at >= now]
    skipped += len(late) - len(late[-1:])
    remaining = plan.remaining
    if remaining is not None and len(kept) > remaining:
        kept, following = kept[:remaining], kept[remaining]
    return Firing(kept, following, skipped)


_DUE = """
SELECT id, workspace_id, cron, timezone, message, start_at, end_at, max_count, sent_count, next_run_at,
       coalesce(%(now)s::timestamptz, now()) AS clock
FROM schedule
WHERE NOT paused AND next_run_at IS NOT NULL
  AND next_run_at <= coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(horizon)s)
ORDER BY next_run_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""

_MOVE_ON = """
UPDATE schedule s SET next_run_at = u.next_run_at, sent_count = s.sent_count + u.inserted
FROM unnest(%s::bigint[], %s::timestamptz[], %s::int[]) AS u(id, next_run_at, inserted)
WHERE s.id = u.id
"""


def materialise(horizon_seconds: float = HORIZON_SECONDS, *, now: datetime | None = None) -> int:
    """Insert the occurrences of every schedule due within ``horizon_seconds`` as scheduled
    messages and move each schedule on; returns how many messages were inserted.

    Parameters:
      now: the current time (default: the database's clock); tests pass their own.
    """
    horizon = timedelta(seconds=horizon_seconds)
    with transaction():
        rows = fetch_dicts(_DUE, {"now": now, "horizon": horizon_seconds, "limit": BATCH}, prepared=True)
        if not rows:
            return 0
        moves: list[tuple[int, datetime | None, int]] = []
        for row in rows:
            moves.append(_materialise_one(row, row["clock"], horizon))
        fetch(_MOVE_ON, ([m[0] for m in moves], [m[1] for m in moves], [m[2] for m in moves]))
        inserted = sum(m[2] for m in moves)
        if inserted:
            intake.wake_scheduler()
    return inserted


def _materialise_one(row: dict[str, Any], now: datetime, horizon: timedelta) -> tuple[int, datetime | None, int]:
    """(schedule id, its next run, occurrences inserted now)."""
    try:
        plan = Plan.of(row)
    except ValueError as exc:
        log.error("schedule %s: %s; trying again in %s", row["id"], exc, RETRY_BROKEN)
        return row["id"], now + RETRY_BROKEN, 0
    firing = fire(plan, row["next_run_at"], now, horizon)
    if firing.skipped:
        log.warning("schedule %s: skipped %d missed occurrence(s) before %s (more than %s late, or not the latest)",
                    row["id"], firing.skipped, firing.due[0] if firing.due else now, LATE_LIMIT)
    inserted = 0
    for at in firing.due:
        if intake.insert(row["workspace_id"], row["message"], occurrence_key(row["id"], at), at) is not None:
            inserted += 1
        else:
            log.info("schedule %s: occurrence %s exists already (or a pending twin): not sent again", row["id"], at)
    finished = plan.remaining is not None and inserted >= plan.remaining
    return row["id"], None if finished else firing.following, inserted
