"""The sandbox's WAHA gateway state: sessions and their states, numbers not on WhatsApp, sent bodies,
and the signed webhooks a gateway posts.

``WahaGateway`` holds the sessions (``default`` is WORKING at start; the control API adds
sessions and moves their state, which posts a ``session.status`` webhook), the numbers that are
"not on WhatsApp" (ending in 0404, or marked through the control API), and the JSON body of every
accepted send call so tests can assert the exact wire format. Webhooks go to
``{public_url}/webhooks/waha`` in WAHA's envelope ``{id, timestamp, event, session, me, payload}``,
signed ``X-Webhook-Hmac`` = hex HMAC-SHA512(key, raw body) with ``X-Webhook-Hmac-Algorithm:
sha512``: the ``message.ack`` progression (1 SERVER, 2 DEVICE, 3 READ; or -1 ERROR) from a
greenlet per accepted message, ``message`` events on demand. A failed POST is retried twice and
then counted, never raised.
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
from typing import Any

import gevent

from services.sandbox.faults import CallbackBehaviour, InjectedCallbackOutcome
from services.sandbox.records import ReceivedMessage, ReceivedMessages
from services.sandbox.webhook_post import WebhookPoster

logger = logging.getLogger(__name__)

STATES = ("STOPPED", "STARTING", "SCAN_QR_CODE", "WORKING", "FAILED")
DEFAULT_SESSION = "default"
NOT_ON_WHATSAPP_SUFFIX = "0404"  # documented rule: numbers ending so are not on WhatsApp
ACK_NAMES = {-1: "ERROR", 0: "PENDING", 1: "SERVER", 2: "DEVICE", 3: "READ", 4: "PLAYED"}
ACK_STATUSES = {-1: "failed", 1: "sent", 2: "delivered", 3: "read"}  # what the sandbox record shows
MAX_PAYLOADS = 20_000  # bodies kept for inspection; older ones are forgotten
OWN_NUMBER = "15550001000"  # the paired phone of a WORKING session (sessions add their index)


def signature(key: str, raw: bytes) -> str:
    """WAHA's ``X-Webhook-Hmac`` value for ``raw``."""
    return hmac.new(key.encode(), raw, hashlib.sha512).hexdigest()


class WahaGateway:
    """Sessions, unreachable numbers, sent bodies and the webhook sender; greenlet-safe."""

    def __init__(self, records: ReceivedMessages, webhook_url: str, hmac_key: str) -> None:
        self._lock = threading.Lock()
        self._records = records
        self.webhook_url = webhook_url
        self._key = hmac_key
        self._poster = WebhookPoster(records, webhook_url, "WAHA")
        self.reset()

    def reset(self) -> None:
        """Only ``default`` exists, WORKING; nobody is marked unreachable; bodies are forgotten."""
        with self._lock:
            self._sessions: dict[str, str] = {DEFAULT_SESSION: "WORKING"}
            self._unreachable: set[str] = set()
            self._payloads: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()

    def status(self, session: str) -> str | None:
        with self._lock:
            return self._sessions.get(session)

    def me(self, session: str) -> dict[str, str] | None:
        """The paired account of a WORKING session (None before it is paired)."""
        with self._lock:
            if self._sessions.get(session) != "WORKING":
                return None
            index = list(self._sessions).index(session)
        return {"id": f"{int(OWN_NUMBER) + index}@c.us", "pushName": f"Sandbox {session}"}

    def set_status(self, session: str, status: str) -> int | None:
        """Move (or create) a session to ``status`` and post its ``session.status`` webhook;
        returns the receiver's HTTP status."""
        with self._lock:
            self._sessions[session] = status
        return self.post("session.status", session, {"status": status})

    def mark_unreachable(self, phone: str) -> None:
        with self._lock:
            self._unreachable.add(phone)

    def on_whatsapp(self, phone: str) -> bool:
        with self._lock:
            return not phone.endswith(NOT_ON_WHATSAPP_SUFFIX) and phone not in self._unreachable

    def keep_payload(self, sid: str, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self._payloads[sid] = (path, body)
            while len(self._payloads) > MAX_PAYLOADS:
                self._payloads.popitem(last=False)

    def payload(self, sid: str) -> tuple[str, dict[str, Any]] | None:
        """The path and JSON body of an accepted send call."""
        with self._lock:
            return self._payloads.get(sid)

    # --- webhooks -----------------------------------------------------------------------------

    def start_acks(self, message: ReceivedMessage, outcome: InjectedCallbackOutcome | None,
                   behaviour: CallbackBehaviour) -> None:
        """Walk the accepted message's acks in the background and return at once."""
        failed = outcome is not None or not self.on_whatsapp(message.to.lstrip("+"))
        acks = [1, -1] if failed else [1, 2, 3]
        self._records.delivery_started()
        gevent.spawn(self._progress, message, acks, behaviour)

    def _progress(self, message: ReceivedMessage, acks: list[int], behaviour: CallbackBehaviour) -> None:
        try:
            order = list(reversed(acks)) if behaviour.shuffle else acks
            for true_ack, ack in zip(acks, order, strict=True):
                gevent.sleep(behaviour.delay_seconds)
                self._records.move_to_status(message.sid, ACK_STATUSES[true_ack])
                if behaviour.drop:
                    continue
                payload = {"id": message.sid, "from": (self.me(message.from_ or "") or {}).get("id"),
                           "to": message.to.lstrip("+") + "@c.us", "fromMe": True, "ack": ack, "ackName": ACK_NAMES[ack]}
                for _ in range(2 if behaviour.duplicate else 1):
                    self.post("message.ack", message.from_ or DEFAULT_SESSION, payload)
        except Exception:  # a bug here must not kill the worker's hub
            logger.exception("ack progression of %s stopped", message.sid)
        finally:
            self._records.delivery_finished()

    def inbound(self, session: str, phone: str, text: str, message_id: str | None, name: str | None) -> tuple[str, int | None]:
        """Post one customer message as a ``message`` event; (its id, the receiver's HTTP status)."""
        chat = f"{phone}@c.us"
        mid = message_id or f"false_{chat}_{uuid.uuid4().hex[:20].upper()}"
        payload: dict[str, Any] = {"id": mid, "timestamp": int(time.time()), "from": chat, "fromMe": False,
                                   "to": (self.me(session) or {}).get("id"), "body": text, "hasMedia": False}
        if name:
            payload["_data"] = {"notifyName": name}
        return mid, self.post("message", session, payload)

    def post(self, event: str, session: str, payload: dict[str, Any]) -> int | None:
        """POST one event in WAHA's envelope, signed; the receiver's HTTP status (None: unreachable)."""
        event_id, sent_ms = f"evt_{uuid.uuid4().hex}", int(time.time() * 1000)
        envelope = {"id": event_id, "timestamp": sent_ms, "event": event,
                    "session": session, "me": self.me(session), "payload": payload,
                    "engine": "WEBJS", "environment": {"tier": "PLUS", "version": "sandbox"}}
        raw = json.dumps(envelope, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "X-Webhook-Request-Id": event_id, "X-Webhook-Timestamp": str(sent_ms),
                   "X-Webhook-Hmac": signature(self._key, raw), "X-Webhook-Hmac-Algorithm": "sha512"}
        return self._poster.post(raw, headers)
