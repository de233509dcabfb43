"""Twilio's inbound SMS/MMS webhook: a customer's message, stored once in its conversation.

Verified like the status callback (``X-Twilio-Signature`` with an auth token of the AccountSid
it names) and kept in ``provider_event`` with its verdict, in one transaction per webhook. A bad
signature gets 403 and a bounded record, and changes nothing else. A signed message is stored in
a workspace whose token verified it (the one whose SMS channel sends as its ``To``, if several
did), else — when the environment's token did, for the deployment's own account — in the
default inbound workspace; a second delivery of the same MessageSid stores nothing. A STOP,
START or HELP keyword acts once, when the message is first stored, or the message becomes a turn of
the AI stage (``common.conversations.after_store``); a HELP answer is an ordinary message and a turn
is handed on after the commit. Twilio is answered with empty TwiML.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict

from common import conversations, metrics
from common.db.connection import transaction
from common.inbound import Inbound, default_workspace_id, store
from common.providers import config as channel_config
from common.providers.accounts import Verified
from common.providers.twilio_sms import PROVIDER
from common.receipts import storable, store_event
from services.ingest.contract import FORM, Body, header, operation
from services.ingest.errors import ApiError
from services.ingest.webhooks import EMPTY_TWIML, verified

log = logging.getLogger("postroom.ingest.twilio_inbound")
twilio_inbound = Blueprint("twilio_inbound", __name__, url_prefix="/webhooks")
KIND = "inbound"


class TwilioInboundMessage(BaseModel):
    """A message a customer sent to one of our Twilio numbers (form-encoded)."""

    # Twilio adds fields over time (and MediaUrl{N}/MediaContentType{N} per item): all strings.
    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": {"type": "string"}})

    AccountSid: str = ""
    MessageSid: str = ""
    From: str = ""
    To: str = ""
    Body: str = ""
    NumMedia: str = ""
    NumSegments: str = ""


@operation(twilio_inbound, "POST", "/twilio/inbound", summary="Twilio inbound SMS/MMS", request=TwilioInboundMessage,
           request_media=FORM, errors=(403, 422),
           headers=[header("X-Twilio-Signature", "HMAC-SHA1 of the URL and parameters with the account's auth token.")],
           ok={200: Body(None, "Stored once per MessageSid; empty TwiML (no reply).", media_type="application/xml")})
def twilio_inbound_message() -> tuple[Response, int]:
    params = request.form.to_dict(flat=True)
    account_sid = params.get("AccountSid", "")
    sid = params.get("MessageSid") or params.get("SmsMessageSid") or params.get("SmsSid")
    odd = next((name for name, value in params.items() if "\x00" in name or "\x00" in value), None)
    replies = conversations.Followups()
    with transaction():  # one transaction per webhook, whatever its verdict
        signed = verified(params)
        if signed is None:
            event_id = store_event(PROVIDER, KIND, params, signature_valid=False, provider_message_id=sid, status="received")
            verdict = "bad_signature"
        else:
            verdict, replies = _store(params, sid, account_sid, signed) if odd is None and sid and params.get("From") \
                else ("ignored", conversations.Followups())
            store_event(PROVIDER, KIND, params, signature_valid=True, provider_message_id=storable(sid), status="received",
                        detail={"verdict": verdict}, handled=True)
    metrics.PROVIDER_WEBHOOKS.labels(provider=PROVIDER, kind=KIND, verdict=verdict).inc()
    if signed is None:
        log.warning("twilio inbound webhook with a bad signature: provider_event %s, %d bytes from %s",
                    event_id, request.content_length or 0, request.remote_addr)
        raise ApiError(403, "bad_signature", "X-Twilio-Signature does not match")
    if odd is not None:  # signed, but nothing Twilio sends holds a NUL (nor can PostgreSQL text)
        raise ApiError(422, "invalid_request", f"{odd[:100]} contains a NUL character", odd[:100])
    replies.hand_on()  # after the commit
    return Response(EMPTY_TWIML, mimetype="application/xml"), 200


def _store(params: dict[str, str], sid: str, account_sid: str, signed: Verified) -> tuple[str, conversations.Followups]:
    """Store the message in its workspace's conversation and act on it; the verdict for its
    provider event, and what to hand on after the commit."""
    workspace_id = _workspace(signed, params.get("To", ""))
    if workspace_id is None:
        log.warning("twilio inbound %s for account %s: no workspace takes it", sid, account_sid)
        return "no_workspace", conversations.Followups()
    message = Inbound(
        workspace_id=workspace_id, channel="sms", provider=PROVIDER, provider_message_id=sid,
        from_addr=params["From"], to_addr=params.get("To", ""), body=params.get("Body", ""),
        media=_media(params), extra={"num_segments": params.get("NumSegments")}, provider_account=account_sid,
    )
    stored = store(message)
    if stored is None:
        return "duplicate", conversations.Followups()
    return "stored", conversations.after_store(message, stored)


def _workspace(signed: Verified, to: str) -> int | None:
    """A workspace whose token verified the webhook: the one whose SMS channel sends as ``to``;
    else, when the environment's token did, the default inbound workspace; else the first."""
    sending_as_to = [ws for ws in signed.workspaces if _sms_sender(ws) == to]
    if sending_as_to:
        return sending_as_to[0]
    if signed.default:
        return default_workspace_id()
    return signed.workspaces[0] if signed.workspaces else None


def _sms_sender(workspace_id: int) -> str | None:
    config = channel_config.load(workspace_id, "sms")
    return config.sender_identity if config is not None and config.provider == PROVIDER else None


def _media(params: dict[str, str]) -> list[dict[str, str]]:
    """The message's media as Twilio lists them: ``NumMedia`` pairs of MediaUrl{N}/MediaContentType{N}."""
    count = int(params["NumMedia"]) if params.get("NumMedia", "").isdigit() else 0
    return [{"url": params[f"MediaUrl{n}"], "content_type": params.get(f"MediaContentType{n}", "")}
            for n in range(min(count, 10)) if params.get(f"MediaUrl{n}")]
