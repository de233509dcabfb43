"""REST API v1 for conversations: list and read them and their messages, reply as a person, and
move them between the bot and people.

A conversation is one customer on one channel of the workspace (``common.inbound`` creates it
with the first inbound message). Listings are paged by id: conversations newest first with
``before``, messages oldest first with ``after``; each page says where the next one starts.

An agent's reply (``POST …/messages``) is an ordinary urgent message through the pipeline, to the
customer's address from the identity they last wrote to; in the same transaction the
conversation becomes ``open``: a person who writes has taken it, and the bot stays silent.
``…/handoff``, ``…/resolve`` and ``…/reopen`` move the status (``common.conversations.move``, one
compare-and-set statement with its history row and ``conversation.*`` event); a conversation
already in the target status answers 200 and records nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from common import conversations, dispatch
from common.db.connection import fetch, fetch_dicts, transaction
from services.ingest import messages
from services.ingest.contract import Body, operation, query
from services.ingest.conversation_models import (
    AgentReply,
    ConversationEvents,
    ConversationMove,
    ConversationReplyAccepted,
)
from services.ingest.errors import ApiError
from services.ingest.models import (
    CHANNELS,
    MAX_BODY,
    ConversationList,
    ConversationMessages,
    ConversationView,
)
from services.ingest.validation import query_int

conversations_api = Blueprint("conversations", __name__, url_prefix="/v1")
MAX_PAGE = 200
STATUSES = conversations.STATUSES
LISTED_CHANNELS = (*CHANNELS, "widget")
# The channels a conversation reply goes out on, and how long its body may be (common.limits: the
# one table, which the bot's replies are cut to as well).
REPLY_LIMIT = MAX_BODY
MEDIA_CHANNELS = ("sms", "whatsapp_cloud", "whatsapp_qr")
BIGINT = 2**63 - 1


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "channel": row["channel"], "address": row["address"], "contact_id": row["contact_id"],
            "name": row["name"], "profile": row["profile"], "status": row["status"],
            "status_changed_at": _iso(row.get("status_changed_at")), "status_reason": row.get("status_reason"),
            "last_inbound_at": _iso(row["last_inbound_at"]), "last_message_at": _iso(row["last_message_at"]),
            "created_at": _iso(row["created_at"])}


@operation(conversations_api, "GET", "/conversations", summary="List conversations, newest first", scope="messages:read",
           ok={200: Body(ConversationList, "A page of conversations; `next_before` continues it.")}, errors=(422,),
           headers=[query("channel", "Only this channel.", enum=list(LISTED_CHANNELS)),
                    query("status", "Only this status.", enum=list(STATUSES)),
                    query("before", "Continue a listing: conversations with an id below this.", pattern="^[0-9]+$"),
                    query("limit", f"Page size, 1 to {MAX_PAGE} (default 50).", pattern="^[0-9]+$")])
def list_conversations() -> tuple[Response, int]:
    channel, status = request.args.get("channel"), request.args.get("status")
    if channel is not None and channel not in LISTED_CHANNELS:
        raise ApiError(422, "invalid_request", f"channel must be one of: {', '.join(LISTED_CHANNELS)}", "channel")
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


def _conversation(conversation_id: int, *, lock: bool = False) -> dict[str, Any]:
    row = conversations.current(g.workspace_id, conversation_id, lock=lock)
    if row is None:
        raise ApiError(404, "not_found", f"no conversation {conversation_id} in this workspace")
    return row


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


@operation(conversations_api, "POST", "/conversations/{conversation_id}/messages", summary="Reply as a person",
           scope="messages:write", request=AgentReply, rerun_safe=True,  # the key is on the message row
           ok={202: Body(ConversationReplyAccepted, "Accepted for sending; the conversation is `open` (a person has it).")},
           errors=(404, 409))
def reply(conversation_id: int, body: AgentReply) -> tuple[Response, int]:
    held = g.get("idempotency")
    with transaction():
        conversation = _conversation(conversation_id, lock=True)
        new = _reply(conversation, body)
        try:
            accepted = messages.accept(g.workspace_id, new, held.key if held is not None else None)
        except (messages.IdempotencyConflict, messages.Duplicate):
            raise ApiError(409, "idempotency_conflict", "this Idempotency-Key was already used for a different message",
                           "Idempotency-Key") from None
        moved = conversations.move(g.workspace_id, conversation_id, ("bot", "resolved"), "open", "agent_reply", "agent",
                                   message_id=accepted.id)
        view = _view(moved or _conversation(conversation_id))
    if not accepted.replayed:
        dispatch.committed_to_stage("processing", accepted.priority, [accepted.id])  # after the commit
    message = {"id": accepted.id, "status": accepted.status or "accepted", "channel": new["channel"], "to": new["to"],
               "priority": accepted.priority, "created_at": accepted.created_at}
    return jsonify({"message": message, "conversation": view}), 202


def _reply(conversation: dict[str, Any], body: AgentReply) -> dict[str, Any]:
    """The reply as ``common.intake.insert`` stores it; 409 when the conversation's channel
    cannot be answered, 422 naming a field its channel does not carry."""
    channel = conversation["channel"]
    if channel not in REPLY_LIMIT or (channel == "widget" and not fetch(
            "SELECT 1 FROM widget_visitor WHERE conversation_id = %s", (conversation["id"],))):
        raise ApiError(409, "conversation_channel", f"this conversation's {channel} customer cannot be answered "
                       "(no outgoing messages on it, or the visitor is gone)")
    if len(body.body) > REPLY_LIMIT[channel]:
        raise ApiError(422, "invalid_request", f"body is {len(body.body)} characters; a {channel} reply holds at most "
                       f"{REPLY_LIMIT[channel]}", "body")
    if body.media is not None and channel not in MEDIA_CHANNELS:
        raise ApiError(422, "invalid_request", f"media applies to {', '.join(MEDIA_CHANNELS)} only", "media")
    if body.media is not None and channel.startswith("whatsapp") and len(body.media) > 1:
        raise ApiError(422, "invalid_request", "a WhatsApp message carries one media file", "media")
    if body.subject is not None and channel != "email":
        raise ApiError(422, "invalid_request", "subject applies to email only", "subject")
    content: dict[str, Any] = {"track_clicks": False}  # a person's words, as written
    if body.media is not None:
        content["media"] = [m.model_dump() for m in body.media]
    if channel == "email":
        content["subject"] = body.subject or _re(conversation["id"])
    return {"channel": channel, "to": conversation["address"], "from": conversations.last_inbound_to(conversation["id"]),
            "body": body.body, "priority": "urgent", "tags": [], "content": content,
            "conversation_id": conversation["id"], "author": "agent"}


def _re(conversation_id: int) -> str:
    rows = fetch("SELECT content ->> 'subject' FROM message WHERE conversation_id = %s AND direction = 'inbound'"
                 " ORDER BY id DESC LIMIT 1", (conversation_id,))
    subject = (rows[0][0] or "").strip() if rows else ""
    return subject if subject.lower().startswith("re:") else f"Re: {subject}".strip()


# Each action: the statuses it moves from, the status it moves to, and the reason recorded.
MOVES = {"handoff": (("bot",), "open"), "resolve": (("bot", "open"), "resolved"), "reopen": (("resolved",), "bot")}


def _move(conversation_id: int, action: str, body: ConversationMove) -> tuple[Response, int]:
    expected, to = MOVES[action]
    with transaction():
        moved = conversations.move(g.workspace_id, conversation_id, expected, to, "api", "api", note=body.note)
        if moved is None:
            now = _conversation(conversation_id)
            if now["status"] != to:
                raise ApiError(409, "conversation_state", f"a {now['status']} conversation cannot be moved by {action} "
                               f"(it moves {' or '.join(expected)} to {to})")
            moved = now
    return jsonify(_view(moved)), 200


MOVED = {200: Body(ConversationView, "Moved (or already in that status: nothing recorded).")}


@operation(conversations_api, "POST", "/conversations/{conversation_id}/handoff", summary="Hand a conversation to a person",
           scope="messages:write", request=ConversationMove, body_optional=True, ok=MOVED, errors=(404, 409))
def handoff(conversation_id: int, body: ConversationMove) -> tuple[Response, int]:
    return _move(conversation_id, "handoff", body)


@operation(conversations_api, "POST", "/conversations/{conversation_id}/resolve", summary="Resolve a conversation",
           scope="messages:write", request=ConversationMove, body_optional=True, ok=MOVED, errors=(404, 409))
def resolve(conversation_id: int, body: ConversationMove) -> tuple[Response, int]:
    return _move(conversation_id, "resolve", body)


@operation(conversations_api, "POST", "/conversations/{conversation_id}/reopen",
           summary="Give a resolved conversation back to the bot", scope="messages:write", request=ConversationMove,
           body_optional=True, ok=MOVED, errors=(404, 409))
def reopen(conversation_id: int, body: ConversationMove) -> tuple[Response, int]:
    return _move(conversation_id, "reopen", body)


@operation(conversations_api, "GET", "/conversations/{conversation_id}/events", summary="A conversation's status changes",
           scope="messages:read", ok={200: Body(ConversationEvents, "Oldest first.")}, errors=(404,))
def conversation_events(conversation_id: int) -> tuple[Response, int]:
    with transaction():
        _conversation(conversation_id)
        rows = conversations.history(g.workspace_id, conversation_id)
    return jsonify({"events": [{**r, "at": _iso(r["at"])} for r in rows]}), 200
