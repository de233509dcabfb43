"""Provider webhooks: Twilio status callbacks, verified by ``X-Twilio-Signature``.

Every callback is stored in ``provider_event`` with its verdict before anything else happens. An
invalid signature gets 403 and changes nothing else. A valid receipt moves its message forward
(never back); one for a provider id not yet recorded waits as pending.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from common import metrics
from common.config import settings
from common.db.connection import transaction
from common.lifecycle import apply_receipt
from common.providers.accounts import twilio_auth_token
from common.providers.twilio_sms import PROVIDER, RECEIPT_STATUSES, signature_valid
from common.receipts import store_event

webhooks = Blueprint("webhooks", __name__, url_prefix="/webhooks")
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def public_url() -> str:
    """The URL the provider called, as it saw it (the configured public base plus path and query)."""
    query = request.query_string.decode()
    return f"{settings.public_url}{request.path}" + (f"?{query}" if query else "")


@webhooks.post("/twilio/status")
def twilio_status() -> tuple[Response | str, int]:
    params = request.form.to_dict(flat=True)
    sid = params.get("MessageSid") or params.get("SmsSid")
    provider_status = (params.get("MessageStatus") or params.get("SmsStatus") or "").lower()
    status = RECEIPT_STATUSES.get(provider_status)
    detail = {"provider_status": provider_status}
    if params.get("ErrorCode"):
        detail.update(error_code=params["ErrorCode"], error=f"{params['ErrorCode']}: {params.get('ErrorMessage', 'delivery failed')}")
    message_id = None
    with transaction():
        token = twilio_auth_token(params.get("AccountSid", ""))
        valid = token is not None and signature_valid(token, public_url(), params, request.headers.get("X-Twilio-Signature", ""))
        if not valid or not sid:
            store_event(PROVIDER, "status", params, signature_valid=valid, provider_message_id=sid,
                        status=status, detail=detail, handled=valid)
        else:  # one statement: keep the receipt and move its message forward (or leave it pending)
            message_id = apply_receipt(PROVIDER, sid, status, detail, keep_event={"kind": "status", "payload": params})
    if not valid:
        metrics.PROVIDER_WEBHOOKS.labels(provider=PROVIDER, kind="status", verdict="bad_signature").inc()
        return Response('{"error":{"code":"bad_signature","message":"X-Twilio-Signature does not match"}}', mimetype="application/json"), 403
    verdict = ("applied" if message_id is not None else "pending") if status and sid else "ignored"
    metrics.PROVIDER_WEBHOOKS.labels(provider=PROVIDER, kind="status", verdict=verdict).inc()
    return Response(EMPTY_TWIML, mimetype="application/xml"), 200
