"""REST API v1: send, read and cancel messages. Authenticated by ``Authorization: Bearer <key>``.

Each operation is declared in the contract (``services.ingest.contract``) with its models, its
scope and every status it answers with; the view is left with what is particular to it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from common import dispatch
from common.db.connection import transaction
from services.ingest import messages, outgoing, templates, templates_api
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
from services.ingest.template_models import Preview
from services.ingest.timing import due_time

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
    due = due_time(body.send_at, body.timezone, body.delay_seconds)
    with transaction():
        new = outgoing.resolve(g.workspace_id, body)
        try:
            accepted = messages.accept(g.workspace_id, new, key, due.at)
        except messages.IdempotencyConflict:
            raise ApiError(409, "idempotency_conflict", "this Idempotency-Key was already used for a different message", "Idempotency-Key") from None
        except messages.Duplicate as twin:
            if body.on_conflict != "return" or not twin.message_id:
                raise ApiError(409, "duplicate", f"message {twin.message_id} is already pending with these unique tags "
                               f"{twin.natural_key}; send on_conflict \"return\" to get it instead", "tags") from None
            accepted = messages.Accepted(twin.message_id, new["priority"], replayed=True)
    if not accepted.replayed:
        if accepted.status == "accepted":
            dispatch.handoff.submit("processing", accepted.priority, [accepted.id])  # after the commit
        answer = {"id": accepted.id, "status": accepted.status, "channel": new["channel"], "to": new["to"],
                  "priority": accepted.priority, "created_at": accepted.created_at, "send_at": accepted.send_at}
        for extra in ("segments", "encoding"):
            if new.get(extra) is not None:
                answer[extra] = new[extra]
        if new.get("routes"):
            answer["channels"] = [r["channel"] for r in new["routes"]]
        if due.note:
            answer["note"] = due.note
        return jsonify(answer), 202
    with transaction():
        view = messages.view(g.workspace_id, accepted.id, with_events=False)
    response = jsonify(view)
    response.headers["Idempotent-Replayed"] = "true"
    return response, 200


@operation(api, "POST", "/messages/preview", summary="Render a message as it would be sent, without storing it",
           scope="messages:read", request=NewMessage, ok={200: Body(Preview, "The rendered content; nothing is stored.")})
def preview_message(body: NewMessage) -> tuple[Response, int]:
    with transaction():
        new = outgoing.resolve(g.workspace_id, body)  # every check of POST /v1/messages
        template = templates.get(g.workspace_id, body.template_id) if body.template_id is not None else None
    if template is None:
        return jsonify(templates_api.preview_of({"body": new["body"], **new["content"]}, new["channel"])), 200
    return jsonify(templates_api.rendered(template, new["channel"], new["variables"])), 200


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
