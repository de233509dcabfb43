"""The backlog of every stage and lane: what is ready and waiting, what is in progress, what waits
for a later time, what each stage finished in the last hour, and how long the oldest has waited.

The database figures come from rows still in flight, found through the partial indexes that
already exist for the reconciler and the scheduler (``message_waiting``, ``message_scheduled``,
``message_parked``, the webhook delivery indexes), and from the last hour of events (migration
0007): nothing scans every message. ``GET /v1/stats`` reads them for one workspace, the
scheduler's backlog duty for the whole deployment (the gauges). The broker's queue lengths are
deployment-wide by nature: Redis holds no workspace.

A message is ready for its stage from the later of its last status change (``updated_at``: the
reconciler's re-drive clock ``status_changed_at`` is reset while a row waits behind a backlog, so
it cannot say how long a row has waited) and its due time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from psycopg2.extras import Json

from common import dispatch, events, lifecycle
from common.broker import lanes_of, queue_name
from common.db.connection import fetch, fetch_dicts

STAGES: tuple[str, ...] = tuple(dispatch.STAGES)  # processing, routing, a sender per channel, webhooks, receipts, ai
# The stages messages (or webhook deliveries) wait on; the receipts stage's work is provider events.
WAITED_ON: tuple[str, ...] = tuple(stage for stage in STAGES if stage != "receipts")
WEBHOOK_LANES = events.LANE_OF_RANK  # webhook_delivery.rank
BROKER_TIMEOUT_SECONDS = 1.0  # a frozen Redis must not hold a stats request for the broker's 5 s

# Messages in flight, by status, lane and channel: those ready now, those due later (a parked
# retry or throttled send) and the oldest ready one. Each branch is one partial index.
_IN_FLIGHT = """
SELECT status, priority, channel,
       count(*) FILTER (WHERE status = 'sending' OR due_at IS NULL OR due_at <= now()) AS ready,
       count(*) FILTER (WHERE status <> 'sending' AND due_at > now()) AS later,
       greatest(0, extract(epoch FROM now() - min(greatest(updated_at, due_at))
                FILTER (WHERE status <> 'sending' AND (due_at IS NULL OR due_at <= now())))) AS oldest
FROM message
WHERE status IN ('accepted', 'queued', 'routed', 'sending') AND (%(ws)s::bigint IS NULL OR workspace_id = %(ws)s)
  AND (%(tags)s::jsonb IS NULL OR tags @> %(tags)s::jsonb)
GROUP BY status, priority, channel
UNION ALL
SELECT status, priority, channel, count(*), 0, greatest(0, extract(epoch FROM now() - min(due_at)))
FROM message
WHERE status = 'scheduled' AND due_at <= now() AND (%(ws)s::bigint IS NULL OR workspace_id = %(ws)s)
  AND (%(tags)s::jsonb IS NULL OR tags @> %(tags)s::jsonb)
GROUP BY status, priority, channel
"""

_SCHEDULED_LATER = """
SELECT priority, count(*) AS n FROM message
WHERE status = 'scheduled' AND due_at > now() AND (%(ws)s::bigint IS NULL OR workspace_id = %(ws)s)
  AND (%(tags)s::jsonb IS NULL OR tags @> %(tags)s::jsonb)
GROUP BY priority
"""

# What the stages finished in the last hour, from the history: processing moves a message to
# queued, routing to routed, a sender to sent. A routed event with an error_code is a sender's
# retry or throttled send, not routing's work. A failure belongs to the stage of the status it
# failed from (one index probe per failure); provider receipts (failed after sent) belong to none.
_FINISHED = """
SELECT e.status, m.priority, m.channel,
       CASE WHEN e.status = 'failed' THEN (
           SELECT p.status FROM message_event p WHERE p.message_id = e.message_id AND p.id < e.id
           ORDER BY p.id DESC LIMIT 1) END AS failed_from,
       count(*) AS n
