"""REST API v1 for chatbots: ``PUT``, ``GET`` and ``DELETE /v1/chatbots/{channel}``, and the list.

A workspace sets one chatbot per channel (``common.chatbots``): an OpenAI-compatible server or
the offline ``extractive`` default, how it speaks and when it hands off. The server's address is
vetted like a webhook URL (public addresses only, unless POSTROOM_AI_ALLOWED_NETWORKS allows
more), and its API key is write-only. The workspace's plan and monthly reply quota are shown
with every chatbot, but only an ``admin`` key (or the CLI) may change them: a tenant does not
upgrade itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Response, g, jsonify

from common import apikeys, chatbots, usage
from common.config import settings
from common.db.connection import transaction
from common.netguard import BlockedAddress, parse_networks, vet_url
from services.ingest import auth
from services.ingest.chatbot_models import ChatbotList, ChatbotSetup, ChatbotView
from services.ingest.contract import Body, operation
from services.ingest.errors import ApiError

chatbots_api = Blueprint("chatbots", __name__, url_prefix="/v1")
CHANNEL_PARAM = {"channel": {"enum": list(chatbots.CHANNELS)}}


def _refuse(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, field)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _view(row: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    shown = {name: row[name] for name in chatbots.COLUMNS if name != "settings"}
    return {**shown, "channel": row["channel"], "api_key_set": bool(row["credentials"]),
            "json_mode": bool(row["settings"].get("json_mode", True)), "updated_at": _iso(row["updated_at"]), **plan}


def _missing(channel: str) -> ApiError:
    return ApiError(404, "not_found", f"no chatbot on {channel} in this workspace")


@operation(chatbots_api, "PUT", "/chatbots/{channel}", summary="Set the chatbot of a channel", scope="channels:write",
           request=ChatbotSetup, text_params=CHANNEL_PARAM,
           ok={200: Body(ChatbotView, "Stored; the API key is encrypted and not shown.")}, errors=(404,))
def put_chatbot(channel: str, body: ChatbotSetup) -> tuple[Response, int]:
    workspace_changes = {name for name in ("plan", "monthly_quota") if name in body.model_fields_set}
    if workspace_changes and not _admin():
        raise ApiError(403, "forbidden", "plan and monthly_quota are the workspace's: set them with an admin key or "
                       "`postroom workspace set`", sorted(workspace_changes)[0])
    _check_provider(body)
    fields = body.model_dump(include=set(chatbots.COLUMNS) - {"settings"})
    fields["settings"] = {"json_mode": body.json_mode}
    with transaction():
        row = chatbots.save(g.workspace_id, channel, fields, body.api_key)
        if workspace_changes:
            usage.set_plan(g.workspace_id, body.plan, body.monthly_quota if "monthly_quota" in workspace_changes
                           else usage.UNSET)
        view = _view(row, usage.plan_of(g.workspace_id))
    return jsonify(view), 200


def _admin() -> bool:
    grant = apikeys.grant_for(auth.presented_key())
    return grant is not None and apikeys.ADMIN in grant.scopes


def _check_provider(body: ChatbotSetup) -> None:
    """An ``openai`` chatbot names its server and model, and the server is one we may call;
    ``extractive`` takes neither."""
    if body.provider == "extractive":
        for name in ("base_url", "api_key", "model"):
            if getattr(body, name) is not None:
                raise _refuse(name, f"{name} applies to provider openai only")
        return
    if body.base_url is None:
        raise _refuse("base_url", "provider openai needs base_url, the server's API base (e.g. https://api.openai.com/v1)")
    if body.model is None:
        raise _refuse("model", "provider openai needs model, the model's name on that server")
    try:
        vet_url(body.base_url, parse_networks(settings.postroom_ai_allowed_networks))
    except (BlockedAddress, ValueError) as exc:
        raise _refuse("base_url", f"base_url is refused: {exc}") from None


@operation(chatbots_api, "GET", "/chatbots/{channel}", summary="Read the chatbot of a channel", scope="channels:read",
           text_params=CHANNEL_PARAM, ok={200: Body(ChatbotView, "The chatbot.")}, errors=(404,))
def get_chatbot(channel: str) -> tuple[Response, int]:
    with transaction():
        row = chatbots.get(g.workspace_id, channel)
        if row is None:
            raise _missing(channel)
        view = _view(row, usage.plan_of(g.workspace_id))
    return jsonify(view), 200


@operation(chatbots_api, "GET", "/chatbots", summary="List the workspace's chatbots", scope="channels:read",
           ok={200: Body(ChatbotList, "Every channel's chatbot.")})
def list_chatbots() -> tuple[Response, int]:
    with transaction():
        plan = usage.plan_of(g.workspace_id)
        views = [_view(row, plan) for row in chatbots.all_of(g.workspace_id)]
    return jsonify({"chatbots": views}), 200


@operation(chatbots_api, "DELETE", "/chatbots/{channel}", summary="Remove the chatbot of a channel", scope="channels:write",
           text_params=CHANNEL_PARAM, ok={200: Body(ChatbotView, "The chatbot as it was.")}, errors=(404,))
def delete_chatbot(channel: str) -> tuple[Response, int]:
    with transaction():
        row = chatbots.delete(g.workspace_id, channel)
        if row is None:
            raise _missing(channel)
        view = _view(row, usage.plan_of(g.workspace_id))
    return jsonify(view), 200
