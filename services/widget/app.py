"""The widget service's Flask app: the embeddable chat page, visitors, their messages, and event streams.

Routes (``inbox_key`` is a workspace's ``widget`` channel configuration, ``PUT /v1/channels/widget``):

- ``GET  /widget/{inbox_key}``            the page (no inline script; CSP, nosniff, no referrer);
- ``POST /widget/{inbox_key}/visitors``   201 ``{token}``: a new visitor and its conversation;
- ``POST /widget/{inbox_key}/messages``   202 ``{id}``: the visitor's message, stored as inbound
  and handed to the AI stage like any channel's (``Authorization: Bearer <token>``; a repeated
  ``client_id`` stores nothing); 413 over 8 KB, 422, 429 over the visitor's or address's pace;
- ``POST /widget/{inbox_key}/stream-ticket`` 200 ``{ticket, expires_in}``: the visitor's token
  (Bearer) traded for a ticket that opens its event stream for a minute (``services.widget.tickets``);
- ``GET  /widget/{inbox_key}/events``     Server-Sent Events (``?ticket=``: EventSource sends no
  headers, and a URL may be logged, so it never carries the token), ``id:`` = message id, replay
  after ``Last-Event-ID`` or ``?after=`` (``services.widget.stream``);
- ``POST /widget/{inbox_key}/ack``        204: the browser showed these replies (``delivered``).

Refusals are ``{"error": {"code", "message", "field"?}}``, as the API's. The per-address limit
counts ``request.remote_addr``: the peer, or with POSTROOM_WIDGET_TRUSTED_PROXIES = N > 0 the
address N proxies back in ``X-Forwarded-For`` (werkzeug's ProxyFix), so that visitors behind an
ingress are not all one address.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any
from uuid import UUID

from flask import Flask, Response, jsonify, render_template, request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from werkzeug.middleware.proxy_fix import ProxyFix

from common import conversations, metrics
from common.config import settings
from common.db.connection import DatabaseUnavailable, fetch, release_connection, transaction
from common.inbound import Inbound, store
from common.providers import widget as widget_channel
from services.widget import limits, stream, tickets, visitors

log = logging.getLogger("postroom.widget")
MAX_REQUEST_BYTES = 8 * 1024
MAX_ACK_IDS = 200
INBOX_KEY = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _plain_text(value: str) -> str:
    if CONTROL.search(value):
        raise ValueError("of the control characters only newline, carriage return and tab are allowed")
    if not value.strip():
        raise ValueError("must hold some text")
    return value


class VisitorMessage(BaseModel):
    """What the page posts: the browser's id for the message (a retry repeats it) and the text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_id: UUID
    body: Annotated[str, Field(min_length=1, max_length=settings.postroom_widget_max_chars), AfterValidator(_plain_text)]


class Acknowledged(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    ids: Annotated[list[Annotated[int, Field(ge=1, le=2**63 - 1)]], Field(min_length=1, max_length=MAX_ACK_IDS)]


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers or {}


def content_security_policy(box: visitors.Inbox) -> str:
    """Only the widget's own script, style and stream; framed only by the inbox's origins (any, when none are set)."""
    ancestors = " ".join(box.allowed_origins) or "*"
    return ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
            f"base-uri 'none'; form-action 'none'; frame-ancestors {ancestors}")


def _inbox(key: str) -> visitors.Inbox:
    box = None
    if INBOX_KEY.match(key):
        with transaction():
            box = visitors.inbox(key)
    if box is None:
        raise Refused(404, "not_found", "no such chat")
    return box


def _visitor(box: visitors.Inbox, token: str | None) -> visitors.Visitor:
    found = None
    if token and len(token) <= 100:
        with transaction(single_statement=True):
            found = visitors.visitor(box, token)
    if found is None:
        raise Refused(401, "unauthorized", "unknown visitor token; create a visitor first")
    return found


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.startswith("Bearer ") else None


def _paced(visitor_id: int | None = None) -> None:
    wait = limits.allow(request.remote_addr or "unknown", visitor_id)
    if wait:
        metrics.WIDGET_VISITOR_MESSAGES.labels(outcome="limited").inc()
        raise Refused(429, "rate_limited", "too many messages; wait a moment", headers={"Retry-After": str(max(1, round(wait + 0.5)))})


def _parse(model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(request.get_data(cache=False) or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ())) or None
        if model is VisitorMessage:
            metrics.WIDGET_VISITOR_MESSAGES.labels(outcome="refused").inc()
        raise Refused(422, "invalid_request", f"{field or 'body'}: {first.get('msg', 'invalid')}"[:300], field) from None


def page(inbox_key: str) -> Response:
    box = _inbox(inbox_key)
    response = Response(render_template("widget.html", inbox=box, base=f"/widget/{box.key}",
                                        max_chars=settings.postroom_widget_max_chars))
    response.headers["Content-Security-Policy"] = content_security_policy(box)
    response.headers["Cache-Control"] = "no-store"
    return response


def create_visitor(inbox_key: str) -> tuple[Response, int]:
    box = _inbox(inbox_key)
    _paced()
    with transaction(single_statement=True):
        token = visitors.create_visitor(box)
    return jsonify({"token": token}), 201


