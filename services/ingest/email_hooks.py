"""Email webhooks from the mail relay, and the one-click unsubscribe link of bulk mail.

The relay POSTs JSON signed as Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``) with the email channel's webhook secret: the environment's
``EMAIL_WEBHOOK_SECRET`` for the default account, or the ``webhook_secret`` credential of the
workspace configuration the payload's ``account`` names. Every webhook is kept with its verdict;
a bad or missing signature gets 403 and changes nothing else. ``/webhooks/email/events``:
``delivered`` moves the message forward; ``bounced`` (a DSN) fails it, and a bounce saying the
address does not exist (5.1.x, as ``smtp_email.recipient_unknown`` decides for a refusal at RCPT)
first tries the route's next channel and suppresses the address; ``complained`` suppresses it.
A workspace's secret vouches only for its own messages: events signed with it touch messages of
that workspace alone. The environment's secret vouches for every message sent through the default
account, whichever workspace sent it; an address is suppressed in the workspace of the message the
event is about, and never in a guessed one. ``/webhooks/email/inbound`` stores a customer's email
once in its conversation, and makes it a turn of the AI stage when the channel has a chatbot
(``common.conversations.after_store``; never an email its headers say a machine sent). Text that PostgreSQL cannot store (NUL, lone surrogates) is replaced
before anything reaches SQL.

``/u/<token>`` is the RFC 8058 target of ``List-Unsubscribe``: POST suppresses the address the
signed token names, without authentication and without a redirect; GET only shows a page with a
button, because mail scanners fetch links and must not unsubscribe anyone.
"""

from __future__ import annotations

import html
import logging
from email.utils import parseaddr
from typing import Any, TypeVar

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field

from common import conversations, dispatch, fallback, metrics, signing, suppression
from common.config import settings
from common.db.connection import fetch_dicts, transaction
from common.inbound import Inbound, default_workspace_id, store
from common.lifecycle import apply_receipt
from common.providers import config as channel_config
from common.providers.smtp_email import (
    PROVIDER,
    account_of,
    default_account,
    recipient_unknown,
    unsubscribe_target,
)
from common.receipts import storable, store_event
from services.ingest.contract import Body, header, operation
from services.ingest.errors import ApiError

log = logging.getLogger("postroom.ingest.email")
email_hooks = Blueprint("email_hooks", __name__)
SIGNATURE_HEADERS = [
    header("webhook-id", "The event's id (the same on every retry)."),
    header("webhook-timestamp", "Unix seconds; more than 5 minutes off is refused."),
    header("webhook-signature", "`v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` with the whsec_ secret."),
]
MAX_ADDRESS = 320


class EmailEvent(BaseModel):
    """A relay event about a sent email; only a correctly signed one has any effect."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("", description="`delivered`, `bounced` or `complained`.")
    message_id: str = Field("", description="The Message-ID header of the email, angle brackets included.")
    recipient: str = Field("", description="The recipient the event is about.")
    status: str | None = Field(None, description="A bounce's enhanced status code, e.g. `5.1.1`.")
    diagnostic: str | None = Field(None, description="A bounce's diagnostic text.")
    account: str | None = Field(None, description="The configured account it concerns; absent: the default account.")


class EmailInbound(BaseModel):
    """An email a customer sent to one of our mailboxes, as the relay parsed it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    message_id: str = Field("", description="The email's Message-ID; the same email posted twice is stored once.")
    from_: str = Field("", alias="from", description="The sender, `Name <address>` or an address.")
    to: str = Field("", description="Our mailbox it arrived at.")
    subject: str = ""
    text: str = ""
    html: str | None = None
    account: str | None = Field(None, description="The configured account it concerns; absent: the default account.")
    headers: dict[str, object] | None = Field(None, description=(
        "Headers of the email the relay passes on; `Auto-Submitted` and `Precedence` say a machine sent it (never answered "
        "by the bot)."))


# The headers of an inbound email kept with it: those that say a machine sent it (RFC 3834).
KEPT_HEADERS = ("auto-submitted", "precedence")
Model = TypeVar("Model", bound=BaseModel)


def _storable(body: Model) -> Model:
    """``body`` with every string storable in PostgreSQL (NUL and lone surrogates replaced): its
    fields reach SQL as parameters, and a value the server refuses would fail every retry."""
    return type(body).model_validate(storable(body.model_dump(by_alias=True)))


