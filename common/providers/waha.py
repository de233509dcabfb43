"""WhatsApp through a QR session on a WAHA-compatible gateway: sessions, pace, client, error table.

A workspace drives one or more sessions (each a phone paired by scanning a QR code) on a
gateway. Each session is its own account: the unit of pacing, pauses and receipts. A message's
``from`` names the session that sends it; without one the workspace's default session does.

QR accounts are banned when they blast, and gateways do not pace for us (PROVIDERS.md), so a
session is paced conservatively: the shared token bucket spaces calls by ``pace_seconds``, and
each call first claims the session for its pace plus a random jitter (a Redis pause every
sender respects), so two messages of one session never go closer than the pace. A session that
is not WORKING (waiting for its QR scan, starting, failed) holds every message: a 422 from the
gateway pauses the session for every sender without spending a retry, its state is recorded in
``channel_session`` (``waha_sessions``), and the ``session.status`` webhook that says WORKING releases the held
messages at once (``services/ingest/waha_hooks.py``). A number that is not on WhatsApp is found
by ``check-exists`` before the first send to it and moves the message on to its route's next
channel.

A workspace's session is its own: its account key names the workspace, so nothing another
tenant signs (a receipt, a state, a release of held messages, the end of a pause) reaches it,
even when two configurations name the same gateway and session. A workspace's gateway is an
address the tenant chose, so it is called only through the SSRF guard (``common.netguard``);
the operator's (WAHA_API_BASE, maybe the local sandbox or an in-cluster service) is called
directly.
"""

from __future__ import annotations

import mimetypes
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from common import ratelimit
from common.config import settings
from common.db.connection import fetch
from common.errors import PermanentError, ProviderError, Throttled, TransientError
from common.netguard import BlockedAddress
from common.providers import config as channel_config
from common.providers import waha_sessions
from common.providers.base import Accepted, Channel
from common.providers.transport import connection_failure, guarded_session, retry_after_seconds
from common.receipts import UNSTORABLE

PROVIDER = "waha"
CHANNEL = "whatsapp_qr"
WORKING = "WORKING"
HELD_SECONDS = 6.0  # a session not WORKING is asked again after this long (or released by its webhook)
NUMBER_CACHE_SECONDS = 3600.0  # how long a check-exists answer is trusted
NUMBER_CACHE_SIZE = 50_000  # check-exists answers kept per process, least recently used out
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What PostgreSQL cannot store in text (NUL) or encode (a lone surrogate): never one of our ids.
# message.ack's ack -> our status: -1 ERROR, 0 PENDING (nothing to apply), 1 SERVER, 2 DEVICE, 3 READ, 4 PLAYED
ACK_STATUSES = {-1: "failed", 1: "sent", 2: "delivered", 3: "read", 4: "read"}


@dataclass(frozen=True)
class WahaAccount:
    """One session on one gateway, with its pace; a workspace's (``workspace_id``) or the
    environment's (None), which sends for every workspace without a configuration of its own."""

    api_base: str
    api_key: str = field(repr=False)
    session: str
    pace_seconds: float
    jitter_seconds: float
    workspace_id: int | None = None

    @property
    def key(self) -> str:
        """Unique per gateway and session (every gateway has a session called ``default``), and
        per workspace: two configurations naming one gateway and session never share pauses,
        recorded states or receipts."""
        if self.workspace_id is None:
            return f"{self.api_base}|{self.session}"
        return f"ws{self.workspace_id}|{self.api_base}|{self.session}"

    @property
    def rate_limit_per_second(self) -> float:
        return 1.0 / self.pace_seconds if self.pace_seconds > 0 else 0.0


@dataclass(frozen=True)
class SessionOwner:
    """Who a webhook naming a session may belong to: a workspace (None: no such workspace yet),
    the session's account and the key its webhooks are signed with."""

    workspace_id: int | None
    account: WahaAccount
    webhook_secret: str = field(repr=False)

    @property
    def scope(self) -> list[int] | None:
        """The workspaces whose messages its webhooks may move: its own for a workspace's
        session; any (None) for the environment's, which sends for every workspace without one."""
        return None if self.account.workspace_id is None else [self.account.workspace_id]


def _number(value: Any, default: float) -> float:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return default


def environment_accounts() -> list[WahaAccount]:
    """The deployment's default sessions (WAHA_*), the first being the default one."""
    names = [s.strip() for s in settings.waha_sessions.split(",") if s.strip()] or ["default"]
    return [WahaAccount(settings.waha_api_base.rstrip("/"), settings.waha_api_key, name, settings.waha_pace_seconds,
                        settings.waha_pace_jitter_seconds) for name in names]