def post_message(inbox_key: str) -> tuple[Response, int]:
    box = _inbox(inbox_key)
    visitor = _visitor(box, _bearer())
    _paced(visitor.id)
    sent: VisitorMessage = _parse(VisitorMessage)
    message = Inbound(workspace_id=box.workspace_id, channel="widget", provider=widget_channel.PROVIDER,
                      provider_message_id=f"{visitor.id}:{sent.client_id}", from_addr=f"v:{visitor.id}",
                      to_addr=box.key, body=sent.body, provider_account=box.key)
    followups = None
    with transaction():
        message_id = store(message)
        if message_id is not None:
            followups = conversations.after_store(message, message_id)
        else:
            message_id = visitors.stored_id(visitor, message.provider_message_id)
    release_connection()
    metrics.WIDGET_VISITOR_MESSAGES.labels(outcome="accepted" if followups is not None else "duplicate").inc()
    if followups is not None:
        followups.hand_on()  # to the AI stage, after the commit; the reconciler covers a lost hand-on
        _wake(visitor.conversation_id, message_id)
    return jsonify({"id": message_id}), 202


def _wake(conversation_id: int, message_id: int | None) -> None:
    """This visitor's other tabs, on any replica, show the message too (this replica's at once)."""
    stream.hub.wake(conversation_id)
    try:
        widget_channel.wake(conversation_id, message_id or 0)
    except Exception as exc:  # the stored message is what counts; other tabs catch up on reconnect
        log.warning("could not publish a widget wake-up: %s", exc.__class__.__name__)


def stream_ticket(inbox_key: str) -> tuple[Response, int]:
    box = _inbox(inbox_key)
    visitor = _visitor(box, _bearer())
    response = jsonify({"ticket": tickets.issue(visitor), "expires_in": tickets.TTL_SECONDS})
    response.headers["Cache-Control"] = "no-store"
    return response, 200


def _cursor(given: str | None) -> int:
    return int(given) if given and given.isascii() and given.isdigit() and len(given) <= 18 else 0


def events(inbox_key: str) -> Response:
    box = _inbox(inbox_key)
    if "token" in request.args:  # an old page, or a client that would put the lasting secret in logs
        raise Refused(400, "invalid_request", f"a stream URL carries a ticket (POST /widget/{box.key}/stream-ticket), "
                      "never the visitor token; reload the page", "token")
    conversation_id = tickets.conversation(box, request.args.get("ticket"))
    release_connection()
    if conversation_id is None:
        raise Refused(401, "unauthorized", f"unknown or expired stream ticket; get another from "
                      f"POST /widget/{box.key}/stream-ticket", "ticket")
    after = max(_cursor(request.headers.get("Last-Event-ID")), _cursor(request.args.get("after")))
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return Response(stream.events(conversation_id, after), mimetype="text/event-stream", headers=headers)


def acknowledge(inbox_key: str) -> tuple[str, int]:
    box = _inbox(inbox_key)
    visitor = _visitor(box, _bearer())
    shown: Acknowledged = _parse(Acknowledged)
    with transaction():
        visitors.acknowledge(visitor, sorted(set(shown.ids)))
    return "", 204


def create_app() -> Flask:
    app = Flask(__name__, static_folder="static", static_url_path="/widget/static", template_folder="templates")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.add_url_rule("/widget/<inbox_key>", view_func=page, methods=["GET"])
    app.add_url_rule("/widget/<inbox_key>/visitors", view_func=create_visitor, methods=["POST"])
    app.add_url_rule("/widget/<inbox_key>/messages", view_func=post_message, methods=["POST"])
    app.add_url_rule("/widget/<inbox_key>/stream-ticket", view_func=stream_ticket, methods=["POST"])
    app.add_url_rule("/widget/<inbox_key>/events", view_func=events, methods=["GET"])
    app.add_url_rule("/widget/<inbox_key>/ack", view_func=acknowledge, methods=["POST"])

    hops = settings.postroom_widget_trusted_proxies
    if hops > 0:  # the address the Nth proxy back saw; whatever a client prepends to the header is ignored
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops)  # type: ignore[method-assign]

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        return jsonify({"status": "ok"}), 200

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        with transaction(single_statement=True):
            fetch("SELECT 1")
        return jsonify({"status": "ready", "subscribed": stream.hub.subscribed.is_set()}), 200

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        return Response(metrics.exposition(), mimetype="text/plain; version=0.0.4")

    @app.before_request
    def bounded() -> None:
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            raise Refused(413, "too_large", f"a request body may hold at most {MAX_REQUEST_BYTES} bytes")

    @app.after_request
    def secure(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.teardown_request
    def give_back_connection(exc: BaseException | None) -> None:
        release_connection()

    @app.errorhandler(Refused)
    def refused(exc: Refused) -> tuple[Response, int]:
        return _error(exc.status, exc.code, exc.message, exc.field, exc.headers)

    @app.errorhandler(DatabaseUnavailable)
    def unavailable(exc: Exception) -> tuple[Response, int]:
        return _error(503, "unavailable", "the chat is unavailable for a moment; retry shortly", headers={"Retry-After": "2"})

    @app.errorhandler(404)
    def not_found(exc: Exception) -> tuple[Response, int]:
        return _error(404, "not_found", "no such page")

    @app.errorhandler(405)
    def not_allowed(exc: Exception) -> tuple[Response, int]:
        return _error(405, "method_not_allowed", f"{request.method} is not allowed here")

    @app.errorhandler(413)
    def too_large(exc: Exception) -> tuple[Response, int]:
        return _error(413, "too_large", f"a request body may hold at most {MAX_REQUEST_BYTES} bytes")

    @app.errorhandler(500)
    def internal(exc: Exception) -> tuple[Response, int]:
        return _error(500, "internal", "internal error")

    return app


def _error(status: int, code: str, message: str, field: str | None = None,
           headers: dict[str, str] | None = None) -> tuple[Response, int]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    response = jsonify({"error": body})
    response.headers.update(headers or {})
    return response, status
