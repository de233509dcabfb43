"""Twilio's side of a customer's SMS or MMS, on demand, and what a send call put on the wire.

``POST /sandbox/twilio/inbound`` with ``{"from", "to"?, "body", "media"?, "sid"?, "account_sid"?}``
makes the sandbox POST the inbound-message webhook Twilio would send to
``{public_url}/webhooks/twilio/inbound``: form-encoded, every field PROVIDERS.md lists, signed
with ``X-Twilio-Signature`` by the account's auth token (the default account unless named).
``media`` items are URLs or ``{"url", "content_type"}``. A fixed ``sid`` lets a test deliver the
same message twice, as Twilio does when an answer is slow. The answer reports what ingest said.

``GET /sandbox/twilio/messages/{sid}/form`` shows the form fields of the send call that created
message ``sid``, repeated fields in their order: the exact wire format a client produced.
"""

from __future__ import annotations

import mimetypes
import uuid
from typing import Any
from urllib.parse import urlencode

import urllib3
from flask import Blueprint, Response, jsonify, request
from twilio.request_validator import RequestValidator

from common.config import settings
from common.segments import count_segments
from services.sandbox.state import current_sandbox
from services.sandbox.twilio_api import API_VERSION, MAX_MEDIA, sent_form

blueprint = Blueprint("twilio_sandbox", __name__, url_prefix="/sandbox/twilio")
WEBHOOK_PATH = "/webhooks/twilio/inbound"
TIMEOUT_SECONDS = 10.0
_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=TIMEOUT_SECONDS))


class InboundRequestError(ValueError):
    """A control request that cannot be turned into a webhook; answered 400 with its text."""


def inbound_params(payload: object, account_sid: str, default_to: str) -> dict[str, str]:
    """The form Twilio posts for one inbound message described by a control request."""
    if not isinstance(payload, dict):
        raise InboundRequestError("expected a JSON object with 'from' and 'body'")
    sender, body = payload.get("from"), payload.get("body", "")
    to, media = payload.get("to") or default_to, payload.get("media") or []
    if not isinstance(sender, str) or not sender or not isinstance(to, str) or not isinstance(body, str):
        raise InboundRequestError("'from' (and 'to' if given) must be phone numbers and 'body' a string")
    if not isinstance(media, list) or len(media) > MAX_MEDIA:
        raise InboundRequestError(f"'media' must be a list of at most {MAX_MEDIA} items")
    items = [_media_item(item) for item in media]
    sid = payload.get("sid") or ("MM" if items else "SM") + uuid.uuid4().hex
    if not isinstance(sid, str):
        raise InboundRequestError("'sid' must be a string")
    params = {
        "MessageSid": sid, "SmsMessageSid": sid, "SmsSid": sid, "AccountSid": account_sid, "From": sender, "To": to,
        "Body": body, "NumMedia": str(len(items)), "NumSegments": str(count_segments(body)), "SmsStatus": "received",
        "ApiVersion": API_VERSION,
    }
    for n, (url, content_type) in enumerate(items):
        params[f"MediaUrl{n}"], params[f"MediaContentType{n}"] = url, content_type
    return params


def _media_item(item: Any) -> tuple[str, str]:
    if isinstance(item, str):
        url, content_type = item, None
    elif isinstance(item, dict) and isinstance(item.get("url"), str):
        url, content_type = item["url"], item.get("content_type")
    else:
        raise InboundRequestError(f"a media item is a URL or {{'url', 'content_type'}}, not {item!r}")
    if content_type is not None and not isinstance(content_type, str):
        raise InboundRequestError(f"a media item's 'content_type' must be a string, not {content_type!r}")
    return url, content_type or mimetypes.guess_type(url)[0] or "application/octet-stream"


@blueprint.post("/inbound")
def send_inbound() -> tuple[Response, int]:
    """Deliver one inbound message to ingest now, and report ingest's answer."""
    payload = request.get_json(force=True, silent=True)
    account_sid = (payload.get("account_sid") if isinstance(payload, dict) else None) or settings.twilio_account_sid
    if not isinstance(account_sid, str):
        return jsonify({"error": f"'account_sid' must be a string, not {account_sid!r}"}), 400
    token = current_sandbox().twilio_accounts.token(account_sid)
    if token is None:
        return jsonify({"error": f"no sandbox account {account_sid!r}"}), 400
    try:
        params = inbound_params(payload, account_sid, settings.twilio_from)
    except InboundRequestError as exc:
        return jsonify({"error": str(exc)}), 400
    url = settings.public_url + WEBHOOK_PATH
    headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "TwilioProxy/1.1",
               "X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}
    try:
        answer = _http.request("POST", url, body=urlencode(params), headers=headers, redirect=False)
    except urllib3.exceptions.HTTPError as exc:
        return jsonify({"sid": params["MessageSid"], "error": repr(exc)}), 502
    return jsonify({"sid": params["MessageSid"], "status": answer.status,
                    "content_type": answer.headers.get("Content-Type"), "body": answer.data.decode(errors="replace")}), 200


@blueprint.get("/messages/<sid>/form")
def show_sent_form(sid: str) -> tuple[Response, int]:
    form = sent_form(sid)
    if form is None:
        return jsonify({"error": f"no send form kept for {sid!r}"}), 404
    return jsonify({"sid": sid, "form": [[name, value] for name, value in form]}), 200