def _configured(config: channel_config.ChannelConfig) -> list[WahaAccount]:
    values = config.settings
    names = [str(s) for s in values.get("sessions") or []]
    default = config.sender_identity or (names[0] if names else "default")
    names = [default] + [n for n in names if n != default]
    return [WahaAccount(str(values.get("api_base") or settings.waha_api_base).rstrip("/"),
                        str(config.credentials.get("api_key", "")), name,
                        _number(values.get("pace_seconds"), settings.waha_pace_seconds),
                        _number(values.get("jitter_seconds"), settings.waha_pace_jitter_seconds), config.workspace_id)
            for name in names]


def accounts(workspace_id: int) -> list[WahaAccount]:
    """The workspace's sessions, default first: its channel configuration's, else the
    environment's. Call inside a transaction."""
    config = channel_config.load(workspace_id, CHANNEL)
    if config is None or config.provider != PROVIDER:
        return environment_accounts()
    return _configured(config)


def account_for(workspace_id: int) -> WahaAccount:
    return accounts(workspace_id)[0]


def session_account(workspace_id: int, name: str) -> WahaAccount | None:
    """The workspace's session called ``name``, or None if it has none by that name."""
    return next((a for a in accounts(workspace_id) if a.session == name), None)


def prepare(rows: list[dict[str, Any]]) -> None:
    """Give each message the session its ``from`` names (inside the loop's transaction). A name
    the workspace does not have is kept, and ``send`` fails the message for it."""
    named = dict(fetch("SELECT id, from_addr FROM message WHERE id = ANY(%s) AND coalesce(from_addr, '') <> ''",
                       ([row["id"] for row in rows],)))
    for row in rows:
        if row["id"] in named:
            account = session_account(row["workspace_id"], named[row["id"]])
            if account is None:
                row["unknown_session"] = named[row["id"]]
            else:
                row["account"] = account


def owners(name: str) -> list[SessionOwner]:
    """Every configuration that has a session called ``name``, then the environment's: a webhook
    belongs to the one whose secret signed it. Call inside a transaction."""
    from common.inbound import default_workspace_id

    found = []
    for config in channel_config.matching(PROVIDER, {"sessions": [name]}):
        account = next(a for a in _configured(config) if a.session == name)
        found.append(SessionOwner(config.workspace_id, account, str(config.credentials.get("webhook_secret", ""))))
    env = next((a for a in environment_accounts() if a.session == name), None)
    if env is not None:
        found.append(SessionOwner(default_workspace_id(), env, settings.waha_webhook_secret))
    return found


# --- the gateway's HTTP API ----------------------------------------------------------------------

_operator: dict[str, requests.Session] = {}
_lock = threading.Lock()


def _http(account: WahaAccount) -> requests.Session:
    """The pooled HTTP session for the account's gateway, shared by every call on it (the key
    goes with each request, so sessions hold no credentials). The operator's gateway is called
    directly; any other through the SSRF guard, which refuses loopback, private and metadata
    addresses (unless POSTROOM_WEBHOOK_ALLOWED_NETWORKS allows them) on every new connection."""
    if account.api_base != settings.waha_api_base.rstrip("/"):
        return guarded_session(settings.postroom_webhook_allowed_networks)
    size = max(10, settings.postroom_sender_concurrency)
    with _lock:
        http = _operator.get(account.api_base)
        if http is None:
            http = requests.Session()
            http.trust_env = False  # proxies are not read from the environment on every call
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=size)
            http.mount("http://", adapter)
            http.mount("https://", adapter)
            _operator[account.api_base] = http
        return http


def call(account: WahaAccount, method: str, path: str, *, body: dict[str, Any] | None = None,
         params: dict[str, str] | None = None, accept: str = "application/json") -> requests.Response:
    """One gateway call; a non-2xx answer raises its error (``classify``).

    Raises:
      PermanentError: as ``classify`` says, or the gateway's address is refused (``blocked_address``).
      TransientError, Throttled: as ``classify`` says.
      UnknownOutcome: the request may have been written and its answer was lost.
    """
    if not account.api_base:
        raise PermanentError("no WAHA gateway is configured (WAHA_API_BASE or the channel's api_base)",
                             code="not_configured")
    timeout = settings.postroom_provider_timeout_seconds
    try:
        response = _http(account).request(method, f"{account.api_base}{path}", json=body, params=params,
                                          headers={"X-Api-Key": account.api_key, "Accept": accept},
                                          timeout=(min(5.0, timeout), timeout), allow_redirects=False)
    except BlockedAddress as exc:  # before any byte was written
        raise PermanentError(f"the gateway's address is refused: {exc}", code="blocked_address") from None
    except requests.RequestException as exc:
        raise connection_failure(exc, timeout) from None
    if not 200 <= response.status_code < 300:
        raise classify(account, response)
    return response


