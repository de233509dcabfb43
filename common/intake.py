"""Storing a new outgoing message: the one INSERT that ``POST /v1/messages`` (ingest) and a
recurring schedule's occurrences (the scheduler) share, with its history row and outbox event;
and its set-wise twin for ``POST /v1/messages/batch`` (``insert_many``: one statement a batch).

It lives here because services never import each other. A message given a due time is stored as
``scheduled`` and stamped just before that time, so the scheduler's ``promote_scheduled`` hands it
to processing once it is due, even when that time has already passed (a late occurrence). The
insert is a no-op when the workspace already has a message with the same idempotency key or a
pending one with the same natural key (its unique tags); the caller finds out which.

An API client's idempotency key is remembered for POSTROOM_IDEMPOTENCY_TTL_SECONDS: with
``api_keys`` an older message holding the same key gives it up first (``release_expired_keys``),
so a request repeated after that time makes a new message. The keys the scheduler gives recurring
occurrences and sequence steps are never released: they are what keeps each made once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from psycopg2.extras import Json

from common import events, lifecycle, metrics
from common.config import settings
from common.db.connection import fetch, fetch_dicts

# The scheduler LISTENs on it: a message or a schedule is due sooner than it planned for.
SCHEDULED_CHANNEL = "postroom_scheduled"

# The natural key: the unique tag names (the message's own ``unique_tags`` when it has them, else
# the workspace's) with this message's values, as canonical JSON (only when the tags are an object
# holding every one of those names). The names are in the key, so a key made from the message's
# own names and one from the workspace's never collide unless they name the same tags.
NATURAL_KEY = """CASE WHEN jsonb_typeof(%(tags)s::jsonb) = 'object'
                   AND cardinality(coalesce(%(unique)s::text[], w.unique_tags)) > 0
                   AND %(tags)s::jsonb ?& coalesce(%(unique)s::text[], w.unique_tags)
              THEN (SELECT jsonb_object_agg(k, %(tags)s::jsonb -> k)
                    FROM unnest(coalesce(%(unique)s::text[], w.unique_tags)) k)::text END"""

# What every new message row (the ``ins`` CTE) also writes: its first history row, and its event
# for the workspace's subscribed endpoints.
_RECORDED = """), ev AS (
    INSERT INTO message_event (message_id, status, detail)
    SELECT id, status, CASE WHEN due_at IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('send_at', due_at) END FROM ins
), ob AS (
    INSERT INTO outbox (workspace_id, event_type, message_id, payload, lane)
    SELECT workspace_id, 'message.' || status, id,
           jsonb_build_object('id', id, 'status', status, 'channel', channel, 'to', to_addr, 'tags', tags,
                              'detail', '{}'::jsonb, 'send_at', due_at, 'at', created_at),
           priority
    FROM ins WHERE """ + events.subscribed_sql("ins.workspace_id", "'message.' || ins.status") + """
)"""

ACCEPT = """
WITH ins AS (
    INSERT INTO message (workspace_id, channel, to_addr, from_addr, body, status, priority, idempotency_key, request_hash, tags,
                         due_at, quiet_hours, content, routes, encoding, template_id, variables, natural_key, status_changed_at,
                         conversation_id, author)
    SELECT %(ws)s, %(channel)s, %(to)s, %(from)s, %(body)s, %(status)s, %(priority)s, %(key)s, %(hash)s, %(tags)s::jsonb, %(due)s,
           %(quiet)s, %(content)s::jsonb, %(routes)s::jsonb, %(encoding)s, %(template_id)s, %(variables)s::jsonb, """ + NATURAL_KEY + """,
           -- a scheduled message is stamped before its due time: not handed to processing yet
           CASE WHEN %(due)s::timestamptz IS NULL THEN now() ELSE """ + lifecycle.stamped_before("%(due)s::timestamptz") + """ END,
           %(conversation)s::bigint, %(author)s::text
    FROM workspace w WHERE w.id = %(ws)s
    ON CONFLICT DO NOTHING  -- an earlier Idempotency-Key, or a pending message with the same natural key
    RETURNING id, workspace_id, channel, to_addr, tags, status, priority, created_at, due_at, conversation_id, author
""" + _RECORDED + """, usage AS (  -- a conversation reply (agent, bot, handoff text) is one outbound usage row
    INSERT INTO usage_log (workspace_id, kind, channel, conversation_id, message_id)
    SELECT workspace_id, 'outbound', channel, conversation_id, id FROM ins WHERE author IS NOT NULL
)
SELECT id, status, priority, created_at, due_at FROM ins
"""


def insert(workspace_id: int, content: Mapping[str, Any], idempotency_key: str | None,
           due: datetime | None = None, *, api_key: bool = False) -> dict[str, Any] | None:
    """Store one message: ``accepted``, or ``scheduled`` when it has a ``due`` time.

    Parameters:
      content: the message's fields as ``POST /v1/messages`` names them (channel, to, from,
        body, priority, tags, quiet_hours), already validated; ``template_id`` and ``variables``
        (the body is rendered by processing); ``content`` (what the channel needs
        beyond the text), ``routes`` (the fallback route) and ``encoding`` (SMS) if any;
        for a conversation reply its ``conversation_id`` and ``author`` (agent, bot,
        bot_handoff), which also log its outbound usage row.

      api_key: ``idempotency_key`` is an API client's: an expired use of it is released first.

    Returns:
      The new row's id, status, priority, created_at and due_at; None when the workspace already
      has a message with this idempotency key, or a pending one with the same natural key.
    """
    if api_key and idempotency_key is not None:
        release_expired_keys(workspace_id, [idempotency_key])
    status = "scheduled" if due else "accepted"
    rows = fetch_dicts(ACCEPT, {
        "ws": workspace_id, "channel": content["channel"], "to": content["to"], "from": content.get("from"),
        "body": content.get("body") or "", "priority": content.get("priority", "normal"), "key": idempotency_key,
        "hash": request_hash(content) if api_key and idempotency_key is not None else None,
        "tags": Json(content.get("tags", [])), "status": status, "due": due, "quiet": content.get("quiet_hours"),
        "content": Json(content.get("content") or {}), "routes": Json(content["routes"]) if content.get("routes") else None,
        "encoding": content.get("encoding"), "template_id": content.get("template_id"),
        "variables": Json(content["variables"]) if content.get("variables") is not None else None,
        "unique": unique_tags(content),
        "conversation": content.get("conversation_id"), "author": content.get("author"),
    }, prepared=True)
    if not rows:
        return None
    metrics.count_transitions(status, [content["channel"]])
    return rows[0]


# Internal keys (recurring occurrences sched:<id>:<minute>, sequence steps enrol:<id>:<step>)
# are left alone even if a client sent the same text: they keep an occurrence or a step made once.
_RELEASE = """
UPDATE message SET idempotency_key = NULL
WHERE workspace_id = %(ws)s AND idempotency_key = ANY(%(keys)s)
  AND created_at < now() - %(ttl)s * interval '1 second'
  AND enrolment_id IS NULL AND idempotency_key NOT LIKE %(sched)s
