"""The suppression list: addresses a workspace must not send to on a channel.

A provider's answer (Twilio 21610, an SMTP 5.1.x bounce), an email complaint or unsubscribe, an
inbound STOP (``common.consent``) or the API adds an entry; routing checks each batch against the
list in one query, and a message to a suppressed address ends as ``suppressed`` without reaching a
provider. One reason may be overridden: an ``urgent`` message passes an ``opt_out`` entry when its
workspace allows that (``workspace.urgent_bypasses_opt_out``), for transactional codes and alerts
the person still has to get. Every other reason always suppresses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from common import cursors, fallback, lifecycle
from common.db.connection import fetch, fetch_dicts

REASONS = ("opt_out", "bounce", "complaint", "manual", "provider_21610")
OPT_OUT = "opt_out"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COLUMNS = "channel, address, reason, source, created_at"
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")  # what no PostgreSQL text can hold


def add(entries: Sequence[dict[str, Any]]) -> int:
    """Suppress each entry's ``workspace_id``, ``channel`` and ``address`` with its ``reason`` and
    ``source``; an address already suppressed keeps its first reason. Returns how many are new."""
    return len(add_returning(entries))


def add_returning(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """As ``add`` (one statement); returns the (channel, address) of each new entry."""
    if not entries:
        return []
    return fetch_dicts(
        """INSERT INTO suppression (workspace_id, channel, address, reason, source)
           SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[])
           ON CONFLICT DO NOTHING RETURNING channel, address""",
        ([e["workspace_id"] for e in entries], [e["channel"] for e in entries], [e["address"] for e in entries],
         [e["reason"] for e in entries], [e.get("source") for e in entries]),
    )


def remove(workspace_id: int, channel: str, address: str) -> bool:
    return remove_returning(workspace_id, channel, address) is not None


def remove_returning(workspace_id: int, channel: str, address: str) -> dict[str, Any] | None:
    """Lift the suppression of ``address`` on ``channel`` whatever its reason; the entry as it was."""
    rows = fetch_dicts(f"DELETE FROM suppression WHERE workspace_id = %s AND channel = %s AND address = %s RETURNING {_COLUMNS}",
                       (workspace_id, channel, address))
    return rows[0] if rows else None


def lift(workspace_id: int, channel: str, address: str, reasons: Sequence[str]) -> bool:
    """Lift the suppression of ``address`` on ``channel`` only if its reason is one of ``reasons``
    (a person's START lifts their own opt-out, never a bounce or an operator's entry)."""
    return bool(fetch("DELETE FROM suppression WHERE workspace_id = %s AND channel = %s AND address = %s"
                      " AND reason = ANY(%s) RETURNING 1", (workspace_id, channel, address, list(reasons))))


def entries(workspace_id: int, pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """The entries of the workspace for these (channel, address) pairs, in one query."""
    if not pairs:
        return []
    return fetch_dicts(
        f"""SELECT {_COLUMNS} FROM suppression
            WHERE workspace_id = %s AND (channel, address) IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
        (workspace_id, [c for c, _ in pairs], [a for _, a in pairs]))


# --- a page of the list --------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    entries: list[dict[str, Any]]
    next_cursor: str | None


