"""What a workspace used: its usage log, its plan and monthly AI reply quota, and the usage report.

The log has one row per stored inbound message (``common.inbound``), per conversation reply
(``common.intake``, with the insert) and per AI call or extractive decision (``log_calls``, by the
AI stage). API and campaign sends are not copied into it: the report counts them from ``message``,
so a large campaign writes no extra rows.

The quota counts bot replies that reached the customer. A turn *reserves* one before it calls
the model (refused when used + reserved would pass the quota), so concurrent turns cannot overrun
it; the reservation is *released* when the turn ends without a reply, and ``settle`` turns the
ones whose reply was sent into ``used`` (and gives back those whose reply failed or never came).
Plan and quota are the workspace's, set only by an admin key or the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from psycopg2.extras import Json

from common.db.connection import fetch, fetch_dicts

PLANS = ("basic", "pro", "premium")
OUTCOMES = ("answered", "handoff", "error", "superseded")
GROUPS = ("day", "channel", "model")
SENT = "('sent', 'delivered', 'read')"
NOT_SENT = "('failed', 'undelivered', 'cancelled', 'suppressed')"


# --- the log -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    """One model call or extractive decision of the AI stage."""

    workspace_id: int
    channel: str
    conversation_id: int
    message_id: int | None  # the inbound message of the turn (its newest)
    model: str | None  # None: extractive
    outcome: str  # answered | handoff | error | superseded
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    tokens_estimated: bool = False
    latency_ms: int | None = None


_LOG_CALLS = """
INSERT INTO usage_log (workspace_id, kind, channel, conversation_id, message_id, model, prompt_tokens, completion_tokens,
                       total_tokens, tokens_estimated, latency_ms, outcome)
SELECT workspace_id, 'ai_call', channel, conversation_id, message_id, model, prompt_tokens, completion_tokens,
       total_tokens, tokens_estimated, latency_ms, outcome
FROM jsonb_to_recordset(%s::jsonb) AS c(workspace_id bigint, channel text, conversation_id bigint, message_id bigint,
     model text, prompt_tokens integer, completion_tokens integer, total_tokens integer, tokens_estimated boolean,
     latency_ms integer, outcome text)
