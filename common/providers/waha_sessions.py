"""The recorded state of WAHA sessions, and the release of what a session held while not WORKING.

``channel_session`` keeps each session's last reported state (from its ``session.status``
webhooks, a gateway's 422, or the API asking the gateway), keyed by the session's account key:
session names repeat across gateways (every gateway has a ``default``), and a workspace's key
names the workspace, so only what that workspace's webhook key signed writes its row. The API
shows it when the gateway does not answer. When a session is WORKING again, its waiting messages
are made due at once; the caller ends the session's pause and enqueues them after its commit.
"""

from __future__ import annotations

from typing import Any

from psycopg2.extras import Json

from common.db.connection import fetch, fetch_dicts, release_connection, transaction

PROVIDER = "waha"
CHANNEL = "whatsapp_qr"

_SAVE = """
INSERT INTO channel_session (provider, name, workspace_id, status, me, updated_at)
VALUES (%(provider)s, %(key)s, %(ws)s, %(status)s, %(me)s, now())
ON CONFLICT (provider, name) DO UPDATE SET
    status = excluded.status,
    me = CASE WHEN excluded.status = 'WORKING' THEN coalesce(excluded.me, channel_session.me) END,
    workspace_id = coalesce(excluded.workspace_id, channel_session.workspace_id),
    updated_at = now()
"""


def save_state(account_key: str, workspace_id: int | None, status: str, me: Any = None) -> None:
    """Record a session's state (inside the caller's transaction). Only a WORKING session is
    paired with a WhatsApp account (``me``)."""
    fetch(_SAVE, {"provider": PROVIDER, "key": account_key, "ws": workspace_id, "status": status,
                  "me": Json(me) if me is not None else None})


def record_state(account_key: str, status: str) -> None:
    """``save_state`` from a sender's call thread, in its own short transaction; a database
    blip only loses the record (the next 422 or webhook writes it again)."""
    try:
        with transaction():
            save_state(account_key, None, status)
    except Exception:  # noqa: BLE001 - the message is held either way
        pass
    finally:
        release_connection()


def saved_state(account_key: str) -> dict[str, Any] | None:
    """The session's last recorded ``status``, ``me`` and ``updated_at``, if any."""
    rows = fetch_dicts("SELECT status, me, updated_at FROM channel_session WHERE provider = %s AND name = %s",
                       (PROVIDER, account_key))
    return rows[0] if rows else None


# Both use the partial index message_routed_account (migration 0015): a release reads only the
# session's own waiting messages, however many others wait.
_RELEASE_SENT_THROUGH = """
UPDATE message SET due_at = now(), updated_at = now()
WHERE status = 'routed' AND channel = %(channel)s AND provider_account = %(key)s
RETURNING id, priority, channel
"""
_RELEASE_WORKSPACE = """
UPDATE message SET due_at = now(), updated_at = now()
WHERE status = 'routed' AND channel = %(channel)s AND workspace_id = %(ws)s
  AND (provider_account = %(key)s
       OR (provider_account IS NULL AND due_at > now() AND due_at <= now() + make_interval(secs => %(within)s)))
RETURNING id, priority, channel
"""


def release_held(account_key: str, workspace_id: int | None, within_seconds: float) -> list[dict[str, Any]]:
    """Make the session's waiting messages due now (inside the caller's transaction); returns
    them (``id``, ``priority``, ``channel``) to enqueue after the commit, once the session's pause
    is ended (``ratelimit.resume``).

    ``workspace_id`` is the session's (None: the environment's session, which sends for many
    workspaces): only its messages move. Those a sender claimed and the gateway refused carry
    the session's key. A workspace's messages never claimed have no account recorded yet: those
    that wait for the pause (due within ``within_seconds``, its length) are made due too, and any
    of another session still held wait again for its pause; those further out wait their turn
    at the session's pace. The environment's session releases only what carries its key."""
    if workspace_id is None:
        return fetch_dicts(_RELEASE_SENT_THROUGH, {"channel": CHANNEL, "key": account_key})
    return fetch_dicts(_RELEASE_WORKSPACE, {"channel": CHANNEL, "key": account_key, "ws": workspace_id,
                                            "within": within_seconds})
