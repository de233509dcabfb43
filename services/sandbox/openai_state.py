"""The OpenAI imitation's state: known keys, the record of requests, and the faults to inject.

Everything here is shared by every greenlet of the sandbox's one process, so one lock guards it.
Requests are recorded *on arrival* — before any latency or check — so a test can see a call in
flight (``in_flight``) and the safety tests can read every byte postroom sent: the body as it
arrived and the headers, except ``Authorization``, of which only a SHA-256 is kept (a test asks
"was this key sent?" by hashing it, and the record itself never holds a credential).

Faults (``POST /sandbox/openai/faults``): an ``error`` (or a bare ``http_status``) and
``malformed`` are queued for the next ``count`` (default 1) completions, in the order asked for;
``latency_ms``, ``omit_usage`` and ``obey_injection`` stay until reset.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from services.sandbox.fault_kinds import FaultRequestError, boolean, integer

DEFAULT_KEY = "sk-sandbox"
DEFAULT_MODELS = ("sandbox-chat", "gpt-4o-mini")
MAX_RECORDS = 20_000  # requests kept for inspection; older ones are forgotten
DEFAULT_RETRY_AFTER_SECONDS = 1

# error name -> (HTTP status, OpenAI error type, OpenAI error code). OpenAI answers an exhausted
# account with HTTP 429 too: only the code tells it from a rate limit.
ERRORS: dict[str, tuple[int, str, str | None]] = {
    "rate_limit_exceeded": (429, "requests", "rate_limit_exceeded"),
    "insufficient_quota": (429, "insufficient_quota", "insufficient_quota"),
    "invalid_api_key": (401, "invalid_request_error", "invalid_api_key"),
    "model_not_found": (404, "invalid_request_error", "model_not_found"),
    "server_error": (500, "server_error", None),
}
MALFORMED_KINDS = frozenset({
    "not_json",  # content is prose, not the JSON object asked for
    "length",  # finish_reason "length": the JSON is cut off
    "null_content",  # message.content is null
    "tool_calls",  # the model answers with a tool call, though it was given no tools
    "both",  # {"reply": …, "handoff": true}: not exactly one of the two
    "bad_body",  # HTTP 200 whose body is not JSON at all
})
_Entry = TypeVar("_Entry", "InjectedError", "InjectedMalformed")
FAULT_KEYS = frozenset({"error", "http_status", "retry_after", "count", "latency_ms", "malformed",
                        "omit_usage", "obey_injection"})


def utc_now() -> datetime:
    return datetime.now(UTC)


def key_hash(key: str) -> str:
    """The hex SHA-256 the record keeps in place of a bearer key (tests hash theirs to compare)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class InjectedError:
    """The next ``remaining`` completions answer this OpenAI error."""

    error: str
    http_status: int
    error_type: str
    code: str | None
    retry_after: int | None
    remaining: int


@dataclass
class InjectedMalformed:
    """The next ``remaining`` completions answer 200 with output of this malformed kind."""

    kind: str
    remaining: int


@dataclass
class RecordedRequest:
    """One request as it arrived, and how it was answered (filled in when it was)."""

    id: int
    method: str
    path: str
    headers: dict[str, str]  # every header but Authorization
    authorization_sha256: str | None  # SHA-256 of the bearer key, or None when none was sent
    body: Any  # the parsed JSON, or the raw text when it was not JSON
    arrived_at: datetime = field(default_factory=utc_now)
    answered_at: datetime | None = None
    status: int | None = None
    usage: dict[str, int] | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["arrived_at"] = self.arrived_at.isoformat(timespec="microseconds")
        data["answered_at"] = self.answered_at.isoformat(timespec="microseconds") if self.answered_at else None
        return data


