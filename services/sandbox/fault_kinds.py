"""The vocabulary of the sandbox's fault plans: the keys a fault request may use, and its entries.

``faults.FaultPlan`` holds entries of these kinds; this module also checks the values of a
``POST /sandbox/faults`` body (a bad value is a ``FaultRequestError``, answered 400).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CALLBACK_FAILURE_STATUSES = {"undelivered": 30003, "failed": 30008}  # status -> default ErrorCode
DEFAULT_CALLBACK_DELAY_MS = 50
DEFAULT_RETRY_AFTER_SECONDS = 1
DEFAULT_HANG_SECONDS = 30.0
DEFAULT_RATE_ERROR_HTTP_STATUS = 500
THROTTLE_CODE, THROTTLE_HTTP_STATUS = 20429, 429
DROP, HANG = "drop", "hang"  # the ways an answer is lost after the message was recorded

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
        "throttle_burst",  # N: the next N sends answer 429 / 20429 with Retry-After
        "error_rate",  # 0..1 of sends fail with error_code / http_status (default 500)
        "drop_after_receive",  # true: the next `count` sends are recorded, then the connection is cut
        "timeout_after_receive",  # true: the next `count` sends are recorded, then the answer hangs
        "drop_rate",  # 0..1 of recorded sends get no answer: the connection is cut
        "timeout_rate",  # 0..1 of recorded sends get their answer only after hang_seconds
        "hang_seconds",  # how long a hung answer is held (default 30)
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
class RateError:
    """A share ``rate`` of send calls fail with this provider error, until reset."""

    rate: float
    error_code: int
    http_status: int
    retry_after: int | None


@dataclass
class InjectedLostAnswer:
    """The next ``remaining`` recorded sends lose their answer in this way (``drop`` or ``hang``)."""

    kind: str
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


def integer(payload: Mapping[str, object], key: str, minimum: int) -> int:
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FaultRequestError(f"{key!r} must be an integer >= {minimum}, not {value!r}")
    return value


def number(payload: Mapping[str, object], key: str, minimum: float, maximum: float) -> float:
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not minimum <= value <= maximum:
        raise FaultRequestError(f"{key!r} must be a number from {minimum:g} to {maximum:g}, not {value!r}")
    return float(value)


def boolean(payload: Mapping[str, object], key: str) -> bool:
    value = payload[key]
    if not isinstance(value, bool):
        raise FaultRequestError(f"{key!r} must be true or false, not {value!r}")
    return value