def cursor_of(entry: dict[str, Any]) -> str:
    """An opaque cursor after ``entry``: its time (microseconds since the epoch), channel and address."""
    return cursors.encode([(entry["created_at"] - _EPOCH) // timedelta(microseconds=1), entry["channel"], entry["address"]])


def parse_cursor(cursor: str) -> tuple[datetime, str, str]:
    """Raises:
      cursors.BadCursor: not a cursor ``cursor_of`` made."""
    try:
        micros, channel, address = cursors.decode(cursor)
        if not (isinstance(micros, int) and isinstance(channel, str) and isinstance(address, str)) \
                or _UNSTORABLE.search(channel + address):
            raise cursors.BadCursor(cursor)
        return _EPOCH + timedelta(microseconds=micros), channel, address
    except (ValueError, OverflowError):  # the wrong number of values; a time out of range
        raise cursors.BadCursor(cursor) from None


def page(workspace_id: int, *, channel: str | None, addresses: Sequence[str] | None, reason: str | None, limit: int,
         after: tuple[datetime, str, str] | None) -> Page:
    """The workspace's entries newest first, filtered, after the cursor position ``after`` (keyset:
    the index ``suppression_recent`` is read from that position on, however deep the page)."""
    rows = fetch_dicts(
        f"""SELECT {_COLUMNS} FROM suppression
            WHERE workspace_id = %(ws)s
              AND (%(channel)s::text IS NULL OR channel = %(channel)s)
              AND (%(addresses)s::text[] IS NULL OR address = ANY(%(addresses)s::text[]))
              AND (%(reason)s::text IS NULL OR reason = %(reason)s)
              AND (%(after_at)s::timestamptz IS NULL
                   OR (created_at, channel, address) < (%(after_at)s::timestamptz, %(after_channel)s, %(after_address)s))
            ORDER BY created_at DESC, channel DESC, address DESC LIMIT %(limit)s""",
        {"ws": workspace_id, "channel": channel, "addresses": list(addresses) if addresses is not None else None,
         "reason": reason, "limit": limit + 1, "after_at": after[0] if after else None,
         "after_channel": after[1] if after else None, "after_address": after[2] if after else None})
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, cursor_of(rows[-1]) if more else None)


# --- routing -------------------------------------------------------------------------------------


# The entry ``s`` stops the message ``m``: every reason does, except an opt_out passed by an
# urgent message that is no campaign's, where its workspace allows that, or by the answer to a
# HELP (carriers expect HELP answered even after a STOP).
STOPS_SQL = """NOT (s.reason = 'opt_out' AND m.priority = 'urgent' AND m.campaign_id IS NULL
                    AND (SELECT w.urgent_bypasses_opt_out FROM workspace w WHERE w.id = m.workspace_id))
               AND NOT (s.reason = 'opt_out' AND m.content ? 'consent_reply')"""
# A message ``m`` that may go to a provider: no entry stops it (the sender's claim re-checks, so a
# STOP that arrives while a message waits routed, for a token or a retry, still holds).
NOT_SUPPRESSED_SQL = f"""NOT EXISTS (SELECT 1 FROM suppression s WHERE s.workspace_id = m.workspace_id
                    AND s.channel = m.channel AND s.address = m.to_addr AND {STOPS_SQL})"""


def suppress_messages(ids: Sequence[int], expected: str, *, onward: bool = False) -> set[int]:
    """Move the messages among ``ids`` (in an ``expected`` status) whose address is suppressed on
    their channel to ``suppressed`` (one query to find them for the batch); returns their ids.
    ``STOPS_SQL`` says which entries stop which messages.

    ``onward`` (routing, for ``queued`` messages): consent is per channel, so a message whose
    fallback route has a further channel moves on to it (``common.fallback``), still ``queued``,
    and is checked again there; it ends ``suppressed`` only when no channel of its route is left.
    """
    if not ids:
        return set()
    found = fetch_dicts(
        """SELECT m.id, s.reason, s.source, (m.routes IS NOT NULL AND jsonb_array_length(m.routes) > m.route_step + 1) AS onward
           FROM message m
           JOIN suppression s ON s.workspace_id = m.workspace_id AND s.channel = m.channel AND s.address = m.to_addr
           WHERE m.id = ANY(%s) AND (m.status || '') = %s AND """ + STOPS_SQL,
        (list(ids), expected), prepared=True)
    if onward and any(r["onward"] for r in found):
        moved_on = fallback.move_on([{"id": r["id"], "code": "suppressed", "error": f"the address is suppressed on this "
                                      f"channel ({r['reason']})"} for r in found if r["onward"]], [expected])
        found = [r for r in found if not r["onward"]]
        # on their next channel, checked again (a route is a few channels long)
        again = suppress_messages([m["id"] for m in moved_on], expected, onward=True) if moved_on else set()
        return _end_suppressed(found, expected) | again
    return _end_suppressed(found, expected)


def _end_suppressed(found: Sequence[dict[str, Any]], expected: str) -> set[int]:
    moved = lifecycle.record_outcomes(expected, "suppressed", [
        {"id": r["id"], "reason": r["reason"], "detail": {"error_code": "suppressed", "reason": r["reason"],
                                                          "source": r["source"], "error": f"the address is suppressed ({r['reason']})"}}
        for r in found], columns={"error_code": "'suppressed'", "last_error": "'the address is suppressed: ' || v.reason"}) \
        if found else []
    return {m["id"] for m in moved}