def classify(account: WahaAccount, response: requests.Response) -> ProviderError:
    """The gateway's error table: 422 "session status" holds the session; 401/403 and other 4xx
    are permanent; 429 throttles; 408 and 5xx are transient."""
    status, text = response.status_code, response.text[:300]
    answer = _json(response)
    if status == 422 and ("expected" in answer or "session status" in text.lower()):
        state = str(answer.get("status") or "UNKNOWN")
        waha_sessions.record_state(account.key, state)
        return Throttled(f"session {account.session!r} is {state}, not WORKING: its messages wait",
                         code="session_not_working", retry_after=HELD_SECONDS, pause_account=True)
    if status == 429:
        return Throttled(f"HTTP 429: {text}", code="429", retry_after=retry_after_seconds(response.headers.get("Retry-After")))
    if status == 408 or status >= 500:
        return TransientError(f"HTTP {status}: {text}", code=str(status))
    return PermanentError(f"HTTP {status}: {text}", code=str(status))


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        parsed = response.json()
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}



def chat_id(address: str) -> str:
    """WhatsApp's id of a phone number (``<digits>@c.us``); an id already given is kept."""
    return address if "@" in address else "".join(ch for ch in address if ch.isdigit()) + "@c.us"


def provider_id(message: dict[str, Any]) -> str | None:
    """The engine's message id: ``id`` as a string or ``{"_serialized"}``, or ``key.id``; None
    for one the database cannot hold (a NUL or a lone surrogate), which no message of ours has."""
    value = message.get("id")
    if isinstance(value, dict):
        value = value.get("_serialized") or value.get("id")
    if not value and isinstance(message.get("key"), dict):
        value = message["key"].get("id")
    return str(value) if value and not UNSTORABLE.search(str(value)) else None


# --- sending -------------------------------------------------------------------------------------

# (account key, phone) -> (trusted until, chat id or None): a campaign asks about a million
# numbers, so only the NUMBER_CACHE_SIZE most recently used answers are kept.
_numbers: OrderedDict[tuple[str, str], tuple[float, str | None]] = OrderedDict()
_numbers_lock = threading.Lock()


def _known_number(key: tuple[str, str]) -> tuple[float, str | None] | None:
    """The cached answer for ``key`` while it is trusted (and it becomes the most recent)."""
    with _numbers_lock:
        cached = _numbers.get(key)
        if cached is None:
            return None
        if cached[0] <= time.monotonic():
            del _numbers[key]
            return None
        _numbers.move_to_end(key)
        return cached


def _remember_number(key: tuple[str, str], found: str | None) -> None:
    with _numbers_lock:
        _numbers[key] = (time.monotonic() + NUMBER_CACHE_SECONDS, found)
        _numbers.move_to_end(key)
        while len(_numbers) > NUMBER_CACHE_SIZE:
            _numbers.popitem(last=False)


def reachable_chat(account: WahaAccount, address: str) -> str | None:
    """The chat id to send to, or None when the number is not on WhatsApp (asked once per
    number and session for NUMBER_CACHE_SECONDS, while the answer stays among the cached)."""
    chat = chat_id(address)
    if not chat.endswith("@c.us"):
        return chat  # a group or an engine id: nothing to check
    phone = chat.removesuffix("@c.us")
    cached = _known_number((account.key, phone))
    if cached is not None:
        return cached[1]
    try:
        answer = _json(call(account, "GET", "/api/contacts/check-exists", params={"session": account.session, "phone": phone}))
    except ProviderError as exc:
        if exc.code == "outcome_unknown":  # a look-up sends nothing: asking again is safe
            raise TransientError(f"number check failed: {exc}", code="check_exists") from None
        raise
    found = str(answer.get("chatId") or chat) if answer.get("numberExists") else None
    _remember_number((account.key, phone), found)
    return found


def request_for(account: WahaAccount, row: dict[str, Any], chat: str) -> tuple[str, dict[str, Any]]:
    """The endpoint and JSON body of one message: text, or one image or file by URL."""
    content = row.get("content") or {}
    media = content.get("media") or []
    if len(media) > 1:
        raise PermanentError("a WhatsApp QR message carries at most one media item", code="too_many_media")
    if not media:
        body: dict[str, Any] = {"session": account.session, "chatId": chat, "text": row["body"]}
        if content.get("context_message_id"):
            body["reply_to"] = content["context_message_id"]
        return "/api/sendText", body
    item = media[0]
    kind = str(item.get("type") or "")
    filename = item.get("filename") or urlsplit(item["url"]).path.rsplit("/", 1)[-1] or None
    mimetype = kind if "/" in kind else mimetypes.guess_type(filename or item["url"])[0]
    file = {"url": item["url"], **({"mimetype": mimetype} if mimetype else {}), **({"filename": filename} if filename else {})}
    image = kind == "image" or (mimetype or "").startswith("image/")
    body = {"session": account.session, "chatId": chat, "file": file, "caption": item.get("caption") or row["body"]}
    if content.get("context_message_id"):
        body["reply_to"] = content["context_message_id"]
    return ("/api/sendImage" if image else "/api/sendFile"), body


