"""Retention: what postroom keeps, and for how long.

A message that has finished (sent, delivered, read, failed, undelivered, cancelled, suppressed,
or received) is deleted with its history once it was created more than
``POSTROOM_MESSAGE_RETENTION_DAYS`` ago; raw provider webhooks (``provider_event``) go after
``POSTROOM_PROVIDER_EVENT_RETENTION_DAYS``, API idempotency keys after
``POSTROOM_IDEMPOTENCY_TTL_SECONDS``, and usage rows (``usage_log``) after
``POSTROOM_USAGE_RETENTION_DAYS``. A message still waiting (scheduled far ahead, say) is
never removed. Deletes run in small batches, each its own short transaction, so no long lock is
held on the hot tables; a pass runs at most once a minute and stops after a bounded number of
batches, leaving the rest to the next pass.
"""

from __future__ import annotations

import time

from common.config import settings
from common.db.connection import fetch, transaction

FINISHED = ("sent", "delivered", "read", "failed", "undelivered", "cancelled", "suppressed", "received")
BATCH = 2000
MAX_BATCHES_PER_PASS = 50
EVERY_SECONDS = 60.0
_FINISHED_SQL = "(" + ", ".join(f"'{s}'" for s in FINISHED) + ")"

_last_pass = 0.0


def clean_up(force: bool = False) -> dict[str, int]:
    """Delete expired finished messages and provider events, a batch at a time; returns counts."""
    global _last_pass
    if not force and time.monotonic() - _last_pass < EVERY_SECONDS:
        return {}
    _last_pass = time.monotonic()
    messages = _in_batches(
        f"""DELETE FROM message WHERE id IN (
                SELECT id FROM message WHERE created_at < now() - %s * interval '1 day'
                  AND status IN {_FINISHED_SQL} LIMIT %s)
            RETURNING 1""", settings.postroom_message_retention_days)
    events = _in_batches(
        """DELETE FROM provider_event WHERE id IN (
               SELECT id FROM provider_event WHERE received_at < now() - %s * interval '1 day' LIMIT %s)
           RETURNING 1""", settings.postroom_provider_event_retention_days)
    keys = _in_batches(  # API Idempotency-Keys past their time (services.ingest.idempotency)
        """DELETE FROM idempotent_request WHERE (workspace_id, key) IN (
               SELECT workspace_id, key FROM idempotent_request WHERE created_at < now() - %s * interval '1 day' LIMIT %s)
           RETURNING 1""", settings.postroom_idempotency_ttl_seconds / 86400)
    usage = _in_batches(  # usage rows: GET /v1/usage reads them for at most that long
        """DELETE FROM usage_log WHERE id IN (
               SELECT id FROM usage_log WHERE at < now() - %s * interval '1 day' LIMIT %s)
           RETURNING 1""", settings.postroom_usage_retention_days)
    return {k: v for k, v in {"expired_messages": messages, "expired_provider_events": events,
                              "expired_idempotency_keys": keys, "expired_usage_rows": usage}.items() if v}


def _in_batches(statement: str, days: float) -> int:
    deleted = 0
    for _ in range(MAX_BATCHES_PER_PASS):
        with transaction():
            count = len(fetch(statement, (days, BATCH)))
        deleted += count
        if count < BATCH:
            break
    return deleted
