"""WhatsApp through Meta's Cloud API (the Graph API): the account, the wire payload, the error
table, the 24-hour window, and the ``Channel`` the sender loop drives.

One JSON ``POST {api_base}/{version}/{phone_number_id}/messages`` per message, Bearer token, on a
pooled HTTP session shared by every account of the process. The version is a setting because
Meta moves it several times a year. An API base a workspace configured is a customer-supplied
URL: it is called through the SSRF guard (``common.netguard``), so it cannot reach our own
network (and what answers there cannot end up in a message's ``last_error``); the environment's,
set by the operator, may be the local sandbox. A free-form message (no template) may only go to a contact
who wrote within 24 hours: ``prepare`` looks the windows up once per batch, and ``send`` swaps in
the message's fallback template or refuses with 131047 *before* calling, so the loop falls back
to the route's next channel (or fails) without a call Meta would only reject asynchronously.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.request import getproxies

import requests
from requests.adapters import HTTPAdapter

from common.config import settings
from common.db.connection import fetch
from common.errors import PermanentError, ProviderError, Throttled, TransientError, UnknownOutcome
from common.inbound import window_open_since
from common.netguard import BlockedAddress
from common.providers import config as channel_config
from common.providers.base import Accepted, Channel
from common.providers.transport import connection_failure, guarded_session, retry_after_seconds

PROVIDER = "whatsapp_cloud"  # message.provider, rate-limit and receipt key
CONFIG_PROVIDER = "meta"  # channel_config.provider of a workspace's WhatsApp Cloud configuration
GRAPH_API_BASE = "https://graph.facebook.com"
WINDOW = timedelta(hours=24)  # the customer-service window an inbound message opens
MEDIA_KINDS = ("image", "document", "audio", "video")
CAPTIONED = frozenset({"image", "document", "video"})  # audio takes no caption

# Meta's error codes (PROVIDERS.md), keyed on ``error.code`` whatever the HTTP status.
THROTTLE_CODES = frozenset({4, 80007, 130429})  # account or number rate limits: pause the number
PAIR_LIMIT_CODE = 131056  # the same recipient too often: delay only that message
PAIR_LIMIT_SECONDS = 6.0  # about one message per 6 s to one user
TRANSIENT_CODES = frozenset({131000, 2})
SLOW_RETRY_SECONDS = {
    131048: 15 * 60.0,  # spam rate limit: later, and slowly
    131049: 24 * 3600.0,  # held back "to keep engagement healthy": not before a day has passed
}
PERMANENT_CODES = frozenset({190, 0, 100, 131026, 131047, 131050, 368})
UNREACHABLE_CODES = frozenset({131026, 131047})  # not reachable here: the route's next channel may be
SUPPRESS_CODES = {131050: "opt_out"}  # the user stopped marketing messages
RECEIPT_STATUSES = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed"}


@dataclass(frozen=True)
class WhatsAppAccount:
    """One business phone number and the token that sends from it."""

    phone_number_id: str
    access_token: str = field(repr=False)
    api_base: str
    api_version: str
    rate_limit_per_second: float
    guarded: bool = False  # api_base is the workspace's own: connect through the SSRF guard

    @property
    def key(self) -> str:
        """Meta paces per phone number: tokens, 130429 pauses and receipts are keyed by it."""
        return self.phone_number_id

    @property
    def messages_url(self) -> str:
        return f"{self.api_base.rstrip('/')}/{self.api_version}/{self.phone_number_id}/messages"


def default_account() -> WhatsAppAccount:
    return WhatsAppAccount(settings.whatsapp_phone_number_id, settings.whatsapp_access_token,
                           settings.whatsapp_api_base or GRAPH_API_BASE, settings.whatsapp_api_version,
                           settings.whatsapp_rate_limit_per_second)


def account_for(workspace_id: int) -> WhatsAppAccount:
    """The workspace's own number (its channel configuration), else the deployment's default."""
    config = channel_config.load(workspace_id, PROVIDER)
    if config is None or config.provider != CONFIG_PROVIDER:
        return default_account()
    api_base = config.settings.get("api_base")
    return WhatsAppAccount(config.sender_identity or config.account_ref, config.credentials["access_token"],
                           api_base or settings.whatsapp_api_base or GRAPH_API_BASE,
                           config.settings.get("api_version") or settings.whatsapp_api_version,
                           config.rate_limit_per_second, guarded=bool(api_base))


def classify(status: int, code: int | None, message: str, retry_after: float | None) -> ProviderError:
    """Map a Graph API error (HTTP status, ``error.code``) onto the error vocabulary."""
    text = message or f"Graph API answered HTTP {status}"
    code_text = str(code) if code is not None else str(status)
    if code == PAIR_LIMIT_CODE:
        return Throttled(text, code=code_text, retry_after=retry_after or PAIR_LIMIT_SECONDS, pause_account=False)
    if code in THROTTLE_CODES or (code is None and status == 429):
        return Throttled(text, code=code_text, retry_after=retry_after)
    if code in SLOW_RETRY_SECONDS:
        return TransientError(text, code=code_text, retry_after=max(retry_after or 0.0, SLOW_RETRY_SECONDS[code]))
    if code in PERMANENT_CODES:
        return PermanentError(text, code=code_text, suppress=SUPPRESS_CODES.get(code), fallback=code in UNREACHABLE_CODES)
    if code in TRANSIENT_CODES or status >= 500 or status in (408, 409, 429):
        return TransientError(text, code=code_text, retry_after=retry_after)
    return PermanentError(text, code=code_text)


# --- the wire payload ------------------------------------------------------------------------------


def payload(row: dict[str, Any]) -> dict[str, Any]:
    """The Graph API body for one claimed message (``row`` as the sender loop gives it).

    Raises:
      PermanentError: 131047 with ``fallback``: a free-form message, the window closed, and no
        fallback template to send instead.
    """
    content = row.get("content") or {}
    template = content.get("template")
    # prepare() marks every row the loop claims; a row that skipped it is sent as it is, and a
    # closed window then fails asynchronously, as Meta reports it.
    if not template and not row.get("window_open", True):
        template = content.get("fallback_template")
        if not template:
            raise PermanentError("the recipient's 24-hour window is closed and the message names no fallback template",
                                 code="131047", fallback=True)
    body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": digits(row["to_addr"])}
    media = content.get("media") or []
    if template:
        body.update(type="template", template=_template(template))
    elif media:  # WhatsApp carries one media item per message
        kind = media[0].get("type") or "image"
        body.update(type=kind, **{kind: _media(media[0], row.get("body") or "")})
    else:
        body.update(type="text", text={"preview_url": False, "body": row["body"]})
    if content.get("context_message_id"):
        body["context"] = {"message_id": content["context_message_id"]}
    body["biz_opaque_callback_data"] = str(row["id"])  # echoed in every status webhook
    return body


def digits(address: str) -> str:
    """Meta's ``to``: the E.164 number without "+" (or any separator)."""
    return "".join(c for c in address if c.isdigit())