def _signer(account: str | None) -> tuple[str, int | None] | None:
    """The (account key, workspace) whose webhook secret signed this request, or None (the
    workspace is None for the environment's secret)."""
    raw = request.get_data(cache=True)
    msg_id, timestamp = request.headers.get("webhook-id", ""), request.headers.get("webhook-timestamp", "")
    signatures = request.headers.get("webhook-signature", "")
    candidates: list[tuple[str, str, int | None]] = [(settings.email_webhook_secret, default_account().key, None)]
    if account and len(account) <= MAX_ADDRESS:
        candidates += [(str(c.credentials["webhook_secret"]), account_of(c).key, c.workspace_id)
                       for c in channel_config.by_account(PROVIDER, account)
                       if c.channel == "email" and c.credentials.get("webhook_secret")]
    for secret, key, workspace_id in candidates:
        if secret and signing.verify([secret], msg_id, timestamp, raw, signatures):  # no secret: nobody's
            return key, workspace_id
    return None


def _refuse(kind: str, event_id: int) -> ApiError:
    log.warning("email %s webhook with a bad signature: provider_event %s, %d bytes from %s",
                kind, event_id, request.content_length or 0, request.remote_addr)
    metrics.PROVIDER_WEBHOOKS.labels(provider=PROVIDER, kind=kind, verdict="bad_signature").inc()
    return ApiError(403, "bad_signature", "webhook-signature does not match")


@operation(email_hooks, "POST", "/webhooks/email/events", summary="Mail relay events (delivered, bounced, complained)",
           request=EmailEvent, errors=(403,), headers=SIGNATURE_HEADERS,
           ok={200: Body(None, "Recorded and applied.", media_type="text/plain")})
def email_events(body: EmailEvent) -> Response:
    body = _storable(body)
    payload = body.model_dump(by_alias=True, exclude_none=True)
    moved: list[dict[str, Any]] = []
    with transaction():  # one transaction per webhook, whatever its verdict
        signer = _signer(body.account)
        if signer is None:
            event_id = store_event(PROVIDER, "status", payload, signature_valid=False,
                                   provider_message_id=body.message_id or None, status=body.type or None)
        elif body.type in ("delivered", "bounced") and body.message_id:
            moved = _apply(body, payload, *signer)
        else:
            if body.type == "complained" and body.recipient:
                _complaint(body, *signer)
            store_event(PROVIDER, "status", payload, signature_valid=True, provider_message_id=body.message_id or None,
                        status=None, handled=True)
    if signer is None:
        raise _refuse("status", event_id)
    dispatch.hand_on("routing", moved)
    metrics.PROVIDER_WEBHOOKS.labels(provider=PROVIDER, kind="status", verdict=body.type or "ignored").inc()
    return Response("ok", mimetype="text/plain")


def _apply(event: EmailEvent, payload: dict[str, Any], account: str, workspace_id: int | None) -> list[dict[str, Any]]:
    """Apply a delivery or a bounce to a message of the signer's workspace (any workspace's, for
    the default account); a bounce of an address that does not exist tries the route's next
    channel first. Returns the messages moved on (for routing, after the commit)."""
    workspaces = None if workspace_id is None else [workspace_id]
    if event.type == "delivered":
        apply_receipt(PROVIDER, event.message_id, "delivered", {"provider_status": "delivered"}, account=account,
                      keep_event={"kind": "status", "payload": payload}, workspaces=workspaces)
        return []
    status = event.status or "5.0.0"
    detail = {"provider_status": "bounced", "error_code": status, "error": event.diagnostic or f"bounced ({status})"}
    moved: list[dict[str, Any]] = []
    # Only an address that does not exist is suppressed (a full mailbox or a policy refusal fails
    # this message, not the address), and only for a message of a workspace the signer vouches for.
    sent = _message(event.message_id, account, workspaces) if recipient_unknown(status) else None
    if sent is not None:
        moved = fallback.move_on([{"id": sent["id"], "code": status, "error": detail["error"]}], ["sent"])
        _suppress(event, "bounce", sent["workspace_id"])
    if not moved:
        apply_receipt(PROVIDER, event.message_id, "failed", detail, account=account,
                      keep_event={"kind": "status", "payload": payload}, workspaces=workspaces)
    else:
        store_event(PROVIDER, "status", payload, signature_valid=True, provider_message_id=event.message_id,
                    status="failed", detail=detail, handled=True)
    return moved


def _message(message_id: str, account: str, workspaces: list[int] | None) -> dict[str, Any] | None:
    rows = fetch_dicts("SELECT id, workspace_id, to_addr FROM message WHERE provider = %s AND provider_message_id = %s"
                       " AND provider_account = %s AND (%s::bigint[] IS NULL OR workspace_id = ANY(%s::bigint[]))",
                       (PROVIDER, message_id, account, workspaces, workspaces))
    return rows[0] if rows else None


