"""Delivering webhook events to one endpoint: claim what is due, POST it signed, record the outcome.

The broker carries endpoint ids, never deliveries: "endpoint 7 has work". One loop per endpoint
and process pulls that endpoint's due deliveries from PostgreSQL (urgent first, then oldest) up
to the endpoint's concurrency, so a slow endpoint holds at most its own share of the process's
calls and nothing else waits behind it. A second kick for an endpoint whose loop is running only
marks it dirty; the loop looks again before it stops.

Outcomes (PROVIDERS.md, Standard Webhooks): 2xx succeeded; 410 fails it and disables the
endpoint; 429, 502 and 504 pause the endpoint for ``Retry-After`` without using up a retry; any
other answer, a redirect, a timeout or a connection error moves the delivery to the next step
of the retry schedule, as a row with a due time (the scheduler kicks it when due). An endpoint
that has failed without one success for the disable window is disabled, and an event says so.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import urllib3

from common import dispatch, events, lifecycle, metrics, ratelimit, signing
from common.config import settings
from common.crypto import unseal
from common.db.connection import fetch, fetch_dicts, release_connection, transaction
from common.netguard import BlockedAddress, shared_pool

log = logging.getLogger("postroom.webhooks")
RESPONSE_KEPT = 1024  # bytes of each answer kept with its attempt
LOOP_BUDGET_SECONDS = 30.0  # a loop hands its endpoint back to the broker after this long
CONFIG_CACHE_SECONDS = 2.0
DEFAULT_RETRY_AFTER = 5.0
MAX_RETRY_AFTER = 3600.0
MIN_RETRY_AFTER = 1.0
MAX_THROTTLED_ATTEMPTS = 100  # a delivery throttled this often fails: an endpoint that only ever says "later"
THROTTLE_CODES = frozenset({429, 502, 504})
RATE_PROVIDER = "webhook"


@dataclass(frozen=True)
class Endpoint:
    id: int
    workspace_id: int
    url: str
    headers: dict[str, str]
    secrets: tuple[str, ...]
    rate_limit_per_second: float
    updated_at: Any  # a claim that sees a newer one reloads (a rotated secret signs at once)


@dataclass
class Outcome:
    """What one attempt came to: ``kind`` is succeeded, retried, throttled, failed or blocked."""

    delivery: dict[str, Any]
    kind: str
    status_code: int | None = None
    error: str | None = None
    latency_ms: float | None = None
    response: str | None = None
    delay: float = 0.0  # seconds until the next attempt (retried, throttled)
    gone: bool = False  # 410: disable the endpoint


@dataclass
class _LoopState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    dirty: bool = False


_states: dict[int, _LoopState] = {}
_states_lock = threading.Lock()
_configs: dict[int, tuple[float, Endpoint | None]] = {}
_calls = threading.BoundedSemaphore(max(1, settings.postroom_webhook_concurrency))
# Attempts run on a pool of reused threads (greenlets in the webhooks process), not one new each.
_attempts = ThreadPoolExecutor(max_workers=max(1, settings.postroom_webhook_concurrency), thread_name_prefix="webhook")


def pool() -> urllib3.PoolManager:
    """The process's guarded connection pools: every address dialled is vetted (SSRF). urllib3
    directly, not requests: a delivery is a small POST, and requests' per-call work would be
    most of its CPU."""
    return shared_pool(settings.postroom_webhook_allowed_networks, max(10, settings.postroom_webhook_endpoint_concurrency))


def endpoint(endpoint_id: int) -> Endpoint | None:
    """The endpoint's delivery settings (secrets unsealed), cached briefly; None if deleted."""
    cached = _configs.get(endpoint_id)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    with transaction():
        rows = fetch_dicts(
            "SELECT id, workspace_id, url, headers, secret, previous_secret, rate_limit_per_second, updated_at,"
            " previous_secret_until > now() AS previous_signs FROM webhook_endpoint WHERE id = %s", (endpoint_id,))
    found = None
    if rows:
        row = rows[0]
        secrets = [unseal(row["secret"])["secret"]]
        if row["previous_secret"] is not None and row["previous_signs"]:
            secrets.append(unseal(row["previous_secret"])["secret"])
        found = Endpoint(row["id"], row["workspace_id"], row["url"], dict(row["headers"] or {}), tuple(secrets),
                         row["rate_limit_per_second"], row["updated_at"])
    _configs[endpoint_id] = (time.monotonic() + CONFIG_CACHE_SECONDS, found)
    return found


