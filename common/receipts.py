"""Provider receipts: kept as they arrive, applied in rank order, never moving a status back.

Every webhook is stored in ``provider_event`` with its signature verdict. Signed status receipts
are kept pending by ingest (``keep_pending``, one INSERT per callback) and applied many at a time
by the receipts stage (``apply_events``), one statement per status. A receipt whose provider id
is not yet on a message (it arrived before the sender recorded the send) stays pending and is
applied by ``apply_pending_receipts`` once the id appears: the sender calls it right after
recording sends, and the reconciler sweeps whatever a race or a lost broker message left behind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from common import lifecycle
from common.db.connection import fetch, fetch_dicts

MAX_UNVERIFIED_PAYLOAD = 4096  # characters of an unsigned webhook's payload that are kept
MAX_UNVERIFIED_ID = 64  # and of the provider id (or status) it claims
# PostgreSQL's jsonb holds neither NUL nor a lone surrogate; both are replaced before storing.
UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def store_event(provider: str, kind: str, payload: dict[str, Any], *, signature_valid: bool,
                provider_message_id: str | None = None, status: str | None = None,
                detail: dict[str, Any] | None = None, handled: bool = False) -> int:
    """Keep one webhook as received; ``handled`` marks one that needs nothing applied (e.g. `queued`).

    A webhook whose signature is not valid is unauthenticated input: only a bounded form of its
    payload is kept (``bounded_payload``), with the provider id it claims cut short (so an operator
    can find forgeries for a message), and it is never taken as handled or applied.
    """
    if not signature_valid:
        payload, detail, handled = bounded_payload(payload), None, False
        provider_message_id = storable(provider_message_id[:MAX_UNVERIFIED_ID]) if provider_message_id else None
        status = storable(status[:MAX_UNVERIFIED_ID]) if status else None
    rows = fetch(
        "INSERT INTO provider_event (provider, kind, provider_message_id, status, detail, payload, signature_valid, applied_at)"
        " VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, CASE WHEN %s THEN now() END) RETURNING id",
        (provider, kind, provider_message_id, status, json.dumps(detail or {}), json.dumps(storable(payload)), signature_valid, handled),
    )
    return rows[0][0]


def bounded_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` if it is small; else its first MAX_UNVERIFIED_PAYLOAD characters as JSON text."""
    text = json.dumps(storable(payload), ensure_ascii=False)
    if len(text) <= MAX_UNVERIFIED_PAYLOAD:
        return payload
    return {"truncated": True, "size": len(text), "head": text[:MAX_UNVERIFIED_PAYLOAD]}


def storable(value: Any) -> Any:
    """``value`` with every string made storable in PostgreSQL text and jsonb (NUL and lone
    surrogates replaced), keys included."""
    if isinstance(value, str):
        return UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {storable(str(k)): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def keep_pending(provider: str, kind: str, provider_message_id: str, account: str, status: str,
                 detail: dict[str, Any], payload: dict[str, Any], scope: Sequence[int] | None) -> int:
    """Keep a signed receipt to be applied by the receipts stage (one INSERT); returns its id.
    ``scope``: the workspaces whose messages it may move (None: any)."""
    rows = fetch(
        "INSERT INTO provider_event (provider, kind, provider_message_id, provider_account, status, detail, payload,"
        " signature_valid, scope) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, true, %s) RETURNING id",
        (provider, kind, provider_message_id, account, status, json.dumps(detail), json.dumps(storable(payload)),
         list(scope) if scope is not None else None), prepared=True)
    return int(rows[0][0])


# Pending signed receipts with the message each is for (the account that signed it sent the
# message, and the message is of a workspace the receipt may move), locked for this batch.
_PENDING = """
SELECT e.id AS event_id, e.status, e.detail, m.id
FROM provider_event e
JOIN message m ON m.provider = e.provider AND m.provider_message_id = e.provider_message_id
              AND m.provider_account = e.provider_account AND (e.scope IS NULL OR m.workspace_id = ANY(e.scope))
WHERE e.applied_at IS NULL AND e.signature_valid AND e.kind = 'status' AND e.status IS NOT NULL AND {which}
ORDER BY e.id LIMIT %(limit)s
FOR UPDATE OF e SKIP LOCKED
"""


def apply_batch(which: str, params: dict[str, Any], limit: int = 5000) -> int:
    """Apply the pending receipts ``which`` selects (SQL over ``e``, with ``params``) whose message
    exists: one statement per status, in rank order (so the history reads forward even when
    receipts came in reverse), then one marking them applied. Returns how many were applied."""
    rows = fetch_dicts(_PENDING.format(which=which), {**params, "limit": limit})
    by_status: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_status.setdefault(row["status"], []).append({"id": row["id"], "detail": row["detail"] or {}})
    for status in sorted(by_status, key=lambda s: lifecycle.RANK.get(s, 0)):
        lifecycle.apply_receipts(status, by_status[status])
    if rows:
        fetch("UPDATE provider_event e SET applied_at = now(), message_id = v.message_id"
              " FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, message_id) WHERE e.id = v.id",
              ([r["event_id"] for r in rows], [r["id"] for r in rows]))
    return len(rows)


def apply_events(event_ids: Sequence[int]) -> int:
    """The receipts stage's work: apply these kept receipts (those whose message is not known yet
    stay pending until its send is recorded)."""
    return apply_batch("e.id = ANY(%(ids)s)", {"ids": list(event_ids)}) if event_ids else 0


def receipts_waiting(provider: str, provider_message_ids: Sequence[str]) -> bool:
    """Whether a pending receipt names one of these provider ids (one index probe)."""
    return bool(fetch("SELECT 1 FROM provider_event WHERE provider = %s AND provider_message_id = ANY(%s)"
                      " AND applied_at IS NULL AND signature_valid AND status IS NOT NULL LIMIT 1", (provider, list(provider_message_ids)), prepared=True))


def apply_pending_receipts(provider: str, provider_message_ids: Sequence[str] | None = None, limit: int = 1000) -> int:
    """Apply pending receipts whose message now exists (all of them, or those for the given ids)."""
    if provider_message_ids is None:
        return apply_batch("e.provider = %(provider)s", {"provider": provider}, limit)
    return apply_batch("e.provider = %(provider)s AND e.provider_message_id = ANY(%(pids)s)",
                       {"provider": provider, "pids": list(provider_message_ids)}, limit)
