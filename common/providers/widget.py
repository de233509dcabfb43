"""The web chat widget as a channel: "sending" a reply is publishing a wake-up for its conversation.

The browser holds an event stream open on one of the widget service's replicas
(``services/widget``). PostgreSQL holds the reply; Redis pub/sub only tells every replica that
conversation ``c`` has a new message ``m``, and the replica serving that conversation's streams
re-reads the table. So a publish is the whole provider call: once Redis took it the message is
``sent``; the browser's acknowledgement makes it ``delivered`` (``services/widget/app.py``).

A publish that fails is transient (nothing reached any browser, and a second publish of the same
id is harmless: streams de-duplicate by message id), and nothing needs looking up afterwards, so
``find_sent`` is None. There is no provider rate to respect: the account is unlimited.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import redis

from common.config import settings
from common.db.connection import fetch
from common.errors import PermanentError, TransientError
from common.providers.base import Accepted, Channel

PROVIDER = "widget"
CHANNEL_NAME = "widget"
PUBSUB_CHANNEL = "postroom:widget"  # every widget replica listens here: {"c": conversation id, "m": message id}


@dataclass(frozen=True)
class WidgetAccount:
    """The one "account" of the widget channel: no credentials, no pace."""

    key: str = PROVIDER
    rate_limit_per_second: float = 0.0


ACCOUNT = WidgetAccount()
_client: redis.Redis | None = None
_lock = threading.Lock()


def _redis() -> redis.Redis:
    global _client
    with _lock:
        if _client is None:
            from common.broker import redis_client

            _client = redis_client(settings.redis_url or "redis://127.0.0.1:6379/0")
        return _client


def wake(conversation_id: int, message_id: int) -> None:
    """Tell every widget replica that the conversation has a new message (raises ``RedisError``)."""
    _redis().publish(PUBSUB_CHANNEL, json.dumps({"c": conversation_id, "m": message_id}))


def account_for(workspace_id: int) -> WidgetAccount:
    return ACCOUNT


def prepare(rows: list[dict[str, Any]]) -> None:
    """Add each candidate's ``conversation_id`` (one query, inside the loop's transaction): the
    conversation is what a widget stream listens to."""
    found = dict(fetch("SELECT id, conversation_id FROM message WHERE id = ANY(%s)", ([row["id"] for row in rows],),
                       prepared=True))
    for row in rows:
        row["conversation_id"] = found.get(row["id"])


def send(account: WidgetAccount, row: dict[str, Any]) -> Accepted:
    """Publish the reply's wake-up. Raises ``PermanentError`` for a message outside a conversation
    (no browser could ever show it) and ``TransientError`` when Redis does not take it."""
    conversation_id = row.get("conversation_id")
    if conversation_id is None:
        raise PermanentError("a widget message must belong to a visitor's conversation", code="no_conversation")
    try:
        wake(int(conversation_id), int(row["id"]))
    except (redis.RedisError, OSError) as exc:
        raise TransientError(f"could not publish to the widget replicas: {exc.__class__.__name__}: {exc}",
                             code="redis") from None
    return Accepted(f"widget-{row['id']}", None, "published")


WIDGET = Channel(name=CHANNEL_NAME, provider=PROVIDER, account_for=account_for, send=send, find_sent=None, prepare=prepare)
