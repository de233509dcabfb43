"""REST API v1 for conversations: ``GET /v1/conversations`` and a conversation's messages.

A conversation is one customer on one channel of the workspace (``common.inbound`` creates it
with the first inbound message). Listings are paged by id: conversations newest first with
``before``, messages oldest first with ``after``; each page says where the next one starts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from common.db.connection import fetch_dicts, transaction
from services.ingest import messages
from services.ingest.contract import Body, operation, query
from services.ingest.errors import ApiError
from services.ingest.models import (
    CHANNELS,
    ConversationList,
    ConversationMessages,
    ConversationView,
)
from services.ingest.validation import query_int

conversations_api = Blueprint("conversations", __name__, url_prefix="/v1")
MAX_PAGE = 200
STATUSES = ("bot", "open", "resolved")
BIGINT = 2**63 - 1


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "channel": row["channel"], "address": row["address"], "contact_id": row["contact_id"],
            "name": row["name"], "profile": row["profile"], "status": row["status"],
            "last_inbound_at": _iso(row["last_inbound_at"]), "last_message_at": _iso(row["last_message_at"]),
            "created_at": _iso(row["created_at"])}


@operation(conversations_api, "GET", "/conversations", summary="List conversations, newest first", scope="messages:read",
           ok={200: Body(ConversationList, "A page of conversations; `next_before` continues it.")}, errors=(422,),
           headers=[query("channel", "Only this channel.", enum=list(CHANNELS)),
                    query("status", "Only this status.", enum=list(STATUSES)),
                    query("before", "Continue a listing: conversations with an id below this.", pattern="^[0-9]+$"),
                    query("limit", f"Page size, 1 to {MAX_PAGE} (default 50).", pattern="^[0-9]+$")])
def list_conversations() -> tuple[Response, int]:
    channel, status = request.args.get("channel"), request.args.get("status")
    if channel is not None and channel not in CHANNELS:
        raise ApiError(422, "invalid_request", f"channel must be one of: {', '.join(CHANNELS)}", "channel")
    if status is not None and status not in STATUSES:
        raise ApiError(422, "invalid_request", f"status must be one of: {', '.join(STATUSES)}", "status")
    before = query_int("before", BIGINT, 1, BIGINT)
    limit = query_int("limit", 50, 1, MAX_PAGE)
    with transaction():
        rows = fetch_dicts(
            "SELECT * FROM conversation WHERE workspace_id = %s AND id < %s"
            " AND (%s::text IS NULL OR channel = %s) AND (%s::text IS NULL OR status = %s)"
            " ORDER BY id DESC LIMIT %s",
            (g.workspace_id, before, channel, channel, status, status, limit))
    return jsonify({"conversations": [_view(r) for r in rows],
                    "next_before": rows[-1]["id"] if len(rows) == limit else None}), 200


def _conversation(conversation_id: int) -> dict[str, Any]:
    rows = fetch_dicts("SELECT * FROM conversation WHERE id = %s AND workspace_id = %s", (conversation_id, g.workspace_id))
    if not rows:
        raise ApiError(404, "not_found", f"no conversation {conversation_id} in this workspace")
    return rows[0]


@operation(conversations_api, "GET", "/conversations/{conversation_id}", summary="Read a conversation", scope="messages:read",
           ok={200: Body(ConversationView, "The conversation.")}, errors=(404,))
def get_conversation(conversation_id: int) -> tuple[Response, int]:
    with transaction():
        row = _conversation(conversation_id)
    return jsonify(_view(row)), 200


@operation(conversations_api, "GET", "/conversations/{conversation_id}/messages",
           summary="A conversation's messages, oldest first", scope="messages:read",
           ok={200: Body(ConversationMessages, "A page of messages; `next_after` continues it.")}, errors=(404, 422),
           headers=[query("after", "Continue a listing: messages with an id above this.", pattern="^[0-9]+$"),
                    query("limit", f"Page size, 1 to {MAX_PAGE} (default 50).", pattern="^[0-9]+$")])
def conversation_messages(conversation_id: int) -> tuple[Response, int]:
    after = query_int("after", 0, 0, BIGINT)
    limit = query_int("limit", 50, 1, MAX_PAGE)
    with transaction():
        _conversation(conversation_id)
        ids = [r["id"] for r in fetch_dicts(
            "SELECT id FROM message WHERE conversation_id = %s AND workspace_id = %s AND id > %s ORDER BY id LIMIT %s",
            (conversation_id, g.workspace_id, after, limit))]
        found = messages.views(g.workspace_id, ids)
    return jsonify({"messages": found, "next_after": ids[-1] if len(ids) == limit else None}), 200
