"""S3, the BullMQ event message queue (seed 003): its eight exported functions as routes over /v1.

The old queue had no HTTP API (its callers imported ``eventMessageQueue.js``), so the paths are
postroom's; each is the function of the same name, a thin adapter over the /v1 core:

- an event message is a /v1 message (``api.accept_one``; a list: ``api.accept_batch``, one
  statement) tagged ``compat=s3`` with ``s3_id``, ``event_id``, ``contractor_id``,
  ``message_type`` (and ``message_category``, ``ghl_*`` when given). Its own ``unique_tags``
  (compat, event_id, contractor_id, message_type) are the old compound dedupe index: while one is
  pending, scheduling the same again answers it (``duplicate: true``);
- cancel, clear and reschedule are /v1's cancel and reschedule by tags;
- stats are ``common.backlog.measure`` and upcoming is ``upcoming.page``, both scoped to the
  ``compat=s3`` tag (not the workspace's other traffic).

The old priorities 1–10 are /v1's numeric priorities, which map onto the lanes. ``channel: sms``
went through an n8n webhook: here through the workspace's generic ``http`` channel when it has
one, else as SMS. Errors name the old fields (``phone``, ``message_content``, ``scheduled_time``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Response, g, request

from common import backlog
from common.db.connection import transaction
from common.providers import config as channel_config
from services.ingest import api, messages, upcoming
from services.ingest.compat import s3_models as m
from services.ingest.compat.framework import blueprint as compat_blueprint
from services.ingest.compat.framework import compat_operation, is_local, success, workspace_zone
from services.ingest.contract import Body, query
from services.ingest.errors import ApiError
from services.ingest.models import CHANNELS, NewMessage
from services.ingest.timing import due_time
from services.ingest.validation import query_int, validate

blueprint = compat_blueprint("compat_s3", __name__)

TAG = {"compat": "s3"}
UNIQUE = ["compat", "event_id", "contractor_id", "message_type"]  # the old (event_id, contractor_id, message_type) index
# The seed's priority levels by message type; any other type is the default, 10.
PRIORITY_OF_TYPE = {
    "check_in_reminder_event_start": 1, "event_start": 1, "speaker_alert": 2, "check_in_reminder_1_hour": 3,
    "sponsor_recommendation": 5, "pcr_request": 7, "check_in_reminder_night_before": 8,
}
DEFAULT_PRIORITY = 10
# postroom status -> the old event_messages.status (scheduled, sent, failed, cancelled).
S3_STATUS = {
    "accepted": "scheduled", "scheduled": "scheduled", "queued": "scheduled", "routed": "scheduled", "sending": "scheduled",
    "sent": "sent", "delivered": "sent", "read": "sent", "failed": "failed", "undelivered": "failed",
    "cancelled": "cancelled", "suppressed": "cancelled",
}
# A /v1 field at fault, as the old message names it.
OLD_FIELD = {"to": "phone", "body": "message_content", "send_at": "scheduled_time", "timezone": "scheduled_time",
             "delay_seconds": "scheduled_time", "tags": "message_type", "unique_tags": "message_type",
             "priority": "priority", "channel": "channel"}
UPCOMING_WITHIN = 86400
MAX_LIMIT = 500
DEFAULT_LIMIT = 100
SENDER_STAGES = frozenset(CHANNELS)
_ID = {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"}


@dataclass(frozen=True)
class Workspace:
    """What every message of a request is made with: the workspace's zone and its n8n path."""

    timezone: str
    http: bool  # a generic http channel is configured: sms messages go through it


def _workspace(workspace_id: int) -> Workspace:
    zone = workspace_zone(workspace_id)
    with transaction():
        http = channel_config.load(workspace_id, "http") is not None
    return Workspace(zone, http)


def _timing(text: str, ws: Workspace) -> dict[str, str]:
    """``send_at`` (and, for a local time, the workspace's zone) of a /v1 message."""
    return {"send_at": text, "timezone": ws.timezone} if is_local(text) else {"send_at": text}


def _zone(text: str, ws: Workspace) -> str | None:
    return ws.timezone if is_local(text) else None


def _id(value: int | str) -> str:
    return str(int(value))


def _tags(item: m.EventMessage) -> dict[str, str]:
    tags = {**TAG, "s3_id": _id(item.id), "event_id": _id(item.event_id), "contractor_id": _id(item.contractor_id),
            "message_type": item.message_type}
    for name in ("message_category", "ghl_contact_id", "ghl_location_id"):
        if (value := getattr(item, name)) is not None:
            tags[name] = value
    return tags


