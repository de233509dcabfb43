"""Storing a new outgoing message: the one INSERT that ``POST /v1/messages`` (ingest) and a
recurring schedule's occurrences (the scheduler) share, with its history row and outbox event.

It lives here because services never import each other. A message given a due time is stored as
``scheduled`` and stamped just before that time, so the scheduler's ``promote_scheduled`` hands it
to processing once it is due, even when that time has already passed (a late occurrence). The
insert is a no-op when the workspace already has a message with the same idempotency key or a
pending one with the same natural key (its unique tags); the caller finds out which.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from psycopg2.extras import Json

from common import events, lifecycle, metrics
from common.db.connection import fetch, fetch_dicts

# The scheduler LISTENs on it: a message or a schedule is due sooner than it planned for.
SCHEDULED_CHANNEL = "postroom_scheduled"

# The natural key: the workspace's unique tag names with this message's values, as canonical JSON
# (only when the tags are an object holding every one of those names).
NATURAL_KEY = """CASE WHEN jsonb_typeof(%(tags)s::jsonb) = 'object' AND cardinality(w.unique_tags) > 0
                   AND %(tags)s::jsonb ?& w.unique_tags
              THEN (SELECT jsonb_object_agg(k, %(tags)s::jsonb -> k) FROM unnest(w.unique_tags) k)::text END"""

ACCEPT = """
WITH ins AS (
    INSERT INTO message (workspace_id, channel, to_addr, from_addr, body, status, priority, idempotency_key, tags, due_at,
                         quiet_hours, content, routes, encoding, template_id, variables, natural_key, status_changed_at)
    SELECT %(ws)s, %(channel)s, %(to)s, %(from)s, %(body)s, %(status)s, %(priority)s, %(key)s, %(tags)s::jsonb, %(due)s,
           %(quiet)s, %(content)s::jsonb, %(routes)s::jsonb, %(encoding)s, %(template_id)s, %(variables)s::jsonb, """ + NATURAL_KEY + """,
           -- a scheduled message is stamped before its due time: not handed to processing yet
           CASE WHEN %(due)s::timestamptz IS NULL THEN now() ELSE """ + lifecycle.stamped_before("%(due)s::timestamptz") + """ END
    FROM workspace w WHERE w.id = %(ws)s
    ON CONFLICT DO NOTHING  -- an earlier Idempotency-Key, or a pending message with the same natural key
    RETURNING id, workspace_id, channel, to_addr, tags, status, priority, created_at, due_at
), ev AS (
    INSERT INTO message_event (message_id, status, detail)
    SELECT id, status, CASE WHEN due_at IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('send_at', due_at) END FROM ins
), ob AS (
    INSERT INTO outbox (workspace_id, event_type, message_id, payload, lane)
    SELECT workspace_id, 'message.' || status, id,
           jsonb_build_object('id', id, 'status', status, 'channel', channel, 'to', to_addr, 'tags', tags,
                              'detail', '{}'::jsonb, 'send_at', due_at, 'at', created_at),
           priority
    FROM ins WHERE """ + events.subscribed_sql("ins.workspace_id", "'message.' || ins.status") + """
)
SELECT id, status, priority, created_at, due_at FROM ins
"""


def insert(workspace_id: int, content: Mapping[str, Any], idempotency_key: str | None,
           due: datetime | None = None) -> dict[str, Any] | None:
    """Store one message: ``accepted``, or ``scheduled`` when it has a ``due`` time.

    Parameters:
      content: the message's fields as ``POST /v1/messages`` names them (channel, to, from,
        body, priority, tags, quiet_hours), already validated; ``template_id`` and ``variables``
        (the body is rendered by processing); ``content`` (what the channel needs
        beyond the text), ``routes`` (the fallback route) and ``encoding`` (SMS) if any.

    Returns:
      The new row's id, status, priority, created_at and due_at; None when the workspace already
      has a message with this idempotency key, or a pending one with the same natural key.
    """
    status = "scheduled" if due else "accepted"
    rows = fetch_dicts(ACCEPT, {
        "ws": workspace_id, "channel": content["channel"], "to": content["to"], "from": content.get("from"),
        "body": content.get("body") or "", "priority": content.get("priority", "normal"), "key": idempotency_key,
        "tags": Json(content.get("tags", [])), "status": status, "due": due, "quiet": content.get("quiet_hours"),
        "content": Json(content.get("content") or {}), "routes": Json(content["routes"]) if content.get("routes") else None,
        "encoding": content.get("encoding"), "template_id": content.get("template_id"),
        "variables": Json(content["variables"]) if content.get("variables") is not None else None,
    }, prepared=True)
    if not rows:
        return None
    metrics.count_transitions(status, [content["channel"]])
    return rows[0]


def wake_scheduler() -> None:
    """Tell the scheduler, when this transaction commits, that something may be due sooner."""
    fetch("SELECT pg_notify(%s, '')", (SCHEDULED_CHANNEL,))
