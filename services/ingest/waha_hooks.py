"""WAHA in ingest: the gateway's signed webhooks, and the API's view of a workspace's QR sessions.

``POST /webhooks/waha`` carries ``X-Webhook-Hmac``, the hex HMAC-SHA512 of the exact bytes
received with the webhook key of the session it names (a workspace's configuration, or the
environment's for the default sessions; session names repeat across gateways, so the key that
verifies decides whose it is). A webhook that no key verifies is kept in bounded form and
answered 403; nothing else changes. A valid one is applied in one transaction: ``message.ack``
moves its message forward by rank, ``message`` stores a customer's message once in its
conversation (and heeds a STOP, START or HELP keyword in it then, or makes it a turn of the AI stage:
``common.conversations.after_store``), and ``session.status`` records the session's state, and when it is WORKING again
releases the messages the session held at once (its pause ends, they are due now and enqueued
after the commit). A workspace's key speaks for that workspace's session and messages only.
Text the database cannot hold (NUL, a lone surrogate) is replaced before anything is stored, and
an event name we do not know is kept as kind ``unknown``.

``GET /v1/channels/whatsapp_qr/sessions/{name}`` answers the session's state as the gateway
reports it (else as last recorded), and ``…/qr`` passes the gateway's QR image through, only if
it is a PNG (else 502).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, Literal

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from common import conversations, dispatch, metrics, ratelimit
from common.db.connection import transaction
from common.errors import ProviderError, Throttled
from common.inbound import Inbound, store
from common.lifecycle import apply_receipt
from common.providers import waha, waha_sessions
from common.providers.waha import ACK_STATUSES, PROVIDER, SessionOwner
from common.receipts import storable, store_event
from services.ingest.contract import Body, header, operation
from services.ingest.errors import ApiError

log = logging.getLogger("postroom.ingest.waha")
waha_hooks = Blueprint("waha_hooks", __name__)
SESSION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SESSION_PARAM = {"name": {"pattern": SESSION.pattern}}
GATEWAY_RETRY_SECONDS = "5"
# WAHA's event names; any other is kept as kind "unknown" (the envelope still says what it was).
EVENTS = frozenset({
    "session.status", "message", "message.any", "message.ack", "message.ack.group", "message.reaction",
    "message.revoked", "message.edited", "message.waiting", "state.change", "presence.update", "poll.vote",
    "poll.vote.failed", "chat.archive", "call.received", "call.accepted", "call.rejected", "label.upsert",
    "label.deleted", "label.chat.added", "label.chat.deleted", "group.join", "group.leave", "group.v2.join",
    "group.v2.leave", "group.v2.update", "group.v2.participants", "event.response", "event.response.failed",
    "engine.event"})


class WahaWebhook(BaseModel):
    """A WAHA webhook; only a correctly signed one has any effect."""

    model_config = ConfigDict(extra="allow")

    id: str = Field("", examples=["evt_01aaaaaaaaaaaaaaaaaaaaaaaa"])
    event: str = Field("", description="`message`, `message.ack` or `session.status` (others are kept, not applied).")
    session: str = Field("", examples=["default"])
    payload: dict[str, Any] = Field(default_factory=dict, description=(
        "message.ack: `{id, from, fromMe, ack, ackName}`; message: `{id, timestamp, from, fromMe, to, body, hasMedia}`; "
        "session.status: `{status}`."))


class WahaSessionView(BaseModel):
    """A WhatsApp QR session's state."""

    name: str
    status: str = Field(description="STOPPED, STARTING, SCAN_QR_CODE, WORKING, FAILED (UNKNOWN: never reported).")
    me: dict[str, Any] | None = Field(None, description="The paired WhatsApp account, once WORKING.")
    source: Literal["gateway", "recorded", "none"] = Field(description=(
        "`gateway`: asked just now; `recorded`: the gateway did not answer, this is the last state it reported."))
    updated_at: str | None = None


@operation(waha_hooks, "POST", "/webhooks/waha", summary="WAHA webhook (message.ack, message, session.status)",
           request=WahaWebhook, errors=(403,),
           headers=[header("X-Webhook-Hmac", "Hex HMAC-SHA512 of the raw body with the session's webhook key."),
                    header("X-Webhook-Hmac-Algorithm", "`sha512`.")],
           ok={200: Body(None, "Recorded and applied.", media_type="text/plain")})
