"""REST API v1 for the knowledge base: ``/v1/knowledge-items`` (create, list, read, change,
delete, import by JSON or CSV) and ``/v1/knowledge-items/search``, the bot's own retrieval with
its scores, for tuning a chatbot's thresholds.

Items belong to the workspace, not to a channel: every chatbot of the workspace answers from
them. Titles are unique whatever their case, which is what an import updates by.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from pydantic import TypeAdapter, ValidationError

from common import chatbots, knowledge
from common.config import settings
from common.db.connection import longer_deadline, transaction
from services.ingest import knowledge_input
from services.ingest.contract import Body, operation, query
from services.ingest.errors import ApiError
from services.ingest.knowledge_models import (
    KnowledgeCsv,
    KnowledgeCsvImported,
    KnowledgeImport,
    KnowledgeImported,
    KnowledgeItemChange,
    KnowledgeItemList,
    KnowledgeItemNew,
    KnowledgeItemView,
    KnowledgeSearch,
)
from services.ingest.models import MAX_TAG, Tag
from services.ingest.validation import query_int

knowledge_api = Blueprint("knowledge", __name__, url_prefix="/v1")
CSV = "text/csv"
MAX_PAGE = 200
BIGINT = 2**63 - 1
_TAG = TypeAdapter(Tag)  # an item's tag: what a filter by tag may name


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "language": knowledge.LANGUAGE_OF.get(row["language"], row["language"]),
            "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"])}


def _missing(item_id: int) -> ApiError:
    return ApiError(404, "not_found", f"no knowledge item {item_id} in this workspace")


def _taken(title: str) -> ApiError:
    return ApiError(409, "title_taken", f"another item of this workspace has the title {title[:100]!r}", "title")


def _default_language() -> str:
    return chatbots.first_language(g.workspace_id) or "en"


@operation(knowledge_api, "POST", "/knowledge-items", summary="Add a knowledge item", scope="channels:write",
           request=KnowledgeItemNew, ok={201: Body(KnowledgeItemView, "Added.")}, errors=(409,))
def create_item(body: KnowledgeItemNew) -> tuple[Response, int]:
    with transaction():
        row = knowledge.create(g.workspace_id, knowledge_input.item(body, _default_language()))
    if row is None:
        raise _taken(body.title)
    return jsonify(_view(row)), 201


@operation(knowledge_api, "GET", "/knowledge-items", summary="List knowledge items", scope="channels:read",
           ok={200: Body(KnowledgeItemList, "A page of items in id order; `next_after` continues it.")}, errors=(422,),
           headers=[query("tag", "Only items with this tag.", maxLength=MAX_TAG),
                    query("after", "Continue a listing: items with an id above this.", pattern="^[0-9]+$"),
                    query("limit", f"Page size, 1 to {MAX_PAGE} (default 50).", pattern="^[0-9]+$")])
def list_items() -> tuple[Response, int]:
    tag = request.args.get("tag")
    if tag is not None:
        try:
            _TAG.validate_python(tag)
        except ValidationError:
            raise ApiError(422, "invalid_request", f"tag must be 1 to {MAX_TAG} characters without control characters",
                           "tag") from None
    after = query_int("after", 0, 0, BIGINT)
    limit = query_int("limit", 50, 1, MAX_PAGE)
    with transaction():
        rows = knowledge.page(g.workspace_id, after, limit, tag)
    return jsonify({"items": [_view(r) for r in rows], "next_after": rows[-1]["id"] if len(rows) == limit else None}), 200


@operation(knowledge_api, "GET", "/knowledge-items/search", summary="Search the knowledge base as the bot does",
           scope="channels:read", ok={200: Body(KnowledgeSearch, "The top 5 with their scores, best first.")}, errors=(422,),
           headers=[query("q", "The question, as a customer would write it (1 to 500 characters).", minLength=1, maxLength=500),
                    query("channel", "Search as this channel's chatbot (its language and weights); default the "
                          "workspace's first chatbot.", enum=list(chatbots.CHANNELS))])
def search_items() -> tuple[Response, int]:
    text = request.args.get("q", "")
    if not 1 <= len(text) <= knowledge.MAX_QUERY or not text.strip() or "\x00" in text:
        raise ApiError(422, "invalid_request", f"q must be 1 to {knowledge.MAX_QUERY} characters of text", "q")
    channel = request.args.get("channel")
    if channel is not None and channel not in chatbots.CHANNELS:
        raise ApiError(422, "invalid_request", f"channel must be one of: {', '.join(chatbots.CHANNELS)}", "channel")
    with transaction():
        bot = chatbots.get(g.workspace_id, channel) if channel else None
        language = bot["language"] if bot else _default_language()
        weights = (bot or {}).get("settings", {}).get("weights") or knowledge.WEIGHTS
        hits = knowledge.retrieve(g.workspace_id, knowledge.REGCONFIG[language], text, weights)
    return jsonify({"items": hits}), 200


@operation(knowledge_api, "GET", "/knowledge-items/{item_id}", summary="Read a knowledge item", scope="channels:read",
           ok={200: Body(KnowledgeItemView, "The item.")}, errors=(404,))
def get_item(item_id: int) -> tuple[Response, int]:
    with transaction():
        row = knowledge.get(g.workspace_id, item_id)
    if row is None:
        raise _missing(item_id)
    return jsonify(_view(row)), 200


@operation(knowledge_api, "PATCH", "/knowledge-items/{item_id}", summary="Change a knowledge item", scope="channels:write",
           request=KnowledgeItemChange, ok={200: Body(KnowledgeItemView, "The changed item.")}, errors=(404, 409))
def change_item(item_id: int, body: KnowledgeItemChange) -> tuple[Response, int]:
    given = body.model_dump(include=body.model_fields_set)
    for name in ("title", "body", "tags", "language"):
        if name in given and given[name] is None:
            raise ApiError(422, "invalid_request", f"{name} cannot be null", name)
    if "language" in given:
        given["language"] = knowledge.REGCONFIG[given["language"]]
    if "title" in given:
        given["title"] = given["title"].strip()
    with transaction():
        try:
            row = knowledge.change(g.workspace_id, item_id, given)
        except knowledge.TitleTaken:
            raise _taken(given["title"]) from None
    if row is None:
        raise _missing(item_id)
    return jsonify(_view(row)), 200


@operation(knowledge_api, "DELETE", "/knowledge-items/{item_id}", summary="Delete a knowledge item", scope="channels:write",
           ok={200: Body(KnowledgeItemView, "The item as it was.")}, errors=(404,))
def delete_item(item_id: int) -> tuple[Response, int]:
    with transaction():
        row = knowledge.delete(g.workspace_id, item_id)
    if row is None:
        raise _missing(item_id)
    return jsonify(_view(row)), 200


@operation(knowledge_api, "POST", "/knowledge-items/import", summary="Create or update many knowledge items at once",
           scope="channels:write", request=KnowledgeImport,
           ok={200: Body(KnowledgeImported, "Imported: the valid items (set-wise, in one transaction); the others are in `errors`.")})
def import_items(body: KnowledgeImport) -> tuple[Response, int]:
    with transaction():
        language = _default_language()
    return _import(knowledge_input.check_items(body.items, language), "index")


@operation(knowledge_api, "POST", "/knowledge-items/import/csv", summary="Create or update many knowledge items from CSV",
           scope="channels:write", request=KnowledgeCsv, request_media=CSV, errors=(400, 415, 422),
           ok={200: Body(KnowledgeCsvImported, "Imported: the valid rows (set-wise, in one transaction); the others are in `errors`.")})
def import_items_csv() -> tuple[Response, int]:
    if request.mimetype != CSV:
        raise ApiError(415, "unsupported_media_type", f"send the items as {CSV} (a header row, then one item per row)", "body")
    with transaction():
        language = _default_language()
    return _import(knowledge_input.check_csv(request.get_data(cache=True), language), "line")


def _import(checked: knowledge_input.Checked, position: str) -> tuple[Response, int]:
    with transaction(), longer_deadline(settings.postroom_campaign_db_timeout_seconds):
        created, updated = knowledge.upsert_many(g.workspace_id, checked.items)
    failures = sorted(checked.failures, key=lambda f: f[0])
    return jsonify({"created": created, "updated": updated, "failed": len(failures),
                    "errors": [{position: at, "error": error} for at, error in failures]}), 200