def _address(item: m.EventMessage, ws: Workspace) -> tuple[str, str]:
    """The channel and the address: email, else the n8n webhook (``http``) or SMS to ``phone``."""
    if item.channel == "email":
        email = item.email or (item.personalization_data or {}).get("email")
        if not isinstance(email, str) or not email:
            raise ApiError(422, "invalid_request", "an email message needs email (or personalization_data.email)", "email")
        return "email", email
    if item.phone is None:
        raise ApiError(422, "invalid_request", "phone is required (or channel email with an email address)", "phone")
    return ("http" if ws.http else "sms"), item.phone


def as_message(item: m.EventMessage, ws: Workspace, send_at: str | None = None) -> dict[str, Any]:
    """The /v1 message (``POST /v1/messages`` body) an event message is."""
    channel, to = _address(item, ws)
    return {"channel": channel, "to": to, "body": item.message_content, "tags": _tags(item), "unique_tags": UNIQUE,
            "on_conflict": "return", "priority": item.priority or PRIORITY_OF_TYPE.get(item.message_type, DEFAULT_PRIORITY),
            **_timing(send_at or item.scheduled_time, ws)}


def renamed(exc: ApiError, channel: str | None, where: str = "") -> ApiError:
    """A /v1 refusal naming the old field (``to`` is ``phone``, or ``email``), under ``where``
    (``messages[3].``: a bulk item, whose /v1 path, if any, is replaced)."""
    field, message = exc.field, exc.message
    if message.startswith("messages["):
        message = message.split(": ", 1)[-1]
    if field is not None:
        if field.startswith("messages[") and "." in field:
            field = field.split(".", 1)[1]
        old = "email" if field == "to" and channel == "email" else OLD_FIELD.get(field, field)
        if old != field:
            message = old + message[len(field):] if message.startswith(field) else f"{old}: {message}"
        field = old
    if where:
        message = f"{where.rstrip('.')}: {message}"
        field = where + field if field else where.rstrip(".")
    return ApiError(exc.status, exc.code, message, field, exc.headers)


def _accept(item: m.EventMessage, ws: Workspace, send_at: str | None = None) -> dict[str, Any]:
    """Store one event message (or find its pending twin): its answer's fields."""
    held = g.get("idempotency")
    raw = as_message(item, ws, send_at)
    try:
        answer, status = api.accept_one(g.workspace_id, validate(NewMessage, raw), held.key if held is not None else None)
    except ApiError as exc:
        raise renamed(exc, raw["channel"]) from None
    return {"id": item.id, "queueMessageId": answer["id"], "status": S3_STATUS.get(answer["status"], "scheduled"),
            "scheduled_time": answer.get("send_at"), "priority": answer["priority"], "channel": answer["channel"],
            "duplicate": status == 200}


@compat_operation(blueprint, "POST", "/event-messages", summary="S3 scheduleEventMessage: schedule one event message",
                  scope="messages:write", request=m.EventMessage, errors=(409,), rerun_safe=True,  # the key is on the row
                  ok={200: Body(m.Scheduled, "Scheduled (or sent now, for a time already past); or, with `duplicate: true`, "
                                             "the pending message with the same event, contractor and type.")})
def schedule_event_message(body: m.EventMessage) -> tuple[Response, int]:
    return success(**_accept(body, _workspace(g.workspace_id)))


@compat_operation(blueprint, "POST", "/event-messages/bulk", summary="S3 scheduleBulkEventMessages: schedule up to 1,000",
                  scope="messages:write", request=m.EventMessageBulk, rerun_safe=True,  # each item's key is on its row
                  ok={200: Body(m.BulkScheduled, "Each message's outcome; the valid ones are stored even when others are "
                                                 "refused (in `failed`).")})
