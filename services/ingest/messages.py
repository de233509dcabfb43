"""Accepting, reading and cancelling messages for the API; every query is scoped by workspace."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common import events, lifecycle, metrics
from common.db.connection import fetch, fetch_dicts
from services.ingest.models import NewMessage

_ACCEPT = """
WITH ins AS (
    INSERT INTO message (workspace_id, channel, to_addr, from_addr, body, status, priority, idempotency_key, tags, due_at)
    VALUES (%(ws)s, %(channel)s, %(to)s, %(from)s, %(body)s, %(status)s, %(priority)s, %(key)s, %(tags)s, %(due)s)
    ON CONFLICT (workspace_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
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


@dataclass(frozen=True)
class Accepted:
    id: int
    priority: str
    replayed: bool
    created_at: str | None = None
    status: str = "accepted"
    send_at: str | None = None


SCHEDULED_CHANNEL = "postroom_scheduled"  # the scheduler LISTENs: a message due sooner than it planned for


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before for a different request."""


def accept(workspace_id: int, new: NewMessage, idempotency_key: str | None, due: datetime | None = None) -> Accepted:
    """Store a new message as ``accepted``, or ``scheduled`` when ``due`` later (or find the
    earlier one with the same key). A scheduled one wakes the scheduler when this commits."""
    status = "scheduled" if due else "accepted"
    rows = fetch_dicts(_ACCEPT, {
        "ws": workspace_id, "channel": new.channel, "to": new.to, "from": new.from_, "body": new.body,
        "priority": new.priority, "key": idempotency_key, "tags": list(new.tags), "status": status, "due": due,
    }, prepared=True)
    if rows:
        metrics.count_transitions(status, [new.channel])
        if due:
            fetch("SELECT pg_notify(%s, '')", (SCHEDULED_CHANNEL,))
        return Accepted(rows[0]["id"], rows[0]["priority"], replayed=False, created_at=_iso(rows[0]["created_at"]),
                        status=status, send_at=_iso(rows[0]["due_at"]))
    earlier = fetch_dicts(
        "SELECT id, channel, to_addr, from_addr, body, priority FROM message WHERE workspace_id = %s AND idempotency_key = %s",
        (workspace_id, idempotency_key),
    )[0]
    if (earlier["channel"], earlier["to_addr"], earlier["from_addr"], earlier["body"], earlier["priority"]) != (
        new.channel, new.to, new.from_, new.body, new.priority
    ):
        raise IdempotencyConflict(idempotency_key)
    return Accepted(earlier["id"], earlier["priority"], replayed=True)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def view(workspace_id: int, message_id: int, *, with_events: bool = True) -> dict[str, Any] | None:
    rows = fetch_dicts("SELECT * FROM message WHERE id = %s AND workspace_id = %s", (message_id, workspace_id))
    if not rows:
        return None
    m = rows[0]
    out: dict[str, Any] = {
        "id": m["id"], "channel": m["channel"], "direction": m["direction"], "to": m["to_addr"],
        "from": m["from_addr"], "body": m["body"], "status": m["status"], "priority": m["priority"],
        "tags": m["tags"], "attempts": m["attempts"], "provider": m["provider"],
        "provider_message_id": m["provider_message_id"], "segments": m["segments"],
        "last_error": m["last_error"], "error_code": m["error_code"],
        "created_at": _iso(m["created_at"]), "updated_at": _iso(m["updated_at"]),
        "sent_at": _iso(m["sent_at"]), "delivered_at": _iso(m["delivered_at"]),
        "next_attempt_at": _iso(m["due_at"]) if m["status"] == "routed" else None,
        "send_at": _iso(m["due_at"]) if m["status"] == "scheduled" else None,
    }
    if with_events:
        events = fetch_dicts("SELECT status, at, detail FROM message_event WHERE message_id = %s ORDER BY id", (message_id,))
        out["events"] = [{"status": e["status"], "at": _iso(e["at"]), "detail": e["detail"]} for e in events]
    return out


def cancel(workspace_id: int, message_id: int) -> tuple[str, dict[str, Any] | None]:
    """Cancel a message that has not started sending: ("cancelled" | "not_found" | "too_late", view)."""
    found = fetch_dicts("SELECT status FROM message WHERE id = %s AND workspace_id = %s", (message_id, workspace_id))
    if not found:
        return "not_found", None
    moved = lifecycle.advance([message_id], lifecycle.CANCELLABLE, "cancelled", detail={"by": "api"})
    current = view(workspace_id, message_id)
    if moved or (current and current["status"] == "cancelled"):
        return "cancelled", current
    return "too_late", current


RESCHEDULABLE = ("scheduled", "accepted", "queued", "routed")  # not yet claimed for sending


def reschedule(workspace_id: int, message_id: int, due: datetime | None) -> tuple[str, dict[str, Any] | None]:
    """Give a message not yet claimed for sending a new due time (None: now), as ``scheduled``:
    ("rescheduled" | "not_found" | "too_late", view)."""
    found = fetch_dicts("SELECT status FROM message WHERE id = %s AND workspace_id = %s", (message_id, workspace_id))
    if not found:
        return "not_found", None
    moved = fetch_dicts(
        """WITH moved AS (
               -- stamped before its due time: not handed to processing yet (see promote_scheduled)
               UPDATE message SET status = 'scheduled', due_at = coalesce(%(due)s, now()),
                      status_changed_at = least(now(), coalesce(%(due)s, now())) - interval '1 millisecond',
                      updated_at = now(), redrives = 0
               WHERE id = %(id)s AND workspace_id = %(ws)s AND status = ANY(%(from)s)
               RETURNING id, due_at
           ), ev AS (
               INSERT INTO message_event (message_id, status, detail)
               SELECT id, 'scheduled', jsonb_build_object('rescheduled', true, 'send_at', due_at) FROM moved
           )
           SELECT id FROM moved""",
        {"due": due, "id": message_id, "ws": workspace_id, "from": list(RESCHEDULABLE)})
    if moved:
        fetch("SELECT pg_notify(%s, '')", (SCHEDULED_CHANNEL,))
        return "rescheduled", view(workspace_id, message_id)
    return "too_late", view(workspace_id, message_id)