FROM message_event e JOIN message m ON m.id = e.message_id
WHERE e.at > now() - make_interval(secs => %(window)s)
  AND (e.status IN ('queued', 'sent', 'failed') OR (e.status = 'routed' AND NOT e.detail ? 'error_code'))
  AND (%(ws)s::bigint IS NULL OR m.workspace_id = %(ws)s)
  AND (%(tags)s::jsonb IS NULL OR m.tags @> %(tags)s::jsonb)
GROUP BY 1, 2, 3, 4
UNION ALL
-- A campaign message's plain routed step writes no history row (common.lifecycle.COMPACT_STEPS):
-- routing's campaign work is what the campaigns' counters saw enter routed (kept unfolded for an hour).
SELECT 'routed', c.priority, c.message->>'channel', NULL, sum(t.n)
FROM campaign_tally t JOIN campaign c ON c.id = t.campaign_id
WHERE t.status = 'routed' AND t.n > 0 AND t.at > now() - make_interval(secs => %(window)s)
  AND (%(ws)s::bigint IS NULL OR c.workspace_id = %(ws)s)
  AND %(tags)s::jsonb IS NULL  -- the tallies hold no tags: a tag-scoped view leaves them out
GROUP BY 1, 2, 3, 4
"""

# Webhook deliveries: ready (due, to an enabled endpoint that is not paused by a 429), later (a
# retry not yet due, or an endpoint's pause), delivering, and finished in the last hour.
# Deliveries to a disabled endpoint wait for its owner, not for the stage: they are not counted.
_WEBHOOKS = """
SELECT d.rank, 'ready' AS kind, count(*) AS n, greatest(0, extract(epoch FROM now() - min(d.due_at))) AS oldest
FROM webhook_delivery d JOIN webhook_endpoint e ON e.id = d.endpoint_id
WHERE d.status = 'pending' AND d.due_at <= now() AND e.enabled AND (e.paused_until IS NULL OR e.paused_until <= now())
  AND (%(ws)s::bigint IS NULL OR d.workspace_id = %(ws)s)
GROUP BY d.rank
UNION ALL
SELECT d.rank, 'later', count(*), 0
FROM webhook_delivery d JOIN webhook_endpoint e ON e.id = d.endpoint_id
WHERE d.status = 'pending' AND e.enabled AND (d.due_at > now() OR e.paused_until > now())
  AND (%(ws)s::bigint IS NULL OR d.workspace_id = %(ws)s)
GROUP BY d.rank
UNION ALL
SELECT rank, 'active', count(*), 0 FROM webhook_delivery
WHERE status = 'delivering' AND (%(ws)s::bigint IS NULL OR workspace_id = %(ws)s)
GROUP BY rank
"""

# Inbound messages the AI stage owes a turn (the partial index ``message_ai_waiting``), by plan
# lane, and the turns it finished in the last hour (``processed``, with their lane kept).
_AI_WAITING = """
SELECT ai_lane, count(*) FILTER (WHERE due_at IS NULL OR due_at <= now()) AS ready,
       count(*) FILTER (WHERE due_at > now()) AS later,
       greatest(0, extract(epoch FROM now() - min(greatest(status_changed_at, due_at))
                FILTER (WHERE due_at IS NULL OR due_at <= now()))) AS oldest
FROM message
WHERE direction = 'inbound' AND status = 'received' AND ai_lane IS NOT NULL
  AND (%(ws)s::bigint IS NULL OR workspace_id = %(ws)s)
GROUP BY ai_lane
"""
_AI_FINISHED = """
SELECT m.ai_lane, count(*) AS n
FROM message_event e JOIN message m ON m.id = e.message_id
WHERE e.at > now() - make_interval(secs => %(window)s) AND e.status = 'processed' AND m.ai_lane IS NOT NULL
  AND (%(ws)s::bigint IS NULL OR m.workspace_id = %(ws)s)
GROUP BY m.ai_lane
"""

_WEBHOOKS_FINISHED = """
SELECT rank, status, count(*) AS n FROM webhook_delivery
WHERE finished_at > now() - make_interval(secs => %(window)s) AND status IN ('succeeded', 'failed')
  AND (%(ws)s::bigint IS NULL OR workspace_id = %(ws)s)
