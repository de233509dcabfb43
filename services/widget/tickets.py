"""Stream tickets: what an event stream's URL carries instead of the visitor's token.

EventSource sends no headers, so whatever opens a stream travels in its URL, and URLs end up in
ingress and proxy access logs. The visitor token is the visitor's lasting credential (it writes
messages and reads the whole conversation), so the page trades it, in an ``Authorization`` header,
for a ticket that opens only this visitor's event stream and only for ``TTL_SECONDS``: the inbox,
visitor, conversation and expiry, signed with HMAC-SHA256 under a key derived from
POSTROOM_SECRET_KEY for this one purpose. Any replica checks it without a database or Redis
round trip. A ticket is checked when a stream opens (a stream then runs its
POSTROOM_WIDGET_STREAM_SECONDS); the page asks for a fresh one on every (re)connect, so one read
from a log a minute later opens nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

from common.config import settings
from services.widget.visitors import Inbox, Visitor

TTL_SECONDS = 60
PURPOSE = b"postroom widget stream ticket v1"
MAX_LENGTH = 200
_TICKET = re.compile(r"([0-9]{1,19})\.([0-9]{1,19})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})")


def _key() -> bytes:
    return hmac.new(settings.postroom_secret_key.encode(), PURPOSE, hashlib.sha256).digest()


def _signature(inbox_key: str, visitor_id: int, conversation_id: int, expires: int) -> str:
    signed = f"{inbox_key}.{visitor_id}.{conversation_id}.{expires}".encode()
    return base64.urlsafe_b64encode(hmac.new(_key(), signed, hashlib.sha256).digest()).rstrip(b"=").decode()


def issue(visitor: Visitor, now: float | None = None) -> str:
    """A ticket for ``visitor``'s stream, valid for TTL_SECONDS from ``now``."""
    expires = int(time.time() if now is None else now) + TTL_SECONDS
    signature = _signature(visitor.inbox_key, visitor.id, visitor.conversation_id, expires)
    return f"{visitor.id}.{visitor.conversation_id}.{expires}.{signature}"


def conversation(box: Inbox, ticket: str | None, now: float | None = None) -> int | None:
    """The conversation whose stream ``ticket`` opens, or None: malformed, forged, of another
    inbox, or expired."""
    found = _TICKET.fullmatch(ticket or "") if ticket and len(ticket) <= MAX_LENGTH else None
    if found is None:
        return None
    visitor_id, conversation_id, expires = (int(part) for part in found.group(1, 2, 3))
    if expires < (time.time() if now is None else now):
        return None
    if not hmac.compare_digest(found.group(4), _signature(box.key, visitor_id, conversation_id, expires)):
        return None
    return conversation_id