def waha_webhook(body: WahaWebhook) -> Response:
    raw = request.get_data(cache=True)
    envelope = storable(json.loads(raw))  # the contract parsed it already: an object
    payload = storable(body.payload)
    released: list[dict[str, Any]] = []
    answers = conversations.Followups()
    with transaction():  # one transaction per webhook, whatever its verdict
        owner = _signed_by(body.session, raw)
        if owner is None:
            event_id = store_event(PROVIDER, _kind(body.event), envelope, signature_valid=False,
                                   provider_message_id=waha.provider_id(payload))
        else:
            released, answers = _apply(owner, body.event, payload, envelope)
    if owner is None:
        log.warning("waha webhook with a bad signature: provider_event %s, %d bytes from %s",
                    event_id, len(raw), request.remote_addr)
        metrics.PROVIDER_WEBHOOKS.labels(provider=PROVIDER, kind="webhook", verdict="bad_signature").inc()
        raise ApiError(403, "bad_signature", "X-Webhook-Hmac does not match")
    if body.event == "session.status" and payload.get("status") == waha.WORKING:
        ratelimit.resume(PROVIDER, owner.account.key)  # its owner's session only; after the commit: the rows are due
        dispatch.hand_on(None, released)
    answers.hand_on()  # after the commit
    metrics.PROVIDER_WEBHOOKS.labels(provider=PROVIDER, kind="webhook", verdict="applied").inc()
    return Response("OK", mimetype="text/plain")


def _kind(event: str) -> str:
    return event if event in EVENTS else "unknown"


def _signed_by(session: str, raw: bytes) -> SessionOwner | None:
    """The owner of ``session`` whose webhook key made the request's signature, if any."""
    signature = request.headers.get("X-Webhook-Hmac", "")
    algorithm = request.headers.get("X-Webhook-Hmac-Algorithm", "sha512").lower()
    if not signature or algorithm != "sha512" or not SESSION.match(session):
        return None
    for owner in waha.owners(session):
        expected = hmac.new(owner.webhook_secret.encode(), raw, "sha512").hexdigest()
        if owner.webhook_secret and hmac.compare_digest(expected.encode(), signature.lower().encode()):
            return owner
    return None


def _apply(owner: SessionOwner, event: str, payload: dict[str, Any],
           envelope: dict[str, Any]) -> tuple[list[dict[str, Any]], conversations.Followups]:
    """Apply one verified webhook (its payload made storable); returns the messages a session that
    is WORKING again released, and a keyword's answers for processing. Only the owner's messages
    move (``owner.scope``)."""
    pid = waha.provider_id(payload)
    if event == "message.ack" and pid:
        ack = payload.get("ack")
        status = ACK_STATUSES.get(ack) if isinstance(ack, int) and not isinstance(ack, bool) else None
        detail: dict[str, Any] = {"provider_status": str(payload.get("ackName") or ack)}
        if status == "failed":
            detail.update(error_code="ack_error", error="the gateway reported the message failed (ack -1 ERROR)")
        apply_receipt(PROVIDER, pid, status, detail, account=owner.account.key,
                      keep_event={"kind": "status", "payload": envelope}, workspaces=owner.scope)
        return [], conversations.Followups()
    answers = conversations.Followups()
    if event == "message" and pid and payload.get("fromMe") is False and owner.workspace_id is not None:
        message = _inbound(owner, pid, payload)
        stored = store(message)
        if stored is not None:
            answers = conversations.after_store(message, stored)
    released: list[dict[str, Any]] = []
    if event == "session.status" and isinstance(payload.get("status"), str):
        me = envelope.get("me") if isinstance(envelope.get("me"), dict) else payload.get("me")
        waha_sessions.save_state(owner.account.key, owner.account.workspace_id, payload["status"][:32], me)
        if payload["status"] == waha.WORKING:
            released = waha_sessions.release_held(owner.account.key, owner.account.workspace_id, waha.HELD_SECONDS)
    store_event(PROVIDER, _kind(event), envelope, signature_valid=True, provider_message_id=pid,
                detail={"released": len(released)} if released else None, handled=True)
    return released, answers


