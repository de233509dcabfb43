"""API rate limits per API key and per workspace: two GCRA buckets checked in one Redis round trip.

A request is let through only when both its key's bucket and its workspace's bucket have room,
and then takes one token from each (a refused request takes none, so a client hammering past its
limit does not push its own recovery further away). The answer carries what the IETF draft's
``RateLimit-*`` headers say, for the bucket that decides. Time comes from the Redis server, so
every ingest replica agrees.

The limits protect the API from a runaway client; they must never take it down themselves. When
Redis does not answer within ``TIMEOUT_SECONDS`` the request is served unchecked (fail open), with
a log line and ``postroom_api_rate_limit_total{outcome="unchecked"}``, and Redis is not asked
again for ``RECHECK_SECONDS``, so an outage costs one short wait per process, not one per request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import Counter

from common.config import settings

log = logging.getLogger("postroom.apilimits")

CHECKS = Counter(
    "postroom_api_rate_limit_total",
    "API requests refused by the API rate limits (limited), or served unchecked because Redis did not answer (unchecked).",
    ["outcome"],
)

# The limiter sits on every request's path: an answer later than this counts as no answer.
TIMEOUT_SECONDS = 0.25
RECHECK_SECONDS = 1.0

_SCRIPT = """
-- KEYS[1] the key's bucket, KEYS[2] the workspace's (theoretical arrival time, microseconds).
-- ARGV[1], ARGV[2]: the key's interval between tokens (us, 0 = unlimited) and burst;
-- ARGV[3], ARGV[4]: the workspace's. Returns, for the bucket that decides:
-- {allowed 0|1, which 1|2, burst, remaining, ms until full, ms until the next token if refused}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function look(key, interval, burst)
  if interval <= 0 then return nil end
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local after = tat + interval                     -- where the bucket stands if this request goes
  local over = after - now - burst * interval      -- > 0: refused, and by how long
  return {tat = tat, after = after, over = over, interval = interval, burst = burst}
end
local buckets = {look(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])), look(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))}
local worst, which = nil, 0
for i = 1, 2 do
  local b = buckets[i]
  if b and (worst == nil or b.over > worst.over) then worst, which = b, i end
end
if worst == nil then return {1, 0, 0, 0, 0, 0} end
if worst.over > 0 then
  return {0, which, worst.burst, 0, math.ceil((worst.tat - now) / 1000), math.ceil(worst.over / 1000)}
end
for i = 1, 2 do
  local b = buckets[i]
  -- '%.0f': Lua would write a number this large in 14 significant digits and lose the microseconds
  if b then redis.call('SET', KEYS[i], string.format('%.0f', b.after), 'PX', math.ceil((b.after - now) / 1000) + 1000) end
end
local remaining = math.floor((worst.burst * worst.interval - (worst.after - now)) / worst.interval)
return {1, which, worst.burst, remaining, math.ceil((worst.after - now) / 1000), 0}
"""


@dataclass(frozen=True)
class Verdict:
    """The answer for one request: whether it may go, and the deciding bucket's figures."""

    allowed: bool
    scope: str = ""  # "key" or "workspace"; "" when nothing limits this request (or Redis did not answer)
    limit: int = 0  # the bucket's size: requests that may go at once
    remaining: int = 0
    reset_seconds: float = 0.0  # until the bucket is full again
    retry_after_seconds: float = 0.0  # until the next request may go, when refused

    def headers(self) -> dict[str, str]:
        """The IETF draft's ``RateLimit-*`` headers (and ``Retry-After`` when refused)."""
        out = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
               "RateLimit-Reset": str(math.ceil(self.reset_seconds))}
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_seconds)))
        return out


UNCHECKED = Verdict(True)

_lock = threading.Lock()
_client: redis.Redis | None = None
_script: Any = None
_skip_until = 0.0


def _redis() -> Any:
    global _client, _script
    with _lock:
        if _client is None:
            from common.broker import redis_client

            _client = redis_client(settings.redis_url or "redis://127.0.0.1:6379/0", TIMEOUT_SECONDS)
            _script = _client.register_script(_SCRIPT)  # EVALSHA: the script is sent once
        return _script


def use_client(client: redis.Redis | None) -> None:
    """Check against ``client`` from now on (None: a new one from the settings on next use)."""
    global _client, _script, _skip_until
    with _lock:
        _client, _script, _skip_until = client, client.register_script(_SCRIPT) if client is not None else None, 0.0


def _interval_us(per_second: float) -> int:
    return int(1_000_000 / per_second) if per_second > 0 else 0


def check(key_id: str, workspace_id: int, *, key_rate: float | None = None, key_burst: int | None = None,
          workspace_rate: float | None = None, workspace_burst: int | None = None) -> Verdict:
    """Take one request's token from the key's and the workspace's buckets, or refuse it.

    Parameters:
      key_id: the API key's public prefix (never the secret).
      key_rate, key_burst, workspace_rate, workspace_burst: override the settings
        (POSTROOM_API_KEY_RATE_PER_SECOND, ...); a rate of 0 means no limit.

    Returns:
      The verdict; ``UNCHECKED`` (allowed) when Redis is unavailable.
    """
    global _skip_until
    key_rate = settings.postroom_api_key_rate_per_second if key_rate is None else key_rate
    workspace_rate = settings.postroom_api_workspace_rate_per_second if workspace_rate is None else workspace_rate
    if key_rate <= 0 and workspace_rate <= 0:
        return UNCHECKED
    if time.monotonic() < _skip_until:
        CHECKS.labels(outcome="unchecked").inc()
        return UNCHECKED
    burst_k = max(1, settings.postroom_api_key_burst if key_burst is None else key_burst)
    burst_w = max(1, settings.postroom_api_workspace_burst if workspace_burst is None else workspace_burst)
    try:
        script = _redis()
        allowed, which, limit, remaining, reset_ms, retry_ms = script(
            keys=[f"postroom:apilimit:key:{key_id}", f"postroom:apilimit:ws:{workspace_id}"],
            args=[_interval_us(key_rate), burst_k, _interval_us(workspace_rate), burst_w])
    except (redis.RedisError, OSError) as exc:
        _skip_until = time.monotonic() + RECHECK_SECONDS
        CHECKS.labels(outcome="unchecked").inc()
        log.warning("API rate limits unchecked for %gs: Redis did not answer: %s: %s", RECHECK_SECONDS,
                    exc.__class__.__name__, str(exc)[:200])
        return UNCHECKED
    verdict = Verdict(bool(allowed), {1: "key", 2: "workspace"}.get(int(which), ""), int(limit), int(remaining),
                      int(reset_ms) / 1000.0, int(retry_ms) / 1000.0)
    if not verdict.allowed:
        CHECKS.labels(outcome="limited").inc()
    return verdict
