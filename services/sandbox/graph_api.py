"""The WhatsApp Cloud API (Graph API) on its real wire format, and its control routes.

``POST /<version>/<phone_number_id>/messages`` takes ``Authorization: Bearer <token>`` and a JSON
body, answers 200 ``{"messaging_product", "contacts": [{"input", "wa_id"}], "messages": [{"id"}]}``
or Meta's error envelope. Order of checks, as for Twilio: injected latency, authentication,
injected error, Meta's own validation; then the message is recorded with its full body, its
status webhooks start in a greenlet, and only then may its answer be lost. A recipient who is
not on WhatsApp (a number ending in 0404, or one marked through the control API) is accepted and
then reported ``failed`` with 131026, as Meta does.

Control: ``GET /sandbox/whatsapp_cloud/sent`` lists accepted messages with their bodies;
``POST …/numbers`` adds a phone number (``phone_number_id``, ``access_token``, ``app_secret``);
``POST …/unreachable`` marks a number not on WhatsApp; ``POST …/inbound`` (``from``, ``text``,
``name``, ``id``, ``media``, ``phone_number_id``) posts a signed inbound message to ingest now and
answers with ingest's status (the same ``id`` twice is a duplicate delivery); ``DELETE
/sandbox/whatsapp_cloud`` resets numbers, marks, bodies and the channel's fault plan.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import gevent
from flask import Blueprint, Response, jsonify, request

from services.sandbox.graph_errors import graph_error
from services.sandbox.graph_webhooks import Number, inbound_value
from services.sandbox.lost_answer import lose_answer
from services.sandbox.records import ReceivedMessage
from services.sandbox.state import current_sandbox

CHANNEL = "whatsapp_cloud"
VERSION = re.compile(r"^v\d{1,3}\.\d$")
WA_ID = re.compile(r"^\+?[1-9]\d{6,14}$")
MEDIA_TYPES = ("image", "document", "audio", "video")
MAX_TEXT = 4096
MAX_OPAQUE = 512

blueprint = Blueprint("graph", __name__)



def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    return header[7:] if header[:7].lower() == "bearer " else ""


def problem_with(body: Any) -> str | None:
    """What the Graph API would refuse in ``body`` (error 100), or None."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object"
    if body.get("messaging_product") != "whatsapp":
        return "The parameter messaging_product is required and must be 'whatsapp'"
    if not isinstance(body.get("to"), str) or not WA_ID.match(body["to"]):
        return "The parameter to must be a phone number"
    kind = body.get("type", "text")
    if not isinstance(kind, str) or kind not in ("text", "template", *MEDIA_TYPES):
        return f"Param type must be one of text, template, {', '.join(MEDIA_TYPES)}"
    obj = body.get(kind)
    if not isinstance(obj, dict):
        return f"Param {kind} must be a JSON object for type {kind}"
    if kind == "text" and not (isinstance(obj.get("body"), str) and 0 < len(obj["body"]) <= MAX_TEXT):
        return f"Param text['body'] must be a string of 1 to {MAX_TEXT} characters"
    if kind == "template" and not (isinstance(obj.get("name"), str) and isinstance(obj.get("language"), dict)
                                   and isinstance(obj["language"].get("code"), str)):
        return "Param template must have a name and a language code"
    if kind in MEDIA_TYPES and not (isinstance(obj.get("link"), str) and obj["link"].startswith(("http://", "https://"))
                                    or isinstance(obj.get("id"), str)):
        return f"Param {kind} must have a link or an id"
    context = body.get("context")
    if context is not None and not (isinstance(context, dict) and isinstance(context.get("message_id"), str)):
        return "Param context['message_id'] must be a string"
    opaque = body.get("biz_opaque_callback_data")
    if opaque is not None and not (isinstance(opaque, str) and len(opaque.encode()) <= MAX_OPAQUE):
        return f"Param biz_opaque_callback_data must be a string of at most {MAX_OPAQUE} bytes"
    return None


def _summary(body: dict[str, Any]) -> str:
    """What the inbox shows as the message's text."""
    kind = body.get("type", "text")
    obj = body[kind]
    if kind == "text":
        return str(obj["body"])
    if kind == "template":
        return f"template {obj['name']}"
    return str(obj.get("caption") or obj.get("filename") or obj.get("link") or kind)


