"""The faults the sandbox injects on demand: errors on send calls, latency, and callback misbehaviour.

A ``FaultPlan`` is changed through ``POST /sandbox/faults`` and read by a provider imitation on
every send call. Errors and callback outcomes are queues consumed in the order they were asked
for (each entry for its ``count`` calls); latency and the callback switches stay until changed or
reset. Which HTTP status goes with an error code is the provider's business, so the plan is given
the provider's mapping both ways.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

CALLBACK_FAILURE_STATUSES = {"undelivered": 30003, "failed": 30008}  # status -> default ErrorCode
DEFAULT_CALLBACK_DELAY_MS = 50
DEFAULT_RETRY_AFTER_SECONDS = 1

KNOWN_KEYS = frozenset(
    {
        "error_code",
        "http_status",
        "retry_after",
        "count",
        "latency_ms",
        "callback_delay_ms",
        "drop_callbacks",
        "duplicate_callbacks",
        "shuffle_callbacks",
        "callback_outcome",
    }
)


class FaultRequestError(ValueError):
    """A fault request that cannot be understood; the control API answers 400 with its text."""


@dataclass
class InjectedSendError:
    """The next ``remaining`` send calls fail with this provider error."""

    error_code: int
    http_status: int
    retry_after: int | None
    remaining: int


@dataclass
class InjectedCallbackOutcome:
    """The next ``remaining`` accepted messages end in ``status`` with ``error_code``."""

    status: str
    error_code: int
    remaining: int


@dataclass(frozen=True)
class CallbackBehaviour:
    """How the callbacks of one accepted message are to be sent, fixed when it is accepted."""

    drop: bool
    duplicate: bool
    shuffle: bool
    delay_seconds: float


def _integer(payload: Mapping[str, object], key: str, minimum: int) -> int:
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FaultRequestError(f"{key!r} must be an integer >= {minimum}, not {value!r}")
    return value


def _boolean(payload: Mapping[str, object], key: str) -> bool:
    value = payload[key]
    if not isinstance(value, bool):
        raise FaultRequestError(f"{key!r} must be true or false, not {value!r}")
    return value


class FaultPlan:
    """Fault state for one provider imitation, shared by every request and greenlet."""

    def __init__(
        self,
        initial_latency_ms: int,
        http_status_for_code: Callable[[int], int],
        error_code_for_http_status: Callable[[int], int],
    ) -> None:
        self._lock = threading.Lock()
        self._initial_latency_ms = initial_latency_ms
        self._http_status_for_code = http_status_for_code
        self._error_code_for_http_status = error_code_for_http_status
        self.reset()

    def reset(self) -> None:
        """Back to no faults, with the configured latency."""
        with self._lock:
            self._send_errors: deque[InjectedSendError] = deque()
            self._callback_outcomes: deque[InjectedCallbackOutcome] = deque()
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
        count = _integer(payload, "count", 1) if "count" in payload else 1
        send_error = self._parse_send_error(payload, count)
        outcome = self._parse_callback_outcome(payload, count)
        switches = {
            k: _boolean(payload, k)
            for k in ("drop_callbacks", "duplicate_callbacks", "shuffle_callbacks")
            if k in payload
        }
        latency = _integer(payload, "latency_ms", 0) if "latency_ms" in payload else None
        delay = (
            _integer(payload, "callback_delay_ms", 0) if "callback_delay_ms" in payload else None
        )
        with self._lock:
            if send_error is not None:
                self._send_errors.append(send_error)
            if outcome is not None:
                self._callback_outcomes.append(outcome)
            if latency is not None:
                self._latency_ms = latency
            if delay is not None:
                self._callback_delay_ms = delay
            self._drop = switches.get("drop_callbacks", self._drop)
            self._duplicate = switches.get("duplicate_callbacks", self._duplicate)
            self._shuffle = switches.get("shuffle_callbacks", self._shuffle)

    def _parse_send_error(
        self, payload: Mapping[str, object], count: int
    ) -> InjectedSendError | None:
        if "error_code" not in payload and "http_status" not in payload:
            if "retry_after" in payload:
                raise FaultRequestError("'retry_after' needs 'error_code' or 'http_status'")
            return None
        if "error_code" in payload:
            code = _integer(payload, "error_code", 1)
            status = (
                _integer(payload, "http_status", 400)
                if "http_status" in payload
                else self._http_status_for_code(code)
            )
        else:
            status = _integer(payload, "http_status", 400)
            code = self._error_code_for_http_status(status)
        retry_after = _integer(payload, "retry_after", 0) if "retry_after" in payload else None
        if retry_after is None and status == 429:
            retry_after = DEFAULT_RETRY_AFTER_SECONDS
        return InjectedSendError(code, status, retry_after, count)

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
            _integer(outcome, "error_code", 1)
            if "error_code" in outcome
            else CALLBACK_FAILURE_STATUSES[status]
        )
        return InjectedCallbackOutcome(status, code, count)

    def take_send_error(self) -> InjectedSendError | None:
        """The error the current send call must fail with, if any (consumes one use)."""
        with self._lock:
            if not self._send_errors:
                return None
            head = self._send_errors[0]
            head.remaining -= 1
            if head.remaining == 0:
                self._send_errors.popleft()
            return InjectedSendError(head.error_code, head.http_status, head.retry_after, 1)

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
                "callback_outcomes": [asdict(o) for o in self._callback_outcomes],
            }