def keep_pace(account: WahaAccount) -> None:
    """Claim the session for its pace plus a random jitter before calling; if another message of
    the session claimed it first (a burst the token bucket let through), wait without spending a
    retry."""
    gap = account.pace_seconds + random.uniform(0, account.jitter_seconds)
    wait = ratelimit.claim_pause(PROVIDER, account.key, gap)
    if wait > 0:
        raise Throttled(f"session {account.session!r} sent less than its pace ago", code="pace",
                        retry_after=wait, pause_account=False)


def send(account: WahaAccount, row: dict[str, Any]) -> Accepted:
    """Send one message through its session.

    Raises:
      PermanentError: not on WhatsApp (``fallback``), an unknown session, refused by the gateway.
      Throttled: the session is not WORKING, or it is still within its pace.
      TransientError, UnknownOutcome: as ``call``.
    """
    if row.get("unknown_session"):
        raise PermanentError(f"this workspace has no WhatsApp QR session {row['unknown_session']!r}",
                             code="unknown_session")
    chat = reachable_chat(account, row["to_addr"])
    if chat is None:
        raise PermanentError(f"{row['to_addr']} is not on WhatsApp", code="not_on_whatsapp", fallback=True)
    path, body = request_for(account, row, chat)
    keep_pace(account)
    answer = call(account, "POST", path, body=body)
    message = _json(answer)
    pid = provider_id(message)
    if pid is None:
        raise ValueError(f"the gateway took the message but named no id: {answer.text[:200]}")  # loop: outcome unknown
    return Accepted(pid, None, str(message.get("ackName") or "accepted"))


LOOKUP_LIMIT = 100  # newest messages of the chat looked at for a send whose answer was lost


def find_sent(account: WahaAccount, row: dict[str, Any], since: datetime) -> list[Accepted]:
    """The messages this session sent to the chat since ``since`` with this message's text, newest
    first (``GET /api/{session}/chats/{chatId}/messages``): the candidates for a send whose
    answer was lost, so it is recorded as sent rather than guessed about.

    Raises:
      ProviderError: the look-up itself failed (try again later).
    """
    text = row["body"]
    answer = call(account, "GET", f"/api/{account.session}/chats/{chat_id(row['to_addr'])}/messages",
                  params={"limit": str(LOOKUP_LIMIT), "downloadMedia": "false"})
    try:
        listed = answer.json()
    except ValueError:
        raise TransientError("the gateway's message list is not JSON", code="lookup") from None
    after = since.timestamp()
    found = []
    for message in listed if isinstance(listed, list) else []:
        if not isinstance(message, dict) or message.get("fromMe") is not True:
            continue
        stamp = message.get("timestamp")
        if isinstance(stamp, int | float) and not isinstance(stamp, bool) and stamp < after:
            continue
        pid = provider_id(message)
        if pid and (message.get("body") or message.get("caption") or "") == text:
            found.append((stamp if isinstance(stamp, int | float) else 0, Accepted(pid, None, "found")))
    return [accepted for _, accepted in sorted(found, key=lambda pair: pair[0], reverse=True)]


# --- sessions on the gateway ---------------------------------------------------------------------

def session_info(account: WahaAccount) -> dict[str, Any]:
    """The gateway's view of the session: ``{name, status, me}``."""
    return _json(call(account, "GET", f"/api/sessions/{account.session}"))


def session_qr(account: WahaAccount) -> bytes:
    """The QR code to scan, as the PNG the gateway serves. Only a PNG is passed on: the API
    answers it as ``image/png`` to whoever asks, whatever the gateway answered.

    Raises:
      PermanentError: the answer is not a PNG image (``not_png``), or as ``call``.
      Throttled, TransientError, UnknownOutcome: as ``call``.
    """
    answer = call(account, "GET", f"/api/{account.session}/auth/qr", params={"format": "image"}, accept="image/png")
    kind = answer.headers.get("Content-Type", "").split(";")[0].strip().lower()[:100]
    if kind != "image/png" or not answer.content.startswith(PNG_SIGNATURE):
        raise PermanentError(f"the gateway answered the QR code with {kind or 'no type'}, not a PNG image",
                             code="not_png")
    return answer.content


WHATSAPP_QR = Channel(name=CHANNEL, provider=PROVIDER, account_for=account_for, send=send, find_sent=find_sent,
                      prepare=prepare)
