"""Per-provider-account send pacing in Redis: a token bucket (GCRA) plus 429 pauses.

``wait_before_send`` answers how long a sender must wait before calling the provider for an
account: 0 to go now (a token is taken), else seconds until the next token or until a pause
set by a provider 429 ends. Time comes from the Redis server, so every replica agrees.
"""

from __future__ import annotations

from typing import Any

import redis

from common.config import settings

_SCRIPT = """
-- KEYS[1] bucket (theoretical arrival time, microseconds), KEYS[2] pause flag
-- ARGV[1] interval between tokens (us, 0 = unlimited), ARGV[2] burst (tokens),
-- ARGV[3] tokens this caller must leave in the bucket (the bulk lane leaves some for urgent),
-- ARGV[4] tokens wanted. Returns {tokens granted, ms until the next one (0 if all granted)}.
local wanted = tonumber(ARGV[4])
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return {0, pause} end
local interval = tonumber(ARGV[1])
if interval <= 0 then return {wanted, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
-- GCRA: a call may go when the bucket is at most burst-1-reserve intervals ahead of now.
local allowance = interval * (tonumber(ARGV[2]) - 1 - tonumber(ARGV[3]))
local granted = 0
while granted < wanted and tat - now <= allowance do
  tat = tat + interval
  granted = granted + 1
end
if granted > 0 then
  redis.call('SET', KEYS[1], tat, 'PX', math.ceil((tat - now) / 1000) + 1000)
end
if granted == wanted then return {granted, 0} end
return {granted, math.ceil((tat - now - allowance) / 1000)}
"""

_client: redis.Redis | None = None
_script: Any = None


def _redis() -> redis.Redis:
    global _client, _script
    if _client is None:
        from common.broker import redis_client

        _client = redis_client(settings.redis_url or "redis://127.0.0.1:6379/0")
        _script = _client.register_script(_SCRIPT)  # EVALSHA: the script is sent once
    return _client


def bulk_reserve(per_second: float) -> int:
    """Tokens the bulk lane leaves for urgent sends: a fifth of the burst (none below 5/s, where
    holding one back would halve a campaign's rate)."""
    return max(1, int(per_second)) // 5


def take_tokens(provider: str, account: str, per_second: float, wanted: int, *, reserve: int = 0) -> tuple[int, float]:
    """Take up to ``wanted`` send tokens for this account in one Redis round trip.

    Returns:
      (tokens granted, seconds until the next token): the first ``granted`` calls may go now;
      the rest wait. A provider 429 pause grants nothing and returns the pause's remainder. An
      unlimited account (``per_second`` 0) is granted everything unless paused.

    The bucket holds one second's worth of tokens (so that many calls may go at once after
    idling). ``reserve`` tokens are left in it for other callers: the bulk lane passes
    ``bulk_reserve`` so an urgent message finds a token even while a campaign uses the rest.
    """
    burst = max(1, int(per_second))
    interval_us = int(1_000_000 / per_second) if per_second > 0 else 0
    _redis()
    granted, ms = _script(keys=[f"postroom:rate:{provider}:{account}", f"postroom:pause:{provider}:{account}"],
                          args=[interval_us, burst, reserve, wanted])
    return int(granted), int(ms) / 1000.0


def wait_before_send(provider: str, account: str, per_second: float, *, reserve: int = 0) -> float:
    """Seconds to wait before the next call for this account; 0 means a token was taken."""
    granted, wait = take_tokens(provider, account, per_second, 1, reserve=reserve)
    return 0.0 if granted else wait


def pause(provider: str, account: str, seconds: float) -> None:
    """A provider said 429: nobody calls it for this account for ``seconds``."""
    ms = max(1, int(seconds * 1000))
    _redis().set(f"postroom:pause:{provider}:{account}", 1, px=ms)


def resume(provider: str, account: str) -> None:
    """End a pause of this account now (a WAHA session that is WORKING again sends at once)."""
    _redis().delete(f"postroom:pause:{provider}:{account}")


def claim_pause(provider: str, account: str, seconds: float) -> float:
    """Pause this account for ``seconds`` unless it is paused already, in one Redis command.

    Returns 0.0 when this caller set the pause (its call may go, and nobody else's for
    ``seconds``), else the seconds left of the pause someone else set. A WAHA session's pace and
    jitter are kept this way: each message claims the gap after itself.
    """
    if seconds <= 0:
        return 0.0
    key = f"postroom:pause:{provider}:{account}"
    if _redis().set(key, 1, px=max(1, int(seconds * 1000)), nx=True):
        return 0.0
    return max(1, int(_redis().pttl(key))) / 1000.0