GROUP BY rank, status
"""


@dataclass
class Figures:
    """One stage and lane. ``scheduled``: due later (scheduled sends, parked retries, webhook retries)."""

    waiting: int = 0
    active: int = 0
    scheduled: int = 0
    completed_last_hour: int = 0
    failed_last_hour: int = 0
    oldest_waiting_seconds: float = 0.0


Key = tuple[str, str]  # (stage, lane)


def stage_of(status: str, channel: str) -> str:
    """The stage a message in ``status`` waits for (or is in, while ``sending``)."""
    stage = lifecycle.WAITING_FOR.get(status, "sender")
    return channel if stage == "sender" else stage


HOUR = 3600


def measure(workspace_id: int | None = None, *, scheduled: bool = True, finished: bool = True,
            window_seconds: int = HOUR, tags: Mapping[str, str] | None = None) -> dict[Key, Figures]:
    """Every stage and lane's figures (zero where nothing is), inside the caller's transaction.

    Parameters:
      workspace_id: only this workspace's messages and deliveries; None: the deployment's.
      scheduled: also count messages scheduled for later (every future one, not only the next hour).
      finished: also count what each stage completed and failed in the last ``window_seconds``
        (the ``*_last_hour`` figures then cover that window; at most an hour, which is as long as
        the campaigns' routed tallies stay unfolded).
      tags: only messages whose tags include all of these names and values (a compatibility
        route's own messages); webhook deliveries and campaign tallies carry no tags and are
        then left out.
    """
    if not 0 < window_seconds <= HOUR:
        raise ValueError(f"window_seconds must be 1..{HOUR}, not {window_seconds}")
    figures = {(stage, lane): Figures() for stage in WAITED_ON for lane in lanes_of(stage)}
    ws = {"ws": workspace_id, "window": window_seconds, "tags": Json(dict(tags)) if tags else None}

    def at(stage: str, lane: str) -> Figures | None:
        return figures.get((stage, lane))  # None: a channel without a sender stage

    for row in fetch_dicts(_IN_FLIGHT, ws):
        f = at(stage_of(row["status"], row["channel"]), row["priority"])
        if f is None:
            continue
        if row["status"] == "sending":
            f.active += row["ready"]
            continue
        f.waiting += row["ready"]
        f.scheduled += row["later"]
        if row["ready"]:
            f.oldest_waiting_seconds = max(f.oldest_waiting_seconds, float(row["oldest"] or 0))
    if scheduled:
        for priority, n in fetch(_SCHEDULED_LATER, ws):
            if (f := at("processing", priority)) is not None:
                f.scheduled += n
    if finished:
        for row in fetch_dicts(_FINISHED, ws):
            _count_finished(at, row)
    if tags:
        return figures
    _measure_ai(at, ws, finished)
    for rank, kind, n, oldest in fetch(_WEBHOOKS, ws):
        if (f := at("webhooks", WEBHOOK_LANES.get(rank, "bulk"))) is None:
            continue
        if kind == "ready":
            f.waiting += n
            f.oldest_waiting_seconds = max(f.oldest_waiting_seconds, float(oldest or 0))
        elif kind == "later":
            f.scheduled += n
        else:
            f.active += n
    if finished:
        for rank, status, n in fetch(_WEBHOOKS_FINISHED, ws):
            if (f := at("webhooks", WEBHOOK_LANES.get(rank, "bulk"))) is not None:
                if status == "succeeded":
                    f.completed_last_hour += n
                else:
                    f.failed_last_hour += n
    return figures


def _measure_ai(at: Callable[[str, str], Figures | None], ws: dict[str, Any], finished: bool) -> None:
    """The AI stage's lanes: inbound turns waiting (or retrying later), and those finished."""
    for lane, ready, later, oldest in fetch(_AI_WAITING, ws):
        if (f := at("ai", lane)) is not None:
            f.waiting += ready
            f.scheduled += later
            if ready:
                f.oldest_waiting_seconds = max(f.oldest_waiting_seconds, float(oldest or 0))
    if finished:
        for lane, n in fetch(_AI_FINISHED, ws):
            if (f := at("ai", lane)) is not None:
                f.completed_last_hour += n


def _count_finished(at: Callable[[str, str], Figures | None], row: dict[str, Any]) -> None:
    status, lane, channel = row["status"], row["priority"], row["channel"]
    if status == "failed":
        source = row["failed_from"]
        if source not in lifecycle.WAITING_FOR and source != "sending":
            return  # a provider receipt after the send, or a message failed at once: no stage's
        if (f := at(stage_of(source, channel), lane)) is not None:
            f.failed_last_hour += row["n"]
        return
    stage = {"queued": "processing", "routed": "routing"}.get(status, channel)
    if (f := at(stage, lane)) is not None:
        f.completed_last_hour += row["n"]


def scheduled_due_within(seconds: float) -> int:
    """Scheduled messages falling due in the next ``seconds`` (deployment-wide)."""
    rows = fetch("SELECT count(*) FROM message WHERE status = 'scheduled'"
                 " AND due_at > now() AND due_at <= now() + make_interval(secs => %s)", (seconds,))
    return int(rows[0][0])


@dataclass(frozen=True)
class QueueLength:
    """One broker queue, in broker messages (each carries a batch of ids, not one message)."""

    stage: str
    lane: str
    queue: str
    ready: int  # in the queue, for any worker to fetch
    taken: int  # prefetched or in progress at a worker
    delayed: int  # short retries and throttled sends waiting for their time (in the .DQ queue or at a worker)


_quick_client: redis.Redis | None = None


def queue_lengths() -> list[QueueLength]:
    """Every stage queue's length in the broker, with one short-timeout round trip per step.

    Dramatiq's Redis broker keeps a queue as the list ``<ns>:<queue>`` and its delayed messages as
    the list ``<ns>:<queue>.DQ`` (not a sorted set: a worker fetches them and holds them until their
    time); messages a worker took sit in its set ``<ns>:__acks__.<worker>.<queue>`` until acked.

    Raises:
      redis.RedisError: the broker cannot be reached.
    """
    broker = dramatiq.get_broker()
    client, ns = _client(broker), broker.namespace  # type: ignore[attr-defined]
    keys = [(stage, lane, queue_name(stage, lane)) for stage in STAGES for lane in lanes_of(stage)]
    taken: dict[str, int] = {}
    ack_sets = [k.decode() if isinstance(k, bytes) else k for k in client.scan_iter(match=f"{ns}:__acks__.*", count=1000)]
    pipe = client.pipeline(transaction=False)
    for _, _, queue in keys:
        pipe.llen(f"{ns}:{queue}")
        pipe.llen(f"{ns}:{queue}.DQ")
    for key in ack_sets:
        pipe.scard(key)
    values = pipe.execute()
    for key, n in zip(ack_sets, values[2 * len(keys):], strict=True):
        queue = key.removeprefix(f"{ns}:__acks__.").partition(".")[2]  # after the worker id
        taken[queue] = taken.get(queue, 0) + int(n)
    return [
        QueueLength(stage, lane, queue, ready=int(values[2 * i]), taken=taken.get(queue, 0),
                    delayed=int(values[2 * i + 1]) + taken.get(f"{queue}.DQ", 0))
        for i, (stage, lane, queue) in enumerate(keys)
    ]


def _client(broker: Any) -> redis.Redis:
    """A client on the broker's Redis whose timeouts are short (the broker's own may be seconds)."""
    global _quick_client
    if _quick_client is None:
        pool = broker.client.connection_pool
        _quick_client = redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=pool.connection_class,
            **{**pool.connection_kwargs, "socket_timeout": BROKER_TIMEOUT_SECONDS,
               "socket_connect_timeout": BROKER_TIMEOUT_SECONDS}))
    return _quick_client
