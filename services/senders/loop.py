"""The sender loop every channel shares: claim at the slot → call → record → hand on.

A message enters ``sending`` only when its provider call can start at once: a call slot of this
process is held for it, and a send token of its provider account (DESIGN.md invariant 2). So a
crash strands only the calls that were really in flight, and those are looked up at the provider
rather than guessed about (invariant 14). Messages without a token stay ``routed`` with a due
time (they never bounce through ``sending``); outcomes are recorded one statement per kind, and
a database blip while recording is retried, never dropped. The caller enqueues the returned
follow-ups after the records commit. Channels plug in through ``common.providers.channels``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

from peewee import DatabaseError

from common import (
    campaigns,
    conversations,
    dispatch,
    fallback,
    lifecycle,
    metrics,
    ratelimit,
    suppression,
)
from common.broker import LANES
from common.config import settings
from common.db.connection import fetch, fetch_dicts, release_connection, transaction
from common.errors import PermanentError, ProviderError, Throttled, TransientError, UnknownOutcome
from common.providers.base import Accepted, Channel
from common.receipts import apply_pending_receipts, receipts_waiting

log = logging.getLogger("postroom.sender")
CLAIM_COLUMNS = ("to_addr", "from_addr", "body", "tags", "attempts", "throttles", "created_at", "content", "route_step")
Result = tuple[dict[str, Any], Accepted | ProviderError]


@dataclass
class Followups:
    """Work to enqueue once the outcomes are committed: retries (lane, ids, delay in ms), and
    messages moved on to their route's next channel (for routing)."""

    retries: list[tuple[str, list[int], int]] = field(default_factory=list)
    sent_provider_ids: list[str] = field(default_factory=list)
    fallbacks: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: Followups) -> None:
        self.retries += other.retries
        self.sent_provider_ids += other.sent_provider_ids
        self.fallbacks += other.fallbacks


class CallSlots:
    """The provider calls one lane of this process may have in flight.

    ``acquire`` takes all the slots a chunk of a batch needs at once, first come first served: a
    caller holds none while it waits (no deadlock between batches), and chunks stay whole however
    many batches compete. Taking whatever happened to be free would split them into slivers of a
    few messages, each paying a claim and a record statement of its own (a 100,000-recipient
    campaign's 200 batches made the sender's statements per message double).
    """

    def __init__(self, size: int):
        self.size = size
        self._free = size
        self._lock = threading.Lock()
        self._waiting: deque[tuple[int, threading.Event]] = deque()

    def acquire(self, wanted: int) -> int:
        """Wait for ``wanted`` slots (at most the lane's size) and take them; returns how many."""
        wanted = max(1, min(wanted, self.size))
        with self._lock:
            if not self._waiting and self._free >= wanted:
                self._free -= wanted
                return wanted
            turn = threading.Event()
            self._waiting.append((wanted, turn))
        turn.wait()  # release() took the slots for us before setting it
        return wanted

    def release(self, count: int = 1) -> None:
        if count <= 0:
            return
        with self._lock:
            self._free += count
            while self._waiting and self._waiting[0][0] <= self._free:
                wanted, turn = self._waiting.popleft()
                self._free -= wanted
                turn.set()


# Per lane, across every batch this process works on: a campaign's batches can fill the bulk
# lane's slots without delaying an urgent message's call.
_slots = {lane: CallSlots(settings.postroom_sender_concurrency) for lane in LANES}
# Database connections, likewise: normal and bulk batches together may hold all but URGENT_DB_SLOTS
# of the pool, so an urgent message's claim and record never queue behind a campaign's.
URGENT_DB_SLOTS = 4
_not_urgent = threading.BoundedSemaphore(max(1, settings.postroom_db_pool_size - URGENT_DB_SLOTS))
_db_slots = {"urgent": threading.BoundedSemaphore(settings.postroom_db_pool_size), "normal": _not_urgent, "bulk": _not_urgent}


