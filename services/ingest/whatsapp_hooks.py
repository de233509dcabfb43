"""WhatsApp Cloud webhooks: the verification handshake, and signed statuses and inbound messages.

``GET /webhooks/whatsapp_cloud`` answers Meta's subscription handshake with ``hub.challenge``
when ``hub.verify_token`` is the deployment's or a workspace's, else 403 (the workspaces' tokens
are unsealed once per change of their configurations, not per unauthenticated request).
``POST`` carries ``X-Hub-Signature-256``, an HMAC-SHA256 of the exact bytes received with the
app secret of the phone number the webhook is about (a workspace's configuration, or the
environment's for the default number). A webhook whose signature does not hold for every number
it names is kept in bounded form and answered 403; nothing else changes. A valid one is applied
in one transaction, to messages of the workspaces whose secret verified it (any workspace's for
the environment's secret: ``common.providers.accounts.Verified``): each status moves its message
forward by rank (``failed`` 131026/131047 first tries the route's next channel), and each
customer message is stored once in its conversation, which renews the contact's 24-hour window;
a STOP, START or HELP keyword in it acts then, or it becomes a turn of the AI stage
(``common.conversations.after_store``), handed on after the commit.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field

from common import conversations, dispatch, fallback, metrics
from common.config import settings
from common.db.connection import fetch, transaction
from common.inbound import Inbound, default_workspace_id, store
from common.lifecycle import apply_receipt
from common.providers import config as channel_config
from common.providers.accounts import Verified, vouched
from common.providers.whatsapp_cloud import (
    CONFIG_PROVIDER,
    PROVIDER,
    RECEIPT_STATUSES,
    UNREACHABLE_CODES,
)
from common.receipts import storable, store_event
from services.ingest.contract import Body, header, operation, query
from services.ingest.errors import ApiError

log = logging.getLogger("postroom.ingest.whatsapp")
whatsapp_hooks = Blueprint("whatsapp_hooks", __name__, url_prefix="/webhooks")
MEDIA_TYPES = ("image", "document", "audio", "video", "sticker")
MAX_CHALLENGE = 256
# A phone-number id is short and plain (Meta's are digits); anything else cannot be one of ours,
# and is not looked up (a NUL would not even reach PostgreSQL).
_NUMBER = re.compile(r"[A-Za-z0-9_-]{1,64}")


class WhatsAppWebhook(BaseModel):
    """A WhatsApp Cloud webhook (Meta's envelope); only a correctly signed one has any effect."""

    model_config = ConfigDict(extra="allow")

    object: str = Field("", examples=["whatsapp_business_account"])
    entry: list[dict[str, Any]] = Field(default_factory=list, description=(
        "`[{id, changes: [{field: \"messages\", value: {metadata: {phone_number_id}, statuses?, contacts?, messages?}}]}]`"))


@operation(whatsapp_hooks, "GET", "/whatsapp_cloud", summary="WhatsApp Cloud webhook verification", errors=(403,),
           headers=[query("hub.mode", "`subscribe`."), query("hub.verify_token", "The verify token configured at Meta."),
                    query("hub.challenge", "Echoed back when the token is right.", maxLength=MAX_CHALLENGE)],
           ok={200: Body(None, "The challenge, as the body.", media_type="text/plain")})
def whatsapp_verify() -> Response:
    mode, token = request.args.get("hub.mode", ""), request.args.get("hub.verify_token", "")
    challenge = request.args.get("hub.challenge", "")
    if mode != "subscribe" or not token or len(challenge) > MAX_CHALLENGE or not _known_verify_token(token):
        raise ApiError(403, "forbidden", "hub.mode must be subscribe and hub.verify_token one of ours")
    return Response(challenge, mimetype="text/plain")


def _known_verify_token(token: str) -> bool:
    """``token`` is the deployment's verify token or a workspace's (compared as SHA-256 digests,
    in constant time)."""
    digest = hashlib.sha256(token.encode()).digest()
    own = settings.whatsapp_verify_token
    if own and hmac.compare_digest(digest, hashlib.sha256(own.encode()).digest()):
        return True
    with transaction():
        digests = _verify_digests()
    return any([hmac.compare_digest(digest, known) for known in digests])  # a list: every one compared


_verify_cache: list[tuple[tuple[Any, ...], frozenset[bytes]]] = []  # (configurations' fingerprint, digests)
_verify_lock = threading.Lock()


def _verify_digests() -> frozenset[bytes]:
    """SHA-256 digests of the workspaces' verify tokens. Unsealing every configuration is the
    costly part, and any caller may ask: it is done again only when the configurations changed
    (their count or latest update), which one cheap query tells."""
    fingerprint = tuple(fetch("SELECT count(*), max(updated_at) FROM channel_config WHERE provider = %s AND channel = %s",
                              (CONFIG_PROVIDER, PROVIDER))[0])
    with _verify_lock:
        if _verify_cache and _verify_cache[0][0] == fingerprint:
            return _verify_cache[0][1]
    digests = frozenset(hashlib.sha256(str(c.credentials["verify_token"]).encode()).digest()
                        for c in channel_config.matching(CONFIG_PROVIDER, {})
                        if c.channel == PROVIDER and c.credentials.get("verify_token"))
    with _verify_lock:
        _verify_cache[:] = [(fingerprint, digests)]
    return digests


@operation(whatsapp_hooks, "POST", "/whatsapp_cloud", summary="WhatsApp Cloud webhook (statuses, inbound messages)",
           request=WhatsAppWebhook, errors=(403,),
           headers=[header("X-Hub-Signature-256", "sha256= and the hex HMAC-SHA256 of the raw body with the app secret.")],
           ok={200: Body(None, "Recorded and applied.", media_type="text/plain")})
def whatsapp_webhook(body: WhatsAppWebhook) -> Response:
    raw = request.get_data(cache=True)
    changes = _changes(body)
    moved: list[dict[str, Any]] = []
    replies = conversations.Followups()
    with transaction():  # one transaction per webhook, whatever its verdict
        workspaces = _signed_by(changes, raw, request.headers.get("X-Hub-Signature-256", ""))
        if workspaces is None:
            event_id = store_event(PROVIDER, "webhook", body.model_dump(), signature_valid=False)
        else:
            for number, value in changes:
                moved += _apply_statuses(number, workspaces[number].scope, value.get("statuses"))
                replies += _store_inbound(number, _inbound_workspace(workspaces[number]), value)
            if not changes:
                store_event(PROVIDER, "webhook", body.model_dump(), signature_valid=True, handled=True)
    if workspaces is None:
        log.warning("whatsapp webhook with a bad signature: provider_event %s, %d bytes from %s",
                    event_id, len(raw), request.remote_addr)
        metrics.PROVIDER_WEBHOOKS.labels(provider=PROVIDER, kind="webhook", verdict="bad_signature").inc()
        raise ApiError(403, "bad_signature", "X-Hub-Signature-256 does not match")
    dispatch.hand_on("routing", moved)
    replies.hand_on()  # after the commit
    metrics.PROVIDER_WEBHOOKS.labels(provider=PROVIDER, kind="webhook", verdict="applied").inc()
    return Response("EVENT_RECEIVED", mimetype="text/plain")


def _changes(body: WhatsAppWebhook) -> list[tuple[str, dict[str, Any]]]:
    """Each change's ``value`` with the phone-number id it is about (a string, else "")."""
    out = []
    for entry in body.entry:
        changes = entry.get("changes")
        for change in changes if isinstance(changes, list) else []:
            value = change.get("value") if isinstance(change, dict) else None
            if isinstance(value, dict):
                number = _object(value.get("metadata")).get("phone_number_id")
                out.append((number if isinstance(number, str) else "", value))
    return out


def _signed_by(changes: list[tuple[str, dict[str, Any]]], raw: bytes, signature: str) -> dict[str, Verified] | None:
    """Whose app secret verified the webhook, for each number it names; None unless the signature
    holds with a secret of every one (one number's secret must not vouch for another's changes)."""
    numbers = {number for number, _ in changes}
    if not numbers or not signature.startswith("sha256=") or not all(_NUMBER.fullmatch(n) for n in numbers):
        return None
    signed: dict[str, Verified] = {}
    for number in numbers:
        own = settings.whatsapp_app_secret if number == settings.whatsapp_phone_number_id else None
        configured = [(c.workspace_id, str(c.credentials.get("app_secret") or ""))
                      for c in channel_config.by_account(CONFIG_PROVIDER, number) if c.channel == PROVIDER]
        verified = vouched(own, configured, lambda secret: _valid(secret, raw, signature))
        if verified is None:
            return None
        signed[number] = verified
    return signed


def _inbound_workspace(signed: Verified) -> int | None:
    """Where a number's customer messages go: the workspace whose secret verified them, else
    (the environment's secret, the deployment's number) the default inbound workspace."""
    if signed.workspaces:
        return signed.workspaces[0]
    return default_workspace_id() if signed.default else None


def _valid(secret: str, raw: bytes, signature: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())


def _apply_statuses(number: str, scope: Sequence[int] | None, statuses: Any) -> list[dict[str, Any]]:
    """Apply each status of one change to messages of the workspaces in ``scope`` (None: any);
    returns messages moved on to their route's next channel."""
    moved: list[dict[str, Any]] = []
    for item in _list(statuses):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        item = storable(item)  # kept as jsonb and text: no NUL, no lone surrogate
        wamid, provider_status = item["id"], str(item.get("status") or "")
        status = RECEIPT_STATUSES.get(provider_status)
        detail: dict[str, Any] = {"provider_status": provider_status}
        code = _error_code(item)
        if code is not None:
            detail.update(error_code=str(code), error=f"{code}: {_error_text(item)}")
        if status == "failed" and code in UNREACHABLE_CODES:
            target = _message_of(number, scope, wamid, item.get("biz_opaque_callback_data"))
            rows = fallback.move_on([{"id": target, "code": str(code), "error": detail["error"]}], ["sending", "sent"]) if target else []
            if rows:
                store_event(PROVIDER, "status", item, signature_valid=True, provider_message_id=wamid, status=status,
                            detail={**detail, "fallback": True}, handled=True)
                moved += rows
                continue
        apply_receipt(PROVIDER, wamid, status, detail, account=number, workspaces=scope,
                      keep_event={"kind": "status", "payload": item})
    return moved


def _message_of(number: str, scope: Sequence[int] | None, wamid: str, opaque: Any) -> int | None:
    """The message a status is about, among the workspaces in ``scope`` (None: any): by its wamid,
    or (when the status outran the recording of the send) by our id in ``biz_opaque_callback_data``
    while it is still ``sending`` from this number."""
    our_id = int(opaque) if isinstance(opaque, str) and opaque.isdigit() and len(opaque) < 19 else None
    rows = fetch("SELECT id FROM message WHERE ((provider = %(provider)s AND provider_message_id = %(wamid)s"
                 "  AND provider_account = %(number)s) OR (id = %(id)s AND channel = %(provider)s AND status = 'sending'"
                 "  AND provider_message_id IS NULL AND provider_account = %(number)s))"
                 " AND (%(scope)s::bigint[] IS NULL OR workspace_id = ANY(%(scope)s::bigint[]))"
                 " ORDER BY id LIMIT 1",
                 {"provider": PROVIDER, "wamid": wamid, "number": number, "id": our_id,
                  "scope": list(scope) if scope is not None else None})
    return rows[0][0] if rows else None


def _error_code(item: dict[str, Any]) -> int | None:
    errors = item.get("errors")
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    code = first.get("code")
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _error_text(item: dict[str, Any]) -> str:
    first = item["errors"][0]
    return str(first.get("title") or first.get("message") or "delivery failed")[:300]


def _store_inbound(number: str, workspace_id: int | None, value: dict[str, Any]) -> conversations.Followups:
    """Store each customer message of one change in its conversation (once per wamid) and
    act on it (``conversations.after_store``); returns what to hand on after the commit."""
    replies = conversations.Followups()
    messages, contacts = _list(value.get("messages")), _list(value.get("contacts"))
    names = {c["wa_id"]: c["profile"].get("name") for c in contacts
             if isinstance(c, dict) and isinstance(c.get("wa_id"), str) and isinstance(c.get("profile"), dict)}
    for item in messages:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not isinstance(item.get("from"), str):
            continue
        if workspace_id is None:  # the default number, and no workspace takes its inbound
            store_event(PROVIDER, "inbound", item, signature_valid=True, provider_message_id=storable(item["id"]), handled=True)
            continue
        name = names.get(item["from"])
        kind = str(item.get("type") or "")
        message = Inbound(
            workspace_id=workspace_id, channel=PROVIDER, provider=PROVIDER, provider_message_id=item["id"],
            from_addr="+" + item["from"], to_addr=number, body=_text(item), sent_at=_time(item.get("timestamp")),
            sender_name=name if isinstance(name, str) and name else None,
            profile={"wa_id": item["from"], **({"name": name} if isinstance(name, str) and name else {})},
            media=[_media(item[kind])] if kind in MEDIA_TYPES and isinstance(item.get(kind), dict) else [],
            extra=_extra(item, kind), provider_account=number)
        stored = store(message)
        if stored is not None:
            replies += conversations.after_store(message, stored)
    return replies


def _text(item: dict[str, Any]) -> str:
    kind = item.get("type")
    obj = _object(item.get(kind)) if isinstance(kind, str) else {}
    if kind == "text":
        return str(obj.get("body") or "")
    if kind == "button":
        return str(obj.get("text") or "")
    if kind == "interactive":
        reply = _object(obj.get("button_reply") or obj.get("list_reply"))
        return str(reply.get("title") or "")
    return str(obj.get("caption") or "")


def _media(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: obj[k] for k in ("id", "mime_type", "caption", "filename") if obj.get(k) is not None}


def _extra(item: dict[str, Any], kind: str) -> dict[str, Any]:
    extra: dict[str, Any] = {"type": kind}
    context = item.get("context")
    if isinstance(context, dict) and isinstance(context.get("id"), str):
        extra["context_message_id"] = context["id"]
    return extra


def _object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a signed webhook may still surprise)."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _time(timestamp: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(timestamp), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
