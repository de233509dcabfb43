"""S0, the broadcast queue service (seed ``000_*.txt``): its queue and broadcast routes as thin
adapters over the /v1 core.

- ``schedule-sms`` / ``schedule-email`` take a ``QueueMessage`` and accept one message as
  ``POST /v1/messages`` does (``api.accept_one``). ``contactId`` names a postroom contact by its
  ``external_id`` (first: old clients send their own CRM ids, often numeric) or its postroom id;
  when it names none, ``metadata.phone`` / ``metadata.email`` is the address.
  ``messageId`` is the message's idempotency key (``compat:s0:<messageId>``), so an old client
  that queues the same message twice gets the first one back.
- A broadcast is a postroom campaign (with its sequence, when it has one), named by its postroom
  id or its ``external_id``: ``queue`` is ``campaigns_api.start`` (a repeat answers the current
  state), ``status`` reads ``campaigns_api.view``'s live counters.

Statuses are said in the document's ``queue_status`` vocabulary (``MESSAGE_STATUS``,
``CAMPAIGN_STATUS``).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Response, g, request

from common.db.connection import transaction
from services.ingest import api, campaigns_api, contacts
from services.ingest.compat import framework
from services.ingest.compat.s0_models import (
    BROADCAST_ID,
    BroadcastStatus,
    QueueAnswer,
    QueueBroadcast,
    QueueMessage,
)
from services.ingest.contract import Body, header
from services.ingest.errors import ApiError
from services.ingest.models import MAX_TAG, MAX_TAGS, NewMessage
from services.ingest.validation import validate

blueprint = framework.blueprint("compat_s0", __name__)
KEY_PREFIX = "compat:s0:"
WORKSPACE_HEADER = "x-workspace-id"

MESSAGE_STATUS = {"scheduled": "pending", "accepted": "queued", "queued": "queued", "routed": "queued",
                  "sending": "processing", "sent": "completed", "delivered": "completed", "read": "completed",
                  "failed": "failed", "undelivered": "failed", "suppressed": "failed", "cancelled": "cancelled"}
CAMPAIGN_STATUS = {"draft": "pending", "scheduled": "queued", "paused": "queued", "running": "processing",
                   "completed": "completed", "cancelled": "cancelled"}
# metadata entries that are read as fields, not kept as tags
READ = ("phone", "email", "subject", "html", "workspaceId")
TAG_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
TAG_VALUE = re.compile(rf"[^\x00-\x1f\x7f-\x9f\ud800-\udfff]{{0,{MAX_TAG}}}")

_IDENTITY = header(WORKSPACE_HEADER, "The workspace as the old clients named it; checked against the API key's.",
                   minLength=1, maxLength=200)
_QUEUED = {200: Body(QueueAnswer, "Queued (or, for a messageId queued before with the same content, that message).")}


@framework.compat_operation(blueprint, "POST", "/schedule-sms", summary="S0: queue an SMS", scope="messages:write",
                            request=QueueMessage, ok=_QUEUED, errors=(403, 409), headers=[_IDENTITY],
                            rerun_safe=True)  # the messageId key is on the message row
def schedule_sms(body: QueueMessage) -> tuple[Response, int]:
    return _queue(body, "sms")


@framework.compat_operation(blueprint, "POST", "/schedule-email", summary="S0: queue an email", scope="messages:write",
                            request=QueueMessage, ok=_QUEUED, errors=(403, 409), headers=[_IDENTITY], rerun_safe=True)
def schedule_email(body: QueueMessage) -> tuple[Response, int]:
    return _queue(body, "email")


def _queue(body: QueueMessage, channel: str) -> tuple[Response, int]:
    """Accept ``body`` as one message on ``channel``; refusals name the QueueMessage field."""
    framework.check_identity(body.workspaceId, body.metadata.get("workspaceId"), request.headers.get(WORKSPACE_HEADER),
                             field="workspaceId")
    with transaction():
        recipient, recipient_field = _recipient(body, channel)
    zone = _zone_for(body.scheduledTime)
    given: dict[str, Any] = {"channel": channel, **recipient, "body": body.content, "tags": _tags(body)}
    if body.scheduledTime:
        given.update(send_at=body.scheduledTime, timezone=zone)
    if channel == "email":
        given.update(subject=body.metadata.get("subject"), html=body.metadata.get("html"))
    renamed = {"to": recipient_field, "contact_id": recipient_field, "body": "content", "send_at": "scheduledTime",
               "timezone": "scheduledTime", "tags": "metadata", "subject": "metadata.subject", "html": "metadata.html",
               "Idempotency-Key": "messageId"}
    try:
        new = validate(NewMessage, {k: v for k, v in given.items() if v is not None})
        answer, _ = api.accept_one(g.workspace_id, new, KEY_PREFIX + body.messageId)
    except ApiError as exc:
        message = exc.message if exc.code != "idempotency_conflict" else (
            f"messageId {body.messageId[:100]!r} was queued before with other content")
        raise ApiError(exc.status, exc.code, message, renamed.get(exc.field or "", exc.field), exc.headers) from None
    return framework.success(queueMessageId=str(answer["id"]), messageId=body.messageId,
                             status=MESSAGE_STATUS.get(answer["status"], "queued"), scheduledTime=answer.get("send_at"))


def _recipient(body: QueueMessage, channel: str) -> tuple[dict[str, Any], str]:
    """Who the message goes to: the contact ``contactId`` names (its external id first, as old
    clients send their own CRM ids, often numeric; else a postroom id), else the metadata's
    address; with the request field that named it."""
    ref = str(body.contactId)
    found = contacts.by_external_id(g.workspace_id, ref)
    if found is None and ref.isascii() and ref.isdigit() and 0 < int(ref) < 2**63:
        found = contacts.get(g.workspace_id, int(ref))
    if found is not None:
        return {"contact_id": found["id"]}, "contactId"
    key = "phone" if channel == "sms" else "email"
    address = body.metadata.get(key)
    if isinstance(address, str) and address.strip():
        return {"to": address.strip()}, f"metadata.{key}"
    raise ApiError(422, "invalid_request", f"contactId {ref[:100]!r} names no contact of this workspace (by id or "
                   f"external_id), and metadata.{key} gives no address", "contactId")


def _tags(body: QueueMessage) -> dict[str, str]:
    """The message's tags: ``compat: s0`` and the metadata's string values that fit a tag
    (name of letters, digits, _ . : -; value up to 100 characters on one line), in their order."""
    kept = {name: value for name, value in body.metadata.items()
            if name not in READ and name != "compat" and isinstance(value, str) and TAG_NAME.fullmatch(name)
            and TAG_VALUE.fullmatch(value)}
    return {"compat": "s0", **dict(list(kept.items())[:MAX_TAGS - 1])}


def _zone_for(time: str | None) -> str | None:
    """The zone a given time is read in: the workspace's for a local time, else none."""
    return framework.workspace_zone(g.workspace_id) if time and framework.is_local(time) else None


