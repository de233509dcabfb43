"""The reconciler: nothing accepted is lost when a broker message or a provider's answer is.

Work is enqueued after its transaction commits, and the broker (Redis) may be flushed at any
time, so the database is checked instead:

- a message waiting on a stage past its deadline, and held nowhere in the broker (neither
  queued, nor prefetched or in progress at a worker, nor a delayed retry), is re-enqueued to
  that stage, even while the stage has a backlog;
- a retry parked for longer than a broker delay is promoted when due;
- a send whose outcome is unknown (its answer was lost, or its sender died mid-call) is looked
  up at the provider: found, it is recorded as sent; not found, it is sent again; where no
  look-up exists it fails as ``outcome_unknown`` or is resent, as its workspace chose;
- receipts that raced their send are applied.

Rows are taken with ``FOR UPDATE SKIP LOCKED`` (look-ups by a lease), so several scheduler
replicas can run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq

from common import campaigns, dispatch, lifecycle, metrics
from common.config import settings
from common.db.connection import fetch, fetch_dicts, transaction
from common.errors import ProviderError
from common.providers.channels import CHANNELS, Channel
from common.providers.sms import Accepted
from common.receipts import apply_pending_receipts
from services.scheduler import recurring

log = logging.getLogger("postroom.reconciler")
BATCH = 5000
LOOKUP_BATCH = 200
LOOKUP_LEASE_SECONDS = 60.0  # a look-up that did not finish (scheduler died) is tried again after this
LOOKUP_GIVE_UP = timedelta(hours=24)  # a provider that cannot be asked for this long: fail the message


def stage_queue(row: dict[str, Any]) -> str:
    """The broker queue a waiting message is handed to."""
    stage = lifecycle.WAITING_FOR[row["status"]]
    return f"{row['channel'] if stage == 'sender' else stage}_{row['priority']}"


def broker_held_ids(queues: Iterable[str]) -> set[int]:
    """Message ids the broker still holds for these queues: queued, prefetched or being worked
    on by a live worker (its ack set), or waiting as a delayed retry. Such a message is late, not
    lost. What a dead worker (no heartbeat within the broker's heartbeat timeout) had taken counts
    as lost: Dramatiq hands it back only in an occasional maintenance pass."""
    broker = dramatiq.get_broker()
    client, ns = broker.client, broker.namespace  # type: ignore[attr-defined]
    # Workers stamp their heartbeat with their own clock in milliseconds, as Dramatiq does.
    now_ms = int(time.time() * 1000)
    live = {_text(w) for w in client.zrangebyscore(
        f"{ns}:__heartbeats__", now_ms - broker.heartbeat_timeout, "+inf")}  # type: ignore[attr-defined]
    held: set[int] = set()
    for queue in queues:
        for name in (queue, f"{queue}.DQ"):
            keys = list(client.lrange(f"{ns}:{name}", 0, -1))
            for acks in client.scan_iter(match=f"{ns}:__acks__.*.{name}", count=1000):
                worker = _text(acks).removeprefix(f"{ns}:__acks__.").removesuffix(f".{name}")
                if worker in live:
                    keys += list(client.smembers(acks))
            for start in range(0, len(keys), 1000):
                for raw in client.hmget(f"{ns}:{name}.msgs", keys[start:start + 1000]):
                    if raw:
                        held.update(json.loads(raw)["args"][0])
    return held


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _touch(ids: Sequence[int], *, count_redrive: bool, stale_after: float | None = None) -> list[dict[str, Any]]:
    """Reset the wait clock of these rows (so each is looked at once per deadline) and return them;
    a re-drive is counted and written to the history. ``stale_after``: only rows still waiting on
    a stage for longer than that many seconds (compare-and-set: of two schedulers, one wins)."""
    if not ids:
        return []
    event = """, ev AS (
            INSERT INTO message_event (message_id, status, detail)
            SELECT id, status, jsonb_build_object('redriven', true, 'redrives', redrives) FROM touched
        )""" if count_redrive else ""
    still = ("AND status IN ('accepted', 'queued', 'routed') AND status_changed_at < now() - make_interval(secs => %s)"
             if stale_after is not None else "")
    return fetch_dicts(
        f"""
        WITH touched AS (
            UPDATE message SET status_changed_at = now(), redrives = redrives + {int(count_redrive)}
            WHERE id = ANY(%s) {still}
            RETURNING id, status, priority, channel, redrives
        ){event}
        SELECT * FROM touched
        """,
        (list(ids), stale_after) if stale_after is not None else (list(ids),),
    )


# Where the last pass stopped: a backlog the broker still holds is left as it is (rewriting a
# 100,000-message campaign's rows every pass would cost more than sending them), and the next pass
# looks past it, batch by batch, to the rows behind; None: from the oldest.
_scan_from: tuple[Any, int] | None = None


def redrive_stuck(deadline_seconds: float, max_redrives: int) -> dict[str, int]:
    """Re-enqueue messages waiting on a stage longer than ``deadline_seconds`` past their due time
    that the broker no longer holds.

    Waiting rows are read without locks, a batch at a time from where the last pass stopped; only
    those the broker lost are touched, each by a compare-and-set on its wait clock. A message
    re-driven ``max_redrives`` times without moving on is poison (its stage fails on it every
    time; the failures are in the dead-letter list): it is failed instead of re-driven forever.
    """
    global _scan_from
    after_at, after_id = _scan_from or (None, 0)
    with transaction():
        waiting = fetch_dicts(
            "SELECT id, status, channel, priority, status_changed_at FROM message"
            " WHERE status IN ('accepted', 'queued', 'routed') AND status_changed_at < now() - make_interval(secs => %s)"
            " AND (due_at IS NULL OR due_at < now() - make_interval(secs => %s)) AND " + campaigns.NOT_PAUSED_SQL +
            " AND (%s::timestamptz IS NULL OR (status_changed_at, id) > (%s::timestamptz, %s))"
            " ORDER BY status_changed_at, id LIMIT %s",
            (deadline_seconds, deadline_seconds, after_at, after_at, after_id, BATCH),
        )
    _scan_from = (waiting[-1]["status_changed_at"], waiting[-1]["id"]) if len(waiting) == BATCH else None
    if not waiting:
        return {}
    held = broker_held_ids({stage_queue(r) for r in waiting})
    lost = [r["id"] for r in waiting if r["id"] not in held]
    if not lost:
        return {}
    with transaction():
        rows = _touch(lost, count_redrive=True, stale_after=deadline_seconds)
        poison = {r["id"] for r in rows if r["redrives"] > max_redrives}
        if poison:
            error = f"stuck: re-driven {max_redrives} times without progress (see postroom dead-letters list)"
            lifecycle.advance(sorted(poison), list(lifecycle.WAITING_FOR), "failed", detail={"error": error, "error_code": "stuck"})
    rows = [r for r in rows if r["id"] not in poison]
    dispatch.to_waiting_stages(rows)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    for status, n in counts.items():
        metrics.REDRIVEN.labels(status=status).inc(n)
    if poison:
        counts["stuck"] = len(poison)
    return counts


def promote_scheduled(deadline_seconds: float) -> int:
    """Hand scheduled messages to processing once they are due. The hand-off stamps the row
    (``status_changed_at`` after ``due_at``), so each is handed on once; one still scheduled a
    deadline after its hand-off, and held nowhere in the broker, is handed on again."""
    with transaction():
        due = fetch_dicts(
            "SELECT id, status, channel, priority, due_at > status_changed_at AS fresh,"
            " extract(epoch FROM clock_timestamp() - due_at)::float8 AS lag FROM message"
            " WHERE status = 'scheduled' AND due_at <= now()"
            " AND (due_at > status_changed_at OR status_changed_at < now() - make_interval(secs => %s))"
            " ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED", (deadline_seconds, BATCH), prepared=True)
        if not due:
            return 0
        stale = [r for r in due if not r["fresh"]]
        held = broker_held_ids({stage_queue(r) for r in stale}) if stale else set()
        _touch([r["id"] for r in stale if r["id"] in held], count_redrive=False)  # late, not lost
        rows = _touch([r["id"] for r in due if r["id"] not in held], count_redrive=False)
    dispatch.to_waiting_stages(rows)
    for r in due:  # the first hand-off is the schedule lag; a repeated one measures a lost one
        if r["fresh"]:
            metrics.SCHEDULE_LAG.labels(lane=r["priority"]).observe(max(0.0, r["lag"]))
    return len(rows)


def next_scheduled_in(horizon_seconds: float = recurring.HORIZON_SECONDS) -> float | None:
    """Seconds until the next scheduled message falls due, or the next recurring occurrence is to
    be materialised (``horizon_seconds`` before its time); None: nothing is waiting."""
    with transaction():
        rows = fetch("SELECT extract(epoch FROM least("
                     "(SELECT min(due_at) FROM message WHERE status = 'scheduled' AND due_at > status_changed_at),"
                     " (SELECT min(next_run_at) FROM schedule WHERE NOT paused AND next_run_at IS NOT NULL)"
                     " - make_interval(secs => %s)) - now())", (horizon_seconds,), prepared=True)
    return float(rows[0][0]) if rows and rows[0][0] is not None else None


def promote_parked(short_wait_seconds: float) -> int:
    """Enqueue retries whose wait was too long for a broker delay, now that they are due."""
    with transaction():
        due = fetch("SELECT id FROM message WHERE status = 'routed' AND due_at <= now()"
                    " AND due_at > status_changed_at + make_interval(secs => %s)"
                    " ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED", (short_wait_seconds, BATCH))
        rows = _touch([r[0] for r in due], count_redrive=False)
    dispatch.to_waiting_stages(rows)
    return len(rows)


_LEASE = """
WITH due AS (
    SELECT id FROM message
    WHERE status = 'sending'
      AND (lookup_at <= now() OR (lookup_at IS NULL AND status_changed_at < now() - make_interval(secs => %(timeout)s)))
    ORDER BY status_changed_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
UPDATE message m SET lookup_at = now() + make_interval(secs => %(lease)s)
FROM due, workspace w WHERE m.id = due.id AND w.id = m.workspace_id
RETURNING m.id, m.workspace_id, m.channel, m.priority, m.to_addr, m.from_addr, m.body, m.attempts,
          m.throttles, m.created_at, m.status_changed_at, m.provider_account, w.resend_unknown
"""


def resolve_unknown(sending_timeout_seconds: float) -> dict[str, int]:
    """Settle sends whose outcome is unknown: reported so by a sender (its answer was lost), or
    left in ``sending`` past ``sending_timeout_seconds`` (its sender died mid-call).

    Each is looked up at the provider; the candidates are matched on to, from and body, created
    no earlier than the claim allows, and not already recorded on another message.
    """
    with transaction():
        rows = fetch_dicts(_LEASE, {"timeout": sending_timeout_seconds, "limit": LOOKUP_BATCH, "lease": LOOKUP_LEASE_SECONDS})
    if not rows:
        return {}
    with transaction():  # accounts come from the database: here, not in the look-up threads
        for row in rows:
            channel = CHANNELS.get(row["channel"])
            row["account"] = channel.account_for(row["workspace_id"]) if channel else None
    with ThreadPoolExecutor(max_workers=min(16, len(rows)), thread_name_prefix="lookup") as pool:
        looked_up = list(pool.map(_look_up, rows))
    channels = {r["id"]: r["channel"] for r in rows}
    found: list[dict[str, Any]] = []
    resend: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    with transaction():
        known = _recorded_ids([a.provider_message_id for _, hits in looked_up if hits for a in hits])
        for row, hits in looked_up:
            if hits is None:  # no answer from the provider: the lease expires and it is asked again
                if datetime.now(UTC) - row["created_at"] > LOOKUP_GIVE_UP:
                    failed.append(_failure(row, "the provider could not be asked for a day"))
                continue
            hit = next((a for a in hits if a.provider_message_id not in known), None)
            if hit is not None:
                known.add(hit.provider_message_id)
                found.append({"id": row["id"], "pid": hit.provider_message_id, "segments": hit.segments,
                              "detail": {"provider_message_id": hit.provider_message_id, "found_by": "lookup",
                                         "provider_status": hit.provider_status}})
            elif hits is _NO_LOOKUP and not row["resend_unknown"]:
                failed.append(_failure(row, "the provider offers no look-up; not resent (workspace setting)"))
            elif row["attempts"] >= settings.postroom_max_attempts:
                failed.append(_failure(row, f"not found at the provider after {row['attempts']} attempts"))
            else:
                resend.append({"id": row["id"], "detail": {"error": "not found at the provider: sending again",
                                                           "error_code": "outcome_unknown"}})
        _record_found(channels, found)
        if failed:
            lifecycle.record_outcomes("sending", "failed", failed, columns={
                "error_code": "'outcome_unknown'", "last_error": "v.error", "lookup_at": "NULL"})
        moved = lifecycle.record_outcomes("sending", "routed", resend, columns={
            "lookup_at": "NULL", "due_at": "NULL", "error_code": "'outcome_unknown'"})
    dispatch.hand_on(None, moved)
    outcomes = {"found": found, "resent": moved, "failed": failed}
    for resolution, items in outcomes.items():
        for item in items:
            metrics.UNKNOWN_OUTCOMES.labels(channel=channels[item["id"]], resolution=resolution).inc()
    return {f"unknown_{k}": len(v) for k, v in outcomes.items() if v}


_NO_LOOKUP: list[Accepted] = []


def _look_up(row: dict[str, Any]) -> tuple[dict[str, Any], list[Accepted] | None]:
    """(row, candidates at the provider); ``_NO_LOOKUP`` if the channel has none; None on failure."""
    channel: Channel | None = CHANNELS.get(row["channel"])
    if channel is None or channel.find_sent is None:
        return row, _NO_LOOKUP
    account = row["account"]
    try:
        if row["provider_account"] and account.key != row["provider_account"]:
            log.warning("message %s was sent through account %s, no longer the workspace's: not looked up",
                        row["id"], row["provider_account"])
            return row, _NO_LOOKUP
        # The provider created it after the claim; the claim was at most one provider timeout
        # (plus recording) before status_changed_at. A minute of margin covers clock skew.
        since = row["status_changed_at"] - timedelta(seconds=settings.postroom_provider_timeout_seconds + 60)
        return row, channel.find_sent(account, row, since)
    except ProviderError as exc:
        log.warning("looking up message %s at %s failed: %s; trying again later", row["id"], channel.provider, exc)
        return row, None
    except Exception:
        log.exception("looking up message %s failed", row["id"])
        return row, None


def _failure(row: dict[str, Any], why: str) -> dict[str, Any]:
    return {"id": row["id"], "error": f"outcome_unknown: {why}",
            "detail": {"error": f"outcome_unknown: {why}", "error_code": "outcome_unknown"}}


def _recorded_ids(pids: Sequence[str]) -> set[str]:
    if not pids:
        return set()
    return {r[0] for r in fetch("SELECT provider_message_id FROM message WHERE provider_message_id = ANY(%s)", (list(pids),))}


def _record_found(channels: dict[int, str], found: list[dict[str, Any]]) -> None:
    for name in sorted({channels[f["id"]] for f in found}):
        provider = CHANNELS[name].provider
        mine = [f for f in found if channels[f["id"]] == name]
        lifecycle.record_sent(provider, mine, {"error_code": "NULL"})  # the call was counted when made
        apply_pending_receipts(provider, [f["pid"] for f in mine])


def sweep_receipts() -> int:
    with transaction():
        return sum(apply_pending_receipts(channel.provider) for channel in CHANNELS.values())
