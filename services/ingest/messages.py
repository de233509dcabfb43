"""Accepting, reading and cancelling messages for the API; every query is scoped by workspace."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg2.extras import Json

from common import intake, lifecycle
from common.db.connection import fetch, fetch_dicts


@dataclass(frozen=True)
class Accepted:
    id: int
    priority: str
    replayed: bool
    created_at: str | None = None
    status: str = "accepted"
    send_at: str | None = None




class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before for a different request."""


class Duplicate(Exception):
    """A pending message already has this natural key (the workspace's unique tags)."""

    def __init__(self, message_id: int, natural_key: str):
        super().__init__(natural_key)
        self.message_id = message_id
        self.natural_key = natural_key


def accept(workspace_id: int, new: dict[str, Any], idempotency_key: str | None, due: datetime | None = None) -> Accepted:
    """Store a new message (as ``outgoing.resolve`` made it) as ``accepted``, or ``scheduled`` when
    ``due`` later (or find the earlier one with the same key, an API client's: one older than
    POSTROOM_IDEMPOTENCY_TTL_SECONDS gives the key up). A scheduled one wakes the scheduler when
    this commits. The insert is shared with the scheduler's recurring occurrences
    (``common.intake``)."""
    row = intake.insert(workspace_id, new, idempotency_key, due, api_key=True)
    if row:
        if due:
            intake.wake_scheduler()
        return Accepted(row["id"], row["priority"], replayed=False, created_at=_iso(row["created_at"]),
                        status=row["status"], send_at=_iso(row["due_at"]))
    found = fetch_dicts(
        "SELECT id, channel, to_addr, from_addr, body, priority, content, routes, request_hash FROM message"
        " WHERE workspace_id = %s AND idempotency_key = %s",
        (workspace_id, idempotency_key),
    ) if idempotency_key is not None else []
    if not found:  # not the key: the natural key of a pending message
        twin = fetch("SELECT m.id, m.natural_key FROM message m, workspace w WHERE w.id = %(ws)s AND m.workspace_id = %(ws)s"
                     f" AND m.natural_key = {intake.NATURAL_KEY}"
                     " AND m.status IN ('accepted', 'scheduled', 'queued', 'routed', 'sending')",
                     {"ws": workspace_id, "tags": Json(new["tags"]), "unique": intake.unique_tags(new)})
        if not twin:  # it went away between the two statements: the caller may simply try again
            raise Duplicate(0, "")
        raise Duplicate(twin[0][0], twin[0][1])
    earlier = found[0]
    if not same_message(earlier, new):
        raise IdempotencyConflict(idempotency_key)
    return Accepted(earlier["id"], earlier["priority"], replayed=True)


EARLIER_COLUMNS = "id, idempotency_key, status, channel, to_addr, from_addr, body, priority, content, routes, request_hash"


def same_message(earlier: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a stored message (``EARLIER_COLUMNS``) is the one ``new`` asks for: a request
    repeated with its idempotency key, not another message under a reused key. A message keyed
    through the API kept its request's hash (its columns change as processing and fallback move it
    on); one from before that is compared column by column."""
    if earlier.get("request_hash") is not None:
        return bool(earlier["request_hash"] == intake.request_hash(new))
    return (earlier["channel"], earlier["to_addr"], earlier["from_addr"], earlier["body"], earlier["priority"],
            earlier["content"], earlier["routes"]) == (
        new["channel"], new["to"], new.get("from"), new["body"], new["priority"], new.get("content") or {}, new.get("routes"))


def by_keys(workspace_id: int, keys: list[str]) -> dict[str, dict[str, Any]]:
    """The workspace's messages holding these idempotency keys, by key (one query)."""
    rows = fetch_dicts(f"SELECT {EARLIER_COLUMNS} FROM message WHERE workspace_id = %s AND idempotency_key = ANY(%s)",
                       (workspace_id, keys)) if keys else []
    return {r["idempotency_key"]: r for r in rows}


def pending_by_natural_keys(workspace_id: int, natural_keys: list[str]) -> dict[str, dict[str, Any]]:
    """The workspace's pending messages holding these natural keys (unique tags), by key (one query)."""
    rows = fetch_dicts("SELECT id, status, natural_key FROM message WHERE workspace_id = %s AND natural_key = ANY(%s)"
                       " AND status IN ('accepted', 'scheduled', 'queued', 'routed', 'sending')",
                       (workspace_id, natural_keys)) if natural_keys else []
    return {r["natural_key"]: r for r in rows}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def view(workspace_id: int, message_id: int, *, with_events: bool = True) -> dict[str, Any] | None:
    rows = fetch_dicts("SELECT * FROM message WHERE id = %s AND workspace_id = %s", (message_id, workspace_id))
    if not rows:
        return None
    out = _shown(rows[0])
    if with_events:
        events = fetch_dicts("SELECT status, at, detail FROM message_event WHERE message_id = %s ORDER BY id", (message_id,))
        if rows[0]["campaign_id"] is not None:
            events = compact_steps(rows[0], events)
        out["events"] = [{"status": e["status"], "at": _iso(e["at"]), "detail": e["detail"]} for e in events]
    return out


