"""Inbound messages: stored once each, in the conversation of (workspace, channel, customer).

Every provider webhook that carries a customer's message calls ``store`` inside its
transaction. The conversation is found or created by its key and its ``last_inbound_at`` moves
forward (that time opens WhatsApp's 24-hour window); the message is stored as ``received``, with
what the AI stage will need later: the sender's name and profile, media, and the provider's ids.
The provider's message id is unique per provider, so a webhook delivered twice stores nothing
the second time; a caller acts on the message (``common.conversations.after_store``: a STOP,
START or HELP keyword, or a turn for the AI stage) only when ``store`` stored it, so it acts once.
Each stored message is also one ``inbound`` row of the workspace's usage log.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from psycopg2.extras import Json

from common import events, metrics
from common.db.connection import fetch, fetch_dicts
from common.receipts import storable


@dataclass(frozen=True)
class Inbound:
    """One customer message as a provider reported it."""

    workspace_id: int
    channel: str  # sms, email, whatsapp_cloud, whatsapp_qr, widget
    provider: str
    provider_message_id: str
    from_addr: str  # the customer's address: E.164, email, WhatsApp id
    to_addr: str  # ours: the number, mailbox, phone-number id or session it arrived at
    body: str
    sent_at: datetime | None = None  # the provider's timestamp, if it gave one
    sender_name: str | None = None
    profile: dict[str, Any] = field(default_factory=dict)
    media: list[dict[str, Any]] = field(default_factory=list)  # [{"url", "content_type", "filename"?, "caption"?}]
    extra: dict[str, Any] = field(default_factory=dict)  # channel-specific (subject, reply context, ...)
    provider_account: str | None = None


_STORE = """
WITH conv AS (
    INSERT INTO conversation (workspace_id, channel, address, contact_id, name, profile, last_inbound_at, last_message_at)
    VALUES (%(ws)s, %(channel)s, %(from)s,
            (SELECT contact_id FROM contact_address WHERE workspace_id = %(ws)s AND channel = %(channel)s AND address = %(from)s),
            %(name)s, %(profile)s::jsonb, %(at)s, now())
    ON CONFLICT (workspace_id, channel, address) DO UPDATE SET
        last_inbound_at = greatest(conversation.last_inbound_at, excluded.last_inbound_at),
        last_message_at = now(),
        name = coalesce(excluded.name, conversation.name),
        profile = conversation.profile || excluded.profile
    RETURNING id
), ins AS (
    INSERT INTO message (workspace_id, direction, channel, to_addr, from_addr, body, status, priority, content,
                         provider, provider_message_id, provider_account, conversation_id, sent_at)
    SELECT %(ws)s, 'inbound', %(channel)s, %(to)s, %(from)s, %(body)s, 'received', 'urgent', %(content)s::jsonb,
           %(provider)s, %(pid)s, %(account)s, conv.id, %(at)s
    FROM conv
    ON CONFLICT DO NOTHING  -- the same provider message id: a webhook delivered again
    RETURNING id, workspace_id, channel, from_addr, to_addr, conversation_id, tags, priority, content
), ev AS (
    INSERT INTO message_event (message_id, status, detail)
    SELECT id, 'received', jsonb_build_object('provider', %(provider)s::text, 'provider_message_id', %(pid)s::text) FROM ins
), ob AS (
    INSERT INTO outbox (workspace_id, event_type, message_id, payload, lane)
    SELECT workspace_id, 'message.received', id,
           jsonb_build_object('id', id, 'status', 'received', 'channel', channel, 'from', from_addr, 'to', to_addr,
                              'conversation_id', conversation_id, 'body', %(body)s::text, 'sender_name', %(name)s::text,
                              'media', content -> 'media', 'tags', tags, 'at', clock_timestamp()),
           priority
    FROM ins WHERE """ + events.subscribed_sql("ins.workspace_id", "'message.received'") + """
), usage AS (  -- one inbound usage row per stored message (a webhook delivered again stores nothing)
    INSERT INTO usage_log (workspace_id, kind, channel, conversation_id, message_id)
    SELECT workspace_id, 'inbound', channel, conversation_id, id FROM ins
)
SELECT ins.id, ins.conversation_id FROM ins
"""


def store(message: Inbound) -> int | None:
    """Store ``message`` in its conversation (inside the caller's transaction).

    Returns:
      The new message's id, or None when this provider message id was stored before.
    """
    # What a customer wrote reaches PostgreSQL as it can be stored (no NUL, no lone surrogate):
    # the provider signed it as it was, and refusing it would lose the message on every retry.
    message = replace(message, **{name: storable(getattr(message, name)) for name in
                                  ("from_addr", "to_addr", "body", "sender_name", "profile", "media", "extra",
                                   "provider_message_id")})
    content = {"media": message.media, **({"sender_name": message.sender_name} if message.sender_name else {}),
               **({"profile": message.profile} if message.profile else {}), **message.extra}
    rows = fetch_dicts(_STORE, {
        "ws": message.workspace_id, "channel": message.channel, "from": message.from_addr, "to": message.to_addr,
        "body": message.body, "name": message.sender_name, "profile": Json(message.profile),
        "at": message.sent_at or datetime.now().astimezone(), "content": Json(content),
        "provider": message.provider, "pid": message.provider_message_id, "account": message.provider_account,
    }, prepared=False)
    metrics.INBOUND.labels(channel=message.channel, outcome="stored" if rows else "duplicate").inc()
    return rows[0]["id"] if rows else None


def window_open_since(workspace_id: int, channel: str, addresses: list[str]) -> dict[str, datetime]:
    """The last inbound time of each of ``addresses`` that wrote to the workspace on ``channel``
    (one query): what a WhatsApp sender checks its 24-hour window against."""
    rows = fetch("SELECT address, last_inbound_at FROM conversation WHERE workspace_id = %s AND channel = %s"
                 " AND address = ANY(%s) AND last_inbound_at IS NOT NULL", (workspace_id, channel, addresses))
    return {address: at for address, at in rows}


_default_workspace: dict[str, int] = {}


def default_workspace_id() -> int | None:
    """The workspace inbound messages at the deployment's default accounts belong to
    (POSTROOM_INBOUND_WORKSPACE), or None if there is no such workspace."""
    from common.config import settings

    name = settings.postroom_inbound_workspace
    if name not in _default_workspace:
        rows = fetch("SELECT id FROM workspace WHERE name = %s", (name,))
        if not rows:
            return None
        _default_workspace[name] = rows[0][0]
    return _default_workspace[name]


def forget_default_workspace() -> None:
    _default_workspace.clear()
