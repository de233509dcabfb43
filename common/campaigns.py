"""Campaigns: one content to many recipients, fanned out set-wise, paused and resumed safely.

A draft's recipients are staged (``campaign_recipient``) until it starts. Starting moves
them in one statement into message rows (``fan_out``); recipients given to a started campaign
(``"start": true``, or a page added later) become messages at once, without staging, handed on in batches: to processing when
a template is to be rendered or links are to be made short links (``common.links``), else
straight to routing; or ``scheduled`` for the campaign's ``send_at``. Each message carries the campaign's
id, and every statement that inserts or moves campaign messages appends to the live counters
(``campaign_tally``, kept by triggers in the same transaction), so progress is read from a few
rows, never from a scan of the messages, and the counts always add up to the total. A message's
first click appends to the same counters (as ``clicked``, which is no status: it is not part of
the total), so the clicked count is read from them too.

Pausing stops new claims at once: a sender claims a campaign's message only while the campaign
is running (``CLAIMABLE_SQL``), so paused messages stay where they are, skipped rather than
sent, and the reconciler leaves them alone. The steps of the campaign's sequence (tagged with its
id, not counted as its messages) are held the same way while it is paused. Resuming re-enqueues every waiting message of the
campaign to the stage it waits for; a message already claimed or sent is never claimed again
(the claims are compare-and-set), so nothing is sent twice and nothing is skipped.

The scheduler (``tick``) starts scheduled campaigns when due, completes running ones once
nothing waits, and folds old counter rows together.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg2.extras import Json

from common import dispatch, events, lifecycle, links
from common.db.connection import fetch, fetch_dicts, transaction

STATUSES = ("draft", "scheduled", "running", "paused", "completed", "cancelled")
# The counters the API shows, each a set of message statuses; with the recipients not yet fanned
# out (pending) they partition the total.
COUNTED: dict[str, tuple[str, ...]] = {
    "pending": ("accepted", "scheduled", "queued", "routed"),
    "processing": ("sending",),
    "sent": ("sent",),
    "delivered": ("delivered",),
    "read": ("read",),
    "failed": ("failed", "undelivered"),
    "suppressed": ("suppressed",),
    "cancelled": ("cancelled",),
}
# Entering one of these is a message done sending: the send rate counts them.
DONE_SENDING = ("sent", "failed", "suppressed")
CLICKED = "clicked"  # the counters' entry for first clicks (common.links), beside the statuses
RATE_WINDOW_SECONDS = 60.0
# Counter rows older than this are folded: the send rate reads the last minute, and /v1/stats the
# last hour of what routing did for campaigns (common.backlog).
FOLD_AFTER_SECONDS = 3900.0
FOLD_MIN_ROWS = 64
CANCEL_CHUNK = 10_000

# A campaign whose messages may be claimed for sending: running, or scheduled and due (the
# scheduler marks it running on its next pass; its messages need not wait for that). ``c`` is
# the campaign row.
SENDING_SQL = "(c.status = 'running' OR (c.status = 'scheduled' AND c.send_at <= now()))"
# The tag by which a sequence step made by a campaign's fan-out (``services.ingest.campaign_sequence``)
# names its campaign. Such a step is no message of the campaign (not in its counters, nor in its
# total: it has no ``campaign_id`` column), but the campaign's pause holds it all the same.
STEP_CAMPAIGN_TAG = "campaign_id"


def _step_held_sql(m: str) -> str:
    """SQL: the message row ``m`` is a step whose campaign is paused (false for any other
    message; a tag that is no id names no campaign, rather than failing the statement)."""
    campaign = (f"CASE WHEN {m}.tags->>'{STEP_CAMPAIGN_TAG}' ~ '^[0-9]{{1,18}}$'"
                f" THEN ({m}.tags->>'{STEP_CAMPAIGN_TAG}')::bigint END")
    return (f"({m}.enrolment_id IS NOT NULL AND EXISTS (SELECT 1 FROM campaign p WHERE p.id = {campaign}"
            f" AND p.workspace_id = {m}.workspace_id AND p.status = 'paused'))")


# A message may be claimed for sending: it is no campaign's, or its campaign is sending; and it
# is no step that a paused campaign holds. ``m`` is the message row.
CLAIMABLE_SQL = (f"((m.campaign_id IS NULL OR EXISTS (SELECT 1 FROM campaign c WHERE c.id = m.campaign_id AND {SENDING_SQL}))"
                 f" AND NOT {_step_held_sql('m')})")
# A waiting message the reconciler may re-drive: not one that a paused campaign holds.
NOT_PAUSED_SQL = ("((campaign_id IS NULL OR NOT EXISTS (SELECT 1 FROM campaign c WHERE c.id = message.campaign_id"
                  f" AND c.status = 'paused')) AND NOT {_step_held_sql('message')})")


def stage(rows: Sequence[dict[str, Any]], campaign_id: int, first_position: int) -> None:
    """Stage a draft's recipients (``to``, ``routes``, ``variables``), numbered from
    ``first_position``: one statement, however many."""
    arrays = _arrays(rows)
    fetch("""INSERT INTO campaign_recipient (campaign_id, position, to_addr, routes, variables)
             SELECT %s, %s + n - 1, u.to_addr, u.routes::jsonb, u.variables::jsonb
             FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS u(to_addr, routes, variables, n)""",
          (campaign_id, first_position, arrays["to"], arrays["routes"], arrays["variables"]))


# Recipients ``r`` (position, to_addr, routes, variables) become messages of campaign ``c``.
_INSERT_MESSAGES = """
INSERT INTO message (workspace_id, campaign_id, channel, to_addr, from_addr, body, status, priority, tags, due_at,
                     quiet_hours, content, routes, encoding, template_id, variables, status_changed_at)
