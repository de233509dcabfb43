"""A WAHA-compatible gateway on its real wire format: send, check a number, sessions, QR; and control.

``POST /api/sendText`` ``{session, chatId, text, reply_to?}``, ``/api/sendImage`` and
``/api/sendFile`` ``{session, chatId, file: {url, mimetype?, filename?}, caption?}`` take
``X-Api-Key`` (WAHA_API_KEY) and answer 201 with the engine's message object (WEBJS: the id is
``id._serialized``), then post its ``message.ack`` webhooks. A session that is not WORKING
answers 422 ``{"error": "Session status is not as expected...", "status", "expected"}``.
``GET /api/contacts/check-exists``, ``GET /api/sessions/{name}`` and the QR image
``GET /api/{session}/auth/qr?format=image`` (a real PNG while the session waits for its scan).
Order of checks on a send: injected latency, the key, the session, an injected error, the body,
the session's state; then the message is recorded, and only then may its answer be lost.

Control: ``POST /sandbox/waha/sessions/{name}`` ``{"status"}`` creates or moves a session and
posts ``session.status``; ``POST /sandbox/waha/inbound`` ``{"from", "text", "session"?, "id"?,
"name"?}`` posts a ``message`` event (the same ``id`` twice is a webhook delivered twice);
``POST /sandbox/waha/unreachable`` ``{"number"}`` marks a number not on WhatsApp; ``GET
/sandbox/waha/sent`` lists accepted messages with their paths and bodies; ``DELETE /sandbox/waha`` resets
sessions, marks, bodies and the channel's fault plan. Malformed input of any kind (a key with
non-ASCII characters, JSON nested too deep, a field of the wrong type) answers 4xx, never 500.
"""

from __future__ import annotations

import hmac
import io
import re
import time
import uuid
from datetime import datetime
from typing import Any

import gevent
import segno
from flask import Blueprint, Response, jsonify, request

from common.config import settings
from services.sandbox.lost_answer import lose_answer
from services.sandbox.records import ReceivedMessage
from services.sandbox.state import current_sandbox
from services.sandbox.waha_gateway import DEFAULT_SESSION, OWN_NUMBER, STATES

CHANNEL = "whatsapp_qr"
CHAT_ID = re.compile(r"^(\d{6,15}@c\.us|[\d-]{6,40}@g\.us)$")
PHONE = re.compile(r"^\+?\d{6,15}$")
MAX_TEXT = 65536
SENDS = {"sendText": "chat", "sendImage": "image", "sendFile": "document"}

blueprint = Blueprint("waha", __name__)



def http_status_for_code(code: int) -> int:
    """WAHA's errors are plain HTTP statuses: an injected ``error_code`` is one."""
    return code if 400 <= code < 600 else 500


def error_code_for_http_status(status: int) -> int:
    return status


def _error(status: int, message: str, **extra: Any) -> tuple[Response, int]:
    """NestJS's error shape, which WAHA answers with."""
    names = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 422: "Unprocessable Entity",
             429: "Too Many Requests"}
    return jsonify({"statusCode": status, "message": message, "error": names.get(status, "Error"), **extra}), status


def _not_working(session: str, status: str, expected: str = "WORKING") -> tuple[Response, int]:
    return jsonify({"error": "Session status is not as expected. Try again later or restart the session",
                    "session": session, "status": status, "expected": [expected]}), 422


def _authorized() -> bool:
    """The request's X-Api-Key is the gateway's (compared as bytes: a header may carry any byte)."""
    return hmac.compare_digest(request.headers.get("X-Api-Key", "").encode(), settings.waha_api_key.encode())


def _json_body() -> Any:
    """The request's JSON, or None when it is not JSON or nests too deep to parse."""
    try:
        return request.get_json(force=True, silent=True)
    except RecursionError:
        return None


