"""Routing: decide which sender takes each queued message, and when.

Every channel maps to its own sender and the lane is the message's priority. Quiet hours are
decided here, at the last step before a send, in the recipient's time zone (the contact's own,
else the one the phone number pins down, else the workspace's): a message that would go out
inside the window is held as ``scheduled`` until the window opens (the hold is in its history),
not dropped. The window is the message's own, else its contact's, else the workspace's, and
``off`` at any level means none. Urgent messages go anyway, past a contact's window as past the
workspace's, unless the workspace says otherwise or the message brings its own window. A message
whose channel has no sender fails with that reason rather than waiting forever, and a message to
an address on the workspace's suppression list for its channel moves on to its fallback route's
next channel, or ends as ``suppressed`` when there is none (an ``urgent`` one passes an
``opt_out`` entry where the workspace allows it: ``common.suppression``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from common import lifecycle, suppression
from common.db.connection import fetch_dicts
from common.dispatch import SENDERS
from common.quiet_hours import QuietHours, hold_until, recipient_timezone

SENDER_CHANNELS = frozenset(SENDERS)
OFF = "off"

# The recipient is the contact of the workspace with the message's address on its channel (at
# most one: the address is contact_address's key), if any.
_WINDOWS = """
SELECT m.id, m.channel, m.to_addr, m.priority, m.quiet_hours AS own, c.quiet_hours AS contact_window,
       c.timezone AS contact_timezone, w.quiet_hours AS workspace_window, w.timezone, w.quiet_hours_urgent
FROM message m JOIN workspace w ON w.id = m.workspace_id
LEFT JOIN contact_address a ON a.workspace_id = m.workspace_id AND a.channel = m.channel AND a.address = m.to_addr
LEFT JOIN contact c ON c.workspace_id = a.workspace_id AND c.id = a.contact_id
WHERE m.id = ANY(%s) AND (m.status || '') = 'queued' AND coalesce(m.quiet_hours, c.quiet_hours, w.quiet_hours) IS NOT NULL
  AND m.author IS NULL  -- a reply in a conversation (bot, handoff text, agent) answers someone who just wrote
"""


def route_batch(ids: Sequence[int]) -> list[dict[str, Any]]:
    """Claim queued messages among ``ids``: end those to a suppressed address as ``suppressed``,
    hold those inside quiet hours; return those routed to a sender."""
    done = suppression.suppress_messages(ids, "queued", onward=True)
    done |= hold_quiet([i for i in ids if i not in done])
    moved = lifecycle.advance([i for i in ids if i not in done], ["queued"], "routed")
    unroutable = [m["id"] for m in moved if m["channel"] not in SENDER_CHANNELS]
    if unroutable:
        lifecycle.advance(unroutable, ["routed"], "failed", detail={"error": "no sender for this channel"})
    return [m for m in moved if m["channel"] in SENDER_CHANNELS]


def hold_quiet(ids: Sequence[int], now: datetime | None = None) -> set[int]:
    """Move the messages among ``ids`` that are inside their quiet hours now back to ``scheduled``,
    due when the window opens; returns their ids. Only messages with a window are read."""
    if not ids:
        return set()
    now = now or datetime.now(UTC)
    holds = []
    for row in fetch_dicts(_WINDOWS, (list(ids),), prepared=True):
        until = quiet_until(row, now)
        if until is not None:
            holds.append({"id": row["id"], "due": until.isoformat(),
                          "detail": {"held": "quiet_hours", "until": until.isoformat(), "window": row["window"],
                                     "window_from": row["window_from"], "timezone": row["zone"],
                                     "timezone_from": row["zone_from"]}})
    lifecycle.record_outcomes("queued", "scheduled", holds, columns={"due_at": "v.due::timestamptz"})
    return {h["id"] for h in holds}


def quiet_until(row: dict[str, Any], now: datetime) -> datetime | None:
    """When ``row``'s message may go, if its quiet hours hold it now (else None). Fills in the
    window and zone it used and where each came from (``window``, ``window_from``, ``zone``,
    ``zone_from``) for the history."""
    window = row["own"] or row["contact_window"] or row["workspace_window"]
    window_from = "message" if row["own"] else "contact" if row["contact_window"] else "workspace"
    if window == OFF or (row["priority"] == "urgent" and not row["quiet_hours_urgent"] and not row["own"]):
        return None
    phone = row["to_addr"] if row["channel"] == "sms" else None
    zone, source = recipient_timezone(row["contact_timezone"], phone, row["timezone"])
    row.update(window=window, window_from=window_from, zone=zone, zone_from=source)
    try:
        return hold_until(now, QuietHours.parse(window), zone)
    except ValueError:  # stored windows were checked when set; an unreadable one holds nothing
        return None

