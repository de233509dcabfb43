"""Provider webhooks: Twilio status callbacks, verified by ``X-Twilio-Signature``.

Every callback is stored in ``provider_event`` with its verdict before anything else happens. An
invalid signature gets 403, a log line, and a bounded record (a few KiB of the payload, never
all of it); it changes nothing else. A valid receipt is kept pending (one INSERT) and handed to
the receipts stage, which applies many at a time and moves each message forward (never back);
one for a provider id not yet recorded waits until the send is. The token that verified it decides whose
messages it may move: the environment's (the deployment's account) any workspace's, a workspace
configuration's only that workspace's (``common.providers.accounts.Verified``).
"""

from __future__ import annotations

import logging
import re

from flask import Blueprint, Response, request

from common import dispatch, metrics
from common.config import settings
from common.db.connection import transaction
from common.providers.accounts import Verified, twilio_vouched
from common.providers.twilio_sms import PROVIDER, RECEIPT_STATUSES, signature_valid
from common.receipts import keep_pending, store_event
from services.ingest.contract import FORM, Body, header, operation
from services.ingest.errors import ApiError
from services.ingest.models import TwilioStatusCallback

log = logging.getLogger("postroom.ingest.webhooks")
webhooks = Blueprint("webhooks", __name__, url_prefix="/webhooks")
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
# An account SID is short and alphanumeric (Twilio's: AC + 32 hex digits); anything else cannot be
# one of ours, and is not looked up (a NUL would not even reach PostgreSQL).
_SID = re.compile(r"[A-Za-z0-9]{2,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def public_url() -> str:
    """The URL the provider called, as it saw it (the configured public base plus path and query)."""
    query = request.query_string.decode(errors="replace")
    return f"{settings.public_url}{request.path}" + (f"?{query}" if query else "")


@operation(webhooks, "POST", "/twilio/status", summary="Twilio status callback", request=TwilioStatusCallback,
           request_media=FORM, errors=(403, 422),
           headers=[header("X-Twilio-Signature", "HMAC-SHA1 of the URL and parameters with the account's auth token.")],
           ok={200: Body(None, "Recorded; the receipts stage applies it.", media_type="application/xml")})
def twilio_status() -> tuple[Response | str, int]:
    params = request.form.to_dict(flat=True)
    account_sid = params.get("AccountSid", "")
    sid = params.get("MessageSid") or params.get("SmsSid")
    provider_status = (params.get("MessageStatus") or params.get("SmsStatus") or "").lower()
    status = RECEIPT_STATUSES.get(provider_status)
    odd = next((name for name, value in params.items() if _CONTROL.search(value) or _CONTROL.search(name)), None)
    detail = {"provider_status": provider_status}
    if params.get("ErrorCode"):
        detail.update(error_code=params["ErrorCode"], error=f"{params['ErrorCode']}: {params.get('ErrorMessage', 'delivery failed')}")
    kept = None
    with transaction():  # one transaction per callback, whatever its verdict
        signed = verified(params)
        if signed is None:
            event_id = store_event(PROVIDER, "status", params, signature_valid=False, provider_message_id=sid, status=status)
        elif odd is not None:  # signed, but nothing Twilio sends holds control characters: store nothing
            pass
        elif not sid:
            store_event(PROVIDER, "status", params, signature_valid=True, status=status, detail=detail, handled=True)
        elif status is None:  # nothing to apply (queued, accepted, ...): kept as handled
            store_event(PROVIDER, "status", params, signature_valid=True, provider_message_id=sid, detail=detail, handled=True)
        else:  # one INSERT: the receipts stage applies it with others, after this commits
            kept = keep_pending(PROVIDER, "status", sid, account_sid, status, detail, params, signed.scope)
    if signed is None:
        log.warning("twilio status callback with a bad signature: provider_event %s, %d bytes from %s",
                    event_id, request.content_length or 0, request.remote_addr)
        metrics.PROVIDER_WEBHOOKS.labels(provider=PROVIDER, kind="status", verdict="bad_signature").inc()
        raise ApiError(403, "bad_signature", "X-Twilio-Signature does not match")
    if odd is not None:
        raise ApiError(422, "invalid_request", f"{odd[:100]} contains a control character", odd[:100])
    if kept is not None:
        dispatch.handoff.submit("receipts", "normal", [kept])
    metrics.PROVIDER_WEBHOOKS.labels(provider=PROVIDER, kind="status", verdict="kept" if kept is not None else "ignored").inc()
    return Response(EMPTY_TWIML, mimetype="application/xml"), 200


def verified(params: dict[str, str]) -> Verified | None:
    """Whose auth token signed this Twilio webhook (``X-Twilio-Signature`` over the public URL and
    ``params``) for the AccountSid it names; None if no token of that account does."""
    account_sid = params.get("AccountSid", "")
    if not _SID.fullmatch(account_sid):
        return None
    url, signature = public_url(), request.headers.get("X-Twilio-Signature", "")
    return twilio_vouched(account_sid, lambda token: signature_valid(token, url, params, signature))
