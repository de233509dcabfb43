"""A workspace's configuration of one channel: provider, credentials, sender identities, settings.

One ``channel_config`` row per (workspace, channel). Credentials are sealed with Fernet
(``common.crypto``) and only ever unsealed here, for a sender or a webhook check; the API shows
which credential fields are set, never their values. ``settings`` holds what is not secret (API
base URL and version, QR sessions, pace). Reads are cached per process for a few seconds, so a
sender does not query the table per message; ``forget`` drops the cache (the API calls it after a
change, and other processes see the change within ``CACHE_SECONDS``).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from common.crypto import seal, unseal
from common.db.connection import fetch, fetch_dicts

CACHE_SECONDS = 30.0
MISSING_CACHE_SECONDS = 5.0  # a workspace without a config is asked again soon: one may be added


@dataclass(frozen=True)
class ChannelConfig:
    workspace_id: int
    channel: str
    provider: str
    account_ref: str  # the provider's public id of the account (AccountSid, phone-number id, ...)
    sender_identity: str
    rate_limit_per_second: float
    settings: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    credentials: dict[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)
    updated_at: str | None = None


_cache: dict[tuple[int, str], tuple[float, ChannelConfig | None]] = {}
_lock = threading.Lock()
_COLUMNS = "workspace_id, channel, provider, account_ref, credentials, sender_identity, rate_limit_per_second, settings, updated_at"


def _record(row: dict[str, Any]) -> ChannelConfig:
    return ChannelConfig(row["workspace_id"], row["channel"], row["provider"], row["account_ref"], row["sender_identity"],
                         float(row["rate_limit_per_second"]), row["settings"] or {}, unseal(row["credentials"]),
                         row["updated_at"].isoformat() if row.get("updated_at") else None)


def load(workspace_id: int, channel: str) -> ChannelConfig | None:
    """The workspace's configuration of ``channel``, or None (the environment's defaults apply).
    Call inside a transaction (a cache miss reads the table)."""
    now = time.monotonic()
    cached = _cache.get((workspace_id, channel))
    if cached and cached[0] > now:
        return cached[1]
    rows = fetch_dicts(f"SELECT {_COLUMNS} FROM channel_config WHERE workspace_id = %s AND channel = %s", (workspace_id, channel))
    record = _record(rows[0]) if rows else None
    with _lock:
        _cache[(workspace_id, channel)] = (now + (CACHE_SECONDS if record else MISSING_CACHE_SECONDS), record)
    return record


def by_account(provider: str, account_ref: str) -> list[ChannelConfig]:
    """Every configuration of ``provider`` with this public account id (a webhook names the
    account; its secret is in the configuration). Not cached: webhooks are checked against the
    current secret."""
    rows = fetch_dicts(f"SELECT {_COLUMNS} FROM channel_config WHERE provider = %s AND account_ref = %s ORDER BY id",
                       (provider, account_ref))
    return [_record(r) for r in rows]


def matching(provider: str, settings_filter: dict[str, Any]) -> list[ChannelConfig]:
    """Configurations of ``provider`` whose settings contain ``settings_filter`` (jsonb ``@>``)."""
    rows = fetch_dicts(f"SELECT {_COLUMNS} FROM channel_config WHERE provider = %s AND settings @> %s::jsonb ORDER BY id",
                       (provider, json.dumps(settings_filter)))
    return [_record(r) for r in rows]


def save(workspace_id: int, channel: str, provider: str, account_ref: str, credentials: dict[str, Any],
         sender_identity: str, rate_limit_per_second: float, settings: dict[str, Any] | None = None) -> None:
    """Create or replace the workspace's configuration of ``channel`` (inside a transaction)."""
    fetch(
        "INSERT INTO channel_config (workspace_id, channel, provider, account_ref, credentials, sender_identity,"
        " rate_limit_per_second, settings, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, now())"
        " ON CONFLICT (workspace_id, channel) DO UPDATE SET provider = excluded.provider, account_ref = excluded.account_ref,"
        " credentials = excluded.credentials, sender_identity = excluded.sender_identity,"
        " rate_limit_per_second = excluded.rate_limit_per_second, settings = excluded.settings, updated_at = now()",
        (workspace_id, channel, provider, account_ref, seal(credentials), sender_identity, rate_limit_per_second,
         json.dumps(settings or {})),
    )
    forget()


def delete(workspace_id: int, channel: str) -> bool:
    removed = fetch("DELETE FROM channel_config WHERE workspace_id = %s AND channel = %s RETURNING id", (workspace_id, channel))
    forget()
    return bool(removed)


def forget() -> None:
    """Drop cached configurations: the next read sees the table."""
    with _lock:
        _cache.clear()
