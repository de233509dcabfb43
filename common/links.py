"""Click tracking: the links of outgoing content rewritten to short links, and the clicks on them.

Processing rewrites a message's http(s) links, when it renders its batch, to
``{POSTROOM_PUBLIC_URL}/r/{code}``: every link of a text body (SMS, WhatsApp, email text) and the
``href`` of every anchor of an email's HTML (not images or other attributes: loading an image is
not a click). Media, attachments, subjects and WhatsApp template parameters are left as written.
Each message gets its own codes (the same address twice in one message is one link), so a click
names its message; the rows carry the workspace and are inserted for the whole batch at once. A
message opts out with ``track_clicks: false`` (stored as ``content.track_clicks``); tracking is on
by default, for campaigns and single messages alike.

A code is 12 random letters and digits (at least 68 bits): short links are looked up without a
workspace, so only unguessable codes keep one workspace's links (and message ids) from another.
A click is one statement: it records the click, and for the message's first click sets
``clicked_at`` by compare-and-set and counts the click in the campaign's counters, so two clicks
racing count once.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from common import events
from common.config import settings
from common.db.connection import fetch

# A code is 12 random letters and digits: each random byte maps to one of 62 (slightly unevenly,
# 5 or 4 of 256 values each), so a code holds at least 68 bits. Letters and digits only: no phone
# ends a link early at a trailing "-" or "_".
CODE_LENGTH = 12
_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TO_ALPHABET = bytes(_ALPHABET[i % len(_ALPHABET)] for i in range(256))
CODE = re.compile(rf"[0-9A-Za-z]{{{CODE_LENGTH}}}")
MAX_URL = 4096  # a longer link is left as written (it would make an unwieldy redirect)
MAX_USER_AGENT = 512
# Channels people read: the http channel hands the content to the workspace's own system as is.
TRACKED_CHANNELS = ("sms", "email", "whatsapp_cloud", "whatsapp_qr")
# SQL: the message ``m`` may have links to rewrite (a superset: Python decides exactly which).
MAY_REWRITE_SQL = ("(m.channel = ANY(ARRAY['" + "', '".join(TRACKED_CHANNELS) + "'])"
                   " AND coalesce(m.content->>'track_clicks', 'true') <> 'false'"
                   " AND (m.body ~* 'https?://' OR m.content->>'html' ~* 'https?://'))")

# A link in text ends at whitespace, a quote or an angle bracket; trailing punctuation that ends a
# sentence is trimmed off below.
_TEXT_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_TRAILING = ".,;:!?*"
_PAIRS = {")": "(", "]": "[", "}": "{"}
# The quoted href of an anchor.
_HREF = re.compile(r"""(<a\b[^>]*?\shref\s*=\s*)(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)

Shorten = Callable[[str], str]


def short_url(code: str) -> str:
    return f"{settings.public_url}/r/{code}"


def new_code() -> str:
    return secrets.token_bytes(CODE_LENGTH).translate(_TO_ALPHABET).decode()


def tracks(channel: str, content: Mapping[str, Any] | None) -> bool:
    """Whether a message on ``channel`` with ``content`` has its links rewritten."""
    return channel in TRACKED_CHANNELS and (content or {}).get("track_clicks") is not False


def _trimmed(url: str) -> str:
    """``url`` without the punctuation that ends the sentence around it (a closing bracket stays
    when the link opened one, as Wikipedia's do)."""
    while url:
        last = url[-1]
        if last in _TRAILING or (last in _PAIRS and url.count(last) > url.count(_PAIRS[last])):
            url = url[:-1]
        else:
            break
    return url


def _trackable(url: str) -> bool:
    if len(url) > MAX_URL or url.startswith(f"{settings.public_url}/r/"):
        return False
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return False  # from an HTML entity; it could split a header
    try:
        host = urlsplit(url).hostname
        return host is not None and bool(host.encode("idna"))  # a host no browser could look up stays as written
    except ValueError:  # UnicodeError too
        return False


def rewrite_text(text: str, shorten: Shorten) -> str:
    """``text`` with each trackable link replaced by ``shorten(link)``."""
    def one(match: re.Match[str]) -> str:
        url = _trimmed(match.group(0))
        return shorten(url) + match.group(0)[len(url):] if _trackable(url) else match.group(0)

    return _TEXT_URL.sub(one, text)