@contextmanager
def lane_transaction(lane: str, *, single_statement: bool = False) -> Iterator[None]:
    """A transaction on one of the lane's database slots; the connection goes back to the pool
    at once (no connection is held across provider calls). ``single_statement``: see
    ``common.db.connection.transaction``."""
    with _db_slots[lane]:
        try:
            with transaction(single_statement=single_statement):
                yield
        finally:
            release_connection()


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter in its upper half: base * 2^(attempt-1), capped."""
    ceiling = min(settings.postroom_retry_max_seconds, settings.postroom_retry_base_seconds * 2 ** max(0, attempt - 1))
    return ceiling / 2 + random.random() * ceiling / 2


def run(channel: Channel, ids: Sequence[int], lane: str) -> None:
    """An actor's whole job: deliver the batch, then enqueue its retries (after the commits)."""
    followups = deliver(channel, ids, lane)
    for retry_lane, retry_ids, delay_ms in followups.retries:
        dispatch.to_stage(channel.name, retry_lane, retry_ids, delay_ms=delay_ms)
    dispatch.hand_on("routing", followups.fallbacks)


def deliver(channel: Channel, ids: Sequence[int], lane: str = "urgent") -> Followups:
    """Deliver the routed, due messages among ``ids``, as many at a time as call slots allow.

    Raises:
      Whatever reading the batch or taking tokens raised (a database or Redis outage) before
      any message of the current slot batch was claimed: the broker retries the batch, and
      what was already recorded is not sent again (the claims are compare-and-set).
    """
    with lane_transaction(lane, single_statement=True):
        pending = candidates(channel, ids)
    followups = Followups()
    chunk = max(1, settings.postroom_sender_concurrency // 4)
    while pending:
        held = _slots[lane].acquire(min(len(pending), chunk))
        batch, pending = pending[:held], pending[held:]
        followups.add(deliver_held(channel, batch, lane))
    return followups


def candidates(channel: Channel, ids: Sequence[int]) -> list[dict[str, Any]]:
    """The routed, due messages among ``ids`` with the account that sends each (nothing claimed).
    A paused campaign's messages are left as they are: resuming hands them on again."""
    rows = fetch_dicts(
        "SELECT m.id, m.workspace_id, m.campaign_id, c.rate_limit_per_second AS campaign_rate"
        " FROM message m LEFT JOIN campaign c ON c.id = m.campaign_id"
        " WHERE m.id = ANY(%s) AND (m.status || '') = 'routed' AND (m.due_at IS NULL OR m.due_at <= now())"
        f" AND (m.campaign_id IS NULL OR {campaigns.SENDING_SQL}) ORDER BY m.id",
        (list(ids),), prepared=True,
    )
    for row in rows:
        row["account"] = channel.account_for(row["workspace_id"])
    if rows and channel.prepare is not None:
        channel.prepare(rows)
    return rows


def deliver_held(channel: Channel, batch: list[dict[str, Any]], lane: str) -> Followups:
    """Send ``batch``, for each message of which one call slot is held; every slot is released."""
    held = len(batch)
    try:
        go, waiting = take_tokens(channel, batch, lane)
        _slots[lane].release(len(waiting))
        held -= len(waiting)
        followups = Followups()
        if waiting:
            followups.retries += defer(waiting, lane)
        claimed = claim(channel, go, lane)
        _slots[lane].release(held - len(claimed))
        held = len(claimed)
        if not claimed:
            return followups
        results = call_provider(channel, claimed, lane)
        held = 0  # each call released its own slot
        followups.add(record_with_retries(channel, results, lane))
    finally:
        _slots[lane].release(held)
    if followups.sent_provider_ids:
        try:  # receipts that raced these sends: usually none, found by one index probe
            with lane_transaction(lane, single_statement=True):
                raced = receipts_waiting(channel.provider, followups.sent_provider_ids)
            if raced:
                with lane_transaction(lane):
                    apply_pending_receipts(channel.provider, followups.sent_provider_ids)
        except DatabaseError:  # the reconciler's sweep applies them later
            log.warning("applying receipts that raced %d sends failed; left to the reconciler", len(followups.sent_provider_ids))
    return followups


def take_tokens(channel: Channel, rows: list[dict[str, Any]], lane: str) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], float]]]:
    """Split ``rows`` into those with a send token (one Redis round trip per account) and those
    that must wait, each waiting one token interval after the one before it.

    A provider 429 pause of the account grants nothing until it ends. A campaign with a rate limit
    of its own takes a token of it first (one more round trip per campaign).
    """
    go: list[dict[str, Any]] = []
    waiting: list[tuple[dict[str, Any], float]] = []
    limited: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("campaign_rate"):
            limited.setdefault(row["campaign_id"], []).append(row)
    if limited:
        for campaign_id, group in limited.items():
            rate = group[0]["campaign_rate"]
            granted, wait = ratelimit.take_tokens("campaign", str(campaign_id), rate, len(group))
            waiting += [(row, wait + n / rate) for n, row in enumerate(group[granted:])]
        held_back = {id(row) for row, _ in waiting}
        rows = [row for row in rows if id(row) not in held_back]
    by_account: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        by_account.setdefault(row["account"], []).append(row)
    for account, group in by_account.items():
        rate = account.rate_limit_per_second
        reserve = ratelimit.bulk_reserve(rate) if lane == "bulk" and rate else 0
        granted, wait = ratelimit.take_tokens(channel.provider, account.key, rate, len(group), reserve=reserve)
        go += group[:granted]
        step = 1 / rate if rate > 0 else 0.0
        waiting += [(row, wait + n * step) for n, row in enumerate(group[granted:])]
    if waiting:
        metrics.RATE_LIMIT_WAITS.labels(provider=channel.provider).inc(len(waiting))
    return go, waiting