_BROADCAST: dict[str, Any] = {"text_params": {"broadcast_id": BROADCAST_ID}, "errors": (403, 404, 409)}


@framework.compat_operation(blueprint, "POST", "/broadcasts/{broadcast_id}/queue", summary="S0: queue a broadcast",
                            scope="messages:write", request=QueueBroadcast, body_optional=True, headers=[_IDENTITY],
                            ok={200: Body(BroadcastStatus, "Queued: sending now, or scheduled for scheduleTime. A broadcast "
                                                           "queued before answers its current state.")},
                            rerun_safe=True, **_BROADCAST)  # queueing again answers the state
def queue_broadcast(broadcast_id: str, body: QueueBroadcast) -> tuple[Response, int]:
    framework.check_identity(body.workspaceId, request.headers.get(WORKSPACE_HEADER), field="workspaceId")
    with transaction():
        campaign = _broadcast(broadcast_id)
    zone = _zone_for(body.scheduleTime)
    try:
        view = campaigns_api.start(g.workspace_id, campaign["id"], body.scheduleTime or None, zone, again_ok=True)
    except ApiError as exc:
        field = "scheduleTime" if exc.field in ("send_at", "timezone") else exc.field
        raise ApiError(exc.status, exc.code, exc.message, field, exc.headers) from None
    return framework.success(**_status(broadcast_id, view))


@framework.compat_operation(blueprint, "GET", "/broadcasts/{broadcast_id}/status", summary="S0: a broadcast's status",
                            scope="messages:read", headers=[_IDENTITY],
                            ok={200: Body(BroadcastStatus, "The broadcast and its live counts.")}, **_BROADCAST)
def broadcast_status(broadcast_id: str) -> tuple[Response, int]:
    framework.check_identity(request.args.get("workspaceId"), request.headers.get(WORKSPACE_HEADER), field="workspaceId")
    with transaction():
        view = campaigns_api.view(_broadcast(broadcast_id))
    return framework.success(**_status(broadcast_id, view))


def _broadcast(broadcast_id: str) -> dict[str, Any]:
    """The campaign ``broadcast_id`` names (its external id, else its postroom id); the contract
    has checked it is of the documented form (``BROADCAST_ID``)."""
    campaign = campaigns_api.find(g.workspace_id, broadcast_id)
    if campaign is None:
        raise ApiError(404, "not_found", f"no broadcast {broadcast_id} in this workspace (a campaign id or external_id)",
                       "id")
    return campaign


def _status(broadcast_id: str, view: dict[str, Any]) -> dict[str, Any]:
    """A campaign view in the document's words: ``queue_status`` and counts by it."""
    p = view["progress"]
    status = CAMPAIGN_STATUS.get(view["status"], "queued")
    if status == "completed" and p["total"] and p["failed"] + p["suppressed"] == p["total"]:
        status = "failed"
    return {"id": broadcast_id, "campaignId": view["id"], "name": view["name"], "queue_status": status,
            "queued_at": view["started_at"], "scheduled_time": view["send_at"], "total": p["total"],
            "progress": p["percent_done"],
            "counts": {"pending": p["pending"], "processing": p["processing"],
                       "completed": p["sent"] + p["delivered"] + p["read"], "failed": p["failed"] + p["suppressed"],
                       "cancelled": p["cancelled"]}}
