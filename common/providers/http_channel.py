"""The generic ``http`` channel: a message is delivered by POSTing it, signed, to a URL the
workspace configured (an n8n workflow, a CRM's inbound hook), and its error table.

The request is a Standard Webhooks delivery (``common.signing``) of
``{"type": "message.send", "timestamp", "data": {id, to, body, tags, ...}}`` with ``webhook-id``
``msg_<message id>``, the same on every retry, so the receiver can drop a repeat. It goes
through the SSRF guard (``common.netguard``). Outcomes: 2xx accepted (the provider id is the
answer's ``id``, ``message_id`` or ``sid`` when it is JSON); 429 throttles; 408 and 5xx,
timeouts and connection errors are transient (the receiver dedupes by webhook-id, so a retry
is safe); any other 4xx, a redirect or a refused address is permanent.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests

from common import signing
from common.config import settings
from common.errors import PermanentError, Throttled, TransientError
from common.netguard import BlockedAddress
from common.providers.sms import Accepted
from common.providers.transport import guarded_session, retry_after_seconds

PROVIDER = "http"
EVENT_TYPE = "message.send"
ID_KEYS = ("id", "message_id", "messageId", "sid")
MAX_ANSWER = 65536

@dataclass(frozen=True)
class HttpAccount:
    """One workspace's delivery URL, its signing secret and its pace."""

    url: str
    secret: str
    rate_limit_per_second: float
    workspace_id: int

    @property
    def key(self) -> str:
        return f"ws{self.workspace_id}"


def session() -> requests.Session:
    return guarded_session(settings.postroom_webhook_allowed_networks)


def payload(row: dict[str, Any]) -> bytes:
    data = {"id": row["id"], "channel": PROVIDER, "to": row["to_addr"], "from": row.get("from_addr"),
            "body": row["body"], "tags": row.get("tags") or [],
            "created_at": row["created_at"].isoformat() if row.get("created_at") else None}
    timestamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": EVENT_TYPE, "timestamp": timestamp, "data": data}, separators=(",", ":")).encode()


def send(account: HttpAccount, row: dict[str, Any]) -> Accepted:
    body = payload(row)
    msg_id = f"msg_{row['id']}"
    headers = signing.headers([account.secret], msg_id, int(time.time()), body, event_type=EVENT_TYPE,
                              attempt=int(row.get("attempts") or 0) + 1)
    timeout = settings.postroom_webhook_timeout_seconds
    try:
        if not account.url:
            raise PermanentError("this workspace has no http channel configured", code="not_configured")
        with session().post(account.url, data=body, headers=headers, timeout=(min(5.0, timeout), timeout),
                            allow_redirects=False, stream=True) as response:
            try:
                answer = response.raw.read(MAX_ANSWER, decode_content=True) or b""
            except Exception:  # the status is known; an unreadable body only costs the provider id
                answer = b""
    except BlockedAddress as exc:
        raise PermanentError(f"the channel URL is refused: {exc}", code="blocked_address") from None
    except requests.Timeout:
        raise TransientError(f"no answer within {timeout:g}s", code="timeout") from None
    except requests.RequestException as exc:
        raise TransientError(f"connection failed: {type(exc).__name__}", code="connection") from None
    return classify(response.status_code, response.headers.get("Retry-After"), answer, row["id"])


def classify(status: int, retry_after: str | None, answer: bytes, message_id: int) -> Accepted:
    """2xx is accepted; anything else raises the matching error."""
    text = answer[:200].decode("utf-8", "replace")
    if 200 <= status < 300:
        return Accepted(_provider_id(answer) or f"http-{message_id}", None, "accepted")
    if status == 429:
        raise Throttled(f"HTTP 429: {text}", code="429", retry_after=retry_after_seconds(retry_after))
    if status == 408 or status >= 500:
        raise TransientError(f"HTTP {status}: {text}", code=str(status), retry_after=retry_after_seconds(retry_after))
    raise PermanentError(f"HTTP {status}: {text}" + (" (redirects are not followed)" if 300 <= status < 400 else ""),
                         code=str(status))


def _provider_id(answer: bytes) -> str | None:
    try:
        parsed = json.loads(answer)
    except ValueError:
        return None
    if isinstance(parsed, dict):
        for key in ID_KEYS:
            value = parsed.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
                return str(value)[:200]
    return None