_DEFER = """
WITH v AS (SELECT unnest(%(ids)s::bigint[]) AS id, unnest(%(waits)s::float8[]) AS wait
), moved AS (
    UPDATE message m SET due_at = now() + make_interval(secs => v.wait), status_changed_at = now(), updated_at = now()
    FROM v WHERE m.id = v.id AND (m.status || '') = 'routed'
    RETURNING m.id, v.wait
), ev AS (
    INSERT INTO message_event (message_id, status, detail)
    SELECT id, 'routed', jsonb_build_object('error_code', 'rate_limit', 'error', 'waiting for a send token',
                                            'retry_in_seconds', round(wait::numeric, 3))
    FROM moved
)
SELECT id, wait FROM moved
"""


def defer(waiting: list[tuple[dict[str, Any], float]], lane: str) -> list[tuple[str, list[int], int]]:
    """Give messages without a token their due time; they stay ``routed`` (no retry is spent).

    Short waits ride on a broker delay, grouped into 100 ms buckets so that a throttled batch is
    a few broker messages, not one per message; longer ones are promoted by the scheduler.
    """
    with lane_transaction(lane):
        moved = fetch(_DEFER, {"ids": [row["id"] for row, _ in waiting], "waits": [w for _, w in waiting]}, prepared=True)
    buckets: dict[int, list[int]] = {}
    for message_id, wait in moved:
        if wait <= lifecycle.SHORT_WAIT_SECONDS:
            buckets.setdefault(int(wait * 10 + 1) * 100, []).append(message_id)
    return [(lane, ids, delay_ms) for delay_ms, ids in sorted(buckets.items())]


def claim(channel: Channel, rows: list[dict[str, Any]], lane: str) -> list[dict[str, Any]]:
    """Compare-and-set ``routed`` → ``sending`` for messages whose call can start now; returns
    those this call won, with their content and account. A campaign paused since the batch was
    read stops its messages here, an address suppressed since routing (a STOP while the
    message waited for a token or a retry) ends its message ``suppressed``, and a bot's reply
    whose conversation a human took meanwhile ends ``cancelled`` (``human_took_over``): the
    bot never talks over a person, however late the person came."""
    if not rows:
        return []
    prepared = {row["id"]: row for row in rows}
    with lane_transaction(lane, single_statement=True):
        claimed = lifecycle.record_outcomes(
            "routed", "sending", [{"id": row["id"], "account": row["account"].key} for row in rows],
            columns={"provider_account": "v.account", "lookup_at": "NULL"},
            due_only=True, returning=CLAIM_COLUMNS,
            where=f"{campaigns.CLAIMABLE_SQL} AND {suppression.NOT_SUPPRESSED_SQL} AND {conversations.BOT_IN_CHARGE_SQL}")
    if len(claimed) < len(rows):  # a race, a pause, a human who took over, or an address suppressed since routing
        won = {row["id"] for row in claimed}
        lost = [row["id"] for row in rows if row["id"] not in won]
        with lane_transaction(lane):
            taken_over = cancel_bot_replies(lost)
            suppression.suppress_messages([i for i in lost if i not in taken_over], "routed")
    for row in claimed:  # the account, and whatever the channel's prepare added
        row.update({k: v for k, v in prepared[row["id"]].items() if k not in row})
    return claimed