def problem_with(kind: str, body: Any) -> str | None:
    """What WAHA's validation would refuse in a send body, or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if not isinstance(body.get("chatId"), str) or not CHAT_ID.fullmatch(body["chatId"]):
        return "chatId must be <digits>@c.us or a group id"
    if kind == "chat":
        return None if isinstance(body.get("text"), str) and 0 < len(body["text"]) <= MAX_TEXT else "text must be a non-empty string"
    file = body.get("file")
    if not isinstance(file, dict) or not isinstance(file.get("url"), str) or not file["url"].startswith(("http://", "https://")):
        return "file.url must be an http(s) URL"
    if "caption" in body and not isinstance(body["caption"], str):
        return "caption must be a string"
    return None


@blueprint.post("/api/<endpoint>")
def send(endpoint: str) -> Response | tuple[Response, int]:
    if endpoint not in SENDS:
        return _error(404, f"Cannot POST /api/{endpoint}")
    sandbox = current_sandbox()
    waha, faults = sandbox.waha, sandbox.faults[CHANNEL]
    gevent.sleep(faults.latency_seconds())  # cooperative: other requests proceed meanwhile
    if not _authorized():
        sandbox.records.count("invalid")
        return _error(401, "Unauthorized")
    body = _json_body()
    session = str(body.get("session") or DEFAULT_SESSION) if isinstance(body, dict) else DEFAULT_SESSION
    status = waha.status(session)
    if status is None:
        sandbox.records.count("invalid")
        return _error(404, f'Session "{session}" does not exist')
    injected = faults.take_send_error()
    if injected is not None:
        sandbox.records.count("rejected_by_fault")
        headers = {"Retry-After": str(injected.retry_after)} if injected.retry_after is not None else {}
        response, code = _error(injected.http_status, "injected error")
        response.headers.update(headers)
        return response, code
    kind = SENDS[endpoint]
    problem = problem_with(kind, body)
    if problem is not None or not isinstance(body, dict):
        sandbox.records.count("invalid")
        return _error(400, problem or "the body must be a JSON object")
    if status != "WORKING":
        return _not_working(session, status)

    chat = body["chatId"]
    short = uuid.uuid4().hex[:20].upper()
    text = body["text"] if kind == "chat" else body.get("caption") or ""  # both checked to be strings
    message = ReceivedMessage(channel=CHANNEL, sid=f"true_{chat}_{short}", to="+" + chat.removesuffix("@c.us"),
                              from_=session, body=text,
                              status_callback=waha.webhook_url, status="pending", account_sid=session,
                              num_media=int(kind != "chat"))
    sandbox.records.add(message)
    waha.keep_payload(message.sid, request.path, body)
    waha.start_acks(message, faults.take_callback_outcome(), faults.callback_behaviour())
    lose_answer(sandbox.records, faults)
    me = (waha.me(session) or {}).get("id")
    return jsonify({
        "id": {"fromMe": True, "remote": chat, "id": short, "_serialized": message.sid},
        "ack": 0, "hasMedia": kind != "chat", "body": message.body, "type": kind,
        "timestamp": int(message.received_at.timestamp()), "from": me, "to": chat, "fromMe": True,
    }), 201


@blueprint.get("/api/contacts/check-exists")
def check_exists() -> Response | tuple[Response, int]:
    sandbox = current_sandbox()
    gevent.sleep(sandbox.faults[CHANNEL].latency_seconds())
    if not _authorized():
        return _error(401, "Unauthorized")
    session, phone = request.args.get("session", DEFAULT_SESSION), request.args.get("phone", "").strip().lstrip("+")
    status = sandbox.waha.status(session)
    if status is None:
        return _error(404, f'Session "{session}" does not exist')
    if not (phone.isascii() and phone.isdigit()):
        return _error(400, "phone must be digits")
    if status != "WORKING":
        return _not_working(session, status)
    sandbox.records.count("lookups")
    if not sandbox.waha.on_whatsapp(phone):
        return jsonify({"numberExists": False, "chatId": None})
    return jsonify({"numberExists": True, "chatId": f"{phone}@c.us"})


@blueprint.get("/api/<session>/chats/<chat>/messages")
def chat_messages(session: str, chat: str) -> Response | tuple[Response, int]:
    """The chat's latest messages, newest first, as WAHA lists them: how a sender whose answer
    was lost finds out whether its message went out."""
    sandbox = current_sandbox()
    gevent.sleep(sandbox.faults[CHANNEL].latency_seconds())
    if not _authorized():
        return _error(401, "Unauthorized")
    if sandbox.waha.status(session) is None:
        return _error(404, f'Session "{session}" does not exist')
    digits = chat.removesuffix("@c.us")
    limit = request.args.get("limit", "100")
    if not (digits.isascii() and digits.isdigit() and limit.isascii() and limit.isdigit()):
        return _error(400, "chatId must be <digits>@c.us and limit a number")
    sandbox.records.count("lookups")
    mine = [m for m in sandbox.records.listing(to="+" + digits, channel=CHANNEL) if m.get("account_sid") == session]
    mine.sort(key=lambda m: str(m["received_at"]), reverse=True)
    return jsonify([{"id": m["sid"], "timestamp": int(datetime.fromisoformat(str(m["received_at"])).timestamp()),
                     "from": f"{OWN_NUMBER}@c.us", "fromMe": True, "to": chat, "body": m["body"],
                     "hasMedia": bool(m.get("num_media")), "ack": 1, "ackName": "SERVER"}
                    for m in mine[:int(limit)]])


@blueprint.get("/api/sessions/<name>")
def session_info(name: str) -> Response | tuple[Response, int]:
    if not _authorized():
        return _error(401, "Unauthorized")
    waha = current_sandbox().waha
    status = waha.status(name)
    if status is None:
        return _error(404, f'Session "{name}" does not exist')
    return jsonify({"name": name, "status": status, "me": waha.me(name), "engine": {"engine": "WEBJS"}})


@blueprint.get("/api/<session>/auth/qr")
def qr(session: str) -> Response | tuple[Response, int]:
    if not _authorized():
        return _error(401, "Unauthorized")
    status = current_sandbox().waha.status(session)
    if status is None:
        return _error(404, f'Session "{session}" does not exist')
    if status != "SCAN_QR_CODE":
        return _not_working(session, status, "SCAN_QR_CODE")
    image = io.BytesIO()  # what a phone would scan: a pairing reference that changes over time
    segno.make_qr(f"2@{session},{uuid.uuid4().hex},{int(time.time())}").save(image, kind="png", scale=5, border=2)
    return Response(image.getvalue(), mimetype="image/png")


# --- control --------------------------------------------------------------------------------------


def _bad(text: str) -> tuple[Response, int]:
    return jsonify({"error": text}), 400


@blueprint.post("/sandbox/waha/sessions/<name>")
def set_session(name: str) -> Response | tuple[Response, int]:
    spec = _json_body()
    if not isinstance(spec, dict) or spec.get("status") not in STATES:
        return _bad(f"expected {{\"status\": one of {', '.join(STATES)}}}")
    ingest_status = current_sandbox().waha.set_status(name, spec["status"])
    return jsonify({"name": name, "status": spec["status"], "ingest_status": ingest_status}), 200


@blueprint.post("/sandbox/waha/inbound")
def inbound() -> Response | tuple[Response, int]:
    spec = _json_body()
    if not isinstance(spec, dict) or not isinstance(spec.get("from"), str) or not PHONE.fullmatch(spec["from"]):
        return _bad("expected {\"from\": <number>, \"text\": ..., \"session\"?, \"id\"?, \"name\"?}")
    waha = current_sandbox().waha
    session = str(spec.get("session") or DEFAULT_SESSION)
    if waha.status(session) is None:
        return _bad(f"no session {session!r}; create it through /sandbox/waha/sessions/{session}")
    mid, status = waha.inbound(session, spec["from"].lstrip("+"), str(spec.get("text") or ""),
                               str(spec["id"]) if spec.get("id") else None,
                               str(spec["name"]) if spec.get("name") else None)
    return jsonify({"id": mid, "ingest_status": status}), 200


@blueprint.post("/sandbox/waha/unreachable")
def mark_unreachable() -> Response | tuple[Response, int]:
    spec = _json_body()
    number = spec.get("number") if isinstance(spec, dict) else None
    if not isinstance(number, str) or not PHONE.fullmatch(number):
        return _bad("expected {\"number\": <E.164 number>}")
    current_sandbox().waha.mark_unreachable(number.lstrip("+"))
    return jsonify({"number": number}), 201


@blueprint.get("/sandbox/waha/sent")
def sent() -> Response:
    waha = current_sandbox().waha
    listing = current_sandbox().records.listing(channel=CHANNEL)
    accepted = [(m, waha.payload(str(m["sid"]))) for m in listing]
    return jsonify({"messages": [{**m, "path": p[0] if p else None, "payload": p[1] if p else None} for m, p in accepted]})


@blueprint.delete("/sandbox/waha")
def reset() -> Response:
    sandbox = current_sandbox()
    sandbox.waha.reset()
    sandbox.faults[CHANNEL].reset()
    return jsonify({"sessions": {DEFAULT_SESSION: sandbox.waha.status(DEFAULT_SESSION)}})
