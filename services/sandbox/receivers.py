"""The customer endpoints the sandbox imitates: named webhook receivers, what they got, how they answer.

Postroom's outbound webhooks and its generic ``http`` channel POST to a customer's URL; in tests
and benchmarks that URL is ``/receiver/<name>`` on the sandbox (``receiver_api``). Each name is a
``Receiver``: the requests it got, newest ``MAX_KEPT_REQUESTS`` kept in arrival order, and the
``ReceiverBehaviour`` that decides each answer — queued ``codes`` consumed one per request, then
``status`` for every later one, a delay, a ``Retry-After`` on failures and a replacement body. A
receiver comes to be on its first request or configuration and is forgotten by ``forget``. One
lock guards every receiver; it is held only for O(1) work, never while an answer is delayed.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from itertools import islice

MAX_KEPT_REQUESTS = 50_000  # per receiver: a benchmark's 10,000s of deliveries fit, memory stays bounded
MAX_DELAY_MS = 600_000
BEHAVIOUR_KEYS = frozenset({"codes", "status", "delay_ms", "retry_after", "body"})


class ReceiverRequestError(ValueError):
    """A behaviour that cannot be understood; the control API answers 400 with its text."""


@dataclass(frozen=True)
class ReceivedRequest:
    """One POST as the receiver got it, with the answer it was given."""

    at: float  # time.time() on arrival
    name: str
    headers: dict[str, str]
    body: str  # decoded as UTF-8 (bad bytes replaced), at most the first MAX_BODY_BYTES
    truncated: bool  # the body was longer than what is kept; ``json`` is then None
    json: object  # the parsed body, or None when it is not JSON
    status: int  # the HTTP status answered
    id: str | None  # the ``id`` answered (what the http channel keeps as the provider's id)

    def as_json(self) -> dict[str, object]:
        return {
            "at": self.at,
            "name": self.name,
            "headers": self.headers,
            "body": self.body,
            "truncated": self.truncated,
            "json": self.json,
            "status": self.status,
            "id": self.id,
        }


@dataclass
class ReceiverBehaviour:
    """How a receiver answers: the default is an immediate 200 with a fresh id."""

    codes: deque[int] = field(default_factory=deque)  # consumed one per request, before ``status``
    status: int = 200
    delay_ms: int = 0
    retry_after: int | None = None  # seconds, sent as Retry-After on non-2xx answers
    body: object = None  # replaces the JSON answer when not None

    @classmethod
    def from_request(cls, payload: object) -> ReceiverBehaviour:
        """The behaviour a ``PUT /sandbox/receivers/<name>`` body describes; omitted keys default."""
        if not isinstance(payload, dict):
            raise ReceiverRequestError("expected a JSON object")
        unknown = set(payload) - BEHAVIOUR_KEYS
        if unknown:
            raise ReceiverRequestError(f"unknown keys {sorted(unknown)}; known: {sorted(BEHAVIOUR_KEYS)}")
        given = {key: value for key, value in payload.items() if value is not None}  # null: default
        codes = given.get("codes", [])
        if not isinstance(codes, list):
            raise ReceiverRequestError(f"'codes' must be a list of HTTP statuses, not {codes!r}")
        retry_after = given.get("retry_after")
        return cls(
            codes=deque(_http_status("codes", code) for code in codes),
            status=_http_status("status", given.get("status", 200)),
            delay_ms=_integer("delay_ms", given.get("delay_ms", 0), 0, MAX_DELAY_MS),
            retry_after=None if retry_after is None else _integer("retry_after", retry_after, 0, 86_400),
            body=given.get("body"),
        )

    def next_status(self) -> int:
        return self.codes.popleft() if self.codes else self.status

    def as_json(self) -> dict[str, object]:
        return {
            "codes": list(self.codes),
            "status": self.status,
            "delay_ms": self.delay_ms,
            "retry_after": self.retry_after,
            "body": self.body,
        }


@dataclass(frozen=True)
class Answer:
    """What one request is answered with, decided when it arrives."""

    status: int
    id: str | None  # the ``id`` of the receiver's own 2xx answer
    body: object  # the replacement body, or None for the receiver's own answer
    delay_seconds: float
    retry_after: int | None  # only on non-2xx answers


@dataclass
class Receiver:
    behaviour: ReceiverBehaviour = field(default_factory=ReceiverBehaviour)
    requests: deque[ReceivedRequest] = field(default_factory=lambda: deque(maxlen=MAX_KEPT_REQUESTS))
    received: int = 0  # every request since the receiver came to be, kept or not


@dataclass(frozen=True)
class ReceiverSnapshot:
    """One receiver as it stood at one moment: its counts, a copy of its behaviour, its newest requests."""

    name: str
    received: int  # every request since the receiver came to be
    kept: int
    behaviour: ReceiverBehaviour
    latest: list[ReceivedRequest]  # most recent first


class Receivers:
    """Every named receiver, safe to share across greenlets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._receivers: dict[str, Receiver] = {}

    def receive(
        self, name: str, at: float, headers: dict[str, str], body: str, truncated: bool, parsed: object
    ) -> Answer:
        """Record one request and decide its answer, consuming one queued code if there is one.

        Both happen under one lock, so the kept order is the order in which codes were consumed.
        """
        with self._lock:
            receiver = self._receivers.setdefault(name, Receiver())
            behaviour = receiver.behaviour
            status = behaviour.next_status()
            succeeded = 200 <= status < 300
            answer = Answer(
                status=status,
                id=f"rcv_{uuid.uuid4().hex}" if succeeded and behaviour.body is None else None,
                body=behaviour.body,
                delay_seconds=behaviour.delay_ms / 1000.0,
                retry_after=None if succeeded else behaviour.retry_after,
            )
            receiver.requests.append(
                ReceivedRequest(at, name, headers, body, truncated, parsed, status, answer.id)
            )
            receiver.received += 1
            return answer

    def configure(self, name: str, behaviour: ReceiverBehaviour) -> dict[str, object]:
        """Replace the receiver's behaviour; what it received stays."""
        with self._lock:
            self._receivers.setdefault(name, Receiver()).behaviour = behaviour
            return behaviour.as_json()

    def requests(self, name: str) -> list[ReceivedRequest]:
        """The kept requests to ``name`` in arrival order (none for a receiver never used)."""
        with self._lock:
            receiver = self._receivers.get(name)
            return list(receiver.requests) if receiver is not None else []

    def snapshots(self, latest: int, only: str | None = None) -> list[ReceiverSnapshot]:
        """Every receiver (or just ``only``, if it exists) by name, with its newest ``latest`` requests.

        Taken under the lock in O(receivers x latest), however many requests are kept.
        """
        with self._lock:
            return [
                ReceiverSnapshot(
                    name=name,
                    received=receiver.received,
                    kept=len(receiver.requests),
                    behaviour=replace(receiver.behaviour, codes=deque(receiver.behaviour.codes)),
                    latest=list(islice(reversed(receiver.requests), latest)),
                )
                for name, receiver in sorted(self._receivers.items())
                if only is None or name == only
            ]

    def summary(self) -> list[dict[str, object]]:
        with self._lock:
            return [
                {
                    "name": name,
                    "requests": receiver.received,
                    "kept": len(receiver.requests),
                    "behaviour": receiver.behaviour.as_json(),
                }
                for name, receiver in sorted(self._receivers.items())
            ]

    def forget(self, name: str) -> None:
        """Back to the default behaviour with nothing received."""
        with self._lock:
            self._receivers.pop(name, None)

    def clear(self) -> None:
        with self._lock:
            self._receivers.clear()


def _integer(key: str, value: object, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ReceiverRequestError(f"{key!r} must be an integer from {minimum} to {maximum}, not {value!r}")
    return value


def _http_status(key: str, value: object) -> int:
    return _integer(key, value, 200, 599)