def _complaint(event: EmailEvent, account: str, workspace_id: int | None) -> None:
    """Suppress a complaining recipient in the workspace of the message complained about, or in the
    signer's own workspace if the report names no known message; the environment's account sends
    for every workspace, so its reports about unknown messages suppress nothing."""
    workspaces = None if workspace_id is None else [workspace_id]
    sent = _message(event.message_id, account, workspaces) if event.message_id else None
    _suppress(event, "complaint", sent["workspace_id"] if sent else workspace_id)


def _suppress(event: EmailEvent, reason: str, workspace_id: int | None) -> None:
    address = parseaddr(event.recipient)[1] or event.recipient
    local, at, domain = address.rpartition("@")
    if at:  # as a message's `to` is stored: the domain in lower case, the local part as given
        address = f"{local}@{domain.lower()}"
    if workspace_id is not None and address:
        suppression.add([{"workspace_id": workspace_id, "channel": "email", "address": address[:MAX_ADDRESS],
                          "reason": reason, "source": f"{PROVIDER} {event.type} {event.status or ''}".strip()}])


@operation(email_hooks, "POST", "/webhooks/email/inbound", summary="Inbound email from the mail relay",
           request=EmailInbound, errors=(403,), headers=SIGNATURE_HEADERS,
           ok={200: Body(None, "Stored once per Message-ID.", media_type="text/plain")})
def email_inbound(body: EmailInbound) -> Response:
    body = _storable(body)
    payload = body.model_dump(by_alias=True, exclude_none=True)
    followups = conversations.Followups()
    with transaction():
        signer = _signer(body.account)
        if signer is None:
            event_id = store_event(PROVIDER, "inbound", payload, signature_valid=False,
                                   provider_message_id=body.message_id or None)
        else:
            account, workspace_id = signer
            workspace_id = workspace_id or default_workspace_id()
            name, sender = parseaddr(body.from_)
            handled = bool(workspace_id is not None and sender and body.message_id)
            if handled:
                assert workspace_id is not None
                message = Inbound(workspace_id, "email", PROVIDER, body.message_id, sender, parseaddr(body.to)[1] or body.to,
                                  body.text, sender_name=name or None, provider_account=account,
                                  extra={"subject": body.subject, "html": body.html, **_machine_headers(body)})
                stored = store(message)
                if stored is not None:
                    followups = conversations.after_store(message, stored)
            store_event(PROVIDER, "inbound", payload, signature_valid=True, provider_message_id=body.message_id or None,
                        handled=handled)
    if signer is None:
        raise _refuse("inbound", event_id)
    followups.hand_on()  # after the commit
    metrics.PROVIDER_WEBHOOKS.labels(provider=PROVIDER, kind="inbound", verdict="stored" if handled else "ignored").inc()
    return Response("ok", mimetype="text/plain")


def _machine_headers(body: EmailInbound) -> dict[str, Any]:
    """``{"headers": {...}}`` with the email's headers that say whether a machine sent it, if any."""
    kept = {str(k).lower(): str(v)[:200] for k, v in (body.headers or {}).items() if str(k).lower() in KEPT_HEADERS}
    return {"headers": kept} if kept else {}


TOKEN = {"token": {"maxLength": 512}}
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Unsubscribe</title></head>
<body><main style="font-family:sans-serif;max-width:30em;margin:3em auto">{content}</main></body></html>"""


def _target(token: str) -> tuple[int, str]:
    target = unsubscribe_target(token)
    if target is None:
        raise ApiError(404, "not_found", "no such unsubscribe link")
    return target


@operation(email_hooks, "GET", "/u/{token}", summary="Unsubscribe page (asks to confirm; changes nothing)",
           errors=(404,), text_params=TOKEN, uses_database=False,
           ok={200: Body(None, "A page with a confirm button.", media_type="text/html")})
def unsubscribe_page(token: str) -> Response:
    _, address = _target(token)
    form = (f'<p>Stop email to <b>{html.escape(address)}</b>?</p><form method="post">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>')
    return Response(PAGE.format(content=form), mimetype="text/html")


@operation(email_hooks, "POST", "/u/{token}", summary="One-click unsubscribe (RFC 8058)", errors=(404,),
           text_params=TOKEN, ok={200: Body(None, "Unsubscribed.", media_type="text/html")})
def unsubscribe(token: str) -> Response:
    workspace_id, address = _target(token)
    with transaction():
        if not fetch_dicts("SELECT 1 AS one FROM workspace WHERE id = %s", (workspace_id,)):
            raise ApiError(404, "not_found", "no such unsubscribe link")
        suppression.add([{"workspace_id": workspace_id, "channel": "email", "address": address,
                          "reason": "opt_out", "source": "list-unsubscribe"}])
    return Response(PAGE.format(content=f"<p>{html.escape(address)} is unsubscribed.</p>"), mimetype="text/html")
