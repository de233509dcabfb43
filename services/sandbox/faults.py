"""The faults the sandbox injects on demand: errors on send calls, lost answers, latency, callbacks.

A ``FaultPlan`` is changed through ``POST /sandbox/faults`` and read by a provider imitation on
every send call. Errors, lost answers and callback outcomes are queues consumed in the order they
were asked for (each entry for its ``count`` calls); rates (``error_rate``, ``drop_rate``,
``timeout_rate``), latency and the callback switches stay until changed or reset. A lost answer
happens *after* the message was recorded — the provider took it, the client never hears so:
``drop`` cuts the connection without an HTTP answer, ``hang`` holds the answer for
``hang_seconds``, far past any client's read timeout. Which HTTP status goes with an error code
is the provider's business, so the plan is given the provider's mapping both ways.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict

from services.sandbox.fault_kinds import (
    CALLBACK_FAILURE_STATUSES,
    DEFAULT_CALLBACK_DELAY_MS,
    DEFAULT_HANG_SECONDS,
    DEFAULT_RATE_ERROR_HTTP_STATUS,
    DEFAULT_RETRY_AFTER_SECONDS,
    DROP,
    HANG,
    KNOWN_KEYS,
    THROTTLE_CODE,
    THROTTLE_HTTP_STATUS,
    CallbackBehaviour,
    FaultRequestError,
    InjectedCallbackOutcome,
    InjectedLostAnswer,
    InjectedSendError,
    RateError,
    boolean,
    integer,
    number,
)

__all__ = ["DROP", "HANG", "CallbackBehaviour", "FaultPlan", "FaultRequestError", "InjectedCallbackOutcome"]


class FaultPlan:
    """Fault state for one provider imitation, shared by every request and greenlet."""

    def __init__(
        self,
        initial_latency_ms: int,
        http_status_for_code: Callable[[int], int],
        error_code_for_http_status: Callable[[int], int],
    ) -> None:
        self._lock = threading.Lock()
        self._random = random.Random()
        self._initial_latency_ms = initial_latency_ms
        self._http_status_for_code = http_status_for_code
        self._error_code_for_http_status = error_code_for_http_status
        self.reset()

    def reset(self) -> None:
        """Back to no faults, with the configured latency."""
        with self._lock:
            self._send_errors: deque[InjectedSendError] = deque()
            self._lost_answers: deque[InjectedLostAnswer] = deque()
            self._callback_outcomes: deque[InjectedCallbackOutcome] = deque()
            self._rate_error: RateError | None = None
            self._drop_rate = self._timeout_rate = 0.0
            self._hang_seconds = DEFAULT_HANG_SECONDS
            self._latency_ms = self._initial_latency_ms
            self._callback_delay_ms = DEFAULT_CALLBACK_DELAY_MS
            self._drop = self._duplicate = self._shuffle = False

    def apply(self, payload: object) -> None:
        """Add the faults described by a ``POST /sandbox/faults`` body; all or nothing."""
        if not isinstance(payload, dict) or not payload:
            raise FaultRequestError("expected a non-empty JSON object")
        unknown = set(payload) - KNOWN_KEYS
        if unknown:
            raise FaultRequestError(f"unknown keys {sorted(unknown)}; known: {sorted(KNOWN_KEYS)}")
        count = integer(payload, "count", 1) if "count" in payload else 1
        rate_error = self._parse_rate_error(payload)
        send_error = None if rate_error is not None else self._parse_send_error(payload, count)
        lost = [InjectedLostAnswer(kind, count) for key, kind in
                (("drop_after_receive", DROP), ("timeout_after_receive", HANG))
                if key in payload and boolean(payload, key)]
        rates = {k: number(payload, k, 0, 1) for k in ("drop_rate", "timeout_rate") if k in payload}
        hang = number(payload, "hang_seconds", 0, 3600) if "hang_seconds" in payload else None
        outcome = self._parse_callback_outcome(payload, count)
        switches = {
            k: boolean(payload, k)
            for k in ("drop_callbacks", "duplicate_callbacks", "shuffle_callbacks")
            if k in payload
        }
        latency = integer(payload, "latency_ms", 0) if "latency_ms" in payload else None
        delay = (
            integer(payload, "callback_delay_ms", 0) if "callback_delay_ms" in payload else None
        )
        with self._lock:
            if send_error is not None:
                self._send_errors.append(send_error)
            if rate_error is not None:
                self._rate_error = rate_error if rate_error.rate > 0 else None
            self._lost_answers.extend(lost)
            self._drop_rate = rates.get("drop_rate", self._drop_rate)
            self._timeout_rate = rates.get("timeout_rate", self._timeout_rate)
            if hang is not None:
                self._hang_seconds = hang
            if outcome is not None:
                self._callback_outcomes.append(outcome)
            if latency is not None:
                self._latency_ms = latency
            if delay is not None:
                self._callback_delay_ms = delay
            self._drop = switches.get("drop_callbacks", self._drop)
            self._duplicate = switches.get("duplicate_callbacks", self._duplicate)
            self._shuffle = switches.get("shuffle_callbacks", self._shuffle)

    def _error_of(self, payload: Mapping[str, object], default_status: int) -> tuple[int, int]:
        """(error code, HTTP status) from ``error_code`` and/or ``http_status``."""
        if "error_code" in payload:
            code = integer(payload, "error_code", 1)
            status = (
                integer(payload, "http_status", 400)
                if "http_status" in payload
                else self._http_status_for_code(code)
            )
        else:
            status = integer(payload, "http_status", 400) if "http_status" in payload else default_status
            code = self._error_code_for_http_status(status)
        return code, status

    @staticmethod
    def _retry_after(payload: Mapping[str, object], status: int) -> int | None:
        retry_after = integer(payload, "retry_after", 0) if "retry_after" in payload else None
        if retry_after is None and status == THROTTLE_HTTP_STATUS:
            retry_after = DEFAULT_RETRY_AFTER_SECONDS
        return retry_after

    def _parse_rate_error(self, payload: Mapping[str, object]) -> RateError | None:
        if "error_rate" not in payload:
            return None
        if "count" in payload or "throttle_burst" in payload:
            raise FaultRequestError("'error_rate' stays until reset: it takes no 'count' or 'throttle_burst'")
        rate = number(payload, "error_rate", 0, 1)
        code, status = self._error_of(payload, DEFAULT_RATE_ERROR_HTTP_STATUS)
        return RateError(rate, code, status, self._retry_after(payload, status))

    def _parse_send_error(
        self, payload: Mapping[str, object], count: int
    ) -> InjectedSendError | None:
        if "throttle_burst" in payload:
            if "error_code" in payload or "http_status" in payload or "count" in payload:
                raise FaultRequestError("'throttle_burst' is its own count and error: no 'count', 'error_code' or 'http_status'")
            burst = integer(payload, "throttle_burst", 1)
            return InjectedSendError(THROTTLE_CODE, THROTTLE_HTTP_STATUS,
                                     self._retry_after(payload, THROTTLE_HTTP_STATUS), burst)
        if "error_code" not in payload and "http_status" not in payload:
            if "retry_after" in payload:
                raise FaultRequestError("'retry_after' needs 'error_code', 'http_status' or 'throttle_burst'")
            return None
        code, status = self._error_of(payload, DEFAULT_RATE_ERROR_HTTP_STATUS)
        return InjectedSendError(code, status, self._retry_after(payload, status), count)

    @staticmethod
    def _parse_callback_outcome(
        payload: Mapping[str, object], count: int
    ) -> InjectedCallbackOutcome | None:
        if "callback_outcome" not in payload:
            return None
        outcome = payload["callback_outcome"]
        if not isinstance(outcome, dict) or outcome.get("status") not in CALLBACK_FAILURE_STATUSES:
            raise FaultRequestError(
                f"'callback_outcome' must be an object with 'status' in {sorted(CALLBACK_FAILURE_STATUSES)}"
            )
        status = str(outcome["status"])
        code = (
            integer(outcome, "error_code", 1)
            if "error_code" in outcome
            else CALLBACK_FAILURE_STATUSES[status]
        )
        return InjectedCallbackOutcome(status, code, count)

    def take_send_error(self) -> InjectedSendError | None:
        """The error the current send call must fail with, if any (consumes one queued use)."""
        with self._lock:
            if self._send_errors:
                head = self._send_errors[0]
                head.remaining -= 1
                if head.remaining == 0:
                    self._send_errors.popleft()
                return InjectedSendError(head.error_code, head.http_status, head.retry_after, 1)
            rated = self._rate_error
            if rated is not None and self._random.random() < rated.rate:
                return InjectedSendError(rated.error_code, rated.http_status, rated.retry_after, 1)
            return None

    def take_lost_answer(self) -> str | None:
        """How the answer to a just-recorded send is lost (``DROP`` or ``HANG``), if it is."""
        with self._lock:
            if self._lost_answers:
                head = self._lost_answers[0]
                head.remaining -= 1
                if head.remaining == 0:
                    self._lost_answers.popleft()
                return head.kind
            draw = self._random.random()
            if draw < self._drop_rate:
                return DROP
            if draw < self._drop_rate + self._timeout_rate:
                return HANG
            return None

    def take_callback_outcome(self) -> InjectedCallbackOutcome | None:
        """The failure an accepted message must end in, if any (consumes one use)."""
        with self._lock:
            if not self._callback_outcomes:
                return None
            head = self._callback_outcomes[0]
            head.remaining -= 1
            if head.remaining == 0:
                self._callback_outcomes.popleft()
            return InjectedCallbackOutcome(head.status, head.error_code, 1)

    def latency_seconds(self) -> float:
        with self._lock:
            return self._latency_ms / 1000.0

    def hang_seconds(self) -> float:
        with self._lock:
            return self._hang_seconds

    def callback_behaviour(self) -> CallbackBehaviour:
        with self._lock:
            return CallbackBehaviour(
                self._drop, self._duplicate, self._shuffle, self._callback_delay_ms / 1000.0
            )

    def as_json(self) -> dict[str, object]:
        with self._lock:
            return {
                "latency_ms": self._latency_ms,
                "callback_delay_ms": self._callback_delay_ms,
                "drop_callbacks": self._drop,
                "duplicate_callbacks": self._duplicate,
                "shuffle_callbacks": self._shuffle,
                "send_errors": [asdict(e) for e in self._send_errors],
                "error_rate": asdict(self._rate_error) if self._rate_error else None,
                "lost_answers": [asdict(a) for a in self._lost_answers],
                "drop_rate": self._drop_rate,
                "timeout_rate": self._timeout_rate,
                "hang_seconds": self._hang_seconds,
                "callback_outcomes": [asdict(o) for o in self._callback_outcomes],
            }
