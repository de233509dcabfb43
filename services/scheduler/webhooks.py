"""The scheduler's webhook duties: time for webhooks lives in the database (invariant 5).

- kick every enabled, unpaused endpoint that has deliveries due (a retry whose time came, work a
  lost broker message or a flushed Redis left behind): the webhooks stage pulls them itself;
- hand back deliveries whose webhooks process died mid-attempt (at least once: the receiver
  dedupes by webhook-id);
- delete finished deliveries (and their attempts) past the retention, in batches;
- report the outbox lag: how late the oldest event due for delivery is.
"""

from __future__ import annotations

import logging
import time

from common import dispatch, events, metrics
from common.config import settings
from common.db.connection import fetch, transaction

log = logging.getLogger("postroom.scheduler.webhooks")
CLEANUP_EVERY_SECONDS = 60.0
CLEANUP_BATCH = 5000
STUCK_MARGIN_SECONDS = 30.0
_last_cleanup = 0.0


def kick_due() -> int:
    """Kick endpoints with due deliveries on the lane of their most urgent one; returns how many."""
    with transaction():
        rows = fetch(
            """SELECT d.endpoint_id, min(d.rank) FROM webhook_delivery d JOIN webhook_endpoint e ON e.id = d.endpoint_id
               WHERE d.status = 'pending' AND d.due_at <= now() AND e.enabled
                 AND (e.paused_until IS NULL OR e.paused_until <= now())
               GROUP BY d.endpoint_id""", prepared=True)
    lanes: dict[str, list[int]] = {}
    for endpoint_id, rank in rows:
        lanes.setdefault(events.LANE_OF_RANK.get(rank, "bulk"), []).append(endpoint_id)
    for lane, ids in lanes.items():
        dispatch.to_stage("webhooks", lane, ids)
    return len(rows)


def release_stuck() -> int:
    """Deliveries left in ``delivering`` past the timeout: their process died. Due again now."""
    with transaction():
        rows = fetch(
            """WITH stuck AS (
                   UPDATE webhook_delivery SET status = 'pending', due_at = now(), claimed_at = NULL,
                          last_error = 'interrupted: the webhooks process stopped during the attempt'
                   WHERE id IN (SELECT id FROM webhook_delivery WHERE status = 'delivering'
                                AND claimed_at < now() - %s * interval '1 second' LIMIT 1000 FOR UPDATE SKIP LOCKED)
                   RETURNING id, endpoint_id, attempts
               ), logged AS (
                   INSERT INTO webhook_attempt (delivery_id, endpoint_id, attempt, error, next_attempt_at)
                   SELECT id, endpoint_id, attempts, 'interrupted: the webhooks process stopped during the attempt', now()
                   FROM stuck
               )
               SELECT count(*) FROM stuck""",
            (settings.postroom_webhook_timeout_seconds + STUCK_MARGIN_SECONDS,))
    return int(rows[0][0])


def clean_up(force: bool = False) -> int:
    """Delete finished deliveries older than the retention, a batch at a time (every minute)."""
    global _last_cleanup
    if not force and time.monotonic() - _last_cleanup < CLEANUP_EVERY_SECONDS:
        return 0
    _last_cleanup = time.monotonic()
    deleted = 0
    while True:
        with transaction():
            rows = fetch(
                """DELETE FROM webhook_delivery WHERE id IN (
                       SELECT id FROM webhook_delivery WHERE created_at < now() - %s * interval '1 hour'
                         AND status IN ('succeeded', 'failed') LIMIT %s)
                   RETURNING 1""",
                (settings.postroom_webhook_retention_hours, CLEANUP_BATCH))
        deleted += len(rows)
        if len(rows) < CLEANUP_BATCH:
            return deleted


def measure_lag() -> float:
    """Seconds the oldest event waiting for delivery is late: an undispatched outbox event since it
    was written, a delivery since it was due. Set as a gauge."""
    with transaction():
        lag = fetch(
            """SELECT greatest(0, extract(epoch FROM now() - least(
                   (SELECT min(created_at) FROM outbox),
                   (SELECT min(d.due_at) FROM webhook_delivery d JOIN webhook_endpoint e ON e.id = d.endpoint_id
                    WHERE d.status = 'pending' AND d.due_at <= now() AND e.enabled))))""",
            prepared=True)[0][0]
    value = float(lag or 0.0)
    metrics.WEBHOOK_LAG.set(value)
    return value


def maintain() -> dict[str, int]:
    """One pass of every webhook duty; returns what each did."""
    done = {"webhook_endpoints_kicked": kick_due(), "webhook_deliveries_released": release_stuck(),
            "webhook_deliveries_deleted": clean_up()}
    measure_lag()
    return done
