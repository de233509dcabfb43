"""Fan-out: turn outbox events into one delivery row per subscribed endpoint.

Events are written to the outbox in the same transaction as the status change they report
(only when an endpoint wants them, see ``common.events``); a trigger NOTIFYs
``postroom_outbox`` when such a transaction commits. Each webhooks process LISTENs on that
channel and, woken, takes events in batches with ``FOR UPDATE SKIP LOCKED`` (any
number of replicas share the work), inserts their deliveries and deletes them from the outbox in the same statement (the
delivery rows carry them from there), commits,
and then kicks each endpoint that got work. Without a notification (lost with a dropped
listening connection) it still looks every ``FALLBACK_SECONDS``.
"""

from __future__ import annotations

import logging
import threading

import psycopg2

from common import dispatch, events
from common.db.connection import DatabaseUnavailable, fetch, release_connection, transaction
from common.db.listen import Listener
from services.webhooks import delivery

log = logging.getLogger("postroom.webhooks.fanout")
CHANNEL = "postroom_outbox"
BATCH = 1000
FALLBACK_SECONDS = 5.0
LINGER_SECONDS = 0.02
RANK = events.WEBHOOK_RANK

_FAN_OUT = f"""
WITH batch AS (
    SELECT id, workspace_id, event_type, payload, lane, created_at FROM outbox
    WHERE dispatched_at IS NULL ORDER BY id LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
), taken AS (  -- the delivery rows carry the event from here on
    DELETE FROM outbox o USING batch WHERE o.id = batch.id
), made AS (
    INSERT INTO webhook_delivery (endpoint_id, workspace_id, event_key, event_type, body, rank)
    SELECT e.id, b.workspace_id, 'evt_' || b.id, b.event_type,
           jsonb_build_object('type', b.event_type,
                              'timestamp', to_char(b.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                              'data', b.payload)::text,
           CASE b.lane WHEN 'urgent' THEN {RANK["urgent"]} WHEN 'normal' THEN {RANK["normal"]} ELSE {RANK["bulk"]} END
    FROM batch b JOIN webhook_endpoint e
      ON e.workspace_id = b.workspace_id AND e.enabled AND e.event_types && ARRAY['*', b.event_type]
    ORDER BY b.id
    RETURNING endpoint_id, rank
)
SELECT (SELECT count(*) FROM batch), k.endpoint_id, k.rank
FROM (SELECT 1) one LEFT JOIN (SELECT endpoint_id, min(rank) AS rank FROM made GROUP BY endpoint_id) k ON true
"""


def fan_out_once(limit: int = BATCH) -> tuple[int, dict[int, str]]:
    """Dispatch one batch of events; returns (events taken, {endpoint id: lane to kick it on})."""
    with transaction():
        rows = fetch(_FAN_OUT, {"n": limit}, prepared=True)
    release_connection()
    return rows[0][0], {eid: events.LANE_OF_RANK.get(rank, "bulk") for _, eid, rank in rows if eid is not None}


def fan_out() -> int:
    """Dispatch every undispatched event, batch after batch; kick the endpoints after each commit."""
    total = 0
    while True:
        taken, endpoints = fan_out_once()
        kick(endpoints)
        total += taken
        if taken < BATCH:
            return total


def kick(endpoints: dict[int, str]) -> None:
    """Hand each endpoint its new work: a loop running in this process is told directly, the
    others are kicked through the broker (any webhooks process may take them)."""
    by_lane: dict[str, list[int]] = {}
    for eid, lane in endpoints.items():
        if not delivery.nudge(eid):
            by_lane.setdefault(lane, []).append(eid)
    for lane, ids in by_lane.items():
        dispatch.to_stage("webhooks", lane, ids)


def listen(stop: threading.Event) -> None:
    """Run the fan-out whenever events commit, until ``stop`` is set. Survives database and
    broker outages: it reconnects and catches up."""
    listener = Listener(CHANNEL, "postroom-webhooks-listen")
    caught_up = False
    while not stop.is_set():
        try:
            if not caught_up:
                listener.connect()
                fan_out()  # whatever was committed while nobody listened
                caught_up = True
            if listener.wait(FALLBACK_SECONDS):
                stop.wait(LINGER_SECONDS)  # let a busy moment's commits gather into one batch
            fan_out()
        except (psycopg2.Error, DatabaseUnavailable, OSError) as exc:
            log.warning("webhook fan-out interrupted (%s); reconnecting", exc)
            listener.close()
            caught_up = False
            stop.wait(1.0)
        except Exception:  # a broker outage or a bug: keep the listener alive, try again shortly
            log.exception("webhook fan-out failed; retrying")
            stop.wait(1.0)
    listener.close()