class OpenAIState:
    """Keys, requests and faults of the OpenAI imitation; greenlet-safe."""

    def __init__(self, initial_latency_ms: int = 0) -> None:
        self._lock = threading.Lock()
        self._initial_latency_ms = initial_latency_ms
        self._in_flight = 0  # a gauge: a reset while calls are in flight keeps counting them
        self.reset()

    # -- keys -------------------------------------------------------------------------------
    def reset(self) -> None:
        """No extra keys, no records, no faults: a fresh provider."""
        with self._lock:
            self._keys = {key_hash(DEFAULT_KEY)}
            self._anonymous = False
            self._models: list[str] = list(DEFAULT_MODELS)
            self._records: deque[RecordedRequest] = deque(maxlen=MAX_RECORDS)
            self._next_id = 1
            self._max_in_flight = self._in_flight
            self._counts: Counter[str] = Counter()
        self.reset_faults()

    def add_key(self, payload: object) -> None:
        """``{"key": "sk-…"}`` adds an accepted key; ``{"anonymous": true}`` accepts no key at all
        (a local server such as Ollama that takes none)."""
        if not isinstance(payload, dict) or not payload or set(payload) - {"key", "anonymous"}:
            raise FaultRequestError('expected {"key": "<bearer key>"} and/or {"anonymous": true|false}')
        key = payload.get("key")
        if key is not None and (not isinstance(key, str) or not key.strip()):
            raise FaultRequestError("'key' must be a non-empty string")
        anonymous = boolean(payload, "anonymous") if "anonymous" in payload else None
        with self._lock:
            if key is not None:
                self._keys.add(key_hash(key))
            if anonymous is not None:
                self._anonymous = anonymous

    def accepts(self, bearer: str | None) -> bool:
        with self._lock:
            if bearer is None:
                return self._anonymous
            return key_hash(bearer) in self._keys

    def models(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def saw_model(self, model: str) -> None:
        """A model asked for is listed from then on, as a server that serves anything would."""
        with self._lock:
            if model not in self._models and len(self._models) < 100:
                self._models.append(model)

    # -- records ----------------------------------------------------------------------------
    def arrived(self, method: str, path: str, headers: Mapping[str, str], bearer: str | None,
                body: Any) -> RecordedRequest:
        """Record a request the moment it arrives; it counts as in flight until ``answered``."""
        kept = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        with self._lock:
            record = RecordedRequest(self._next_id, method, path, kept,
                                     key_hash(bearer) if bearer is not None else None, body)
            self._next_id += 1
            self._records.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._counts["requests"] += 1
        return record

    def answered(self, record: RecordedRequest, status: int, usage: dict[str, int] | None = None) -> None:
        with self._lock:
            record.answered_at, record.status, record.usage = utc_now(), status, usage
            self._in_flight -= 1
            self._counts["answered" if status == 200 else "refused"] += 1
            if usage:
                for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
                    self._counts[name] += usage[name]

    def count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def listing(self, after: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [r.as_json() for r in self._records if r.id > after]

    def clear_records(self) -> None:
        """Forget the recorded requests and zero the counters (requests in flight stay counted)."""
        with self._lock:
            self._records.clear()
            self._counts.clear()
            self._max_in_flight = self._in_flight

    def stats(self) -> dict[str, int]:
        with self._lock:
            names = ("requests", "answered", "refused", "errors_injected", "malformed_injected",
                     "prompt_tokens", "completion_tokens", "total_tokens")
            stats = {name: self._counts[name] for name in names}
            stats["in_flight"], stats["max_in_flight"] = self._in_flight, self._max_in_flight
            stats["recorded"] = len(self._records)
            return stats

    # -- faults -----------------------------------------------------------------------------
    def reset_faults(self) -> None:
        with self._lock:
            self._errors: deque[InjectedError] = deque()
            self._malformed: deque[InjectedMalformed] = deque()
            self._latency_ms = self._initial_latency_ms
            self._omit_usage = self._obey_injection = False

    def apply_faults(self, payload: object) -> None:
        """Add the faults a ``POST /sandbox/openai/faults`` body describes; all or nothing."""
        if not isinstance(payload, dict) or not payload:
            raise FaultRequestError("expected a non-empty JSON object")
        unknown = set(payload) - FAULT_KEYS
        if unknown:
            raise FaultRequestError(f"unknown keys {sorted(unknown)}; known: {sorted(FAULT_KEYS)}")
        count = integer(payload, "count", 1) if "count" in payload else 1
        error = _parse_error(payload, count)
        malformed = _parse_malformed(payload, count)
        if error is not None and malformed is not None:
            raise FaultRequestError("'error' and 'malformed' are separate faults: ask for them one at a time")
        if "count" in payload and error is None and malformed is None:
            raise FaultRequestError("'count' goes with 'error', 'http_status' or 'malformed'")
        latency = integer(payload, "latency_ms", 0) if "latency_ms" in payload else None
        switches = {k: boolean(payload, k) for k in ("omit_usage", "obey_injection") if k in payload}
        with self._lock:
            if error is not None:
                self._errors.append(error)
            if malformed is not None:
                self._malformed.append(malformed)
            if latency is not None:
                self._latency_ms = latency
            self._omit_usage = switches.get("omit_usage", self._omit_usage)
            self._obey_injection = switches.get("obey_injection", self._obey_injection)

    def take_error(self) -> InjectedError | None:
        with self._lock:
            return _take(self._errors)

    def take_malformed(self) -> str | None:
        with self._lock:
            head = _take(self._malformed)
            return head.kind if head is not None else None

    def latency_seconds(self) -> float:
        with self._lock:
            return self._latency_ms / 1000.0

    def omit_usage(self) -> bool:
        with self._lock:
            return self._omit_usage

    def obey_injection(self) -> bool:
        with self._lock:
            return self._obey_injection

    def faults_json(self) -> dict[str, Any]:
        with self._lock:
            return {"latency_ms": self._latency_ms, "omit_usage": self._omit_usage,
                    "obey_injection": self._obey_injection, "errors": [asdict(e) for e in self._errors],
                    "malformed": [asdict(m) for m in self._malformed]}


def _take(queue: deque[_Entry]) -> _Entry | None:
    """One use of the queue's head (a copy with ``remaining`` 1), dropping the head when spent."""
    if not queue:
        return None
    head = queue[0]
    head.remaining -= 1
    if head.remaining == 0:
        queue.popleft()
    copy = type(head)(**asdict(head))
    copy.remaining = 1
    return copy


def _parse_error(payload: Mapping[str, object], count: int) -> InjectedError | None:
    """The error ``error`` names (its status overridable by ``http_status``), or one made from a
    bare ``http_status`` (5xx: ``server_error``)."""
    if "error" not in payload and "http_status" not in payload:
        if "retry_after" in payload:
            raise FaultRequestError("'retry_after' needs 'error' or 'http_status'")
        return None
    name = payload.get("error", None)
    if name is None:
        status = integer(payload, "http_status", 400)
        name = "server_error" if status >= 500 else "rate_limit_exceeded" if status == 429 else "invalid_request"
        _, error_type, code = ERRORS.get(name, (status, "invalid_request_error", None))
    elif not isinstance(name, str) or name not in ERRORS:
        raise FaultRequestError(f"'error' must be one of {sorted(ERRORS)}, not {name!r}")
    else:
        status, error_type, code = ERRORS[name]
        if "http_status" in payload:
            status = integer(payload, "http_status", 400)
    retry_after = integer(payload, "retry_after", 0) if "retry_after" in payload else None
    if retry_after is None and name == "rate_limit_exceeded":
        retry_after = DEFAULT_RETRY_AFTER_SECONDS
    return InjectedError(str(name), status, error_type, code, retry_after, count)


def _parse_malformed(payload: Mapping[str, object], count: int) -> InjectedMalformed | None:
    value = payload.get("malformed", False)
    if value is False:
        return None
    if value is True:
        return InjectedMalformed("not_json", count)
    if not isinstance(value, str) or value not in MALFORMED_KINDS:
        raise FaultRequestError(f"'malformed' must be true or one of {sorted(MALFORMED_KINDS)}, not {value!r}")
    return InjectedMalformed(value, count)
