"""REST API v1: send, read and cancel messages. Authenticated by ``Authorization: Bearer <key>``.

Each operation is declared in the contract (``services.ingest.contract``) with its models, its
scope and every status it answers with; the view is left with what is particular to it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from common import dispatch, phones
from common.db.connection import transaction
from common.providers.accounts import http_account, sms_account
from common.quiet_hours import QuietHours
from services.ingest import messages
from services.ingest.contract import Body, header, operation
from services.ingest.errors import ApiError
from services.ingest.models import (
    Count,
    MessageAccepted,
    MessageView,
    NewMessage,
    Reschedule,
    TagFilter,
    TagReschedule,
)
from services.ingest.timing import due_time
from services.ingest.validation import EXPECTED

api = Blueprint("api_v1", __name__, url_prefix="/v1")
MAX_IDEMPOTENCY_KEY = 255
REPLAYED = {"Idempotent-Replayed": {"description": "`true`: the message was accepted earlier with this Idempotency-Key.",
                                    "schema": {"type": "string", "enum": ["true"]}}}


@operation(
    api, "POST", "/messages", summary="Send a message", scope="messages:write", request=NewMessage,
    ok={202: Body(MessageAccepted, "Accepted: stored and handed on."),
        200: Body(MessageView, "An idempotent replay: the message accepted earlier with this key (or, with "
                               "`on_conflict: return`, the pending message with the same unique tags).", headers=REPLAYED)},
    errors=(409,),
    headers=[header("Idempotency-Key", "Repeat a request safely: the same key returns the same message.",
                    minLength=1, maxLength=MAX_IDEMPOTENCY_KEY)],
)
def create_message(body: NewMessage) -> tuple[Response, int]:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
        raise ApiError(400, "invalid_request", f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters", "Idempotency-Key")
    body = _checked(body)
    due = due_time(body.send_at, body.timezone, body.delay_seconds)
    with transaction():
        _check_sender(g.workspace_id, body.channel, body.from_)
        try:
            accepted = messages.accept(g.workspace_id, body, key, due.at)
        except messages.IdempotencyConflict:
            raise ApiError(409, "idempotency_conflict", "this Idempotency-Key was already used for a different message", "Idempotency-Key") from None
        except messages.Duplicate as twin:
            if body.on_conflict != "return" or not twin.message_id:
                raise ApiError(409, "duplicate", f"message {twin.message_id} is already pending with these unique tags "
                               f"{twin.natural_key}; send on_conflict \"return\" to get it instead", "tags") from None
            accepted = messages.Accepted(twin.message_id, body.priority, replayed=True)
    if not accepted.replayed:
        if accepted.status == "accepted":
            dispatch.handoff.submit("processing", accepted.priority, [accepted.id])  # after the commit
        answer = {"id": accepted.id, "status": accepted.status, "channel": body.channel, "to": body.to,
                  "priority": accepted.priority, "created_at": accepted.created_at, "send_at": accepted.send_at}
        if due.note:
            answer["note"] = due.note
        return jsonify(answer), 202
    with transaction():
        view = messages.view(g.workspace_id, accepted.id, with_events=False)
    response = jsonify(view)
    response.headers["Idempotent-Replayed"] = "true"
    return response, 200


def _checked(body: NewMessage) -> NewMessage:
    """The message with its number in E.164 (checked with libphonenumber's data) and its quiet
    hours checked; 422 naming the field otherwise."""
    if body.quiet_hours is not None and body.quiet_hours != "off":
        try:
            QuietHours.parse(body.quiet_hours)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", f"quiet_hours: {exc} (or off)", "quiet_hours") from None
    if body.channel != "sms":
        return body
    try:
        return body.model_copy(update={"to": phones.normalize(body.to)})
    except ValueError as exc:
        raise ApiError(422, "invalid_request", f"to must be {EXPECTED['to']}: {exc}", "to") from None


def _check_sender(workspace_id: int, channel: str, sender: str | None) -> None:
    """A workspace sends only as its own identity: its channel configuration's, or the default account's.
    An ``http`` message has no sender identity, and its workspace must have configured the channel's URL."""
    if channel == "http":
        if sender is not None:
            raise ApiError(422, "invalid_request", "from applies to sms only; leave it out for http", "from")
        with transaction():
            if not http_account(workspace_id).url:
                raise ApiError(422, "invalid_request", "this workspace has no http channel configured "
                               "(postroom channel http --workspace NAME --url URL)", "channel")
        return
    if sender is None:
        return
    with transaction():  # a cache miss reads the channel configuration
        own = sms_account(workspace_id).sender
    if sender != own:
        raise ApiError(422, "invalid_request", f"from must be this workspace's sender identity {own} (or left out)", "from")


@operation(api, "GET", "/messages/{message_id}", summary="Read a message and its history", scope="messages:read",
           ok={200: Body(MessageView, "The message, with its events.")}, errors=(404,))
def get_message(message_id: int) -> tuple[Response, int]:
    with transaction():
        view = messages.view(g.workspace_id, message_id)
    if view is None:
        raise ApiError(404, "not_found", f"no message {message_id} in this workspace")
    return jsonify(view), 200


@operation(api, "POST", "/messages/{message_id}/cancel", summary="Cancel a message that has not started sending",
           scope="messages:write", ok={200: Body(MessageView, "Cancelled (now or before).")}, errors=(404, 409))
def cancel_message(message_id: int) -> tuple[Response, int]:
    with transaction():
        outcome, view = messages.cancel(g.workspace_id, message_id)
    return _acted(message_id, outcome, view, "cancelled", "not_cancellable")


def _acted(message_id: int, outcome: str, view: dict[str, Any] | None, verb: str, refusal: str) -> tuple[Response, int]:
    """The answer to an action on one message: the message, 404, or 409 once it is sending."""
    if outcome == "not_found":
        raise ApiError(404, "not_found", f"no message {message_id} in this workspace")
    assert view is not None
    if outcome == "too_late":
        raise ApiError(409, refusal, f"message {message_id} is already {view['status']}; only messages not yet sending can be {verb}")
    return jsonify(view), 200


@operation(api, "POST", "/messages/{message_id}/reschedule", summary="Move a message that has not started sending to a new time",
           scope="messages:write", request=Reschedule, ok={200: Body(MessageView, "Rescheduled: `status` is scheduled, `send_at` the new time.")},
           errors=(404, 409))
def reschedule_message(message_id: int, body: Reschedule) -> tuple[Response, int]:
    if body.send_at is None and body.delay_seconds is None:
        raise ApiError(422, "invalid_request", "give send_at or delay_seconds", "send_at")
    due = due_time(body.send_at, body.timezone, body.delay_seconds)
    with transaction():
        outcome, view = messages.reschedule(g.workspace_id, message_id, due.at)
    return _acted(message_id, outcome, view, "rescheduled", "not_reschedulable")


@operation(api, "POST", "/messages/cancel", summary="Cancel every message not yet sending whose tags match",
           scope="messages:write", request=TagFilter, ok={200: Body(Count, "How many were cancelled.")})
def cancel_by_tags(body: TagFilter) -> tuple[Response, int]:
    with transaction():
        count = messages.cancel_by_tags(g.workspace_id, body.tags)
    return jsonify({"count": count}), 200


@operation(api, "POST", "/messages/reschedule", summary="Move every message not yet sending whose tags match",
           scope="messages:write", request=TagReschedule, ok={200: Body(Count, "How many were moved.")})
def reschedule_by_tags(body: TagReschedule) -> tuple[Response, int]:
    if (body.send_at is None) == (body.shift_seconds is None):
        raise ApiError(422, "invalid_request", "give send_at or shift_seconds (one of them)", "send_at")
    due = due_time(body.send_at, body.timezone, None) if body.send_at is not None else None
    with transaction():
        count = messages.reschedule_by_tags(g.workspace_id, body.tags, due.at if due else None, body.shift_seconds)
    return jsonify({"count": count}), 200