def forget(endpoint_id: int) -> None:
    _configs.pop(endpoint_id, None)


def run(endpoint_ids: Sequence[int], lane: str) -> None:
    """The actor's body: work every endpoint of the batch, each in its own loop."""
    unique = list(dict.fromkeys(endpoint_ids))
    if len(unique) == 1:
        work_endpoint(unique[0], lane)
        return
    threads = [threading.Thread(target=work_endpoint, args=(eid, lane), name=f"webhooks-{eid}") for eid in unique]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def nudge(endpoint_id: int) -> bool:
    """Tell this process's running loop for the endpoint that it has new work. False when no loop
    runs here, and the endpoint must be kicked through the broker."""
    with _states_lock:
        state = _states.get(endpoint_id)
    if state is None:
        return False
    with state.lock:
        if state.running:
            state.dirty = True
            return True
    return False


def work_endpoint(endpoint_id: int, lane: str, *, budget: float = LOOP_BUDGET_SECONDS) -> None:
    """Deliver the endpoint's due deliveries until none is left (or the budget is spent)."""
    with _states_lock:
        state = _states.setdefault(endpoint_id, _LoopState())
    with state.lock:
        if state.running:
            state.dirty = True
            return
        state.running, state.dirty = True, False
    done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    in_flight = 0
    deadline = time.monotonic() + budget
    limit = max(1, settings.postroom_webhook_endpoint_concurrency)
    try:
        while True:
            claimed: list[dict[str, Any]] = []
            target = endpoint(endpoint_id)
            wanted = limit - in_flight
            # Claim in batches: a few free slots wait for more unless nothing is in flight.
            if target is not None and wanted and (not in_flight or wanted >= max(1, limit // 8)) \
                    and time.monotonic() < deadline:
                # The process's call slots first, then the endpoint's tokens for what is left, so
                # a claimed row starts at once (its claimed_at is when its attempt starts).
                held = _take_slots(wanted, wait=not in_flight)
                if not held and not in_flight:
                    continue  # every call slot of the process is busy: wait again (until the budget ends)
                granted = held
                try:
                    if held and target.rate_limit_per_second > 0:
                        granted, wait = ratelimit.take_tokens(RATE_PROVIDER, str(endpoint_id), target.rate_limit_per_second, held)
                        if not granted and not in_flight:
                            _release_slots(held)
                            time.sleep(min(wait, 1.0))
                            continue
                    claimed = claim(endpoint_id, granted) if granted else []
                except BaseException:  # Redis or PostgreSQL gone mid-claim: the slots go back, or they leak for good
                    _release_slots(held)
                    raise
                _release_slots(held - len(claimed))
                if claimed and claimed[0]["endpoint_updated_at"] != target.updated_at:
                    forget(endpoint_id)  # changed since cached: sign and send with what it is now
                    changed = endpoint(endpoint_id)
                    if changed is None:
                        _release_slots(len(claimed))
                        claimed = []  # deleted meanwhile: its deliveries went with it
                    elif changed.rate_limit_per_second != target.rate_limit_per_second:
                        unclaim(claimed)  # taken at the old pace: take them again at the new one
                        _release_slots(len(claimed))
                        target = changed
                        continue
                    target = changed
            for row in claimed:  # each holds a call slot already
                in_flight += 1
                assert target is not None
                _attempts.submit(_attempt_into, target, row, done)
            if not in_flight:
                with state.lock:
                    if state.dirty and time.monotonic() < deadline:
                        state.dirty = False
                        continue
                    state.running = False
                    more = state.dirty or time.monotonic() >= deadline
                if more:  # the budget ran out or a kick arrived meanwhile: the broker has it next
                    dispatch.to_stage("webhooks", lane, [endpoint_id])
                return
            outcomes = _gather(done)
            in_flight -= len(outcomes)
            record(endpoint_id, outcomes, lane, was_failing=any(o.delivery["endpoint_failing"] for o in outcomes))
    except BaseException:
        with state.lock:
            state.running = False
        raise


def _take_slots(wanted: int, *, wait: bool) -> int:
    """Up to ``wanted`` of the process's call slots: waits for the first only when ``wait``, then
    takes whatever else is free (never holding part of a need while waiting for the rest)."""
    held = 0
    while held < wanted and _calls.acquire(blocking=wait and held == 0, timeout=1.0 if wait and held == 0 else None):
        held += 1
    return held


def _release_slots(count: int) -> None:
    for _ in range(count):
        _calls.release()


def _gather(done: queue.SimpleQueue[Outcome]) -> list[Outcome]:
    """At least one finished attempt, and whatever else finishes within a few milliseconds: one
    statement records them all."""
    outcomes = [done.get()]
    linger = time.monotonic() + 0.005
    while True:
        try:
            outcomes.append(done.get(timeout=max(0.0, linger - time.monotonic())))
        except queue.Empty:
            return outcomes


def claim(endpoint_id: int, limit: int) -> list[dict[str, Any]]:
    """Move up to ``limit`` of the endpoint's due deliveries to ``delivering`` (one statement)."""
    with transaction():
        rows = fetch_dicts(
            """
            WITH picked AS (
                SELECT d.id FROM webhook_delivery d JOIN webhook_endpoint e ON e.id = d.endpoint_id
                WHERE d.endpoint_id = %(e)s AND d.status = 'pending' AND d.due_at <= now()
                  AND e.enabled AND (e.paused_until IS NULL OR e.paused_until <= now())
                ORDER BY d.rank, d.id LIMIT %(n)s
                FOR UPDATE OF d SKIP LOCKED
            )
            UPDATE webhook_delivery d SET status = 'delivering', claimed_at = now(), attempts = d.attempts + 1
            FROM picked, webhook_endpoint e WHERE d.id = picked.id AND e.id = d.endpoint_id
            RETURNING d.id, d.event_key, d.event_type, d.body, d.attempts, d.failures, e.updated_at AS endpoint_updated_at,
                      e.failing_since IS NOT NULL AS endpoint_failing
            """,
            {"e": endpoint_id, "n": limit}, prepared=True)
    release_connection()
    return rows


def unclaim(rows: Sequence[dict[str, Any]]) -> None:
    """Give claimed, unsent deliveries back as they were."""
    with transaction():
        fetch("UPDATE webhook_delivery SET status = 'pending', attempts = attempts - 1, claimed_at = NULL"
              " WHERE id = ANY(%s) AND status = 'delivering'", ([r["id"] for r in rows],))
    release_connection()


def _attempt_into(target: Endpoint, row: dict[str, Any], done: queue.SimpleQueue[Outcome]) -> None:
    try:
        outcome = attempt(target, row)
    except Exception as exc:  # a bug must not leave the loop waiting for this attempt
        log.exception("webhook delivery %s failed unexpectedly", row["id"])
        outcome = _failure(row, None, f"internal error: {exc!r}")
    finally:
        _calls.release()
    metrics.WEBHOOK_DELIVERIES.labels(outcome=outcome.kind).observe((outcome.latency_ms or 0) / 1000)
    done.put(outcome)


def attempt(target: Endpoint, row: dict[str, Any]) -> Outcome:
    """POST one delivery to its endpoint and classify the answer."""
    body = row["body"].encode()
    headers = {**target.headers, **signing.headers(target.secrets, row["event_key"], int(time.time()), body,
                                                   event_type=row["event_type"], attempt=row["attempts"])}
    timeout = settings.postroom_webhook_timeout_seconds
    started = time.perf_counter()
    try:
        response = pool().request("POST", target.url, body=body, headers=headers, redirect=False, retries=False,
                                  preload_content=False, timeout=urllib3.Timeout(connect=min(5.0, timeout), read=timeout))
        try:
            kept = _read_some(response, time.monotonic() + timeout)
        finally:
            _finish(response)
    except BlockedAddress as exc:
        outcome = _failure(row, None, f"refused: {exc}")
        outcome.kind = "blocked" if outcome.kind == "retried" else outcome.kind
        return outcome
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        outcome = _failure(row, None, _describe(exc))
        outcome.latency_ms = (time.perf_counter() - started) * 1000
        return outcome
    latency = (time.perf_counter() - started) * 1000
    code = response.status
    if 200 <= code < 300:
        return Outcome(row, "succeeded", code, None, latency, kept)
    if code == 410:
        return Outcome(row, "failed", code, "410 Gone: the endpoint is disabled", latency, kept, gone=True)
    if code in THROTTLE_CODES:
        if row["attempts"] >= MAX_THROTTLED_ATTEMPTS:
            return Outcome(row, "failed", code, f"HTTP {code}: still throttled after {row['attempts']} attempts", latency, kept)
        wait = _retry_after(response.headers.get("Retry-After"))
        return Outcome(row, "throttled", code, f"HTTP {code}: throttled for {wait:g}s", latency, kept, delay=wait)
    reason = f"HTTP {code}" + (" (redirects are not followed)" if 300 <= code < 400 else "")
    outcome = _failure(row, code, reason)
    outcome.latency_ms, outcome.response = latency, kept
    return outcome


def _failure(row: dict[str, Any], code: int | None, error: str) -> Outcome:
    """A failed attempt: the next step of the retry schedule, or the end of it."""
    schedule = settings.webhook_retry_schedule
    failures = row["failures"] + 1
    if failures < len(schedule):
        return Outcome(row, "retried", code, error, delay=schedule[failures])
    return Outcome(row, "failed", code, f"{error}; gave up after {failures} attempts")


def _read_some(response: urllib3.BaseHTTPResponse, deadline: float) -> str:
    """The first KiB of the answer, read in small pieces until ``deadline`` (a receiver that drips
    its answer does not hold the call: the per-read timeout alone would let it)."""
    data = b""
    while len(data) < RESPONSE_KEPT and time.monotonic() < deadline:
        chunk = response.read(min(256, RESPONSE_KEPT - len(data)))
        if not chunk:
            break
        data += chunk
    return data[:RESPONSE_KEPT].decode("utf-8", "replace")


def _finish(response: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back for reuse when the answer was read whole, else close it (the rest
    of a large or slow answer is not waited for)."""
    if response.length_remaining == 0:
        response.release_conn()
    else:
        response.close()
        response.release_conn()


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value is not None else DEFAULT_RETRY_AFTER
    except ValueError:
        seconds = DEFAULT_RETRY_AFTER  # an HTTP date or junk: the default pause
    return min(max(seconds, MIN_RETRY_AFTER), MAX_RETRY_AFTER)  # never 0: that would be a hot loop


def _describe(exc: Exception) -> str:
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return f"timed out after {settings.postroom_webhook_timeout_seconds:g}s"
    if isinstance(exc, urllib3.exceptions.NewConnectionError | urllib3.exceptions.NameResolutionError | ConnectionError):
        return f"connection failed: {type(exc).__name__}"
    return f"request failed: {type(exc).__name__}: {exc}"[:500]


_RECORD = """
WITH v AS (
    SELECT unnest(%(ids)s::bigint[]) AS id, unnest(%(status)s::text[]) AS status, unnest(%(fail)s::int[]) AS fail,
           unnest(%(delay)s::float8[]) AS delay, unnest(%(code)s::int[]) AS code, unnest(%(error)s::text[]) AS error,
           unnest(%(latency)s::float8[]) AS latency, unnest(%(response)s::text[]) AS response
), moved AS (
    -- a retry for an endpoint disabled meanwhile fails now: a disabled endpoint is sent nothing
    UPDATE webhook_delivery d
       SET status = CASE WHEN v.status = 'pending' AND NOT e.enabled THEN 'failed' ELSE v.status END,
           failures = d.failures + v.fail, claimed_at = NULL,
           due_at = CASE WHEN v.status = 'pending' THEN now() + v.delay * interval '1 second' ELSE d.due_at END,
           finished_at = CASE WHEN v.status <> 'pending' OR NOT e.enabled THEN now() END,
           last_status_code = v.code, last_error = v.error
    FROM v, webhook_endpoint e WHERE d.id = v.id AND d.status = 'delivering' AND e.id = d.endpoint_id
    RETURNING d.id, d.endpoint_id, d.attempts, d.status, d.due_at, v.code, v.error, v.latency, v.response
)
INSERT INTO webhook_attempt (delivery_id, endpoint_id, attempt, status_code, latency_ms, response, error, next_attempt_at)
SELECT id, endpoint_id, attempts, code, latency, response, error, CASE WHEN status = 'pending' THEN due_at END FROM moved
"""


def record(endpoint_id: int, outcomes: Sequence[Outcome], lane: str, *, was_failing: bool = True) -> None:
    """Record the attempts and what they mean for the endpoint, then kick its near retries.
    ``was_failing``: the endpoint had a failure record when these were claimed (a success clears it)."""
    status = {"succeeded": "succeeded", "failed": "failed", "retried": "pending", "blocked": "pending", "throttled": "pending"}
    params = {
        "ids": [o.delivery["id"] for o in outcomes],
        "status": [status[o.kind] for o in outcomes],
        "fail": [1 if o.kind in ("retried", "blocked", "failed") else 0 for o in outcomes],
        "delay": [o.delay for o in outcomes],
        "code": [o.status_code for o in outcomes],
        "error": [o.error for o in outcomes],
        "latency": [o.latency_ms for o in outcomes],
        "response": [o.response for o in outcomes],
    }
    pause = max((o.delay for o in outcomes if o.kind == "throttled"), default=0.0)
    succeeded = any(o.kind == "succeeded" for o in outcomes)
    # A throttle spends no retry, but an endpoint that only throttles is not succeeding either.
    failed = any(o.kind in ("retried", "blocked", "failed", "throttled") for o in outcomes)
    gone = any(o.gone for o in outcomes)
    disabled: list[dict[str, Any]] = []
    with transaction():
        fetch(_RECORD, params, prepared=True)
        if pause:
            fetch("UPDATE webhook_endpoint SET paused_until = greatest(coalesce(paused_until, now()), now() + %s * interval '1 second')"
                  " WHERE id = %s", (pause, endpoint_id))
        if succeeded and was_failing:
            fetch("UPDATE webhook_endpoint SET failing_since = NULL WHERE id = %s AND failing_since IS NOT NULL", (endpoint_id,))
        elif failed:
            fetch("UPDATE webhook_endpoint SET failing_since = now() WHERE id = %s AND failing_since IS NULL", (endpoint_id,))
        if gone:
            disabled = disable(endpoint_id, "gone", "the endpoint answered 410 Gone")
        elif failed and not succeeded:
            disabled = disable(endpoint_id, "failing", f"no successful delivery for {settings.postroom_webhook_disable_after_hours:g} hours",
                               failing_for_hours=settings.postroom_webhook_disable_after_hours)
    release_connection()
    if disabled:
        forget(endpoint_id)
    soon = [o.delay for o in outcomes if o.kind in ("retried", "blocked", "throttled") and o.delay <= lifecycle.SHORT_WAIT_SECONDS]
    if soon and not disabled:  # near retries ride on a broker delay; the scheduler covers a lost one
        dispatch.to_stage("webhooks", lane, [endpoint_id], delay_ms=int(min(soon) * 1000) + 1)


def disable(endpoint_id: int, reason: str, detail: str, *, failing_for_hours: float | None = None) -> list[dict[str, Any]]:
    """Disable the endpoint (when failing, only if it has failed that long), fail its pending
    deliveries, and write a ``webhook_endpoint.disabled`` event for the workspace's other endpoints.
    Runs inside the caller's transaction; returns the disabled endpoint (empty if it was not)."""
    condition = "AND failing_since <= now() - %(hours)s * interval '1 hour'" if failing_for_hours is not None else ""
    rows = fetch_dicts(
        f"""
        WITH off AS (
            UPDATE webhook_endpoint SET enabled = false, disabled_reason = %(detail)s, updated_at = now()
            WHERE id = %(e)s AND enabled {condition}
            RETURNING id, workspace_id, url
        ), dropped AS (
            UPDATE webhook_delivery SET status = 'failed', finished_at = now(), last_error = 'endpoint disabled: ' || %(detail)s
            WHERE endpoint_id IN (SELECT id FROM off) AND status = 'pending'
        ), ev AS (
            INSERT INTO outbox (workspace_id, event_type, payload, lane)
            SELECT workspace_id, %(type)s, jsonb_build_object('endpoint_id', id, 'url', url, 'reason', %(detail)s), 'urgent'
            FROM off WHERE {events.subscribed_sql("off.workspace_id", "%(type)s")}
        )
        SELECT id, workspace_id FROM off
        """,
        {"e": endpoint_id, "detail": detail, "hours": failing_for_hours, "type": events.ENDPOINT_DISABLED})
    if rows:
        metrics.ENDPOINTS_DISABLED.labels(reason=reason).inc()
        log.warning("webhook endpoint %s disabled: %s", endpoint_id, detail)
    return rows