def rewrite_html(markup: str, shorten: Shorten) -> str:
    """``markup`` with each anchor's trackable ``href`` replaced by ``shorten(link)``; the link
    is kept unescaped (``&amp;`` as ``&``), as the browser would follow it."""
    def one(match: re.Match[str]) -> str:
        double = match.group(2) is not None
        url = html.unescape(match.group(2) if double else match.group(3)).strip()
        if not url.lower().startswith(("http://", "https://")) or not _trackable(url):
            return match.group(0)
        quote = '"' if double else "'"
        return f"{match.group(1)}{quote}{shorten(url)}{quote}"

    return _HREF.sub(one, markup)


def has_links(body: str | None, markup: str | None = None) -> bool:
    """Whether a text body or an HTML part has a link that would be rewritten."""
    found: list[str] = []

    def note(url: str) -> str:
        found.append(url)
        return url

    rewrite_text(body or "", note)
    rewrite_html(markup or "", note)
    return bool(found)


def projected(body: str) -> str:
    """``body`` as it will be sent once its links are rewritten: codes have a fixed length, so
    ingest counts an SMS's segments on this before any code exists."""
    placeholder = short_url("x" * CODE_LENGTH)
    return rewrite_text(body, lambda url: placeholder)


class LinkBatch:
    """The links a render batch makes, to insert in one statement: each message its own codes."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def shortener(self, workspace_id: int, message_id: int) -> Shorten:
        codes: dict[str, str] = {}

        def shorten(url: str) -> str:
            if url not in codes:
                codes[url] = new_code()
                self.rows.append({"code": codes[url], "workspace_id": workspace_id, "message_id": message_id, "url": url})
            return short_url(codes[url])

        return shorten


# The click, and for a message's first: clicked_at (compare-and-set: of two racing clicks the
# second finds it set), its message.clicked event for subscribed endpoints, and one more clicked
# message in its campaign's counters.
_CLICK = """
WITH l AS (
    SELECT id, workspace_id, message_id, url FROM link WHERE code = %(code)s
), first AS (
    UPDATE message m SET clicked_at = now() FROM l
    WHERE m.id = l.message_id AND m.workspace_id = l.workspace_id AND m.clicked_at IS NULL
    RETURNING m.id, m.campaign_id, m.workspace_id, m.channel, m.to_addr, m.tags, m.priority
), event AS (
    INSERT INTO outbox (workspace_id, event_type, message_id, payload, lane)
    SELECT first.workspace_id, '""" + events.CLICKED + """', first.id,
           jsonb_build_object('id', first.id, 'status', 'clicked', 'channel', first.channel, 'to', first.to_addr,
                              'tags', first.tags, 'url', l.url, 'campaign_id', first.campaign_id, 'at', clock_timestamp()),
           first.priority
    FROM first, l WHERE """ + events.subscribed_sql("first.workspace_id", "'" + events.CLICKED + "'") + """
), tally AS (
    INSERT INTO campaign_tally (campaign_id, status, n)
    SELECT campaign_id, 'clicked', 1 FROM first WHERE campaign_id IS NOT NULL
), click AS (
    INSERT INTO link_click (link_id, workspace_id, user_agent, ip_hash, counted)
    SELECT l.id, l.workspace_id, %(agent)s, %(ip)s, EXISTS (SELECT 1 FROM first) FROM l
)
SELECT url FROM l
"""


def destination(code: str) -> str | None:
    """Where the short link ``code`` goes, recording nothing; None for an unknown code."""
    rows = fetch("SELECT url FROM link WHERE code = %s", (code,)) if CODE.fullmatch(code) else []
    return str(rows[0][0]) if rows else None


def record_click(code: str, user_agent: str | None, address: str | None) -> str | None:
    """Record a click on the short link ``code`` (call inside a transaction). Returns the link's
    address, or None for an unknown or malformed code."""
    if not CODE.fullmatch(code):
        return None
    rows = fetch(_CLICK, {"code": code, "agent": (user_agent or "")[:MAX_USER_AGENT] or None,
                          "ip": address_hash(address) if address else None})
    return str(rows[0][0]) if rows else None


def address_hash(address: str) -> str:
    """A keyed hash of a client address: clicks from one address can be told apart from others'
    without storing the address (a plain hash of an IPv4 address is reversed by trying them all)."""
    key = hashlib.sha256(b"postroom-click-address:" + settings.postroom_secret_key.encode()).digest()
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()[:32]