def _media(item: dict[str, Any], body: str) -> dict[str, Any]:
    kind = item.get("type") or "image"
    obj: dict[str, Any] = {"link": item["url"]}
    caption = item.get("caption") or body
    if caption and kind in CAPTIONED:
        obj["caption"] = caption
    if kind == "document" and item.get("filename"):
        obj["filename"] = item["filename"]
    return obj


def _template(template: dict[str, Any]) -> dict[str, Any]:
    components: list[dict[str, Any]] = []
    header_media = template.get("header_media")
    if header_media:
        kind = header_media.get("type") or "image"
        link: dict[str, Any] = {"link": header_media["url"]}
        if kind == "document" and header_media.get("filename"):
            link["filename"] = header_media["filename"]
        components.append({"type": "header", "parameters": [{"type": kind, kind: link}]})
    elif template.get("header_parameters"):
        components.append({"type": "header", "parameters": [{"type": "text", "text": p} for p in template["header_parameters"]]})
    if template.get("body_parameters"):
        components.append({"type": "body", "parameters": [{"type": "text", "text": p} for p in template["body_parameters"]]})
    out: dict[str, Any] = {"name": template["name"], "language": {"code": template.get("language") or "en_US"}}
    if components:
        out["components"] = components
    return out


# --- the 24-hour window --------------------------------------------------------------------------