def _inbound(owner: SessionOwner, pid: str, payload: dict[str, Any]) -> Inbound:
    chat = str(payload.get("from") or "")
    sender = "+" + chat.removesuffix("@c.us") if chat.endswith("@c.us") and chat[:-5].isdigit() else chat
    data = payload["_data"] if isinstance(payload.get("_data"), dict) else {}
    name = payload.get("notifyName") or data.get("notifyName")
    sent = payload.get("timestamp")
    media: dict[str, Any] = payload["media"] if payload.get("hasMedia") and isinstance(payload.get("media"), dict) else {}
    assert owner.workspace_id is not None
    return Inbound(
        workspace_id=owner.workspace_id, channel=waha.CHANNEL, provider=PROVIDER, provider_message_id=pid,
        from_addr=sender, to_addr=owner.account.session, body=str(payload.get("body") or ""),
        sent_at=datetime.fromtimestamp(sent, UTC) if isinstance(sent, int) and 0 < sent < 10**11 else None,
        sender_name=str(name) if name else None,
        media=[{"url": media.get("url"), "content_type": media.get("mimetype"),
                **({"filename": media["filename"]} if media.get("filename") else {})}] if media.get("url") else [],
        extra={"chat_id": chat}, provider_account=owner.account.key)


# --- the API's view of a workspace's sessions ----------------------------------------------------


def _session(name: str) -> waha.WahaAccount:
    """The workspace's session called ``name``, else 404."""
    account = None
    if SESSION.match(name):
        with transaction():
            account = waha.session_account(g.workspace_id, name)
    if account is None:
        raise ApiError(404, "not_found", f"this workspace has no WhatsApp QR session {name[:64]!r}")
    return account



@operation(waha_hooks, "GET", "/v1/channels/whatsapp_qr/sessions/{name}", summary="Read a WhatsApp QR session's state",
           scope="messages:read", text_params=SESSION_PARAM, errors=(404,),
           ok={200: Body(WahaSessionView, "The session's state.")})
def read_session(name: str) -> tuple[Response, int]:
    account = _session(name)
    try:
        info = storable(waha.session_info(account))  # the gateway may be the tenant's own
    except ProviderError as exc:
        log.info("waha session %s: the gateway did not answer (%s); showing the recorded state", name, exc.detail)
        info = {}
    with transaction():
        if isinstance(info.get("status"), str):
            waha_sessions.save_state(account.key, g.workspace_id, info["status"][:32], info.get("me"))
        saved = waha_sessions.saved_state(account.key)
    if saved is None:
        return jsonify({"name": name, "status": "UNKNOWN", "me": None, "source": "none", "updated_at": None}), 200
    return jsonify({"name": name, "status": saved["status"], "me": saved["me"],
                    "source": "gateway" if info.get("status") else "recorded",
                    "updated_at": saved["updated_at"].isoformat()}), 200


@operation(waha_hooks, "GET", "/v1/channels/whatsapp_qr/sessions/{name}/qr",
           summary="The QR code that pairs a phone with a WhatsApp QR session", scope="channels:write",
           text_params=SESSION_PARAM, errors=(404, 409, 502),
           ok={200: Body(None, "The gateway's QR image; only a PNG is passed on.", media_type="image/png",
                         schema={"type": "string", "format": "binary"})})
def session_qr(name: str) -> Response:
    account = _session(name)
    try:
        image = waha.session_qr(account)
    except Throttled as exc:  # the gateway's 422: the session is not waiting for a scan
        raise ApiError(409, "no_qr_code", f"session {name!r} has no QR code to scan: {exc}") from None
    except ProviderError as exc:
        if exc.code in ("not_png", "blocked_address"):  # nothing but a PNG from an allowed address is passed on
            raise ApiError(502, "bad_gateway_answer", f"the WAHA gateway's QR code is refused: {exc.detail}") from None
        raise ApiError(503, "gateway_unavailable", f"the WAHA gateway did not give the QR code: {exc.detail}",
                       headers={"Retry-After": GATEWAY_RETRY_SECONDS}) from None
    return Response(image, mimetype="image/png")
