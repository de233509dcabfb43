"""SMS delivery: claim routed messages, call the provider with many calls in flight, record outcomes.

Only messages this call moved from ``routed`` to ``sending`` are sent, so a duplicate broker
delivery or a second worker sends nothing. Outcomes are written in one statement per kind;
retries and throttled messages go back to ``routed`` with a due time. The caller enqueues the
returned follow-ups after the transaction commits.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

from peewee import DatabaseError

from common import lifecycle, metrics, ratelimit
from common.broker import LANES
from common.config import settings
from common.db.connection import release_connection, transaction
from common.errors import PermanentError, ProviderError, Throttled, TransientError
from common.providers.accounts import SmsAccount, sms_account, sms_sender
from common.providers.sms import Accepted, OutboundSms
from common.providers.twilio_sms import PROVIDER
from common.receipts import apply_pending_receipts

log = logging.getLogger("postroom.sender.sms")
CLAIM_COLUMNS = ("to_addr", "from_addr", "body", "attempts", "throttles", "created_at")


@dataclass
class Followups:
    """Work to enqueue once the outcomes are committed: (lane, ids, delay in ms)."""

    retries: list[tuple[str, list[int], int]] = field(default_factory=list)
    sent_provider_ids: list[str] = field(default_factory=list)


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter in its upper half: base * 2^(attempt-1), capped."""
    ceiling = min(settings.postroom_retry_max_seconds, settings.postroom_retry_base_seconds * 2 ** max(0, attempt - 1))
    return ceiling / 2 + random.random() * ceiling / 2


def claim_for_sending(ids: Sequence[int]) -> list[dict[str, Any]]:
    return lifecycle.advance(ids, ["routed"], "sending", due_only=True, returning=CLAIM_COLUMNS)


# Provider calls in flight in this process, per lane, across every batch its greenlets work on:
# a campaign's batches can fill the bulk lane's slots without delaying an urgent message's call.
_in_flight = {lane: threading.BoundedSemaphore(settings.postroom_sender_concurrency) for lane in LANES}
# Database connections, likewise: bulk batches may hold all but URGENT_DB_SLOTS of the pool, so an
# urgent message's claim and record never queue behind a campaign's.
URGENT_DB_SLOTS = 4
_db_slots = {
    "urgent": threading.BoundedSemaphore(settings.postroom_db_pool_size),
    "bulk": threading.BoundedSemaphore(max(1, settings.postroom_db_pool_size - URGENT_DB_SLOTS)),
}


def call_provider(claimed: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], Accepted | ProviderError]]:
    """Send each claimed message, keeping up to SENDER_CONCURRENCY calls in flight per process."""
    callback = f"{settings.public_url}/webhooks/twilio/status"
    paused: dict[str, float] = {}
    for account in {row["account"] for row in claimed if not row["account"].rate_limit_per_second}:
        # Unlimited accounts only need to know whether a 429 paused them: once per batch.
        paused[account.account_sid] = ratelimit.wait_before_send(PROVIDER, account.account_sid, 0)

    def one(row: dict[str, Any]) -> tuple[dict[str, Any], Accepted | ProviderError]:
        account: SmsAccount = row["account"]
        wait = paused.get(account.account_sid)
        if wait is None:
            reserve = ratelimit.bulk_reserve(account.rate_limit_per_second) if row["priority"] == "bulk" else 0
            wait = ratelimit.wait_before_send(PROVIDER, account.account_sid, account.rate_limit_per_second, reserve=reserve)
        if wait > 0:
            metrics.RATE_LIMIT_WAITS.labels(provider=PROVIDER).inc()
            return row, Throttled("waiting for a send token", code="rate_limit", retry_after=wait)
        sms = OutboundSms(row["id"], row["to_addr"], row["from_addr"] or account.sender, row["body"], callback)
        try:
            with _in_flight[row["priority"]]:
                started = perf_counter()
                result: Accepted | ProviderError = sms_sender(account).send(sms)
            outcome = "ok"
        except ProviderError as exc:
            result = exc
            outcome = "throttled" if isinstance(exc, Throttled) else "permanent" if isinstance(exc, PermanentError) else "transient"
            if isinstance(exc, Throttled):
                ratelimit.pause(PROVIDER, account.account_sid, exc.retry_after or 1.0)
        except Exception as exc:  # a bug or an answer we cannot read: the request may have gone out
            log.exception("provider call for message %s failed unexpectedly", row["id"])
            result = PermanentError(f"unexpected error, the provider may have sent it: {exc!r}", code="outcome_unknown")
            outcome = "permanent"
        metrics.PROVIDER_REQUESTS.labels(provider=PROVIDER, outcome=outcome).observe(perf_counter() - started)
        return row, result

    if len(claimed) == 1:
        return [one(claimed[0])]
    workers = min(len(claimed), settings.postroom_sender_concurrency)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sms-call") as pool:
        return spread_token_waits(list(pool.map(one, claimed)))


def spread_token_waits(results: list[tuple[dict[str, Any], Accepted | ProviderError]]) -> list[tuple[dict[str, Any], Accepted | ProviderError]]:
    """Give the messages of a batch that found no send token successive slots, one interval apart.

    The limiter answers each of them with the wait for the *next* token; were they all to come
    back then, one would get it and the rest would ask again, over and over.
    """
    waiting: dict[str, int] = {}
    for row, result in results:
        account: SmsAccount = row["account"]
        if isinstance(result, Throttled) and result.code == "rate_limit" and account.rate_limit_per_second > 0:
            slot = waiting.get(account.account_sid, 0)
            waiting[account.account_sid] = slot + 1
            result.retry_after = (result.retry_after or 0.0) + slot / account.rate_limit_per_second
    return results


