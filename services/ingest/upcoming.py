"""What is due: a workspace's scheduled messages due within a window, for
``GET /v1/messages/upcoming`` — a page at a time in due-time order, with counts over the whole
window by channel and by tag. Every query is scoped by workspace (through the
``message_scheduled_workspace`` index, migration 0007)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg2.extras import Json

from common.db.connection import fetch, fetch_dicts
from services.ingest.errors import ApiError

MOST_TAGS = 100  # distinct tags listed in the counts, most frequent first
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WINDOW = ("m.workspace_id = %(ws)s AND m.status = 'scheduled' AND m.due_at <= now() + make_interval(secs => %(within)s)"
           " AND (%(tags)s::jsonb IS NULL OR m.tags @> %(tags)s::jsonb)")

_PAGE = f"""
SELECT m.id, m.channel, m.to_addr, m.priority, m.tags, m.due_at, m.status, now() + make_interval(secs => %(within)s) AS until
FROM message m
WHERE {_WINDOW}
  AND (%(after_due)s::timestamptz IS NULL OR (m.due_at, m.id) > (%(after_due)s::timestamptz, %(after_id)s::bigint))
ORDER BY m.due_at, m.id LIMIT %(limit)s
"""

_CHANNEL_COUNTS = f"SELECT m.channel, count(*) FROM message m WHERE {_WINDOW} GROUP BY m.channel ORDER BY m.channel"

# Tags are a JSON object of names and values, or (the older form) a JSON array of labels: a name
# and value counts as "name=value", a label as itself.
_TAG_COUNTS = f"""
SELECT t.tag, count(*) AS n
FROM message m CROSS JOIN LATERAL (
    SELECT value FROM jsonb_array_elements_text(CASE jsonb_typeof(m.tags) WHEN 'array' THEN m.tags ELSE '[]' END)
    UNION ALL
    SELECT key || '=' || coalesce(value, '') FROM jsonb_each_text(CASE jsonb_typeof(m.tags) WHEN 'object' THEN m.tags ELSE '{{}}' END)
) AS t(tag)
WHERE {_WINDOW}
GROUP BY t.tag ORDER BY n DESC, t.tag LIMIT %(most)s
"""


class BadCursor(ValueError):
    """A cursor this API did not hand out."""


@dataclass(frozen=True)
class Page:
    until: datetime
    messages: list[dict[str, Any]]
    next_cursor: str | None
    counts: dict[str, Any]


def cursor_of(due_at: datetime, message_id: int) -> str:
    """An opaque cursor: the last item's due time (microseconds since the epoch) and id."""
    return f"{(due_at - _EPOCH) // timedelta(microseconds=1)}_{message_id}"


def after_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    """The position a listing's ``cursor`` query parameter names (None: from the start).

    Raises:
      ApiError: 422 naming ``cursor`` when it is no cursor this API handed out.
    """
    if cursor is None:
        return None
    try:
        return parse_cursor(cursor)
    except BadCursor:
        raise ApiError(422, "invalid_request", "cursor must be a next_cursor this API returned", "cursor") from None


def parse_cursor(cursor: str) -> tuple[datetime, int]:
    """Raises:
      BadCursor: not a cursor this API hands out."""
    micros, sep, message_id = cursor.partition("_")
    if not (sep and micros.isascii() and micros.isdigit() and message_id.isascii() and message_id.isdigit()
            and len(micros) <= 17 and int(message_id) < 2**63):
        raise BadCursor(cursor)
    try:
        return _EPOCH + timedelta(microseconds=int(micros)), int(message_id)
    except (OverflowError, ValueError):
        raise BadCursor(cursor) from None


def page(workspace_id: int, within_seconds: int, limit: int, after: tuple[datetime, int] | None,
         tags: Mapping[str, str] | None = None) -> Page:
    """The next ``limit`` scheduled messages due within ``within_seconds`` from now, after the
    cursor position ``after``, and the counts over the whole window (inside a transaction).
    ``tags``: only messages whose tags include all of these (a compatibility route's own)."""
    params = {"ws": workspace_id, "within": within_seconds, "limit": limit + 1, "most": MOST_TAGS + 1,
              "tags": Json(dict(tags)) if tags else None,
              "after_due": after[0] if after else None, "after_id": after[1] if after else None}
    rows = fetch_dicts(_PAGE, params)
    more = len(rows) > limit
    rows = rows[:limit]
    until = rows[0]["until"] if rows else fetch("SELECT now() + make_interval(secs => %s)", (within_seconds,))[0][0]
    by_channel = dict(fetch(_CHANNEL_COUNTS, params))
    tag_counts = fetch(_TAG_COUNTS, params)
    messages = [{"id": r["id"], "channel": r["channel"], "to": r["to_addr"], "priority": r["priority"], "tags": r["tags"],
                 "send_at": r["due_at"].astimezone(UTC).isoformat(), "status": r["status"]} for r in rows]
    return Page(
        until=until,
        messages=messages,
        next_cursor=cursor_of(rows[-1]["due_at"], rows[-1]["id"]) if more else None,
        counts={"total": sum(by_channel.values()), "by_channel": by_channel,
                "by_tag": dict(tag_counts[:MOST_TAGS]), "by_tag_truncated": len(tag_counts) > MOST_TAGS},
    )
