"""The HTTP half of the sandbox's mail relay: replies, the record, and the relay's webhooks.

The SMTP server (``smtp_server``, its own asyncio process) asks here which reply each
transaction gets (``/sandbox/email/verdict``: the fault plan of channel ``email``, whose
``error_code`` is an SMTP reply code) and hands over every accepted message
(``/sandbox/email/received``), which is parsed and recorded as a ``ReceivedEmail``. After a
message is accepted a greenlet posts the relay's events to ingest, signed as Standard Webhooks
with ``EMAIL_WEBHOOK_SECRET``: ``delivered``, or for a recipient whose local part starts with
``bounce`` a ``bounced`` DSN (5.1.1), and for one starting with ``complain`` a ``complained``
report after delivery. A DSN or a complaint comes REPORT_DELAY_SECONDS later than a delivery
would, as from a real relay (a DSN follows the recipient server's refusal, a complaint the
reader). ``POST /sandbox/email/inbound`` posts an inbound email to ingest on demand.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import gevent
import urllib3
from flask import Blueprint, Response, jsonify, request

from common import signing
from common.config import settings
from services.sandbox.faults import CallbackBehaviour, FaultPlan
from services.sandbox.records import ReceivedMessage, ReceivedMessages
from services.sandbox.state import current_sandbox

CHANNEL = "email"
EVENTS_PATH = "/webhooks/email/events"
INBOUND_PATH = "/webhooks/email/inbound"
KEPT_HEADERS = ("Message-ID", "Reply-To", "Date", "MIME-Version", "List-Unsubscribe", "List-Unsubscribe-Post")
RETRY_DELAYS_SECONDS = (0.2, 0.5)
REPORT_DELAY_SECONDS = 0.5
MAX_INBOUND_TIMES = 5
# The reply for an injected code, and the step of the transaction that gives it: a 421 closes
# the session at MAIL, a size or content refusal comes after DATA, the rest refuse the recipient.
REPLIES = {
    421: ("MAIL", "421 4.7.0 Service not available, closing transmission channel"),
    450: ("RCPT", "450 4.2.1 Mailbox temporarily unavailable"),
    451: ("RCPT", "451 4.3.0 Local error in processing"),
    452: ("RCPT", "452 4.5.3 Too many recipients"),
    550: ("RCPT", "550 5.1.1 User unknown"),
    551: ("RCPT", "551 5.1.6 User not local"),
    552: ("DATA", "552 5.3.4 Message size exceeds fixed limit"),
    553: ("RCPT", "553 5.1.3 Bad recipient address syntax"),
    554: ("DATA", "554 5.7.1 Message rejected as spam"),
}
blueprint = Blueprint("sandbox_email", __name__)
log = logging.getLogger(__name__)
_http = urllib3.PoolManager(num_pools=4, maxsize=64, retries=False, timeout=urllib3.Timeout(total=5.0))


@dataclass
class ReceivedEmail(ReceivedMessage):
    """One accepted message for one recipient, as the relay holds it; ``body`` is the text part."""

    subject: str = ""
    html: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    structure: list[str] = field(default_factory=list)  # the MIME parts' content types, in order
    attachments: list[dict[str, Any]] = field(default_factory=list)  # filename, content_type, size
    size: int = 0  # bytes of the raw MIME message


def email_fault_plan(latency_ms: int) -> FaultPlan:
    """A fault plan whose error codes are SMTP reply codes (no HTTP status is involved)."""
    return FaultPlan(latency_ms, lambda code: code, lambda status: status)


def reply_for(code: int) -> tuple[str, str]:
    """(step, reply) for an injected code; anything not an SMTP code (a throttle burst) is a 451."""
    if code in REPLIES:
        return REPLIES[code]
    if 400 <= code < 600:
        return "RCPT", f"{code} {code // 100}.0.0 Injected failure"
    return REPLIES[451]


@blueprint.post("/sandbox/email/verdict")
def verdict() -> Response:
    """The SMTP server asks at MAIL: the reply this transaction gets, and the latency to add."""
    plan = current_sandbox().faults[CHANNEL]
    error = plan.take_send_error()
    step, reply = reply_for(error.error_code) if error else (None, None)
    if error:
        current_sandbox().records.count("rejected_by_fault")
    return jsonify({"stage": step, "reply": reply, "latency_seconds": plan.latency_seconds()})


@blueprint.post("/sandbox/email/received")
def received() -> Response:
    """The SMTP server hands over an accepted message: record it, start its events, and say
    whether its answer is to be lost."""
    state = current_sandbox()
    raw = request.get_data()
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    message_id = str(parsed.get("Message-ID") or f"<{uuid.uuid4().hex}@sandbox.postroom.test>")
    recipients = request.args.getlist("to")
    plan = state.faults[CHANNEL]
    records = [_record(parsed, raw, message_id, request.args.get("sender") or "", rcpt,
                       message_id if len(recipients) == 1 else f"{message_id}#{n}")
               for n, rcpt in enumerate(recipients)]
    for record in records:
        state.records.add(record)
        state.records.delivery_started()
        gevent.spawn(_relay_events, state.records, record, plan.callback_behaviour())
    lost = plan.take_lost_answer()
    if lost:
        state.records.count("answers_dropped" if lost == "drop" else "answers_delayed")
    queue_id = uuid.uuid4().hex[:12].upper()
    return jsonify({"reply": f"250 2.0.0 Ok: queued as {queue_id}", "lost": lost, "hang_seconds": plan.hang_seconds()})


def _text(content: str) -> str:
    """A text part as the sender wrote it: without the line break MIME adds at its end."""
    return content[:-2] if content.endswith("\r\n") else content[:-1] if content.endswith("\n") else content


def _record(parsed: EmailMessage, raw: bytes, message_id: str, sender: str, recipient: str, sid: str) -> ReceivedEmail:
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    attachments = [{"filename": part.get_filename(), "content_type": part.get_content_type(),
                    "size": len(part.get_payload(decode=True) or b"")} for part in parsed.iter_attachments()]
    return ReceivedEmail(
        channel=CHANNEL, sid=sid, to=recipient, from_=str(parsed.get("From") or sender), status_callback=None,
        status="accepted", body=_text(text.get_content()) if text else "",
        subject=str(parsed.get("Subject") or ""), html=html.get_content() if html else None,
        headers={name: str(parsed[name]).strip() for name in KEPT_HEADERS if name in parsed},
        structure=[part.get_content_type() for part in parsed.walk()], attachments=attachments, size=len(raw),
    )


def _relay_events(records: ReceivedMessages, message: ReceivedEmail, behaviour: CallbackBehaviour) -> None:
    """What the relay reports after taking the message: a bounce, or delivery (and a complaint)."""
    try:
        gevent.sleep(behaviour.delay_seconds)
        local = message.to.partition("@")[0].lower()
        mid = message.headers.get("Message-ID", message.sid)
        base = {"message_id": mid, "recipient": message.to}
        if local.startswith("bounce"):
            records.move_to_status(message.sid, "bounced", 550, "5.1.1 user unknown")
            events = [(REPORT_DELAY_SECONDS, {"type": "bounced", **base, "status": "5.1.1", "diagnostic":
                                              f"smtp; 550 5.1.1 <{message.to}>: Recipient address rejected: user unknown"})]
        else:
            records.move_to_status(message.sid, "delivered")
            events = [(0.0, {"type": "delivered", **base})]
            if local.startswith("complain"):
                events.append((REPORT_DELAY_SECONDS, {"type": "complained", **base, "feedback_type": "abuse"}))
        for delay, event in events:
            gevent.sleep(delay)
            if not behaviour.drop:
                for _ in range(2 if behaviour.duplicate else 1):
                    post_signed(EVENTS_PATH, event, records)
    except Exception:  # a bug here must not kill the worker's hub
        log.exception("relay events of %s stopped", message.sid)
    finally:
        records.delivery_finished()


def post_signed(path: str, payload: dict[str, Any], records: ReceivedMessages | None = None) -> int | None:
    """POST ``payload`` to ingest signed with the relay's secret, retrying twice; the final status."""
    body = json.dumps({**payload, "timestamp": datetime.now(UTC).isoformat()}).encode()
    headers = signing.headers([settings.email_webhook_secret], f"msg_{uuid.uuid4().hex}", int(time.time()), body,
                              event_type=str(payload.get("type", "inbound")), attempt=1)
    status = None
    for attempt in range(len(RETRY_DELAYS_SECONDS) + 1):
        if attempt:
            gevent.sleep(RETRY_DELAYS_SECONDS[attempt - 1])
        try:
            status = _http.request("POST", f"{settings.public_url}{path}", body=body, headers=headers, redirect=False).status
        except urllib3.exceptions.HTTPError as exc:
            log.info("relay webhook to %s failed: %r", path, exc)
            continue
        if status < 500:
            break
    if records is not None:
        records.count("callbacks_sent" if status is not None and 200 <= status < 300 else "callbacks_failed")
    return status


@blueprint.post("/sandbox/email/inbound")
def inbound() -> tuple[Response, int]:
    """Post an inbound email to ingest as the relay would: ``{"from", "to", "subject", "text",
    "html", "message_id"?, "times"?}`` (``times`` 2 posts the same email twice, as a relay retrying;
    1 to MAX_INBOUND_TIMES)."""
    spec = request.get_json(force=True, silent=True)
    if not isinstance(spec, dict) or not spec.get("from"):
        return jsonify({"error": "expected a JSON object with at least 'from'"}), 400
    times = spec.get("times", 1)
    if not isinstance(times, int) or isinstance(times, bool) or not 1 <= times <= MAX_INBOUND_TIMES:
        return jsonify({"error": f"'times' must be an integer from 1 to {MAX_INBOUND_TIMES}"}), 400
    email = {"message_id": spec.get("message_id") or f"<{uuid.uuid4().hex}@mail.example.test>",
             "from": spec["from"], "to": spec.get("to") or settings.email_from,
             "subject": spec.get("subject", ""), "text": spec.get("text", ""), "html": spec.get("html")}
    statuses = [post_signed(INBOUND_PATH, email) for _ in range(times)]
    return jsonify({"email": email, "statuses": statuses}), 200