def record_results(results: Sequence[tuple[dict[str, Any], Accepted | ProviderError]]) -> Followups:
    """Write every outcome (one statement per kind) and say what to enqueue after commit."""
    sent, failed, retry = [], [], []
    for row, result in results:
        if isinstance(result, Accepted):
            sent.append({"id": row["id"], "pid": result.provider_message_id, "segments": result.segments,
                         "detail": {"provider": PROVIDER, "provider_message_id": result.provider_message_id,
                                    "provider_status": result.provider_status}})
            continue
        throttled = isinstance(result, Throttled)
        called = result.code != "rate_limit"  # our own limiter did not call the provider
        errors_so_far = row["attempts"] - row["throttles"] + (0 if throttled or not called else 1)
        detail = {"error": result.detail, "error_code": result.code, "attempt": row["attempts"] + int(called)}
        if isinstance(result, PermanentError) or (isinstance(result, TransientError) and errors_so_far >= settings.postroom_max_attempts):
            failed.append({"id": row["id"], "code": result.code, "error": result.detail, "called": int(called), "detail": detail})
            continue
        wait = result.retry_after if result.retry_after is not None else (0.0 if throttled else backoff_seconds(errors_so_far))
        retry.append({"id": row["id"], "code": result.code, "error": result.detail, "wait": f"{wait:.3f}",
                      "called": int(called), "throttled": int(throttled and called), "lane": row["priority"],
                      "detail": {**detail, "retry_in_seconds": round(wait, 3)}})

    followups = Followups()
    if sent:
        lifecycle.record_outcomes("sending", "sent", sent, columns={
            "provider": f"'{PROVIDER}'", "provider_message_id": "v.pid", "segments": "v.segments::int",
            "attempts": "m.attempts + 1", "sent_at": "now()", "due_at": "NULL"})
        metrics_end_to_end([row for row, result in results if isinstance(result, Accepted)])
        followups.sent_provider_ids = [s["pid"] for s in sent]
    if failed:
        lifecycle.record_outcomes("sending", "failed", failed, columns={
            "error_code": "v.code", "last_error": "v.error", "attempts": "m.attempts + v.called::int"})
    if retry:
        moved = {r["id"] for r in lifecycle.record_outcomes("sending", "routed", retry, columns={
            "error_code": "v.code", "last_error": "v.error", "attempts": "m.attempts + v.called::int",
            "throttles": "m.throttles + v.throttled::int",
            "due_at": "now() + make_interval(secs => v.wait::float8)"})}
        for r in retry:
            wait = float(r["wait"])
            if r["id"] in moved and wait <= lifecycle.SHORT_WAIT_SECONDS:
                followups.retries.append((r["lane"], [r["id"]], int(wait * 1000)))
    return followups


def metrics_end_to_end(rows: Sequence[dict[str, Any]]) -> None:
    now = datetime.now(UTC)
    for row in rows:
        metrics.END_TO_END.labels(channel="sms", lane=row["priority"]).observe((now - row["created_at"]).total_seconds())


RECORD_RETRY_SECONDS = (0.2, 0.5, 1, 2, 4, 8)


def record_with_retries(results: Sequence[tuple[dict[str, Any], Accepted | ProviderError]], lane: str = "urgent") -> Followups:
    """Record outcomes, retrying a failed write for a while: the provider calls were made, and a
    message whose send goes unrecorded is left in ``sending`` until it is failed as interrupted."""
    for delay in (*RECORD_RETRY_SECONDS, None):
        try:
            with _db_slots[lane]:
                try:
                    with transaction():
                        return record_results(results)
                finally:
                    release_connection()
        except DatabaseError:
            if delay is None:
                raise
            log.warning("recording %d send outcomes failed; retrying in %ss", len(results), delay, exc_info=True)
            time.sleep(delay)
    raise AssertionError("unreachable")


def deliver(ids: Sequence[int], lane: str = "urgent") -> Followups:
    """Claim, send and record a batch, a chunk at a time.

    A chunk is claimed just before its calls and recorded as soon as they return, so a message is
    in ``sending`` for about one provider round trip (receipts seldom beat the record of the send,
    and a crash strands at most one chunk). No database connection is held during the calls.
    """
    followups = Followups()
    chunk = max(1, settings.postroom_sender_concurrency // 4)
    for start in range(0, len(ids), chunk):
        done = deliver_chunk(ids[start : start + chunk], lane)
        followups.retries += done.retries
        followups.sent_provider_ids += done.sent_provider_ids
    return followups


def deliver_chunk(ids: Sequence[int], lane: str) -> Followups:
    with _db_slots[lane]:
        with transaction():
            claimed = claim_for_sending(ids)
            for row in claimed:
                row["account"] = sms_account(row["workspace_id"])
        release_connection()
    if not claimed:
        return Followups()
    results = call_provider(claimed)
    followups = record_with_retries(results, lane)
    if followups.sent_provider_ids:
        with _db_slots[lane]:
            with transaction():
                apply_pending_receipts(PROVIDER, followups.sent_provider_ids)
            release_connection()
    return followups