def schedule_bulk(body: m.EventMessageBulk) -> tuple[Response, int]:
    ws = _workspace(g.workspace_id)
    outcomes: dict[int, dict[str, Any]] = {}
    raws: list[tuple[int, m.EventMessage, dict[str, Any]]] = []
    for index, raw in enumerate(body.messages):
        try:
            if not isinstance(raw, dict):
                raise ApiError(422, "invalid_request", "each message must be a JSON object")
            item = validate(m.EventMessage, raw)
            raws.append((index, item, as_message(item, ws)))
        except ApiError as exc:
            given = raw.get("id") if isinstance(raw, dict) else None
            outcomes[index] = _refused(index, renamed(exc, None, f"messages[{index}]."),
                                       given if isinstance(given, int | str) and not isinstance(given, bool) else None)
    held = g.get("idempotency")
    for result in api.accept_batch(g.workspace_id, [r for _, _, r in raws], held.key if held is not None else None):
        index, item, raw = raws[result["index"]]
        if "error" in result:
            error = result["error"]
            refusal = ApiError(422, error["code"], error["message"], error.get("field"))
            outcomes[index] = _refused(index, renamed(refusal, raw["channel"], f"messages[{index}]."), item.id)
        else:
            outcomes[index] = {"index": index, "id": item.id, "queueMessageId": result["id"],
                               "status": S3_STATUS.get(result["status"], "scheduled"), "duplicate": bool(result.get("replayed"))}
    results = [outcomes[i] for i in sorted(outcomes)]
    failed = [r for r in results if "error" in r]
    return success(scheduled=sum(1 for r in results if r.get("duplicate") is False),
                   duplicates=sum(1 for r in results if r.get("duplicate")), failed=failed, messages=results)


def _refused(index: int, exc: ApiError, given: int | str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "id": given, "error": exc.message, "code": exc.code}
    if exc.field:
        out["field"] = exc.field
    return out


@compat_operation(blueprint, "POST", "/event-messages/{message_id}/cancel", summary="S3 cancelEventMessage: cancel one",
                  scope="messages:write", errors=(404,), ok={200: Body(m.Counted, "How many pending messages with this id were cancelled "
                                                                   "(0: none was pending: sent, failed or cancelled before).")})
def cancel_event_message(message_id: int) -> tuple[Response, int]:
    with transaction():
        count = messages.cancel_by_tags(g.workspace_id, {**TAG, "s3_id": str(message_id)})
    return success(count=count)


@compat_operation(blueprint, "POST", "/event-messages/{message_id}/reschedule",
                  summary="S3 rescheduleEventMessage: move one to a new time", scope="messages:write", request=m.Reschedule,
                  errors=(404, 409), rerun_safe=True,  # a message made anew carries the key
                  ok={200: Body(m.Counted, "How many were moved; with `data` and none pending, the message scheduled anew "
                                           "(`count` 1 and its `queueMessageId`).")})
def reschedule_event_message(message_id: int, body: m.Reschedule) -> tuple[Response, int]:
    ws = _workspace(g.workspace_id)
    due = _new_time(body.new_time, ws)
    with transaction():
        count = messages.reschedule_by_tags(g.workspace_id, {**TAG, "s3_id": str(message_id)}, due, None)
    if count or body.data is None:
        return success(count=count)
    data: Any = body.data  # validated here: the old row, its id the path's
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "data must be the event message (an object)", "data")
    try:
        item = validate(m.EventMessage, {**data, "id": message_id})
    except ApiError as exc:
        raise ApiError(exc.status, exc.code, f"data: {exc.message}", f"data.{exc.field}" if exc.field else "data") from None
    made = _accept(item, ws, send_at=body.new_time)
    return success(count=1, queueMessageId=made["queueMessageId"])


def _new_time(text: str, ws: Workspace) -> datetime | None:
    """A new time as /v1 reads ``send_at`` (None: now); refusals name the old field."""
    try:
        return due_time(text, _zone(text, ws), None).at
    except ApiError as exc:
        raise renamed(exc, None) from None


@compat_operation(blueprint, "POST", "/events/{event_id}/messages/clear", summary="S3 clearEventMessages: cancel an event's",
                  scope="messages:write", errors=(404,), ok={200: Body(m.Counted, "How many pending messages of the event were cancelled.")})
def clear_event_messages(event_id: int) -> tuple[Response, int]:
    with transaction():
        count = messages.cancel_by_tags(g.workspace_id, {**TAG, "event_id": str(event_id)})
    return success(count=count)


@compat_operation(blueprint, "POST", "/events/{event_id}/contractors/{contractor_id}/messages/clear",
                  summary="S3 clearContractorMessages: cancel one contractor's messages of an event", scope="messages:write",
                  errors=(404,),
                  ok={200: Body(m.Counted, "How many pending messages of the contractor in the event were cancelled.")})
