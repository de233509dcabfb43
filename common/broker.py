"""The one Dramatiq broker set-up, imported before any actor module.

Redis broker with Retries, AgeLimit, TimeLimit, CurrentMessage, Prometheus and a middleware that
hands each worker thread a database connection for the duration of one message. Actors are
declared with ``lane_actors`` so each stage has an urgent and a bulk queue.
"""

from __future__ import annotations

import os

# Prometheus multiprocess mode must be chosen before prometheus_client is first imported.
if os.environ.get("dramatiq_prom_db") and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["dramatiq_prom_db"]

from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import dramatiq  # noqa: E402
import redis  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402
from dramatiq.middleware import (  # noqa: E402
    AgeLimit,
    CurrentMessage,
    Middleware,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from dramatiq.middleware.prometheus import Prometheus  # noqa: E402

from common.config import settings  # noqa: E402
from common.db.connection import connect_database, db  # noqa: E402

LANES = ("urgent", "bulk")
LANE_PRIORITY = {"urgent": 0, "bulk": 100}  # lower runs first inside a worker


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


def cooperate_with_gevent() -> None:
    """Under ``dramatiq-gevent`` let psycopg2 wait on sockets through gevent instead of blocking."""
    try:
        from gevent import monkey
    except ImportError:
        return
    if monkey.is_module_patched("socket"):
        import psycopg2.extensions
        import psycopg2.extras

        psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)


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
    return RedisBroker(client=redis_client(redis_url), middleware=middleware, heartbeat_timeout=15_000)


def redis_client(url: str) -> redis.Redis:
    """A Redis client that fails fast instead of hanging: connect and socket timeouts, and a
    health check that notices a connection a restart closed."""
    timeout = settings.postroom_redis_timeout_seconds
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=min(timeout, 2.0),
                                health_check_interval=30, retry_on_timeout=False)


def setup(redis_url: str | None = None, database_url: str | None = None) -> RedisBroker:
    """Install the broker (and the database) for this process."""
    cooperate_with_gevent()
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


def current_lane() -> str:
    """The lane of the broker message this thread is processing (urgent outside of one)."""
    message = CurrentMessage.get_current_message()
    queue = message.queue_name if message is not None else ""
    return next((lane for lane in LANES if queue.removesuffix(".DQ").endswith(f"_{lane}")), "urgent")


def lane_actors(stage: str, fn: Callable[..., Any], **options: Any) -> dict[str, dramatiq.Actor]:
    """Declare ``fn`` once per lane: queue ``<stage>_<lane>``, actor ``<fn>_<lane>``."""
    return {
        lane: dramatiq.actor(
            actor_name=actor_name(fn.__name__, lane),
            queue_name=queue_name(stage, lane),
            priority=LANE_PRIORITY[lane],
            **options,
        )(fn)
        for lane in LANES
    }


broker = setup()
