"""REST API v1: send, read and cancel messages. Authenticated by ``Authorization: Bearer <key>``."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from common import apikeys, dispatch
from common.db.connection import transaction
from services.ingest import messages
from services.ingest.validation import ValidationError, parse_new_message

api = Blueprint("api_v1", __name__, url_prefix="/v1")
MAX_IDEMPOTENCY_KEY = 255


def error(status: int, code: str, message: str, field: str | None = None) -> tuple[Response, int]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return jsonify({"error": body}), status


@api.before_request
def authenticate() -> tuple[Response, int] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return error(401, "unauthorized", "send your API key as 'Authorization: Bearer <key>'")
    with transaction():
        workspace_id = apikeys.workspace_for(key.strip())
    if workspace_id is None:
        return error(401, "unauthorized", "the API key is not valid")
    g.workspace_id = workspace_id
    return None


@api.post("/messages")
def create_message() -> tuple[Response, int]:
    try:
        payload = json.loads(request.get_data() or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        return error(400, "invalid_json", f"the request body is not valid JSON: {exc}", "body")
    try:
        new = parse_new_message(payload)
    except ValidationError as exc:
        return error(exc.status, "invalid_request", str(exc), exc.field)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY):
        return error(400, "invalid_request", f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters", "Idempotency-Key")
    try:
        with transaction():
            accepted = messages.accept(g.workspace_id, new, key)
    except messages.IdempotencyConflict:
        return error(409, "idempotency_conflict", "this Idempotency-Key was already used for a different message", "Idempotency-Key")
    if not accepted.replayed:
        dispatch.handoff.submit("processing", accepted.priority, [accepted.id])  # after the commit
        return jsonify({"id": accepted.id, "status": "accepted", "channel": new.channel, "to": new.to,
                        "priority": accepted.priority, "created_at": accepted.created_at}), 202
    with transaction():
        body = messages.view(g.workspace_id, accepted.id, with_events=False)
    response = jsonify(body)
    response.headers["Idempotent-Replayed"] = "true"
    return response, 200


@api.get("/messages/<int:message_id>")
def get_message(message_id: int) -> tuple[Response, int]:
    with transaction():
        body = messages.view(g.workspace_id, message_id)
    if body is None:
        return error(404, "not_found", f"no message {message_id} in this workspace")
    return jsonify(body), 200


@api.post("/messages/<int:message_id>/cancel")
def cancel_message(message_id: int) -> tuple[Response, int]:
    with transaction():
        outcome, body = messages.cancel(g.workspace_id, message_id)
    if outcome == "not_found":
        return error(404, "not_found", f"no message {message_id} in this workspace")
    if outcome == "too_late":
        assert body is not None
        return error(409, "not_cancellable", f"message {message_id} is already {body['status']}; only messages not yet sending can be cancelled")
    return jsonify(body), 200
