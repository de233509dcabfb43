"""What the sandbox received: every accepted message in arrival order, and the running counts.

Provider imitations add a ``ReceivedMessage`` when they accept a send call and move its status
as the imitated delivery progresses; the control API lists, filters and clears them. One lock
guards everything because gunicorn's gevent worker serves hundreds of requests and callback
greenlets at once in this one process.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from itertools import islice

COUNTER_NAMES = (
    "received",  # send calls accepted and recorded
    "rejected_by_fault",  # send calls answered with an injected error
    "invalid",  # send calls refused on their merits (auth, validation)
    "callbacks_sent",  # status callbacks the receiver answered with 2xx
    "callbacks_failed",  # status callbacks given up after every retry
    "callback_retries",  # extra attempts after a failed status callback
    "answers_dropped",  # recorded, then the connection was cut without an answer (injected)
    "answers_delayed",  # recorded, then the answer was held past any client timeout (injected)
    "lookups",  # message list calls (how a client reconciles unknown outcomes)
)
SENT_STATUSES = frozenset({"sent", "delivered", "undelivered", "read"})  # the message left the provider


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ReceivedMessage:
    """One accepted send call, as the provider would hold it."""

    channel: str
    sid: str
    to: str
    from_: str | None
    body: str
    status_callback: str | None
    status: str
    received_at: datetime = field(default_factory=utc_now)
    updated_at: datetime = field(default_factory=utc_now)
    messaging_service_sid: str | None = None
    num_segments: int = 1
    num_media: int = 0
    error_code: int | None = None
    error_message: str | None = None
    account_sid: str = ""  # the provider account the send call authenticated as
    sent_at: datetime | None = None  # when it first reached a sent status (Twilio's date_sent)

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data["from"] = data.pop("from_")
        data["received_at"] = self.received_at.isoformat(timespec="microseconds")
        data["updated_at"] = self.updated_at.isoformat(timespec="microseconds")
        data["sent_at"] = self.sent_at.isoformat(timespec="microseconds") if self.sent_at else None
        return data


class ReceivedMessages:
    """The record of accepted messages and the sandbox's counters, safe to share across greenlets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: dict[str, ReceivedMessage] = {}  # dicts keep insertion (arrival) order
        self._counts: Counter[str] = Counter()
        self._deliveries_in_flight = 0

    def add(self, message: ReceivedMessage) -> None:
        with self._lock:
            self._messages[message.sid] = message
            self._counts["received"] += 1

    def get(self, sid: str) -> ReceivedMessage | None:
        with self._lock:
            return self._messages.get(sid)

    def newest_first(self, channel: str, account_sid: str) -> list[ReceivedMessage]:
        """One account's messages on ``channel``, most recent first (a provider's list order)."""
        with self._lock:
            return [
                m
                for m in reversed(self._messages.values())
                if m.channel == channel and m.account_sid == account_sid
            ]

    def latest(self, channel: str, limit: int) -> list[ReceivedMessage]:
        """The newest ``limit`` messages on ``channel`` of every account, most recent first.

        Copies, so that a status moved meanwhile never changes what the caller is showing.
        """
        with self._lock:
            on_channel = (m for m in reversed(self._messages.values()) if m.channel == channel)
            return [replace(m) for m in islice(on_channel, limit)]

    def listing(self, to: str | None = None, channel: str | None = None) -> list[dict[str, object]]:
        with self._lock:
            return [
                m.as_json()
                for m in self._messages.values()
                if (to is None or m.to == to) and (channel is None or m.channel == channel)
            ]

    def move_to_status(
        self, sid: str, status: str, error_code: int | None = None, error_message: str | None = None
    ) -> None:
        """Advance a message's status; a message cleared meanwhile is ignored."""
        with self._lock:
            message = self._messages.get(sid)
            if message is not None:
                message.status = status
                message.error_code, message.error_message = error_code, error_message
                message.updated_at = utc_now()
                if status in SENT_STATUSES and message.sent_at is None:
                    message.sent_at = message.updated_at

    def count(self, name: str, amount: int = 1) -> None:
        if name not in COUNTER_NAMES:
            raise KeyError(name)
        with self._lock:
            self._counts[name] += amount

    def delivery_started(self) -> None:
        with self._lock:
            self._deliveries_in_flight += 1

    def delivery_finished(self) -> None:
        with self._lock:
            self._deliveries_in_flight -= 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            stats = {name: self._counts[name] for name in COUNTER_NAMES}
            # A gauge, never cleared: messages whose status (and callbacks, if any) is still moving.
            stats["deliveries_in_flight"] = self._deliveries_in_flight
            stats["messages"] = len(self._messages)
            return stats

    def clear(self) -> None:
        """Forget every message and zero the counters (deliveries in flight keep running)."""
        with self._lock:
            self._messages.clear()
            self._counts.clear()