def prepare(rows: list[dict[str, Any]]) -> None:
    """Mark each candidate ``window_open``: its recipient wrote to the workspace within 24 hours.
    Runs inside the loop's transaction: one query for the addresses, one per workspace for the
    windows."""
    to = dict(fetch("SELECT id, to_addr FROM message WHERE id = ANY(%s)", ([row["id"] for row in rows],), prepared=True))
    by_workspace: dict[int, list[str]] = {}
    for row in rows:
        by_workspace.setdefault(row["workspace_id"], []).append(to.get(row["id"], ""))
    opened = {ws: window_open_since(ws, PROVIDER, addresses) for ws, addresses in by_workspace.items()}
    since = datetime.now(UTC) - WINDOW
    for row in rows:
        last = opened[row["workspace_id"]].get(to.get(row["id"], ""))
        row["window_open"] = last is not None and last > since


# --- the call --------------------------------------------------------------------------------------


_shared: list[requests.Session] = []
_lock = threading.Lock()


def _session(account: WhatsAppAccount) -> requests.Session:
    """The process's pooled session for the account's API base: every account and thread shares
    its connections. A workspace's own API base gets the guarded one (``common.netguard``)."""
    if account.guarded:
        return guarded_session(settings.postroom_webhook_allowed_networks)
    pool_size = max(10, settings.postroom_sender_concurrency)
    if _shared:
        return _shared[0]
    with _lock:
        if not _shared:
            session = requests.Session()
            session.trust_env = False  # proxies are read once here, not scanned from the environment per call
            session.proxies = {scheme: url for scheme, url in getproxies().items() if scheme in ("http", "https")}
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            _shared.append(session)
        return _shared[0]


def send(account: WhatsAppAccount, row: dict[str, Any]) -> Accepted:
    """POST one message; its wamid is the provider id receipts come back with."""
    body = json.dumps(payload(row), separators=(",", ":"), ensure_ascii=False).encode()
    timeout = settings.postroom_provider_timeout_seconds
    headers = {"Authorization": f"Bearer {account.access_token}", "Content-Type": "application/json"}
    try:
        response = _session(account).post(account.messages_url, data=body, headers=headers,
                                          timeout=(min(5.0, timeout), timeout), allow_redirects=False)
    except BlockedAddress as exc:
        raise PermanentError(f"the configured API base is refused: {exc}", code="blocked_address") from None
    except requests.RequestException as exc:
        raise connection_failure(exc, timeout) from exc
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if 200 <= response.status_code < 300:
        wamid = _wamid(answer)
        if wamid is None:  # taken, by the status; but no id to follow it by
            raise UnknownOutcome(f"HTTP {response.status_code} without a message id: {response.text[:200]}")
        return Accepted(provider_message_id=wamid, segments=None, provider_status="accepted")
    error = answer.get("error") if isinstance(answer, dict) else None
    error = error if isinstance(error, dict) else {}
    code = error.get("code") if isinstance(error.get("code"), int) and not isinstance(error.get("code"), bool) else None
    raise classify(response.status_code, code, str(error.get("message") or response.text[:200]),
                   retry_after_seconds(response.headers.get("Retry-After")))


def _wamid(answer: Any) -> str | None:
    messages = answer.get("messages") if isinstance(answer, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[0], dict) and isinstance(messages[0].get("id"), str):
        return messages[0]["id"]
    return None



WHATSAPP_CLOUD = Channel(name=PROVIDER, provider=PROVIDER, account_for=account_for, send=send, find_sent=None, prepare=prepare)