"""


def log_calls(calls: Sequence[Call]) -> None:
    """Log AI calls (one statement for all of them, inside the caller's transaction)."""
    if calls:
        fetch(_LOG_CALLS, (Json([vars(c) for c in calls]),))


# --- plan and quota ----------------------------------------------------------------------------

def plan_of(workspace_id: int) -> dict[str, Any]:
    """The workspace's ``plan``, ``monthly_quota`` (None: unlimited) and this month's
    ``quota_used`` and ``quota_reserved``."""
    return fetch_dicts(
        "SELECT w.plan, w.ai_monthly_quota AS monthly_quota, coalesce(q.used, 0) AS quota_used,"
        " coalesce(q.reserved, 0) AS quota_reserved FROM workspace w LEFT JOIN ai_quota_month q"
        " ON q.workspace_id = w.id AND q.month = date_trunc('month', now())::date WHERE w.id = %s", (workspace_id,))[0]


UNSET: Any = object()  # set_plan: leave the quota as it is


def set_plan(workspace_id: int, plan: str | None = None, quota: int | None | object = UNSET) -> None:
    """Set the workspace's plan and/or monthly quota (``None`` quota: unlimited); what is not given stays."""
    if plan is not None:
        if plan not in PLANS:
            raise ValueError(f"plan must be one of {', '.join(PLANS)}")
        fetch("UPDATE workspace SET plan = %s WHERE id = %s", (plan, workspace_id))
    if quota is not UNSET:
        if quota is not None and (not isinstance(quota, int) or quota < 0):
            raise ValueError("the quota is a whole number, 0 or more (or none: unlimited)")
        fetch("UPDATE workspace SET ai_monthly_quota = %s WHERE id = %s", (quota, workspace_id))


_RESERVE = """
WITH q AS (
    UPDATE ai_quota_month q SET reserved = q.reserved + 1 FROM workspace w
    WHERE q.workspace_id = w.id AND w.id = %(ws)s AND q.month = date_trunc('month', now())::date
      AND (w.ai_monthly_quota IS NULL OR q.used + q.reserved < w.ai_monthly_quota)
    RETURNING q.workspace_id, q.month
)
INSERT INTO ai_reservation (workspace_id, month, conversation_id) SELECT workspace_id, month, %(conv)s FROM q RETURNING id
"""


def reserve(workspace_id: int, conversation_id: int) -> int | None:
    """Reserve one reply of this month's quota for a turn (inside the caller's transaction).

    Returns:
      The reservation's id, or None when the quota is exhausted.
    """
    fetch("INSERT INTO ai_quota_month (workspace_id, month) VALUES (%s, date_trunc('month', now())::date)"
          " ON CONFLICT DO NOTHING", (workspace_id,))
    rows = fetch(_RESERVE, {"ws": workspace_id, "conv": conversation_id})
    return rows[0][0] if rows else None


def attach(reservation_id: int, reply_message_id: int) -> None:
    """The reply that will settle the reservation once it is sent (or fails)."""
    fetch("UPDATE ai_reservation SET reply_message_id = %s WHERE id = %s", (reply_message_id, reservation_id))


_RELEASE = """
WITH gone AS (DELETE FROM ai_reservation WHERE id = ANY(%s) RETURNING workspace_id, month)
UPDATE ai_quota_month q SET reserved = greatest(q.reserved - g.n, 0)
FROM (SELECT workspace_id, month, count(*) AS n FROM gone GROUP BY 1, 2) g
WHERE q.workspace_id = g.workspace_id AND q.month = g.month
"""


def release(reservation_ids: Sequence[int]) -> None:
    """Give back reservations whose turn ended without a reply (one statement)."""
    if reservation_ids:
        fetch(_RELEASE, (list(reservation_ids),))


_SETTLE = """
WITH due AS (
    SELECT r.id, coalesce(m.status IN """ + SENT + """, false) AS used
    FROM ai_reservation r LEFT JOIN message m ON m.id = r.reply_message_id
    WHERE m.status IN """ + SENT + """ OR m.status IN """ + NOT_SENT + """
       OR (r.reply_message_id IS NULL AND r.created_at < now() - %(lease)s * interval '1 second')
    ORDER BY r.id LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
), gone AS (
    DELETE FROM ai_reservation r USING due WHERE r.id = due.id RETURNING r.workspace_id, r.month, due.used
), counted AS (
    SELECT workspace_id, month, count(*) FILTER (WHERE used) AS used, count(*) AS n FROM gone GROUP BY 1, 2
), moved AS (
    UPDATE ai_quota_month q SET used = q.used + c.used, reserved = greatest(q.reserved - c.n, 0)
    FROM counted c WHERE q.workspace_id = c.workspace_id AND q.month = c.month
)
SELECT coalesce(sum(used), 0)::int, coalesce(sum(n - used), 0)::int FROM counted
"""


def settle(lease_seconds: float, limit: int = 10_000) -> tuple[int, int]:
    """Settle reservations (the scheduler calls this): a reply sent, delivered or read counts as
    used; a reply that failed, or none made within ``lease_seconds``, gives the reservation back.

    Returns:
      (replies counted as used, reservations given back).
    """
    used, released = fetch(_SETTLE, {"lease": lease_seconds, "limit": limit})[0]
    return used, released


# --- the report --------------------------------------------------------------------------------

_KEY = {"day": "to_char((x.at AT TIME ZONE w.timezone)::date, 'YYYY-MM-DD')", "channel": "x.channel", "model": "x.model"}
_REPORT = """
WITH w AS (SELECT id, timezone FROM workspace WHERE id = %(ws)s),
span AS (SELECT (%(from)s::date::timestamp AT TIME ZONE w.timezone) AS lo,
                ((%(to)s::date + 1)::timestamp AT TIME ZONE w.timezone) AS hi FROM w),
logged AS (
    SELECT {key} AS key,
           count(*) FILTER (WHERE x.kind = 'inbound') AS inbound, count(*) FILTER (WHERE x.kind = 'outbound') AS outbound,
           count(*) FILTER (WHERE x.kind = 'ai_call') AS ai_calls,
           count(*) FILTER (WHERE x.outcome = 'answered') AS answered, count(*) FILTER (WHERE x.outcome = 'handoff') AS handoffs,
           count(*) FILTER (WHERE x.outcome = 'error') AS errors,
           coalesce(sum(x.prompt_tokens), 0) AS prompt_tokens, coalesce(sum(x.completion_tokens), 0) AS completion_tokens,
           coalesce(sum(x.total_tokens), 0) AS total_tokens,
           coalesce(sum(x.total_tokens) FILTER (WHERE x.tokens_estimated), 0) AS estimated_tokens
    FROM usage_log x, w, span WHERE x.workspace_id = w.id AND x.at >= span.lo AND x.at < span.hi
    GROUP BY 1
), sent AS (  -- API and campaign sends, counted where they are (never copied into the log)
    SELECT {sent_key} AS key, count(*) AS outbound
    FROM (SELECT created_at AS at, channel FROM message m, span
          WHERE m.workspace_id = %(ws)s AND m.direction = 'outbound' AND m.author IS NULL
            AND m.created_at >= span.lo AND m.created_at < span.hi AND %(with_sent)s) x, w
    GROUP BY 1
)
SELECT coalesce(l.key, s.key) AS key, coalesce(l.inbound, 0) AS inbound,
       coalesce(l.outbound, 0) + coalesce(s.outbound, 0) AS outbound, coalesce(l.ai_calls, 0) AS ai_calls,
       coalesce(l.answered, 0) AS answered, coalesce(l.handoffs, 0) AS handoffs, coalesce(l.errors, 0) AS errors,
       coalesce(l.prompt_tokens, 0) AS prompt_tokens, coalesce(l.completion_tokens, 0) AS completion_tokens,
       coalesce(l.total_tokens, 0) AS total_tokens, coalesce(l.estimated_tokens, 0) AS estimated_tokens
FROM logged l FULL JOIN sent s ON l.key = s.key
ORDER BY 1 NULLS LAST
"""


def report(workspace_id: int, start: date, end: date, group_by: str) -> list[dict[str, Any]]:
    """Usage from ``start`` to ``end`` (days in the workspace's time zone, both included), one row
    per day, channel or model (``key``; None for rows without one, such as messages under
    ``model``). API and campaign sends count as ``outbound`` by day and by channel."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    sql = _REPORT.format(key=_KEY[group_by], sent_key=_KEY[group_by] if group_by != "model" else "NULL::text")
    rows = fetch_dicts(sql, {"ws": workspace_id, "from": start, "to": end, "with_sent": group_by != "model"})
    return [{**r, **{k: int(v) for k, v in r.items() if k != "key"}} for r in rows]
