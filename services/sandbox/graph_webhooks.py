"""The sandbox's WhatsApp business side: numbers, who is not on WhatsApp, and signed webhooks.

``GraphState`` holds the phone numbers the sandbox serves (the configured default and any added
through the control API, each with its access token and app secret), the numbers that are "not
on WhatsApp", and the JSON body of every accepted send call (so tests can assert the exact wire
format). Webhooks go to ``{public_url}/webhooks/whatsapp_cloud`` (or the path
``POSTROOM_SANDBOX_WHATSAPP_WEBHOOK_PATH`` names, as a Meta app's webhook URL would) in Meta's envelope, signed
``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>``: a status progression
(sent → delivered → read, or ``failed`` with an error) from a greenlet per accepted message, and
inbound messages on demand. A failed POST is retried twice and then counted, never raised.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import gevent

from services.sandbox.faults import CallbackBehaviour, InjectedCallbackOutcome
from services.sandbox.graph_errors import title
from services.sandbox.records import ReceivedMessage, ReceivedMessages
from services.sandbox.webhook_post import WebhookPoster

logger = logging.getLogger(__name__)

WABA_ID = "102290129340398"  # the business account every sandbox number belongs to
NOT_ON_WHATSAPP_SUFFIX = "0404"  # documented rule: numbers ending so are not on WhatsApp
NOT_ON_WHATSAPP_CODE = 131026
MAX_PAYLOADS = 20_000  # bodies kept for inspection; older ones are forgotten


@dataclass(frozen=True)
class Number:
    phone_number_id: str
    access_token: str
    app_secret: str
    display_phone_number: str


def signature(app_secret: str, raw: bytes) -> str:
    """Meta's ``X-Hub-Signature-256`` value for ``raw``."""
    return "sha256=" + hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest()


