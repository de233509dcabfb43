"""REST API v1: send (one, or a batch), read and cancel messages. Authenticated by
``Authorization: Bearer <key>``.

Each operation is declared in the contract (``services.ingest.contract``) with its models, its
scope and every status it answers with; the view is left with what is particular to it. The
contract also runs every POST under its ``Idempotency-Key``; a message's insert carries that key
too (atomic with the row), so a request re-run after its process died finds its message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, g, jsonify

from common import dispatch
from common.db.connection import transaction
from services.ingest import batch, messages, outgoing, templates, templates_api
from services.ingest.batch_models import BatchAccepted, NewBatch
from services.ingest.contract import Body, operation
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


@operation(
    api, "POST", "/messages", summary="Send a message", scope="messages:write", request=NewMessage,
    ok={202: Body(MessageAccepted, "Accepted: stored and handed on. Repeated with the same Idempotency-Key and body, "
                                   "this same answer comes back (marked `Idempotent-Replayed: true`)."),
        200: Body(MessageView, "With `on_conflict: return`: the pending message with the same unique tags. Or the message "
                               "accepted earlier with this Idempotency-Key, found by a request that took over the key from "
                               "one that died before answering (marked `Idempotent-Replayed: true`).")},
    errors=(409,), rerun_safe=True,  # the key is on the message row
)
def create_message(body: NewMessage) -> tuple[Response, int]:
    held = g.get("idempotency")
    answer, status = accept_one(g.workspace_id, body, held.key if held is not None else None)
    response = jsonify(answer)
    if status == 200:
        response.headers["Idempotent-Replayed"] = "true"
    return response, status


def accept_one(workspace_id: int, body: NewMessage, key: str | None,
               resolve: Callable[[int, NewMessage], dict[str, Any]] = outgoing.resolve) -> tuple[dict[str, Any], int]:
    """Accept one message as ``POST /v1/messages`` does, for it and for the compatibility routes
    (one implementation: resolve, store under ``key``, hand on after the commit).

    Returns ``(answer, 202)`` with the ``MessageAccepted`` fields for a new message, or
    ``(answer, 200)`` with the ``MessageView`` of the message found instead: the one stored earlier
    under ``key``, or with ``on_conflict: "return"`` the pending one with the same unique tags.
    ``resolve`` turns the body into the row to store (``outgoing.resolve``, every check of /v1).

    Raises:
      ApiError: as ``outgoing.resolve``; 409 ``idempotency_conflict`` (``key`` names another
        message) or ``duplicate`` (a pending twin, without ``on_conflict: "return"``).
    """
    due = due_time(body.send_at, body.timezone, body.delay_seconds)
    with transaction():
        new = resolve(workspace_id, body)
        try:
            accepted = messages.accept(workspace_id, new, key, due.at)
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
        return answer, 202
    with transaction():
        view = messages.view(workspace_id, accepted.id, with_events=False)
    assert view is not None  # found in this workspace a moment ago; messages are not deleted
    return view, 200


@operation(
    api, "POST", "/messages/batch", summary="Send up to 1,000 messages, each accepted or refused on its own",
    scope="messages:write", request=NewBatch, rerun_safe=True,  # each item's key is on its message row
    ok={207: Body(BatchAccepted, "Each message's outcome by its index: an id and status, or an error naming its field "
                                 "(`messages[3].to`); the valid ones are accepted even when others are refused.")},
)
def create_batch(body: NewBatch) -> tuple[Response, int]:
    held = g.get("idempotency")
    results = accept_batch(g.workspace_id, body.items(), held.key if held is not None else None)
    failed = sum("error" in r for r in results)
    return jsonify({"results": results, "accepted": len(results) - failed, "failed": failed}), 207


def accept_batch(workspace_id: int, items: list[Any], key: str | None) -> list[dict[str, Any]]:
    """Accept a list of messages as ``POST /v1/messages/batch`` does, for it and for the
    compatibility routes (one implementation: check each item, store the valid ones in one
    statement under ``key``, hand the new ones on after the commit).

    Returns each item's result in item order: ``{"index", "id", "status"}`` for a stored message,
    with ``"replayed": true`` for one found instead (stored earlier under its key, or its pending
    twin with ``on_conflict: "return"``); ``{"index", "error"}`` for a refused one.
    """
    with transaction():
        ready, refused = batch.prepare(workspace_id, items, key)
        stored = batch.store(workspace_id, ready)
    for lane, ids in batch.handed_on(ready, stored).items():
        dispatch.handoff.submit("processing", lane, ids)  # after the commit
    return sorted(stored + refused, key=lambda r: r["index"])


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
