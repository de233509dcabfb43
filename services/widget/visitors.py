"""The widget's rows: inboxes, visitors and their tokens, what a stream replays, and acknowledgements.

An inbox is a workspace's ``widget`` channel configuration; its public ``inbox_key`` is the
configuration's ``account_ref``. A visitor is a browser: its token is a 256-bit secret that only
the browser keeps (the table holds its sha256), and it owns one conversation, created with it,
whose address is ``v:<visitor id>``. Every function here runs inside the caller's transaction.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from common import lifecycle, receipts
from common.db.connection import fetch, fetch_dicts
from common.providers import config as channel_config
from common.providers.widget import ACCOUNT, PROVIDER

INBOX_CACHE_SECONDS = 10.0
REPLAY_LIMIT = 200  # messages one stream query returns: the newest, oldest first
SHOWN_STATUSES = ("sending", "sent", "delivered", "read")  # an outbound reply a browser may show
UNACKED_STATUSES = ("sending", "sent")  # published (or being published) and not yet acknowledged


@dataclass(frozen=True)
class Inbox:
    workspace_id: int
    key: str
    name: str  # the display name replies are shown under (the configuration's sender)
    title: str
    greeting: str
    allowed_origins: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Visitor:
    id: int
    workspace_id: int
    inbox_key: str
    conversation_id: int


_inboxes: dict[str, tuple[float, Inbox | None]] = {}
_lock = threading.Lock()


def inbox(key: str) -> Inbox | None:
    """The inbox whose key this is, or None (cached a few seconds per process: every page load,
    message and stream names it)."""
    now = time.monotonic()
    cached = _inboxes.get(key)
    if cached and cached[0] > now:
        return cached[1]
    found = next((c for c in channel_config.by_account(PROVIDER, key) if c.channel == "widget"), None)
    record = None
    if found is not None:
        options = found.settings
        record = Inbox(found.workspace_id, key, found.sender_identity, str(options.get("title") or found.sender_identity),
                       str(options.get("greeting") or ""), tuple(str(o) for o in options.get("allowed_origins") or ()))
    with _lock:
        if len(_inboxes) > 10_000:  # anyone may name any key: keep the cache bounded
            _inboxes.clear()
        _inboxes[key] = (now + INBOX_CACHE_SECONDS, record)
    return record


def forget_inboxes() -> None:
    with _lock:
        _inboxes.clear()


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


_CREATE = """
WITH n AS (SELECT nextval(pg_get_serial_sequence('widget_visitor', 'id')) AS id
), c AS (
    INSERT INTO conversation (workspace_id, channel, address, name)
    SELECT %(ws)s, 'widget', 'v:' || n.id, 'Visitor ' || n.id FROM n
    RETURNING id
)
INSERT INTO widget_visitor (id, workspace_id, inbox_key, token_hash, conversation_id)
SELECT n.id, %(ws)s, %(key)s, %(hash)s, c.id FROM n, c
RETURNING id
"""


def create_visitor(box: Inbox) -> str:
    """A new visitor of ``box`` with its conversation (one statement); returns its token, which
    is shown once and never stored."""
    token = secrets.token_urlsafe(32)
    fetch(_CREATE, {"ws": box.workspace_id, "key": box.key, "hash": token_hash(token)})
    return token


def visitor(box: Inbox, token: str) -> Visitor | None:
    """The visitor of ``box`` holding ``token`` (its last-seen time moves on), or None."""
    rows = fetch("UPDATE widget_visitor SET last_seen_at = now() WHERE token_hash = %s AND inbox_key = %s"
                 " AND workspace_id = %s AND conversation_id IS NOT NULL RETURNING id, conversation_id",
                 (token_hash(token), box.key, box.workspace_id), prepared=True)
    if not rows:
        return None
    return Visitor(rows[0][0], box.workspace_id, box.key, rows[0][1])


def stored_id(visitor_: Visitor, provider_message_id: str) -> int | None:
    """The id of the visitor message stored under ``provider_message_id`` (a repeated client id)."""
    rows = fetch("SELECT id FROM message WHERE provider = %s AND provider_message_id = %s AND conversation_id = %s",
                 (PROVIDER, provider_message_id, visitor_.conversation_id))
    return rows[0][0] if rows else None


# What a stream sends: the visitor's messages after the cursor, and replies a browser may show
# that are after it or not yet acknowledged. Message ids are not commit-ordered: a reply with a
# lower id can commit after a higher one was streamed, so an unacknowledged reply is sent again
# whatever the cursor (the browser de-duplicates by id). The newest REPLAY_LIMIT, oldest first.
_STREAM = f"""
SELECT * FROM (
    SELECT id, direction, author, body, created_at, status FROM message
    WHERE conversation_id = %(c)s
      AND ((direction = 'inbound' AND id > %(after)s)
           OR (direction = 'outbound' AND status IN {SHOWN_STATUSES}
               AND (id > %(after)s OR status IN {UNACKED_STATUSES})))
    ORDER BY id DESC LIMIT {REPLAY_LIMIT}
) newest ORDER BY id
"""


def messages_after(conversation_id: int, after: int) -> list[dict[str, Any]]:
    return fetch_dicts(_STREAM, {"c": conversation_id, "after": after}, prepared=True)


def event_data(row: dict[str, Any]) -> dict[str, Any]:
    """A message as the browser sees it: never an address, a status detail or a provider id."""
    return {"id": row["id"], "direction": row["direction"], "author": row["author"], "body": row["body"],
            "at": row["created_at"].isoformat()}


def acknowledge(visitor_: Visitor, ids: list[int]) -> int:
    """The browser showed these replies: ``delivered``. Only outbound messages of the visitor's own
    conversation move. A reply acknowledged before its send was recorded (still ``sending``) gets a
    kept receipt, applied by the sender right after it records the send. Returns how many moved
    or were kept."""
    rows = fetch("SELECT id, status FROM message WHERE id = ANY(%s) AND conversation_id = %s AND direction = 'outbound'"
                 " AND status IN ('sending', 'sent')", (ids, visitor_.conversation_id))
    detail = {"provider": PROVIDER, "provider_status": "acknowledged"}
    sent = [{"id": i, "detail": detail} for i, status in rows if status == "sent"]
    moved = lifecycle.apply_receipts("delivered", sent)
    early = [i for i, status in rows if status == "sending"]
    for message_id in early:
        receipts.keep_pending(PROVIDER, "status", f"widget-{message_id}", ACCOUNT.key, "delivered", detail,
                              {"ack": message_id}, [visitor_.workspace_id])
    return len(moved) + len(early)
