"""REST API v1 for templates: store, read and delete a workspace's templates, and preview one rendered.

A template is checked when it is stored: each part must parse, and the variables it needs are
found once and kept with it, so a message with the template is refused at accept when one is
missing. ``rendered`` is the preview both this API and ``POST /v1/messages/preview`` answer with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, g, jsonify

from common import segments
from common import templates as engine
from common.db.connection import transaction
from services.ingest import templates
from services.ingest.contract import Body, operation
from services.ingest.errors import ApiError
from services.ingest.template_models import (
    NewTemplate,
    Preview,
    TemplatePreviewRequest,
    TemplateView,
)

templates_api = Blueprint("templates", __name__, url_prefix="/v1")
# Which channels each part is for; a part given for another channel is refused.
PART_CHANNELS = {"subject": ("email",), "html": ("email",), "whatsapp": ("whatsapp_cloud",)}


def _refuse(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, field)


def _missing(template_id: int) -> ApiError:
    return ApiError(404, "not_found", f"no template {template_id} in this workspace")


def rendered(template: Mapping[str, Any], channel: str, variables: Mapping[str, Any], field: str = "variables") -> dict[str, Any]:
    """The template rendered with ``variables`` as a preview (``Preview``); 422 naming ``field`` for
    a missing variable, the part at fault for a template the sandbox refuses or that fails."""
    absent = engine.missing(template["variables"], variables)
    if absent:
        raise _refuse(field, f"the template needs the variable {absent[0]}" + (f" (and {', '.join(absent[1:])})" if absent[1:] else ""))
    try:
        out = engine.render(template, variables)
    except engine.TemplateProblem as exc:
        raise _refuse(field if exc.part == "variables" else exc.part, str(exc)) from None
    return preview_of(out, channel)


def preview_of(content: Mapping[str, Any], channel: str) -> dict[str, Any]:
    """``Preview`` of content (body, subject, html, template), with an SMS body's encoding and segments."""
    out = {name: content.get(name) for name in ("body", "subject", "html", "template", "encoding", "segments")}
    out["body"] = out["body"] or ""
    if channel == "sms" and out["body"]:
        out.update(encoding=segments.encoding(out["body"]), segments=segments.count_segments(out["body"]))
    return out


@operation(templates_api, "POST", "/templates", summary="Store a template", scope="messages:write", request=NewTemplate,
           ok={201: Body(TemplateView, "Stored, with the variables it needs.")}, errors=(409,))
def create_template(body: NewTemplate) -> tuple[Response, int]:
    for part, channels in PART_CHANNELS.items():
        if getattr(body, part) is not None and body.channel not in channels:
            raise _refuse(part, f"{part} applies to {' and '.join(channels)} templates only")
    if body.text is None and body.html is None and body.whatsapp is None:
        raise _refuse("text", "give text" + {"email": " (or html)", "whatsapp_cloud": " (or whatsapp)"}.get(body.channel, ""))
    try:
        needed = engine.variables_of({"subject": body.subject, "text": body.text, "html": body.html})
    except engine.TemplateProblem as exc:
        raise _refuse(exc.part, str(exc)) from None
    if body.whatsapp is not None:
        needed |= set(body.whatsapp.body_parameters)
    with transaction():
        try:
            view = templates.create(g.workspace_id, body.model_dump(), sorted(needed))
        except templates.NameTaken:
            raise ApiError(409, "duplicate", f"this workspace already has a template named {body.name}", "name") from None
    return jsonify(view), 201


@operation(templates_api, "GET", "/templates/{template_id}", summary="Read a template", scope="messages:read",
           ok={200: Body(TemplateView, "The template.")}, errors=(404,))
def get_template(template_id: int) -> tuple[Response, int]:
    with transaction():
        view = templates.get(g.workspace_id, template_id)
    if view is None:
        raise _missing(template_id)
    return jsonify(view), 200


@operation(templates_api, "DELETE", "/templates/{template_id}", summary="Delete a template", scope="messages:write",
           ok={200: Body(TemplateView, "The template as it was; messages not yet rendered with it fail.")}, errors=(404,))
def delete_template(template_id: int) -> tuple[Response, int]:
    with transaction():
        view = templates.delete(g.workspace_id, template_id)
    if view is None:
        raise _missing(template_id)
    return jsonify(view), 200


@operation(templates_api, "POST", "/templates/{template_id}/preview", summary="Render a template with variables",
           scope="messages:read", request=TemplatePreviewRequest,
           ok={200: Body(Preview, "The rendered content; nothing is stored.")}, errors=(404,))
def preview_template(template_id: int, body: TemplatePreviewRequest) -> tuple[Response, int]:
    with transaction():
        template = templates.get(g.workspace_id, template_id)
    if template is None:
        raise _missing(template_id)
    return jsonify(rendered(template, template["channel"], body.variables)), 200