def cancel_bot_replies(ids: Sequence[int]) -> set[int]:
    """End ``cancelled`` (``human_took_over``) the bot replies among ``ids`` whose conversation is
    no longer the bot's (one statement); returns their ids."""
    if not ids:
        return set()
    detail = {"error_code": "human_took_over", "error": "a person took the conversation over before the bot's reply was sent"}
    moved = lifecycle.record_outcomes("routed", "cancelled", [{"id": i, "error": detail["error"], "detail": detail} for i in ids],
                                      columns={"error_code": "'human_took_over'", "last_error": "v.error"},
        where=f"m.author = 'bot' AND NOT ({conversations.BOT_IN_CHARGE_SQL})")
    return {row["id"] for row in moved}


def call_provider(channel: Channel, claimed: list[dict[str, Any]], lane: str) -> list[Result]:
    """Make every claimed message's call at once; each call gives back its slot when it ends."""

    def one(row: dict[str, Any]) -> Result:
        started = perf_counter()
        result: Accepted | ProviderError
        try:
            result = channel.send(row["account"], row)
        except ProviderError as exc:
            result = exc
        except Exception as exc:  # a bug or an answer we cannot read: the request may have gone out
            log.exception("provider call for message %s failed unexpectedly", row["id"])
            result = UnknownOutcome(f"unexpected error, the provider may have sent it: {exc!r}")
        finally:
            _slots[lane].release()
        metrics.PROVIDER_REQUESTS.labels(provider=channel.provider, outcome=_outcome(result)).observe(perf_counter() - started)
        if isinstance(result, Throttled) and result.pause_account:
            try:  # a 429 pauses the account for every sender; losing the pause only costs more 429s
                ratelimit.pause(channel.provider, row["account"].key, result.retry_after or 1.0)
            except Exception:
                log.warning("could not record a 429 pause for %s", channel.provider, exc_info=True)
        return row, result

    if len(claimed) == 1:
        return [one(claimed[0])]
    return list(_callers(lane).map(one, claimed))


_executors: dict[str, ThreadPoolExecutor] = {}


def _callers(lane: str) -> ThreadPoolExecutor:
    """The lane's provider calls run here: as many threads (greenlets) as it has call slots, kept
    between batches instead of started for each (the slots already bound what is in flight)."""
    pool = _executors.get(lane)
    if pool is None:
        pool = _executors[lane] = ThreadPoolExecutor(max_workers=settings.postroom_sender_concurrency,
                                                     thread_name_prefix=f"{lane}-call")
    return pool


def _outcome(result: Accepted | ProviderError) -> str:
    if isinstance(result, Accepted):
        return "ok"
    if isinstance(result, UnknownOutcome):
        return "unknown"
    return "throttled" if isinstance(result, Throttled) else "permanent" if isinstance(result, PermanentError) else "transient"


