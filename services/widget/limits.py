"""How fast a widget visitor may write: a visitor's bucket and its IP address's, in one Redis round trip.

The widget is open to anyone who loads a page, so its input is paced like the API's
(``common.apilimits``, whose two-bucket GCRA script this reuses): a visitor sends at most
POSTROOM_WIDGET_VISITOR_RATE messages a second (burst ``VISITOR_BURST``), and one address at most
``IP_PER_MINUTE`` requests a minute that create visitors or messages, whatever tokens it holds.
Time comes from the Redis server, so every replica agrees. When Redis does not answer the
request is let through (the database bounds what one message costs), as the API does.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from common.apilimits import _SCRIPT as TWO_BUCKETS
from common.config import settings

log = logging.getLogger("postroom.widget")
VISITOR_BURST = 5
IP_PER_MINUTE = 30
TIMEOUT_SECONDS = 0.25

_lock = threading.Lock()
_script: Any = None


def _redis() -> Any:
    global _script
    with _lock:
        if _script is None:
            from common.broker import redis_client

            client = redis_client(settings.redis_url or "redis://127.0.0.1:6379/0", TIMEOUT_SECONDS)
            _script = client.register_script(TWO_BUCKETS)
        return _script


def _interval_us(per_second: float) -> int:
    return int(1_000_000 / per_second) if per_second > 0 else 0


def allow(address: str, visitor_id: int | None = None) -> float:
    """Take one token from the visitor's bucket (if any) and the address's; returns 0 when the
    request may go, else the seconds until it may (nothing was taken)."""
    visitor_rate = settings.postroom_widget_visitor_rate if visitor_id is not None else 0.0
    try:
        allowed, _which, _limit, _remaining, _reset, retry_ms = _redis()(
            keys=[f"postroom:widget:visitor:{visitor_id}", f"postroom:widget:ip:{address}"],
            args=[_interval_us(visitor_rate), VISITOR_BURST, _interval_us(IP_PER_MINUTE / 60), IP_PER_MINUTE])
    except (redis.RedisError, OSError) as exc:
        log.warning("widget rate limits unchecked: Redis did not answer: %s", exc.__class__.__name__)
        return 0.0
    return 0.0 if allowed else max(0.001, int(retry_ms) / 1000.0)