"""


def release_expired_keys(workspace_id: int, keys: Sequence[str]) -> None:
    """Messages of the workspace holding one of these API idempotency keys for longer than
    POSTROOM_IDEMPOTENCY_TTL_SECONDS give them up (one statement), so the keys are new again."""
    if keys:
        fetch(_RELEASE, {"ws": workspace_id, "keys": list(keys), "ttl": settings.postroom_idempotency_ttl_seconds,
                         "sched": "sched:%"})


_ITEMS = """
    SELECT i.*, nextval('message_id_seq') AS id  -- the id known up front: each row maps back to its item
    FROM jsonb_to_recordset(%(items)s::jsonb) AS i(
        n int, channel text, to_addr text, from_addr text, body text, status text, priority text, key text, hash text, tags jsonb,
        due timestamptz, quiet_hours text, content jsonb, routes jsonb, encoding text, template_id bigint, variables jsonb,
        unique_tags text[])
"""
_ITEM_NATURAL_KEY = NATURAL_KEY.replace("%(tags)s::jsonb", "i.tags").replace("%(unique)s::text[]", "i.unique_tags")
ACCEPT_MANY = """
WITH items AS (""" + _ITEMS + """
), ins AS (
    INSERT INTO message (id, workspace_id, channel, to_addr, from_addr, body, status, priority, idempotency_key, request_hash,
                         tags, due_at, quiet_hours, content, routes, encoding, template_id, variables, natural_key, status_changed_at)
    SELECT i.id, w.id, i.channel, i.to_addr, i.from_addr, i.body, i.status, i.priority, i.key, i.hash, i.tags, i.due,
           i.quiet_hours, i.content, i.routes, i.encoding, i.template_id, i.variables, """ + _ITEM_NATURAL_KEY + """,
           CASE WHEN i.due IS NULL THEN now() ELSE """ + lifecycle.stamped_before("i.due") + """ END
    FROM items i, workspace w WHERE w.id = %(ws)s
    ORDER BY i.n
    ON CONFLICT DO NOTHING  -- an earlier idempotency key, or a pending message with the same natural key
    RETURNING id, workspace_id, channel, to_addr, tags, status, priority, created_at, due_at
""" + _RECORDED + """
SELECT i.n, ins.id, ins.status, ins.priority, ins.created_at, ins.due_at, """ + _ITEM_NATURAL_KEY + """ AS natural_key
FROM items i JOIN workspace w ON w.id = %(ws)s LEFT JOIN ins ON ins.id = i.id
ORDER BY i.n
"""


def insert_many(workspace_id: int, rows: Sequence[tuple[Mapping[str, Any], str | None, datetime | None]]
                ) -> list[dict[str, Any]]:
    """Store many messages in one statement, each as ``insert`` stores one.

    Parameters:
      rows: (content as for ``insert``, API idempotency key or None, due time or None) per message;
        keys held past POSTROOM_IDEMPOTENCY_TTL_SECONDS are released first (one more statement).

    Returns:
      Per row, in order: ``id`` (None when not inserted: its key or its natural key was taken),
      ``status``, ``priority``, ``created_at``, ``due_at`` and the row's ``natural_key``.
    """
    release_expired_keys(workspace_id, [key for _, key, _ in rows if key is not None])
    items = [{
        "n": n, "channel": c["channel"], "to_addr": c["to"], "from_addr": c.get("from"), "body": c.get("body") or "",
        "status": "scheduled" if due else "accepted", "priority": c.get("priority", "normal"), "key": key,
        "hash": request_hash(c) if key is not None else None,
        "tags": c.get("tags", []), "due": due.isoformat() if due else None, "quiet_hours": c.get("quiet_hours"),
        "content": c.get("content") or {}, "routes": c.get("routes") or None, "encoding": c.get("encoding"),
        "template_id": c.get("template_id"), "variables": c.get("variables"), "unique_tags": unique_tags(c),
    } for n, (c, key, due) in enumerate(rows)]
    items = [{k: v for k, v in item.items() if v is not None} for item in items]  # absent: SQL NULL, never JSON null
    found = fetch_dicts(ACCEPT_MANY, {"ws": workspace_id, "items": Json(items)})
    for status in ("accepted", "scheduled"):
        metrics.count_transitions(status, [items[r["n"]]["channel"] for r in found if r["id"] is not None and r["status"] == status])
    return found


def unique_tags(content: Mapping[str, Any]) -> list[str] | None:
    """The message's own unique tag names (``NewMessage.unique_tags``), or None: the workspace's apply."""
    names = content.get("unique_tags")
    return list(names) if names else None


# What makes two requests for a message the same request (the fields outgoing.resolve produced).
_REQUESTED = ("channel", "to", "from", "body", "priority", "content", "routes", "template_id", "variables", "tags",
              "quiet_hours")


def request_hash(content: Mapping[str, Any]) -> str:
    """A hash of what a message was asked to be, kept with an API idempotency key: a request with
    the key again is the same one when its hash is (the stored columns change as it is sent)."""
    asked = {name: content.get(name) for name in _REQUESTED}
    return hashlib.sha256(json.dumps(asked, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def wake_scheduler() -> None:
    """Tell the scheduler, when this transaction commits, that something may be due sooner."""
    fetch("SELECT pg_notify(%s, '')", (SCHEDULED_CHANNEL,))