def clear_contractor_messages(event_id: int, contractor_id: int) -> tuple[Response, int]:
    with transaction():
        count = messages.cancel_by_tags(g.workspace_id, {**TAG, "event_id": str(event_id), "contractor_id": str(contractor_id)})
    return success(count=count)


@compat_operation(blueprint, "POST", "/events/{event_id}/messages/reschedule",
                  summary="S3: move an event's pending messages (or one contractor's)", scope="messages:write",
                  request=m.EventReschedule, errors=(404,),
                  ok={200: Body(m.Counted, "How many pending messages were moved.")})
def reschedule_event(event_id: int, body: m.EventReschedule) -> tuple[Response, int]:
    if (body.shift_seconds is None) == (body.new_time is None):
        raise ApiError(422, "invalid_request", "give shift_seconds or new_time (one of them)", "shift_seconds")
    due = _new_time(body.new_time, _workspace(g.workspace_id)) if body.new_time is not None else None
    tags = {**TAG, "event_id": str(event_id)}
    if body.contractor_id is not None:
        tags["contractor_id"] = _id(body.contractor_id)
    with transaction():
        count = messages.reschedule_by_tags(g.workspace_id, tags, due, body.shift_seconds)
    return success(count=count)


@compat_operation(blueprint, "GET", "/event-messages/stats", summary="S3 getQueueStats: the S3 messages' queue figures",
                  scope="messages:read",
                  ok={200: Body(m.QueueStats, "Summed over every stage and lane, for this workspace's S3 messages.")})
def queue_stats() -> tuple[Response, int]:
    with transaction():
        figures = backlog.measure(g.workspace_id, tags=TAG)
    waiting = sum(f.waiting for f in figures.values())
    active = sum(f.active for f in figures.values())
    delayed = sum(f.scheduled for f in figures.values())
    # A message passes processing, routing and its sender: "completed" is what the senders finished,
    # while a failure belongs to the one stage it failed in.
    completed = sum(f.completed_last_hour for (stage, _), f in figures.items() if stage in SENDER_STAGES)
    failed = sum(f.failed_last_hour for f in figures.values())
    return success(waiting=waiting, active=active, completed=completed, failed=failed, delayed=delayed,
                   total=waiting + active + delayed)


@compat_operation(blueprint, "GET", "/event-messages/upcoming",
                  summary="S3 getUpcomingMessages: the S3 messages due in the next 24 hours", scope="messages:read",
                  errors=(422,),
                  headers=[query("event_id", "Only this event's messages.", **_ID),
                           query("contractor_id", "Only this contractor's messages.", **_ID),
                           query("limit", f"Messages per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}).",
                                 type="integer", minimum=1, maximum=MAX_LIMIT),
                           query("cursor", "The previous page's `next_cursor`.", maxLength=40)],
                  ok={200: Body(m.Upcoming, "Scheduled S3 messages due within 24 hours, soonest first.")})
def upcoming_messages() -> tuple[Response, int]:
    tags = dict(TAG)
    for name in ("event_id", "contractor_id"):
        if (value := request.args.get(name)) is not None:
            if not (value.isascii() and value.isdigit() and 0 < len(value) <= 18 and value[0] != "0"):
                raise ApiError(422, "invalid_request", f"{name} must be a positive integer", name)
            tags[name] = value
    limit = query_int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = upcoming.after_cursor(request.args.get("cursor"))
    with transaction():
        found = upcoming.page(g.workspace_id, UPCOMING_WITHIN, limit, after, tags=tags)
    return success(messages=[_upcoming(r) for r in found.messages], count=found.counts["total"],
                   next_cursor=found.next_cursor)


def _number(value: Any) -> int | str | None:
    """A tag holding an id, as the number the caller gave (ids are ASCII digits; any other text,
    such as a tag set through /v1, is answered as it is)."""
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else value


def _upcoming(row: dict[str, Any]) -> dict[str, Any]:
    tags = row["tags"] if isinstance(row["tags"], dict) else {}
    return {"id": _number(tags.get("s3_id")), "queueMessageId": row["id"], "event_id": _number(tags.get("event_id")),
            "contractor_id": _number(tags.get("contractor_id")), "message_type": tags.get("message_type"),
            "message_category": tags.get("message_category"), "scheduled_time": row["send_at"], "phone": row["to"],
            "channel": row["channel"], "priority": row["priority"], "status": "scheduled"}
