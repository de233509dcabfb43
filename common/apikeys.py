"""API keys: issued once in full, stored only as a hash, looked up by their public prefix.

A key reads ``pr_<prefix>_<secret>``; the prefix finds the row, the SHA-256 of the whole key is
compared in constant time. Lookups are cached briefly per process so a busy API does not query
for every request (a revoked key stops working within CACHE_SECONDS).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from common.db.connection import fetch
from common.db.models import ApiKey, Workspace

CACHE_SECONDS = 30.0
_cache: dict[str, tuple[float, int | None]] = {}


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue(workspace_id: int, scopes: tuple[str, ...] = ("messages:write", "messages:read")) -> str:
    """Create a key for the workspace and return it; this is the only time it is seen whole."""
    prefix = secrets.token_hex(4)
    key = f"pr_{prefix}_{secrets.token_urlsafe(24)}"
    ApiKey.insert(workspace=workspace_id, prefix=prefix, key_hash=_hash(key), scopes=list(scopes)).execute()
    return key


def workspace_for(key: str) -> int | None:
    """The workspace a presented key belongs to, or None if it is unknown or revoked."""
    now = time.monotonic()
    cached = _cache.get(key)
    if cached and cached[0] > now:
        return cached[1]
    parts = key.split("_")
    workspace_id = None
    if len(parts) >= 3 and parts[0] == "pr":
        rows = fetch("SELECT workspace_id, key_hash FROM api_key WHERE prefix = %s AND revoked_at IS NULL", (parts[1],))
        if rows and hmac.compare_digest(rows[0][1], _hash(key)):
            workspace_id = rows[0][0]
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[key] = (now + CACHE_SECONDS, workspace_id)
    return workspace_id


def create_workspace(name: str) -> int:
    return int(Workspace.insert(name=name).execute())


def workspace_id_by_name(name: str) -> int | None:
    found = Workspace.get_or_none(Workspace.name == name)
    return found.id if found else None
