"""Per-provider-account send pacing in Redis: a token bucket (GCRA) plus 429 pauses.

``wait_before_send`` answers how long a sender must wait before calling the provider for an
account: 0 to go now (a token is taken), else seconds until the next token or until a pause
set by a provider 429 ends. Time comes from the Redis server, so every replica agrees.
"""

from __future__ import annotations

import redis

from common.config import settings

_SCRIPT = """
-- KEYS[1] bucket (theoretical arrival time, microseconds), KEYS[2] pause flag
-- ARGV[1] interval between tokens (us, 0 = unlimited), ARGV[2] burst (tokens)
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return pause end
local interval = tonumber(ARGV[1])
if interval <= 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
-- GCRA: a call may go when the bucket is at most burst-1 intervals ahead of now.
local allowance = interval * (tonumber(ARGV[2]) - 1)
if tat - now > allowance then
  return math.ceil((tat - now - allowance) / 1000)
end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((tat + interval - now) / 1000) + 1000)
return 0
"""

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.redis_url or "redis://127.0.0.1:6379/0")
    return _client


def use_client(client: redis.Redis) -> None:
    """Point the limiter at a given Redis (tests, and processes that set REDIS_URL late)."""
    global _client
    _client = client


def wait_before_send(provider: str, account: str, per_second: float, burst: int | None = None) -> float:
    """Seconds to wait before the next call for this account; 0 means a token was taken.

    ``burst`` (default: one second's worth of tokens) is how many calls may go at once after idling.
    """
    burst = burst or max(1, int(per_second))
    interval_us = int(1_000_000 / per_second) if per_second > 0 else 0
    client = _redis()
    ms = client.eval(_SCRIPT, 2, f"postroom:rate:{provider}:{account}", f"postroom:pause:{provider}:{account}", interval_us, burst)
    return int(ms) / 1000.0


def pause(provider: str, account: str, seconds: float) -> None:
    """A provider said 429: nobody calls it for this account for ``seconds``."""
    ms = max(1, int(seconds * 1000))
    _redis().set(f"postroom:pause:{provider}:{account}", 1, px=ms)