class GraphState:
    """Numbers, unreachable recipients, received bodies and the webhook sender; greenlet-safe."""

    def __init__(self, records: ReceivedMessages, default: Number, webhook_url: str) -> None:
        self._lock = threading.Lock()
        self._records = records
        self._default = default
        self.webhook_url = webhook_url
        self._poster = WebhookPoster(records, webhook_url, "WhatsApp Cloud")
        self.reset()

    def reset(self) -> None:
        """Only the default number stays; nobody is marked unreachable; bodies are forgotten."""
        with self._lock:
            self._numbers = {self._default.phone_number_id: self._default}
            self._unreachable: set[str] = set()
            self._payloads: OrderedDict[str, dict[str, Any]] = OrderedDict()

    @property
    def default_number_id(self) -> str:
        return self._default.phone_number_id

    def add_number(self, number: Number) -> None:
        with self._lock:
            self._numbers[number.phone_number_id] = number

    def number(self, phone_number_id: str) -> Number | None:
        with self._lock:
            return self._numbers.get(phone_number_id)

    def authenticate(self, phone_number_id: str, token: str) -> str:
        """"ok", "unknown_number" (a valid token of another number) or "bad_token". Compared as
        bytes: a header may hold any character, and compare_digest takes only ASCII strings."""
        with self._lock:
            numbers = list(self._numbers.values())
        given = token.encode()
        if not any(hmac.compare_digest(given, n.access_token.encode()) for n in numbers):
            return "bad_token"
        number = self.number(phone_number_id)
        return "ok" if number is not None and hmac.compare_digest(given, number.access_token.encode()) else "unknown_number"

    def mark_unreachable(self, wa_id: str) -> None:
        with self._lock:
            self._unreachable.add(wa_id)

    def on_whatsapp(self, wa_id: str) -> bool:
        with self._lock:
            return not wa_id.endswith(NOT_ON_WHATSAPP_SUFFIX) and wa_id not in self._unreachable

    def keep_payload(self, wamid: str, body: dict[str, Any]) -> None:
        with self._lock:
            self._payloads[wamid] = body
            while len(self._payloads) > MAX_PAYLOADS:
                self._payloads.popitem(last=False)

    def payload(self, wamid: str) -> dict[str, Any] | None:
        with self._lock:
            return self._payloads.get(wamid)

    # --- webhooks -----------------------------------------------------------------------------

    def start_statuses(self, message: ReceivedMessage, number: Number, opaque: str | None,
                       outcome: InjectedCallbackOutcome | None, behaviour: CallbackBehaviour) -> None:
        """Walk the accepted message's statuses in the background and return at once."""
        if outcome is not None:
            steps: list[tuple[str, int | None]] = [("failed", outcome.error_code)]
        elif not self.on_whatsapp(message.to.lstrip("+")):
            steps = [("failed", NOT_ON_WHATSAPP_CODE)]  # accepted, then reported undeliverable, as Meta does
        else:
            steps = [("sent", None), ("delivered", None), ("read", None)]
        self._records.delivery_started()
        gevent.spawn(self._progress, message, number, opaque, steps, behaviour)

    def _progress(self, message: ReceivedMessage, number: Number, opaque: str | None,
                  steps: list[tuple[str, int | None]], behaviour: CallbackBehaviour) -> None:
        try:
            order = list(reversed(steps)) if behaviour.shuffle else steps
            for (true_status, true_code), (status, code) in zip(steps, order, strict=True):
                gevent.sleep(behaviour.delay_seconds)
                self._records.move_to_status(message.sid, true_status, true_code, title(true_code) if true_code else None)
                if behaviour.drop:
                    continue
                value = {"statuses": [status_object(message, status, code, opaque)]}
                for _ in range(2 if behaviour.duplicate else 1):
                    self.post(number, value)
        except Exception:  # a bug here must not kill the worker's hub
            logger.exception("status progression of %s stopped", message.sid)
        finally:
            self._records.delivery_finished()

    def post(self, number: Number, value: dict[str, Any]) -> int | None:
        """POST one change of ``number`` in Meta's envelope, signed; the receiver's HTTP status."""
        envelope = {"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": number.display_phone_number, "phone_number_id": number.phone_number_id},
            **value}}]}]}
        raw = json.dumps(envelope, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature(number.app_secret, raw),
                   "User-Agent": "facebookexternalua"}
        return self._poster.post(raw, headers)


def status_object(message: ReceivedMessage, status: str, code: int | None, opaque: str | None) -> dict[str, Any]:
    """One ``value.statuses[]`` entry as Meta sends it."""
    entry: dict[str, Any] = {"id": message.sid, "status": status, "timestamp": str(int(time.time())),
                             "recipient_id": message.to.lstrip("+")}
    if opaque is not None:
        entry["biz_opaque_callback_data"] = opaque
    if status in ("sent", "delivered"):
        entry["conversation"] = {"id": uuid.uuid4().hex, "origin": {"type": "service"}}
        entry["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "service"}
    if code is not None:
        entry["errors"] = [{"code": code, "title": title(code), "message": title(code),
                            "error_data": {"details": title(code)}}]
    return entry


def inbound_value(number: Number, wa_id: str, wamid: str, text: str, name: str | None,
                  media: dict[str, Any] | None) -> dict[str, Any]:
    """``value.contacts`` and ``value.messages`` of one customer message."""
    message: dict[str, Any] = {"from": wa_id, "id": wamid, "timestamp": str(int(time.time()))}
    if media:
        kind = str(media.get("type") or "image")
        obj = {"id": str(media.get("id") or uuid.uuid4().int % 10**15), "mime_type": media.get("mime_type") or "image/jpeg",
               "sha256": hashlib.sha256(wamid.encode()).hexdigest()}
        obj.update({k: media[k] for k in ("caption", "filename") if media.get(k)})
        message.update(type=kind, **{kind: obj})
    else:
        message.update(type="text", text={"body": text})
    return {"contacts": [{"profile": {"name": name or ""}, "wa_id": wa_id}], "messages": [message]}