SELECT c.workspace_id, c.id, c.message->>'channel', r.to_addr, c.message->>'from', coalesce(c.message->>'body', ''),
       %(status)s, c.priority, coalesce(c.message->'tags', '[]'::jsonb), %(due)s, c.message->>'quiet_hours',
       coalesce(c.message->'content', '{}'::jsonb), r.routes, c.message->>'encoding',
       (c.message->>'template_id')::bigint, r.variables,
       CASE WHEN %(due)s::timestamptz IS NULL THEN now() ELSE """ + lifecycle.stamped_before("%(due)s::timestamptz") + """ END
FROM r JOIN campaign c ON c.id = %(id)s
ORDER BY r.position
RETURNING id
"""
# The staged recipients, taken out of staging by the same statement.
_FROM_STAGED = """
WITH r AS (
    DELETE FROM campaign_recipient WHERE campaign_id = %(id)s
    RETURNING position, to_addr, routes, variables
), ins AS (""" + _INSERT_MESSAGES + """)
SELECT id FROM ins ORDER BY id
"""
# Recipients given with the request, for a campaign already started: never staged.
_FROM_ROWS = """
WITH r AS (
    SELECT n AS position, to_addr, routes::jsonb AS routes, variables::jsonb AS variables
    FROM unnest(%(to)s::text[], %(routes)s::text[], %(variables)s::text[]) WITH ORDINALITY AS u(to_addr, routes, variables, n)
), ins AS (""" + _INSERT_MESSAGES + """)
SELECT id FROM ins ORDER BY id
"""


def fan_out(campaign: dict[str, Any], rows: Sequence[dict[str, Any]] | None = None) -> list[int]:
    """Turn recipients into messages in one statement: the campaign's staged ones, or ``rows``
    (``to``, ``routes``, ``variables``) given with a request for a started campaign, which are
    never staged. Returns the ids to hand on now (none for a campaign scheduled later).

    A templated campaign's messages, and those with links to track, are ``accepted``, for
    processing to render; the others need no processing and are ``queued`` for routing at once.
    The messages' history starts at their ``created_at``: fan-out writes no per-message event
    rows, and campaign messages are not announced one by one as ``message.accepted`` (the
    campaign is what was accepted)."""
    later = campaign["status"] == "scheduled"
    status = "scheduled" if later else "accepted" if needs_processing(campaign["message"]) else "queued"
    params: dict[str, Any] = {"id": campaign["id"], "status": status, "due": campaign["send_at"] if later else None}
    if rows is None:
        ids = [r[0] for r in fetch(_FROM_STAGED, params)]
    else:
        params.update(_arrays(rows))
        ids = [r[0] for r in fetch(_FROM_ROWS, params)]
    return [] if later else ids


def _arrays(rows: Sequence[dict[str, Any]]) -> dict[str, list[str | None]]:
    return {"to": [r["to"] for r in rows],
            "routes": [json.dumps(r["routes"]) if r.get("routes") else None for r in rows],
            "variables": [json.dumps(r["variables"]) if r.get("variables") is not None else None for r in rows]}


def needs_processing(message: dict[str, Any]) -> bool:
    """Whether the campaign's messages (its ``message``) go through processing: a template to
    render, or links to make short links. Decided once per fan-out, so a campaign without
    either goes straight to routing as before."""
    return bool(message.get("template_id")) or (
        links.tracks(message["channel"], message.get("content"))
        and links.has_links(message.get("body"), (message.get("content") or {}).get("html")))


def hand_on(campaign: dict[str, Any], ids: Sequence[int]) -> None:
    """After the fan-out committed: enqueue its messages, batch by batch, for processing (to
    render a template or shorten links) or else for routing. A broker that fails is logged, not
    raised: the request answers what it committed, and the reconciler hands the messages on."""
    if ids:
        stage = "processing" if needs_processing(campaign["message"]) else "routing"
        dispatch.committed_to_stage(stage, campaign["priority"], ids)


def counters(campaign: dict[str, Any]) -> dict[str, Any]:
    """The live counters of ``campaign`` (a row with id, total, status, started_at): a count per
    ``COUNTED`` name (pending includes recipients not yet fanned out), ``clicked`` (messages with
    a tracked link clicked), percent done, the send rate over the last minute and an estimate of
    the seconds left."""
    by_status: dict[str, int] = {}
    recent_done = 0
    for status, n, recent in fetch(
        """SELECT status, sum(n)::bigint, coalesce(sum(n) FILTER (WHERE n > 0 AND at > clock_timestamp() - make_interval(secs => %s)), 0)::bigint
           FROM campaign_tally WHERE campaign_id = %s GROUP BY status""", (RATE_WINDOW_SECONDS, campaign["id"])):
        by_status[status] = int(n)
        if status in DONE_SENDING:
            recent_done += int(recent)
    clicked = by_status.pop(CLICKED, 0)
    counts = {name: sum(by_status.get(s, 0) for s in statuses) for name, statuses in COUNTED.items()}
    counts["pending"] += campaign["total"] - sum(by_status.values())  # staged, not yet messages
    started = campaign.get("started_at")
    window = RATE_WINDOW_SECONDS
    if started is not None:
        window = min(window, max(1.0, (datetime.now(UTC) - started).total_seconds()))
    rate = recent_done / window if campaign["status"] == "running" or recent_done else 0.0
    left = counts["pending"] + counts["processing"]
    total = campaign["total"]
    done = total - left
    return {**counts, "total": total, "clicked": clicked,
            "percent_done": round(100.0 * done / total, 2) if total else 100.0,
            "send_rate_per_second": round(rate, 2),
            "seconds_left": round(left / rate, 1) if rate > 0 and left else (0.0 if not left else None)}


def waiting(campaign: dict[str, Any]) -> list[dict[str, Any]]:
    """The campaign's messages waiting on a stage, and the steps of its sequence it held while
    paused, with what ``dispatch.hand_on`` needs."""
    return fetch_dicts(
        """SELECT id, status, priority, channel FROM message WHERE campaign_id = %(id)s
               AND status IN ('accepted', 'queued', 'routed') AND (due_at IS NULL OR due_at <= now())
           UNION ALL
           SELECT id, status, priority, channel FROM message WHERE workspace_id = %(ws)s AND tags @> %(tag)s
               AND enrolment_id IS NOT NULL AND status IN ('accepted', 'queued', 'routed') AND (due_at IS NULL OR due_at <= now())
           ORDER BY id""",
        {"id": campaign["id"], "ws": campaign["workspace_id"], "tag": Json({STEP_CAMPAIGN_TAG: str(campaign["id"])})})


def cancel_messages(campaign: dict[str, Any]) -> int:
    """Cancel what the campaign has not sent: staged recipients (counted as cancelled) and every
    waiting message. Returns how many were cancelled."""
    staged = fetch("WITH gone AS (DELETE FROM campaign_recipient WHERE campaign_id = %s RETURNING 1)"
                   " SELECT count(*) FROM gone", (campaign["id"],))[0][0]
    if staged:
        fetch("INSERT INTO campaign_tally (campaign_id, status, n) VALUES (%s, 'cancelled', %s)", (campaign["id"], staged))
    cancelled = staged
    while True:
        ids = [r[0] for r in fetch(
            "SELECT id FROM message WHERE campaign_id = %s AND status IN ('accepted', 'scheduled', 'queued', 'routed')"
            " LIMIT %s", (campaign["id"], CANCEL_CHUNK))]
        if not ids:
            return cancelled
        cancelled += len(lifecycle.advance(ids, lifecycle.CANCELLABLE, "cancelled", detail={"by": "campaign"}))


def tick() -> dict[str, int]:
    """The scheduler's campaign duties: start scheduled campaigns that are due, complete running
    ones with nothing left to send, fold old counter rows. Returns what it did."""
    done = {"started": 0, "completed": 0, "folded": 0}
    with transaction():
        started = fetch("UPDATE campaign SET status = 'running', started_at = coalesce(started_at, now()), updated_at = now()"
                        " WHERE status = 'scheduled' AND send_at <= now() RETURNING id")
        done["started"] = len(started)
    with transaction():
        running = fetch_dicts("SELECT id, workspace_id, name, total, status, started_at FROM campaign WHERE status = 'running'")
    for campaign in running:
        with transaction():
            progress = counters(campaign)
            if progress["pending"] == 0 and progress["processing"] == 0:
                done["completed"] += complete(campaign, progress)
    with transaction():
        for (campaign_id,) in fetch(
                "SELECT campaign_id FROM campaign_tally WHERE at < clock_timestamp() - make_interval(secs => %s)"
                " GROUP BY campaign_id HAVING count(*) > %s", (FOLD_AFTER_SECONDS, FOLD_MIN_ROWS)):
            fold(campaign_id)
            done["folded"] += 1
    return done


def complete(campaign: dict[str, Any], progress: dict[str, Any]) -> int:
    """Mark a running campaign completed (once) and write its ``campaign.completed`` event."""
    rows = fetch("UPDATE campaign SET status = 'completed', completed_at = now(), updated_at = now()"
                 " WHERE id = %s AND status = 'running' RETURNING id", (campaign["id"],))
    if not rows:
        return 0
    payload = {"id": campaign["id"], "name": campaign["name"], "status": "completed",
               **{k: progress[k] for k in (*COUNTED, "total")}, "at": datetime.now(UTC).isoformat()}
    fetch(f"""INSERT INTO outbox (workspace_id, event_type, payload, lane)
              SELECT %s, 'campaign.completed', %s::jsonb, 'bulk'
              WHERE {events.subscribed_sql("%s", "'campaign.completed'")}""",
          (campaign["workspace_id"], Json(payload), campaign["workspace_id"]))
    return 1


def fold(campaign_id: int) -> None:
    """Replace a campaign's counter rows older than FOLD_AFTER_SECONDS by one row per status."""
    fetch("""WITH old AS (
                 DELETE FROM campaign_tally WHERE campaign_id = %(id)s AND at < clock_timestamp() - make_interval(secs => %(age)s)
                 RETURNING status, n, at)
             INSERT INTO campaign_tally (campaign_id, status, n, at)
             SELECT %(id)s, status, sum(n), min(at) FROM old GROUP BY status HAVING sum(n) <> 0""",
          {"id": campaign_id, "age": FOLD_AFTER_SECONDS})