def compact_steps(m: dict[str, Any], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A campaign message's history with the steps the bulk path keeps on the row instead of in
    rows of their own: accepted (and queued, without a template) at its creation, routed and
    sending at their times (``common.lifecycle.COMPACT_STEPS``); in time order."""
    written = {e["status"] for e in events}
    steps = [("accepted", m["created_at"])]
    if m["template_id"] is None:
        steps.append(("queued", m["created_at"]))
    steps += [(status, m[column]) for status, column in lifecycle.COMPACT_STEPS.items()]
    added = [{"status": status, "at": at, "detail": {}} for status, at in steps if at is not None and status not in written]
    return sorted(added + events, key=lambda e: e["at"])


def views(workspace_id: int, ids: list[int]) -> list[dict[str, Any]]:
    """The messages among ``ids`` in this workspace, in id order, without their events (one query)."""
    rows = fetch_dicts("SELECT * FROM message WHERE id = ANY(%s) AND workspace_id = %s ORDER BY id", (ids, workspace_id))
    return [_shown(m) for m in rows]


def _shown(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": m["id"], "channel": m["channel"], "direction": m["direction"], "to": m["to_addr"],
        "from": m["from_addr"], "body": m["body"], "status": m["status"], "priority": m["priority"],
        "tags": m["tags"], "attempts": m["attempts"], "provider": m["provider"],
        "provider_message_id": m["provider_message_id"], "segments": m["segments"],
        "last_error": m["last_error"], "error_code": m["error_code"],
        "created_at": _iso(m["created_at"]), "updated_at": _iso(m["updated_at"]),
        "sent_at": _iso(m["sent_at"]), "delivered_at": _iso(m["delivered_at"]), "clicked_at": _iso(m.get("clicked_at")),
        "content": m["content"] or {}, "encoding": m["encoding"], "conversation_id": m["conversation_id"],
        "channels": [r["channel"] for r in m["routes"]] if m["routes"] else None,
        "route": m["routes"], "route_step": m["route_step"],
        "next_attempt_at": _iso(m["due_at"]) if m["status"] == "routed" else None,
        "send_at": _iso(m["due_at"]) if m["status"] == "scheduled" else None,
    }


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
                      status_changed_at = """ + lifecycle.stamped_before("coalesce(%(due)s, now())") + """,
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
        intake.wake_scheduler()
        return "rescheduled", view(workspace_id, message_id)
    return "too_late", view(workspace_id, message_id)


# Literal statuses, so the planner can use the partial GIN index message_pending_tags.
_PENDING_SQL = "status IN (" + ", ".join(f"'{s}'" for s in RESCHEDULABLE) + ")"
_BY_TAGS = f"SELECT id FROM message WHERE workspace_id = %s AND tags @> %s AND {_PENDING_SQL} ORDER BY id LIMIT %s"
TAG_BATCH = 5000


def cancel_by_tags(workspace_id: int, tags: dict[str, str]) -> int:
    """Cancel every message of the workspace not yet sending whose tags include ``tags``."""
    count = 0
    while True:
        ids = [r[0] for r in fetch(_BY_TAGS, (workspace_id, Json(tags), TAG_BATCH))]
        moved = lifecycle.advance(ids, lifecycle.CANCELLABLE, "cancelled", detail={"by": "api", "tags": tags})
        count += len(moved)
        if len(ids) < TAG_BATCH:
            return count


def reschedule_by_tags(workspace_id: int, tags: dict[str, str], due: datetime | None, shift_seconds: int | None) -> int:
    """Move every message of the workspace not yet sending whose tags include ``tags``: to ``due``
    (None with no shift: now), or each by ``shift_seconds`` from its own due time."""
    rows = fetch(
        """WITH matched AS (
               SELECT id, CASE WHEN %(shift)s::int IS NULL THEN coalesce(%(due)s, now())
                               ELSE coalesce(due_at, now()) + %(shift)s::int * interval '1 second' END AS due
               FROM message WHERE workspace_id = %(ws)s AND tags @> %(tags)s AND """ + _PENDING_SQL + """
               FOR UPDATE
           ), moved AS (  -- stamped before its due time: not handed to processing yet
               UPDATE message m SET status = 'scheduled', updated_at = now(), redrives = 0, due_at = matched.due,
                      status_changed_at = """ + lifecycle.stamped_before("matched.due") + """
               FROM matched WHERE m.id = matched.id
               RETURNING m.id, m.due_at
           ), ev AS (
               INSERT INTO message_event (message_id, status, detail)
               SELECT id, 'scheduled', jsonb_build_object('rescheduled', true, 'send_at', due_at, 'tags', %(tags)s::jsonb)
               FROM moved
           )
           SELECT count(*) FROM moved""",
        {"ws": workspace_id, "tags": Json(tags), "due": due, "shift": shift_seconds})
    count = int(rows[0][0])
    if count:
        intake.wake_scheduler()
    return count
