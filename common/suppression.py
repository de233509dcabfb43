"""The suppression list: addresses a workspace must not send to on a channel.

A provider's answer (Twilio 21610, an SMTP 5.1.x bounce) or an inbound opt-out adds an entry;
routing checks each batch against the list in one query, and a message to a suppressed address
ends as ``suppressed`` without reaching a provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common import lifecycle
from common.db.connection import fetch, fetch_dicts

REASONS = ("opt_out", "bounce", "complaint", "manual", "provider_21610")


def add(entries: Sequence[dict[str, Any]]) -> int:
    """Suppress each entry's ``workspace_id``, ``channel`` and ``address`` with its ``reason`` and
    ``source``; an address already suppressed keeps its first reason. Returns how many are new."""
    if not entries:
        return 0
    rows = fetch(
        """INSERT INTO suppression (workspace_id, channel, address, reason, source)
           SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[])
           ON CONFLICT DO NOTHING RETURNING 1""",
        ([e["workspace_id"] for e in entries], [e["channel"] for e in entries], [e["address"] for e in entries],
         [e["reason"] for e in entries], [e.get("source") for e in entries]),
    )
    return len(rows)


def remove(workspace_id: int, channel: str, address: str) -> bool:
    return bool(fetch("DELETE FROM suppression WHERE workspace_id = %s AND channel = %s AND address = %s RETURNING 1",
                      (workspace_id, channel, address)))


def suppress_messages(ids: Sequence[int], expected: str) -> set[int]:
    """Move the messages among ``ids`` (in an ``expected`` status) whose address is suppressed on
    their channel to ``suppressed`` (one query to find them for the batch); returns their ids."""
    if not ids:
        return set()
    found = fetch_dicts(
        """SELECT m.id, s.reason, s.source FROM message m
           JOIN suppression s ON s.workspace_id = m.workspace_id AND s.channel = m.channel AND s.address = m.to_addr
           WHERE m.id = ANY(%s) AND (m.status || '') = %s""",
        (list(ids), expected), prepared=True)
    moved = lifecycle.record_outcomes(expected, "suppressed", [
        {"id": r["id"], "reason": r["reason"], "detail": {"error_code": "suppressed", "reason": r["reason"],
                                                          "source": r["source"], "error": f"the address is suppressed ({r['reason']})"}}
        for r in found], columns={"error_code": "'suppressed'", "last_error": "'the address is suppressed: ' || v.reason"}) \
        if found else []
    return {m["id"] for m in moved}
