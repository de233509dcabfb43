"""A workspace's chatbot per channel: which model answers (an OpenAI-compatible server, or the
offline ``extractive`` default), how it speaks, and when it hands a conversation to a person.

The API key of an ``openai`` chatbot is sealed with the deployment's key (``common.crypto``)
before it reaches PostgreSQL and is never returned. A configuration that leaves the key out
keeps the stored one only while ``base_url`` stays the same: a key is never sent to a server it
was not given for.
"""

from __future__ import annotations

from typing import Any

from psycopg2.extras import Json

from common import crypto
from common.db.connection import fetch_dicts

CHANNELS = ("sms", "email", "whatsapp_cloud", "whatsapp_qr", "widget")
PROVIDERS = ("openai", "extractive")
HANDOFF_MESSAGE = "Thanks — a person from our team will reply here shortly."
FALLBACK_MESSAGE = "Sorry, I can't answer that right now. A person from our team will reply shortly."
HANDOFF_KEYWORDS = ("human", "agent", "person", "operator", "representative")
# Columns a configuration sets (besides the key); settings holds json_mode and the score weights.
COLUMNS = ("enabled", "provider", "base_url", "model", "product_name", "guidelines", "handoff_message", "fallback_message",
           "handoff_keywords", "temperature", "max_tokens", "timeout_seconds", "language", "min_score", "min_margin",
           "settings")

_SAVE = """
INSERT INTO chatbot (workspace_id, channel, credentials, """ + ", ".join(COLUMNS) + """)
VALUES (%(ws)s, %(channel)s, %(credentials)s, """ + ", ".join(f"%({c})s" for c in COLUMNS) + """)
ON CONFLICT (workspace_id, channel) DO UPDATE SET
    """ + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS) + """,
    credentials = CASE WHEN %(keep_key)s AND chatbot.base_url IS NOT DISTINCT FROM excluded.base_url
                       THEN chatbot.credentials ELSE excluded.credentials END,
    updated_at = now()
RETURNING *
"""


def save(workspace_id: int, channel: str, fields: dict[str, Any], api_key: str | None) -> dict[str, Any]:
    """Store the channel's chatbot (replacing any earlier one; inside the caller's transaction).

    Parameters:
      fields: every one of ``COLUMNS``.
      api_key: the key to seal; None keeps the stored one if ``base_url`` is unchanged, else none.

    Returns:
      The stored row (``credentials`` sealed).
    """
    values = {**fields, "settings": Json(fields["settings"]), "handoff_keywords": list(fields["handoff_keywords"])}
    return fetch_dicts(_SAVE, {**values, "ws": workspace_id, "channel": channel,
                               "credentials": crypto.seal({"api_key": api_key}) if api_key else None,
                               "keep_key": api_key is None})[0]


def get(workspace_id: int, channel: str) -> dict[str, Any] | None:
    """The channel's chatbot row (``credentials`` sealed), or None."""
    rows = fetch_dicts("SELECT * FROM chatbot WHERE workspace_id = %s AND channel = %s", (workspace_id, channel))
    return rows[0] if rows else None


def all_of(workspace_id: int) -> list[dict[str, Any]]:
    return fetch_dicts("SELECT * FROM chatbot WHERE workspace_id = %s ORDER BY channel", (workspace_id,))


def delete(workspace_id: int, channel: str) -> dict[str, Any] | None:
    """Remove the channel's chatbot; returns it as it was, or None."""
    rows = fetch_dicts("DELETE FROM chatbot WHERE workspace_id = %s AND channel = %s RETURNING *", (workspace_id, channel))
    return rows[0] if rows else None


def api_key(row: dict[str, Any]) -> str | None:
    """The chatbot's API key in clear (for the AI stage's request only), or None."""
    if not row.get("credentials"):
        return None
    key = crypto.unseal(bytes(row["credentials"])).get("api_key")
    return str(key) if key else None


def first_language(workspace_id: int) -> str | None:
    """The language of the workspace's first chatbot: what a knowledge item is written in by default."""
    rows = fetch_dicts("SELECT language FROM chatbot WHERE workspace_id = %s ORDER BY created_at, channel LIMIT 1",
                       (workspace_id,))
    return rows[0]["language"] if rows else None
