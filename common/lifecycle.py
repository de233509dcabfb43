"""The message state machine: statuses, their ranks, and compare-and-set moves on batches.

Every status change is one ``UPDATE ... WHERE id = ANY(ids) AND status = ANY(expected)``
statement that also appends the history rows and the outbox events, so only the winner of a
claim acts, a duplicate broker delivery finds nothing to do, and statuses never move backwards.
Callers run these inside a transaction and enqueue follow-up work only after it commits.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from common import events, metrics
from common.db.connection import fetch, fetch_dicts

# Outbound flow in order; the ends share ranks with the point they can be reached from.
RANK: dict[str, int] = {
    "accepted": 0,
    "scheduled": 1,
    "queued": 2,
    "routed": 3,
    "sending": 4,
    "sent": 5,
    "failed": 6,
    "undelivered": 6,
    "delivered": 7,
    "read": 8,
    "cancelled": 9,
    "suppressed": 9,
    "received": 0,
    "processed": 1,
}

# By id only: statements given a batch's ids find its rows by primary key, and test the status as
# ``(status || '')``, an expression from which no partial index's predicate (``WHERE status =
# ...``) can be proved. Statistics taken when nothing waited (after a campaign) otherwise make the
# planner scan "the few routed rows" of such an index instead, which a 100,000-message backlog
# makes every one of the batch's statements read in full (seconds each).

# Statuses a message waits in for a stage, and the stage that moves it on.
WAITING_FOR: dict[str, str] = {"accepted": "processing", "scheduled": "processing", "queued": "routing", "routed": "sender"}
CANCELLABLE: tuple[str, ...] = ("accepted", "scheduled", "queued", "routed")


def stamped_before(due_sql: str) -> str:
    """SQL for the ``status_changed_at`` of a message (re)scheduled for ``due_sql``: just before its
    due time (or now, if that is sooner). ``status_changed_at < due_at`` is what marks a scheduled
    message as not yet handed to processing (the scheduler's ``promote_scheduled``)."""
    return f"least(now(), {due_sql}) - interval '1 millisecond'"
# Waits up to this long ride on a broker delay; longer ones are parked rows the scheduler promotes.
SHORT_WAIT_SECONDS = 10.0

def _rank_of(column: str) -> str:
    """SQL for the rank of the status in ``column``."""
    return f"(CASE {column} " + " ".join(f"WHEN '{s}' THEN {r}" for s, r in RANK.items()) + " END)"


_RANK_SQL = _rank_of("status")


# Columns every move returns for its outbox event; ``returning`` may name them again.
_RETURNED = ("to_addr", "tags", "campaign_id")

# The bulk path's compact history (DESIGN.md, lifecycle): a campaign message's plain routed and
# sending steps write no history row; their times are the message's routed_at and claimed_at, and
# the API shows them as steps (a step with a detail, such as a retry or a rate-limit wait, is
# written as usual). Every message's row carries the two times.
COMPACT_STEPS = {"routed": "routed_at", "sending": "claimed_at"}
_COMPACT_SQL = "ARRAY[" + ", ".join(f"'{s}'" for s in COMPACT_STEPS) + "]"


def _stamp(to: str) -> str:
    """SQL setting the step time column of ``to``, if it has one."""
    column = COMPACT_STEPS.get(to)
    return f", {column} = now()" if column else ""


def _jsonb(detail: dict[str, Any] | None) -> str:
    return json.dumps(detail or {}, default=str)


_RECORD = f"""
, ev AS (
    INSERT INTO message_event (message_id, status, detail)
    SELECT id, status, detail FROM moved
    WHERE NOT (campaign_id IS NOT NULL AND status = ANY({_COMPACT_SQL}) AND detail = '{{}}'::jsonb)
), ob AS (
    INSERT INTO outbox (workspace_id, event_type, message_id, payload, lane)
    SELECT workspace_id, 'message.' || status, id,
           jsonb_build_object('id', id, 'status', status, 'channel', channel, 'to', to_addr, 'tags', tags,
                              'detail', detail, 'at', clock_timestamp()),
           priority
    FROM moved
    WHERE status = ANY({events.PUBLIC_STATUSES_SQL}) AND {events.subscribed_sql("moved.workspace_id", "'message.' || moved.status")}
)
"""


def advance(
    ids: Sequence[int],
    expected: Iterable[str],
    to: str,
    *,
    detail: dict[str, Any] | None = None,
    due_only: bool = False,
    returning: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Move those of ``ids`` whose status is in ``expected`` to ``to``.

    Parameters:
      detail: recorded in the history; its ``error`` and ``error_code``, if any, also become the
        message's ``last_error`` and ``error_code``.
      due_only: also require the message to be due (``due_at`` unset or past), so a retry
        delivered early by the broker waits for its time.
      returning: further message columns to return for each moved message.

    Returns:
      One dict per moved message with ``id``, ``workspace_id``, ``priority``, ``channel`` and the
      ``returning`` columns.
    """
    if not ids:
        return []
    extra = "".join(f", {col}" for col in returning if col not in _RETURNED)
    picked = "".join(f", {col}" for col in returning)
    rows = fetch_dicts(
        f"""
        WITH moved AS (
            UPDATE message SET status = %(to)s, status_changed_at = now(), updated_at = now(),
                   -- progress resets the count of re-drives without progress; failing keeps it
                   redrives = CASE WHEN %(to)s = 'failed' THEN redrives ELSE 0 END,
                   error_code = coalesce(%(error_code)s, error_code), last_error = coalesce(%(error)s, last_error){_stamp(to)}
            WHERE id = ANY(%(ids)s) AND (status || '') = ANY(%(expected)s)
              {"AND (due_at IS NULL OR due_at <= now())" if due_only else ""}
            RETURNING id, workspace_id, status, priority, channel, to_addr, tags, campaign_id, %(detail)s::jsonb AS detail{extra}
        ){_RECORD}
        SELECT id, workspace_id, priority, channel{picked} FROM moved
        """,
        {"ids": list(ids), "expected": list(expected), "to": to, "detail": _jsonb(detail),
         "error_code": (detail or {}).get("error_code"), "error": (detail or {}).get("error")},
        prepared=True,
    )
    metrics.count_transitions(to, [r["channel"] for r in rows])
    return rows


def record_outcomes(
    expected: str,
    to: str,
    outcomes: Sequence[dict[str, Any]],
    *,
    columns: dict[str, str],
    due_only: bool = False,
    returning: Sequence[str] = (),
    where: str = "",
) -> list[dict[str, Any]]:
    """Move each message of ``outcomes`` from ``expected`` to ``to`` with its own values, in one statement.

    Each outcome is a dict with ``id``, ``detail`` and further keys; ``columns`` maps a message
    column to a SQL expression over those keys as text (``v.<key>``), for example
    ``{"provider_message_id": "v.provider_message_id", "attempts": "m.attempts + 1"}``.

    ``due_only`` and ``returning`` are as for ``advance``; ``where`` is a further SQL condition on
    the message row ``m``.

    Returns:
      One dict per moved message with ``id``, ``workspace_id``, ``priority``, ``channel`` and the
      ``returning`` columns.
    """
    if not outcomes:
        return []
    extra = "".join(f", m.{col}" for col in returning if col not in _RETURNED)
    picked = "".join(f", {col}" for col in returning)
    keys = sorted({k for o in outcomes for k in o} - {"id", "detail"})
    unnest_cols = ", ".join(f"unnest(%({k})s::text[]) AS {k}" for k in keys)
    params: dict[str, Any] = {k: [None if o.get(k) is None else str(o[k]) for o in outcomes] for k in keys}
    params.update(
        ids=[o["id"] for o in outcomes],
        details=[_jsonb(o.get("detail")) for o in outcomes],
        expected=expected,
        to=to,
    )
    sets = ", ".join(f"{col} = {expr}" for col, expr in columns.items())
    rows = fetch_dicts(
        f"""
        WITH v AS (
            SELECT unnest(%(ids)s::bigint[]) AS id, unnest(%(details)s::text[])::jsonb AS detail
                   {", " + unnest_cols if keys else ""}
        ), moved AS (
            UPDATE message m SET status = %(to)s, status_changed_at = now(), updated_at = now(), redrives = 0
                   {", " + sets if sets else ""}{_stamp(to)}
            FROM v WHERE m.id = v.id AND (m.status || '') = %(expected)s
              {"AND (m.due_at IS NULL OR m.due_at <= now())" if due_only else ""} {f"AND {where}" if where else ""}
            RETURNING m.id, m.workspace_id, m.status, m.priority, m.channel, m.to_addr, m.tags, m.campaign_id, v.detail{extra}
        ){_RECORD}
        SELECT id, workspace_id, priority, channel{picked} FROM moved
        """,
        params,
        prepared=True,
    )
    metrics.count_transitions(to, [r["channel"] for r in rows])
    return rows


def record_sent(provider: str, sent: Sequence[dict[str, Any]], columns: dict[str, str]) -> list[dict[str, Any]]:
    """Record ``sending`` → ``sent`` for messages the provider took: each outcome carries ``id``,
    ``pid`` (the provider's id), ``segments`` and ``detail``; ``columns`` adds further updates.
    Used by the sender and by the reconciler when a look-up finds a send whose answer was lost."""
    return record_outcomes("sending", "sent", sent, columns={
        "provider": f"'{provider}'", "provider_message_id": "v.pid", "segments": "v.segments::int",
        "sent_at": "now()", "due_at": "NULL", "lookup_at": "NULL", **columns})


def apply_receipts(status: str, receipts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Move each message of ``receipts`` (``id``, ``detail``) forward to ``status`` in one statement,
    where its status ranks lower (a receipt never moves a message back; one already there is a no-op).

    Returns one dict per moved message with ``id`` and ``channel``.
    """
    if not receipts:
        return []
    rows = fetch_dicts(
        f"""
        WITH v AS (
            SELECT DISTINCT ON (id) id, detail FROM unnest(%(ids)s::bigint[], %(details)s::text[]) AS u(id, detail) ORDER BY id
        ), moved AS (
            UPDATE message m SET status = %(to)s, status_changed_at = now(), updated_at = now(), redrives = 0,
                   delivered_at = CASE WHEN %(to)s IN ('delivered', 'read') THEN coalesce(m.delivered_at, now()) ELSE m.delivered_at END,
                   error_code = coalesce(v.detail::jsonb ->> 'error_code', m.error_code),
                   last_error = coalesce(v.detail::jsonb ->> 'error', m.last_error)
            FROM v WHERE m.id = v.id AND {_rank_of("m.status")} < %(rank)s
            RETURNING m.id, m.workspace_id, m.status, m.priority, m.channel, m.to_addr, m.tags, m.campaign_id, v.detail::jsonb AS detail
        ){_RECORD}
        SELECT id, channel FROM moved
        """,
        {"ids": [r["id"] for r in receipts], "details": [_jsonb(r.get("detail")) for r in receipts], "to": status,
         "rank": RANK[status]},
        prepared=True,
    )
    metrics.count_transitions(status, [r["channel"] for r in rows])
    return rows


def apply_receipt(
    provider: str,
    provider_message_id: str,
    status: str | None,
    detail: dict[str, Any],
    *,
    account: str,
    keep_event: dict[str, Any] | None = None,
    workspaces: Sequence[int] | None = None,
) -> int | None:
    """Move the message the provider knows as ``provider_message_id`` forward to ``status``.

    Parameters:
      account: the provider account that signed the receipt. Only a message sent through that
        account is moved, so one tenant's account cannot touch another tenant's messages.
      status: our status the receipt reports, or None for a receipt with nothing to apply.
      keep_event: if given (``kind`` and ``payload``), the receipt is also stored in
        ``provider_event`` by the same statement — applied if its message exists, else pending.
      workspaces: if given, only a message of one of these workspaces is moved: those whose
        secret verified the webhook, so one tenant's secret never vouches for another's message.

    Returns:
      The message id if a message carries that provider id (whether or not the status moved:
      a lower or equal rank is a no-op), else None.
    """
    keep = ""
    if keep_event is not None:
        keep = """, kept AS (
            INSERT INTO provider_event (provider, kind, provider_message_id, provider_account, status, detail,
                                        payload, signature_valid, applied_at, message_id)
            SELECT %(provider)s, %(kind)s, %(pid)s, %(account)s, %(to)s, %(detail)s::jsonb, %(payload)s::jsonb, true,
                   CASE WHEN t.id IS NOT NULL OR %(to)s IS NULL THEN now() END, t.id
            FROM (SELECT (SELECT id FROM target) AS id) t
        )"""
    rows = fetch(
        f"""
        WITH target AS (
            SELECT id FROM message
            WHERE provider = %(provider)s AND provider_message_id = %(pid)s AND provider_account = %(account)s
              AND (%(workspaces)s::bigint[] IS NULL OR workspace_id = ANY(%(workspaces)s::bigint[]))
        ), moved AS (
            UPDATE message SET status = %(to)s, status_changed_at = now(), updated_at = now(), redrives = 0,
                   delivered_at = CASE WHEN %(to)s IN ('delivered', 'read')
                                       THEN coalesce(delivered_at, now()) ELSE delivered_at END,
                   error_code = coalesce(%(error_code)s, error_code),
                   last_error = coalesce(%(error)s, last_error)
            -- the provider id is checked again: PostgreSQL re-evaluates only this clause on a row a
            -- concurrent transaction changed, and a fallback (common.fallback) clears the id
            WHERE id = (SELECT id FROM target) AND {_RANK_SQL} < %(rank)s
              AND provider = %(provider)s AND provider_message_id = %(pid)s AND provider_account = %(account)s
            RETURNING id, workspace_id, status, priority, channel, to_addr, tags, campaign_id, %(detail)s::jsonb AS detail
        ){_RECORD}{keep}
        SELECT id, channel FROM moved UNION ALL SELECT id, NULL FROM target
        """,
        {
            "provider": provider,
            "pid": provider_message_id,
            "account": account,
            "to": status,
            "rank": RANK[status] if status else -1,
            "detail": _jsonb(detail),
            "error_code": detail.get("error_code"),
            "error": detail.get("error"),
            "kind": (keep_event or {}).get("kind"),
            "payload": _jsonb((keep_event or {}).get("payload")),
            "workspaces": list(workspaces) if workspaces is not None else None,
        },
        prepared=True,
    )
    if status:
        metrics.count_transitions(status, [r[1] for r in rows if r[1] is not None])
    return rows[0][0] if rows else None
