"""API keys: issued once in full, stored only as a hash, looked up by their public prefix.

A key reads ``pr_<prefix>_<secret>``; the prefix finds the row, the SHA-256 of the whole key is
compared in constant time. A key carries scopes that say what it may do (``admin`` may do
everything). Lookups are cached briefly per process so a busy API does not query for every
request (a revoked key, or a changed scope, takes effect within CACHE_SECONDS).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from common.db.connection import fetch, transaction
from common.db.models import ApiKey, Workspace

CACHE_SECONDS = 30.0
SCOPES = ("messages:write", "messages:read", "webhooks:write", "webhooks:read", "channels:write", "channels:read", "admin")
DEFAULT_SCOPES = ("messages:write", "messages:read", "webhooks:write", "webhooks:read", "channels:write", "channels:read")
ADMIN = "admin"
_PREFIX = re.compile(r"[0-9a-f]{8}")


@dataclass(frozen=True)
class Grant:
    """What a presented key is: its workspace and what it may do there."""

    workspace_id: int
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes


_cache: dict[str, tuple[float, Grant | None]] = {}


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def unknown_scopes(scopes: Iterable[str]) -> list[str]:
    return [s for s in scopes if s not in SCOPES]


def issue(workspace_id: int, scopes: tuple[str, ...] = DEFAULT_SCOPES) -> str:
    """Create a key for the workspace and return it; this is the only time it is seen whole.

    Raises:
      ValueError: a scope that is not one of SCOPES.
    """
    if not scopes or unknown_scopes(scopes):
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
    prefix = secrets.token_hex(4)
    key = f"pr_{prefix}_{secrets.token_urlsafe(24)}"
    ApiKey.insert(workspace=workspace_id, prefix=prefix, key_hash=_hash(key), scopes=list(scopes)).execute()
    return key


def grant_for(key: str) -> Grant | None:
    """The workspace and scopes of a presented key, or None if it is unknown or revoked."""
    now = time.monotonic()
    cached = _cache.get(key)
    if cached and cached[0] > now:
        return cached[1]
    parts = key.split("_")
    grant = None
    if len(parts) >= 3 and parts[0] == "pr" and _PREFIX.fullmatch(parts[1]):  # nothing odd reaches SQL
        with transaction():  # only on a cache miss: a cached key costs no round trip
            rows = fetch("SELECT workspace_id, key_hash, scopes FROM api_key WHERE prefix = %s AND revoked_at IS NULL", (parts[1],))
        if rows and hmac.compare_digest(rows[0][1], _hash(key)):
            grant = Grant(rows[0][0], frozenset(rows[0][2] or ()))
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[key] = (now + CACHE_SECONDS, grant)
    return grant


def workspace_for(key: str) -> int | None:
    """The workspace a presented key belongs to, or None if it is unknown or revoked."""
    grant = grant_for(key)
    return grant.workspace_id if grant else None


def create_workspace(name: str) -> int:
    return int(Workspace.insert(name=name).execute())


def workspace_id_by_name(name: str) -> int | None:
    found = Workspace.get_or_none(Workspace.name == name)
    return found.id if found else None