def record_results(channel: Channel, results: Sequence[Result]) -> Followups:
    """Write every outcome (one statement per kind) and say what to enqueue after commit."""
    sent, failed, retry, unknown, unreachable, suppress = [], [], [], [], [], []
    for row, result in results:
        if isinstance(result, Accepted):
            sent.append({"id": row["id"], "pid": result.provider_message_id, "segments": result.segments,
                         "detail": {"provider": channel.provider, "provider_message_id": result.provider_message_id,
                                    "provider_status": result.provider_status}})
            continue
        if isinstance(result, UnknownOutcome):
            unknown.append({"id": row["id"], "error": result.detail,
                            "detail": {"error": result.detail, "error_code": result.code, "attempt": row["attempts"] + 1}})
            continue
        throttled = isinstance(result, Throttled)
        errors_so_far = row["attempts"] - row["throttles"] + (0 if throttled else 1)
        detail = {"error": result.detail, "error_code": result.code, "attempt": row["attempts"] + 1}
        if isinstance(result, PermanentError) and result.suppress:
            suppress.append({"workspace_id": row["workspace_id"], "channel": channel.name, "address": row["to_addr"],
                             "reason": result.suppress, "source": f"{channel.provider} {result.code or ''}".strip()})
        if isinstance(result, PermanentError) and result.fallback:
            unreachable.append({"id": row["id"], "code": result.code, "error": result.detail, "detail": detail})
        if isinstance(result, PermanentError) or (isinstance(result, TransientError) and errors_so_far >= settings.postroom_max_attempts):
            failed.append({"id": row["id"], "code": result.code, "error": result.detail, "detail": detail})
            continue
        wait = result.retry_after if result.retry_after is not None else (0.0 if throttled else backoff_seconds(errors_so_far))
        retry.append({"id": row["id"], "code": result.code, "error": result.detail, "wait": f"{wait:.3f}",
                      "throttled": int(throttled), "lane": row["priority"],
                      "detail": {**detail, "retry_in_seconds": round(wait, 3)}})

    followups = Followups()
    if unreachable:  # a further channel in the route: move on to it instead of failing
        followups.fallbacks = fallback.move_on(unreachable, ["sending"])
        moved_on = {row["id"] for row in followups.fallbacks}
        failed = [f for f in failed if f["id"] not in moved_on]
    if suppress:
        suppression.add(suppress)
    if sent:
        lifecycle.record_sent(channel.provider, sent, {"attempts": "m.attempts + 1"})
        metrics_end_to_end(channel, [row for row, result in results if isinstance(result, Accepted)])
        followups.sent_provider_ids = [s["pid"] for s in sent]
    if failed:
        lifecycle.record_outcomes("sending", "failed", failed, columns={
            "error_code": "v.code", "last_error": "v.error", "attempts": "m.attempts + 1"})
    if unknown:
        # Still ``sending``: the reconciler looks it up at the provider once the provider has had
        # time to list it, then records it as sent or sends it again.
        lifecycle.record_outcomes("sending", "sending", unknown, columns={
            "error_code": "'outcome_unknown'", "last_error": "v.error", "attempts": "m.attempts + 1",
            "lookup_at": f"now() + make_interval(secs => {float(settings.postroom_unknown_lookup_delay_seconds)})"})
        metrics.UNKNOWN_OUTCOMES.labels(channel=channel.name, resolution="reported").inc(len(unknown))
    if retry:
        moved = {r["id"] for r in lifecycle.record_outcomes("sending", "routed", retry, columns={
            "error_code": "v.code", "last_error": "v.error", "attempts": "m.attempts + 1",
            "throttles": "m.throttles + v.throttled::int",
            "due_at": "now() + make_interval(secs => v.wait::float8)"})}
        for r in retry:
            wait = float(r["wait"])
            if r["id"] in moved and wait <= lifecycle.SHORT_WAIT_SECONDS:
                followups.retries.append((r["lane"], [r["id"]], int(wait * 1000)))
    return followups


def metrics_end_to_end(channel: Channel, rows: Sequence[dict[str, Any]]) -> None:
    now = datetime.now(UTC)
    for row in rows:
        metrics.END_TO_END.labels(channel=channel.name, lane=row["priority"]).observe((now - row["created_at"]).total_seconds())


RECORD_RETRY_SECONDS = (0.2, 0.5, 1, 2, 4, 8)


def record_with_retries(channel: Channel, results: Sequence[Result], lane: str = "urgent") -> Followups:
    """Record outcomes, retrying a failed write for a while: the provider calls were made, and a
    send left unrecorded would have to be looked up at the provider by the reconciler."""
    # Only sends to record (the bulk path's usual batch) is one statement: no transaction needed.
    only_sent = all(isinstance(result, Accepted) for _, result in results)
    for delay in (*RECORD_RETRY_SECONDS, None):
        try:
            with lane_transaction(lane, single_statement=only_sent):
                return record_results(channel, results)
        except DatabaseError:
            if delay is None:
                raise
            log.warning("recording %d send outcomes failed; retrying in %ss", len(results), delay, exc_info=True)
            time.sleep(delay)
    raise AssertionError("unreachable")
