"""Provider receipts: kept as they arrive, applied in rank order, never moving a status back.

Every webhook is stored in ``provider_event`` with its signature verdict. A receipt whose
provider id is not yet on a message (it arrived before the sender recorded the send) stays
pending and is applied by ``apply_pending_receipts`` once the id appears: the sender calls it
right after recording sends, and the reconciler sweeps whatever a race left behind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from common import lifecycle
from common.db.connection import fetch

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


def apply_receipt_event(event_id: int, provider: str, provider_message_id: str, account: str, status: str,
                        detail: dict[str, Any]) -> int | None:
    """Apply one stored receipt; mark it applied if its message exists. Returns the message id."""
    message_id = lifecycle.apply_receipt(provider, provider_message_id, status, detail, account=account)
    if message_id is not None:
        fetch("UPDATE provider_event SET applied_at = now(), message_id = %s WHERE id = %s", (message_id, event_id))
    return message_id


def apply_pending_receipts(provider: str, provider_message_ids: Sequence[str] | None = None, limit: int = 1000) -> int:
    """Apply pending receipts whose message now exists (all of them, or those for the given ids)."""
    rows = fetch(
        f"""
        SELECT e.id, e.provider_message_id, e.provider_account, e.status, e.detail
        FROM provider_event e
        JOIN message m ON m.provider = e.provider AND m.provider_message_id = e.provider_message_id
                      AND m.provider_account = e.provider_account
        WHERE e.provider = %s AND e.applied_at IS NULL AND e.signature_valid AND e.kind = 'status'
          AND e.status IS NOT NULL
          {"AND e.provider_message_id = ANY(%s)" if provider_message_ids is not None else ""}
        ORDER BY e.id LIMIT %s
        FOR UPDATE OF e SKIP LOCKED
        """,
        (provider, list(provider_message_ids), limit) if provider_message_ids is not None else (provider, limit),
    )
    # Apply in rank order so the history reads forward even when receipts came in reverse.
    rows.sort(key=lambda r: lifecycle.RANK.get(r[3], 0))
    for event_id, pid, account, status, detail in rows:
        apply_receipt_event(event_id, provider, pid, account, status, detail or {})
    return len(rows)