@blueprint.post("/<version>/<phone_number_id>/messages")
def send_message(version: str, phone_number_id: str) -> Response | tuple[Response, int]:
    sandbox = current_sandbox()
    graph, faults = sandbox.whatsapp, sandbox.faults[CHANNEL]
    gevent.sleep(faults.latency_seconds())  # cooperative: other requests proceed meanwhile
    if not VERSION.match(version):
        sandbox.records.count("invalid")
        return graph_error(100, f"Unknown path components: /{version}")
    verdict = graph.authenticate(phone_number_id, _bearer())
    if verdict != "ok":
        sandbox.records.count("invalid")
        if verdict == "bad_token":
            return graph_error(190)
        return graph_error(100, f"Unsupported post request. Object with ID '{phone_number_id}' does not exist")
    number = graph.number(phone_number_id)
    assert number is not None  # authenticate said so
    body: Any = request.get_json(force=True, silent=True)
    injected = faults.take_send_error()
    if injected is not None:
        sandbox.records.count("rejected_by_fault")
        return graph_error(injected.error_code, http_status=injected.http_status, retry_after=injected.retry_after)
    problem = problem_with(body)
    if problem is not None:
        sandbox.records.count("invalid")
        return graph_error(100, problem)

    wa_id = body["to"].lstrip("+")
    message = ReceivedMessage(channel=CHANNEL, sid="wamid.HBgL" + uuid.uuid4().hex.upper(), to="+" + wa_id,
                              from_=phone_number_id, body=_summary(body), status_callback=graph.webhook_url,
                              status="accepted", account_sid=phone_number_id,
                              num_media=int(body.get("type") in MEDIA_TYPES))
    sandbox.records.add(message)
    graph.keep_payload(message.sid, body)
    graph.start_statuses(message, number, body.get("biz_opaque_callback_data"), faults.take_callback_outcome(),
                         faults.callback_behaviour())
    lose_answer(sandbox.records, faults)
    answer: dict[str, Any] = {"messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": wa_id}],
                              "messages": [{"id": message.sid}]}
    if body.get("type") == "template":
        answer["messages"][0]["message_status"] = "accepted"
    return jsonify(answer), 200


# --- control --------------------------------------------------------------------------------------


def _bad(text: str) -> tuple[Response, int]:
    return jsonify({"error": text}), 400


@blueprint.get("/sandbox/whatsapp_cloud/sent")
def sent() -> Response:
    graph = current_sandbox().whatsapp
    listing = current_sandbox().records.listing(channel=CHANNEL)
    return jsonify({"messages": [{**m, "payload": graph.payload(str(m["sid"]))} for m in listing]})


@blueprint.post("/sandbox/whatsapp_cloud/numbers")
def add_number() -> Response | tuple[Response, int]:
    spec = request.get_json(force=True, silent=True)
    fields = ("phone_number_id", "access_token", "app_secret")
    if not isinstance(spec, dict) or not all(isinstance(spec.get(f), str) and spec[f] for f in fields):
        return _bad(f"expected a JSON object with non-empty strings {', '.join(fields)}")
    current_sandbox().whatsapp.add_number(Number(spec["phone_number_id"], spec["access_token"], spec["app_secret"],
                                                 str(spec.get("display_phone_number") or "15550000000")))
    return jsonify({"phone_number_id": spec["phone_number_id"]}), 201


@blueprint.post("/sandbox/whatsapp_cloud/unreachable")
def mark_unreachable() -> Response | tuple[Response, int]:
    spec = request.get_json(force=True, silent=True)
    number = spec.get("number") if isinstance(spec, dict) else None
    if not isinstance(number, str) or not WA_ID.match(number):
        return _bad("expected {\"number\": <E.164 number>}")
    current_sandbox().whatsapp.mark_unreachable(number.lstrip("+"))
    return jsonify({"number": number}), 201


@blueprint.post("/sandbox/whatsapp_cloud/inbound")
def inbound() -> Response | tuple[Response, int]:
    spec = request.get_json(force=True, silent=True)
    if not isinstance(spec, dict) or not isinstance(spec.get("from"), str) or not WA_ID.match(spec["from"]):
        return _bad("expected {\"from\": <number>, \"text\": ..., \"name\"?, \"id\"?, \"media\"?, \"phone_number_id\"?}")
    media = spec.get("media")
    if media is not None and not (isinstance(media, dict) and media.get("type", "image") in MEDIA_TYPES):
        return _bad(f"'media' must be an object whose type is one of {', '.join(MEDIA_TYPES)}")
    graph = current_sandbox().whatsapp
    number = graph.number(str(spec.get("phone_number_id") or graph.default_number_id))
    if number is None:
        return _bad("unknown phone_number_id; add it through /sandbox/whatsapp_cloud/numbers")
    wamid = str(spec.get("id") or "wamid.HBgL" + uuid.uuid4().hex.upper())
    status = graph.post(number, inbound_value(number, spec["from"].lstrip("+"), wamid, str(spec.get("text") or ""),
                                              spec.get("name"), media))
    return jsonify({"id": wamid, "ingest_status": status}), 200


@blueprint.delete("/sandbox/whatsapp_cloud")
def reset() -> Response:
    sandbox = current_sandbox()
    sandbox.whatsapp.reset()
    sandbox.faults[CHANNEL].reset()
    return jsonify({"reset": True})
