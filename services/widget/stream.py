"""Server-Sent Events for the widget: one listener per process wakes the streams of a conversation.

PostgreSQL is the truth; Redis pub/sub only says "conversation c has something new". Each
process keeps one subscription to ``postroom:widget`` (``Hub.listen``, a greenlet) and hands each
wake-up to the streams it serves for that conversation. A stream registers its wake-up **first**
and only then reads what it owes, so a reply published between the two is never lost: either the
read sees it, or the wake-up arrives after and the stream reads again. Whenever the subscription
is (re)established every stream is woken too, since what was published while it was down is gone.

A stream holds no database connection while it waits. It sends ``retry: 1000`` (the page
reconnects after a second, with a fresh stream ticket and the last event id), a comment every ``HEARTBEAT_SECONDS`` so
proxies keep it open, and ends after POSTROOM_WIDGET_STREAM_SECONDS so streams rebalance across
replicas.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from common import metrics
from common.config import settings
from common.db.connection import release_connection, transaction
from common.providers.widget import PUBSUB_CHANNEL
from services.widget import visitors

log = logging.getLogger("postroom.widget")
HEARTBEAT_SECONDS = 15.0
RECONNECT_SECONDS = 1.0


class Hub:
    """The streams of this process by conversation, and the wake-ups that reach them."""

    def __init__(self) -> None:
        self._streams: dict[int, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self.subscribed = threading.Event()

    def register(self, conversation_id: int) -> threading.Event:
        wake = threading.Event()
        with self._lock:
            self._streams.setdefault(conversation_id, set()).add(wake)
        return wake

    def unregister(self, conversation_id: int, wake: threading.Event) -> None:
        with self._lock:
            streams = self._streams.get(conversation_id)
            if streams is not None:
                streams.discard(wake)
                if not streams:
                    del self._streams[conversation_id]

    def wake(self, conversation_id: int) -> None:
        with self._lock:
            streams = list(self._streams.get(conversation_id, ()))
        for event in streams:
            event.set()

    def wake_all(self) -> None:
        with self._lock:
            streams = [event for events in self._streams.values() for event in events]
        for event in streams:
            event.set()

    def dispatch(self, data: bytes | str) -> None:
        """One published ``{"c": conversation id, "m": message id}``; anything else is ignored."""
        try:
            conversation_id = int(json.loads(data)["c"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed widget wake-up: %r", data[:200])
            return
        self.wake(conversation_id)

    def listen(self, client_factory: Callable[[], redis.Redis], stopping: threading.Event) -> None:
        """Stay subscribed until ``stopping``: reconnect after a Redis outage, and wake every stream
        once subscribed again."""
        while not stopping.is_set():
            pubsub = None
            try:
                pubsub = client_factory().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(PUBSUB_CHANNEL)
                self.subscribed.set()
                self.wake_all()  # what was published while we were not subscribed
                while not stopping.is_set():
                    message = pubsub.get_message(timeout=HEARTBEAT_SECONDS)
                    if message is not None and message.get("type") == "message":
                        self.dispatch(message["data"])
            except (redis.RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("widget wake-ups lost (%s: %s); subscribing again in %gs", exc.__class__.__name__, exc,
                            RECONNECT_SECONDS)
                stopping.wait(RECONNECT_SECONDS)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except (redis.RedisError, OSError):
                        pass


hub = Hub()


def start_listener(stopping: threading.Event | None = None) -> threading.Thread:
    """The process's one subscription, in the background (a greenlet under gevent)."""
    # No socket timeout: the subscription waits for wake-ups; get_message's own timeout bounds a wait.
    def client() -> redis.Redis:
        return redis.Redis.from_url(settings.redis_url or "redis://127.0.0.1:6379/0",
                                    socket_connect_timeout=2.0, socket_keepalive=True, health_check_interval=30)

    thread = threading.Thread(target=hub.listen, args=(client, stopping or threading.Event()), name="widget-wakeups",
                              daemon=True)
    thread.start()
    return thread


def _event(row: dict[str, Any]) -> str:
    return f"id: {row['id']}\nevent: message\ndata: {json.dumps(visitors.event_data(row), ensure_ascii=False)}\n\n"


def _read(conversation_id: int, after: int) -> list[dict[str, Any]]:
    """One short transaction; the connection goes back to the pool before the stream waits."""
    try:
        with transaction(single_statement=True):
            return visitors.messages_after(conversation_id, after)
    finally:
        release_connection()


def events(conversation_id: int, last_event_id: int, *, seconds: float | None = None,
           clock: Callable[[], float] = time.monotonic) -> Iterator[str]:
    """The stream of one browser: replay after ``last_event_id``, then whatever each wake-up
    brings, until the stream's time is up (or the client goes away, which ends the generator)."""
    ends = clock() + (settings.postroom_widget_stream_seconds if seconds is None else seconds)
    wake = hub.register(conversation_id)  # first: a wake-up from now on is not lost
    metrics.WIDGET_STREAMS.inc()
    cursor = last_event_id
    streamed: set[int] = set()  # unacknowledged replies this stream already sent
    try:
        yield "retry: 1000\n\n"
        wake.set()  # the replay
        while True:
            left = ends - clock()
            if left <= 0:
                return
            if not wake.wait(min(HEARTBEAT_SECONDS, left)):
                yield ": keep-alive\n\n"
                continue
            wake.clear()  # before reading: a wake-up during the read means read again
            out = []
            for row in _read(conversation_id, cursor):
                if row["id"] in streamed and row["status"] in visitors.UNACKED_STATUSES:
                    continue
                out.append(_event(row))
                if row["direction"] == "outbound" and row["status"] in visitors.UNACKED_STATUSES:
                    streamed.add(row["id"])
                cursor = max(cursor, row["id"])
            if out:
                yield "".join(out)
    finally:
        hub.unregister(conversation_id, wake)
        metrics.WIDGET_STREAMS.dec()
