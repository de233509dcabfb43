"""The one Dramatiq broker set-up, imported before any actor module.

Redis broker with Retries, AgeLimit, TimeLimit, CurrentMessage, Prometheus and a middleware that
hands each worker thread a database connection for the duration of one message. Actors are
declared with ``lane_actors`` so each stage has an urgent, a normal and a bulk queue (the AI stage:
a premium, a pro and a basic one, by the workspace's plan).

Idle workers cost nothing: every enqueue also publishes a wake-up on its queue's channel, and a
consumer that holds no message waits on that channel instead of polling Redis (``WakingRedisBroker``).
"""

from __future__ import annotations

import os

# Prometheus multiprocess mode must be chosen before prometheus_client is first imported.
if os.environ.get("dramatiq_prom_db") and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["dramatiq_prom_db"]

import logging  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

import dramatiq  # noqa: E402
import redis  # noqa: E402
from dramatiq.broker import MessageProxy  # noqa: E402
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer  # noqa: E402
from dramatiq.common import compute_backoff  # noqa: E402
from dramatiq.errors import ConnectionClosed  # noqa: E402
from dramatiq.message import Message  # noqa: E402
from dramatiq.middleware import (  # noqa: E402
    AgeLimit,
    CurrentMessage,
    Middleware,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from dramatiq.middleware.prometheus import Prometheus  # noqa: E402

from common.config import require_production_secret, settings  # noqa: E402
from common.db.connection import connect_database, db  # noqa: E402

# Three lanes (DESIGN.md invariant 6): urgent (codes, alerts), normal (single sends, the API's
# default) and bulk (campaigns), each its own queue at every stage that can build a backlog.
LANES = ("urgent", "normal", "bulk")
# The AI stage's lanes are the workspace's plan (premium > pro > basic): a premium customer's
# question never waits behind a basic plan's backlog, each lane with its own queue and greenlets.
PLAN_LANES = ("premium", "pro", "basic")
LANE_PRIORITY = {"urgent": 0, "normal": 50, "bulk": 100,  # lower runs first inside a worker
                 "premium": 0, "pro": 50, "basic": 100}
STAGE_LANES: dict[str, tuple[str, ...]] = {"ai": PLAN_LANES}  # every other stage: LANES
HEARTBEAT_TIMEOUT_MS = 15_000
# An idle consumer's longest wait for a wake-up. Nothing depends on it for latency (an enqueue
# wakes the consumer at once); it bounds how long a wake-up lost with a Redis restart, or a
# message requeued by another process's maintenance, waits. Well under the heartbeat timeout.
IDLE_WAIT_MS = 5_000

log = logging.getLogger(__name__)


class DatabaseConnection(Middleware):
    """Whatever pooled connection a message's work took goes back to the pool when it ends.

    Connections are taken lazily (``transaction()``), not at the start of every message: a sender
    runs hundreds of greenlets, most of them waiting on providers, and needs few connections.
    """

    def after_process_message(self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: BaseException | None = None) -> None:
        if not db.is_closed():
            db.close()

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self.after_process_message(broker, message)


class WakingRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, plus a wake-up published on ``<namespace>:wake:<queue>`` per enqueue.

    Dramatiq's consumers poll Redis with a Lua fetch every few milliseconds up to their idle
    timeout, for ever: an idle process of four consumers runs ~40 fetches a second. Here a
    consumer waits on its queue's channel instead, so it fetches when there is something to fetch,
    and sooner than a poll would. ``idle_wait_ms`` (0 unless a worker runner sets it) lets a
    consumer that holds nothing wait that long; while it holds messages (in progress, or delayed
    ones whose time comes) it still wakes within its poll timeout, to hand delayed messages on and
    keep its heartbeat fresh.
    """

    idle_wait_ms = 0

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return WakeableConsumer

    def wake_channel(self, queue_name: str) -> str:
        return f"{self.namespace}:wake:{queue_name}"

    def wake(self, queue_name: str) -> None:
        """Wake the consumers of ``queue_name`` (best effort: they also wake on their own)."""
        try:
            self.client.publish(self.wake_channel(queue_name), b"")
        except redis.RedisError as exc:
            log.debug("wake-up for %s not published: %s", queue_name, exc)

    def enqueue(self, message: dramatiq.Message, *, delay: int | None = None) -> dramatiq.Message:
        enqueued = super().enqueue(message, delay=delay)
        self.wake(enqueued.queue_name)  # the delay queue's name when delayed
        return enqueued


class WakeableConsumer(_RedisConsumer):
    """A Redis consumer that, when a fetch finds nothing, waits on its queue's wake-up channel."""

    broker: WakingRedisBroker

    def __init__(self, broker: WakingRedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self.wakeups = broker.client.pubsub(ignore_subscribe_messages=True)
        self.subscribed = False

    def __next__(self) -> MessageProxy | None:
        try:
            if not self.subscribed:  # before the first fetch, so no wake-up after it is missed
                self.wakeups.subscribe(self.broker.wake_channel(self.queue_name))
                self.subscribed = True
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:
                        continue
                    self.misses = 0
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                if self.outstanding_message_count < self.prefetch:
                    self.message_cache = self.broker.do_fetch(self.queue_name, self.prefetch - self.outstanding_message_count)
                    if self.message_cache:
                        continue
                self.wait_for_work()
                return None
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    def wait_for_work(self) -> None:
        """Wait for a wake-up: up to the idle wait when holding nothing, else the poll backoff."""
        if self.broker.idle_wait_ms and not self.outstanding_message_count:
            timeout_ms = self.broker.idle_wait_ms
        else:
            self.misses, timeout_ms = compute_backoff(self.misses, max_backoff=self.timeout)
        self.wakeups.get_message(timeout=timeout_ms / 1000)
        # Wake-ups that arrived meanwhile are for messages the next fetch sees anyway.
        while self.wakeups.get_message(timeout=0.0) is not None:
            pass

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        super().requeue(messages)
        self.broker.wake(self.queue_name)

    def close(self) -> None:
        try:
            self.wakeups.close()
        except redis.RedisError:
            pass


def build_broker(redis_url: str) -> RedisBroker:
    middleware = [
        Prometheus(),
        AgeLimit(),
        TimeLimit(time_limit=120_000),
        ShutdownNotifications(),
        CurrentMessage(),
        Retries(max_retries=8, min_backoff=500, max_backoff=60_000),
        DatabaseConnection(),
    ]
    return WakingRedisBroker(client=redis_client(redis_url), middleware=middleware, heartbeat_timeout=HEARTBEAT_TIMEOUT_MS)


def redis_client(url: str, timeout: float | None = None) -> redis.Redis:
    """A Redis client that fails fast instead of hanging: connect and socket timeouts
    (POSTROOM_REDIS_TIMEOUT_SECONDS, or ``timeout`` when shorter), a health check that notices
    a connection a restart closed, and room for POSTROOM_REDIS_MAX_CONNECTIONS connections."""
    timeout = min(settings.postroom_redis_timeout_seconds, timeout or float("inf"))
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=min(timeout, 2.0),
                                health_check_interval=30, retry_on_timeout=False,
                                max_connections=settings.postroom_redis_max_connections)


def setup(redis_url: str | None = None, database_url: str | None = None) -> RedisBroker:
    """Install the broker (and the database) for this process.

    Raises:
      SystemExit: outside development with the development secret key.
    """
    require_production_secret()
    broker = build_broker(redis_url or settings.redis_url or "redis://127.0.0.1:6379/0")
    dramatiq.set_broker(broker)
    if database_url or settings.database_url:
        connect_database(database_url or settings.database_url, max_connections=settings.postroom_db_pool_size,
                         prepare=settings.postroom_db_prepare)
    return broker


def queue_name(stage: str, lane: str) -> str:
    return f"{stage}_{lane}"


def actor_name(base: str, lane: str) -> str:
    return f"{base}_{lane}"


def lanes_of(stage: str) -> tuple[str, ...]:
    """The lanes (queues ``<stage>_<lane>``) of ``stage``: the plans for ``ai``, else LANES."""
    return STAGE_LANES.get(stage, LANES)


def current_lane() -> str:
    """The lane of the broker message this thread is processing (urgent outside of one): one of
    LANES, or of PLAN_LANES on the AI stage."""
    message = CurrentMessage.get_current_message()
    queue = message.queue_name if message is not None else ""
    return next((lane for lane in (*LANES, *PLAN_LANES) if queue.removesuffix(".DQ").endswith(f"_{lane}")), "urgent")


def lane_actors(stage: str, fn: Callable[..., Any], lanes: tuple[str, ...] | None = None,
                **options: Any) -> dict[str, dramatiq.Actor]:
    """Declare ``fn`` once per lane of ``stage`` (``lanes_of``, or ``lanes``): queue
    ``<stage>_<lane>``, actor ``<fn>_<lane>``."""
    return {
        lane: dramatiq.actor(
            actor_name=actor_name(fn.__name__, lane),
            queue_name=queue_name(stage, lane),
            priority=LANE_PRIORITY[lane],
            **options,
        )(fn)
        for lane in (lanes or lanes_of(stage))
    }


broker = setup()
