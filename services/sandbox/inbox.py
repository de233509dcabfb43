"""The sandbox's inbox page: what it received, newest first, for a person with a browser.

``GET /sandbox`` (also ``/sandbox/inbox``) is one plain HTML page (no script, no external asset)
that shows, during ``make run``, per channel the latest messages each provider imitation accepted
(SMS, email, WhatsApp Cloud, WhatsApp through WAHA) with their status, and every webhook receiver
with its behaviour and latest requests — the answer each got, the headers that identify a postroom webhook
and the start of its body. ``?receiver=<name>`` shows that receiver alone. Everything recorded
came from a client, so the page is a Jinja template with autoescaping on and no ``|safe``; the
Content-Security-Policy forbids scripts besides. The JSON control API has the full records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import Blueprint, Response, abort, render_template_string, request
from werkzeug.exceptions import NotFound

from services.sandbox.receiver_api import RECEIVER_NAME
from services.sandbox.receivers import ReceivedRequest, ReceiverBehaviour, ReceiverSnapshot
from services.sandbox.records import ReceivedMessage
from services.sandbox.state import current_sandbox

MAX_MESSAGES = 200  # per channel
# The channels a provider imitation records, in page order, with their headings.
CHANNEL_TITLES = {"sms": "SMS", "email": "Email", "whatsapp_cloud": "WhatsApp Cloud", "whatsapp_qr": "WhatsApp QR (WAHA)"}
MAX_REQUESTS_PER_RECEIVER = 20
BODY_PREVIEW_CHARS = 300
WEBHOOK_HEADERS = ("webhook-id", "X-Webhook-Event", "X-Webhook-Attempt")  # see common.signing
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

blueprint = Blueprint("inbox", __name__)


@dataclass(frozen=True)
class MessageRow:
    """One received SMS as the page shows it."""

    at: str
    to: str
    sender: str  # the From number, or the Messaging Service that chose it
    body: str
    status: str  # with the error code, if it failed
    sid: str


@dataclass(frozen=True)
class RequestRow:
    """One received request as the page shows it."""

    at: str
    status: int
    headers: list[tuple[str, str]]  # the webhook headers it carried, in WEBHOOK_HEADERS order
    body: str  # at most BODY_PREVIEW_CHARS
    body_note: str  # why the body shown is shorter than the one sent, or ""


@dataclass(frozen=True)
class ReceiverSection:
    name: str
    url: str  # where to point a webhook endpoint to reach it
    received: int
    kept: int
    behaviour: str
    latest: list[RequestRow]


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def describe_behaviour(behaviour: ReceiverBehaviour) -> str:
    """How a receiver will answer, in words: ``answers 500, 502, then 410; after 100 ms``."""
    answers = [str(code) for code in behaviour.codes]
    said = f"answers {', '.join(answers)}, then {behaviour.status}" if answers else f"answers {behaviour.status}"
    parts = [said]
    if behaviour.delay_ms:
        parts.append(f"after {behaviour.delay_ms} ms")
    if behaviour.retry_after is not None:
        parts.append(f"Retry-After {behaviour.retry_after} s on failures")
    if behaviour.body is not None:
        parts.append(f"with body {_preview(json.dumps(behaviour.body))[0]}")
    return "; ".join(parts)


def _preview(text: str) -> tuple[str, bool]:
    """The first BODY_PREVIEW_CHARS of ``text``, and whether it was cut."""
    if len(text) <= BODY_PREVIEW_CHARS:
        return text, False
    return text[:BODY_PREVIEW_CHARS] + "…", True


def message_row(message: ReceivedMessage) -> MessageRow:
    return MessageRow(
        at=_utc(message.received_at),
        to=message.to,
        sender=message.from_ or message.messaging_service_sid or "",
        body=message.body,
        status=f"{message.status} ({message.error_code})" if message.error_code else message.status,
        sid=message.sid,
    )


def request_row(received: ReceivedRequest) -> RequestRow:
    headers = {name.lower(): value for name, value in received.headers.items()}
    body, cut = _preview(received.body)
    notes = []
    if cut:
        notes.append(f"first {BODY_PREVIEW_CHARS} of {len(received.body)} characters")
    if received.truncated:
        notes.append("the receiver kept only the first 64 KiB")
    return RequestRow(
        at=_utc(datetime.fromtimestamp(received.at, UTC)),
        status=received.status,
        headers=[(name, headers[name.lower()]) for name in WEBHOOK_HEADERS if name.lower() in headers],
        body=body,
        body_note="; ".join(notes),
    )


def receiver_section(snapshot: ReceiverSnapshot, host_url: str) -> ReceiverSection:
    return ReceiverSection(
        name=snapshot.name,
        url=f"{host_url}receiver/{snapshot.name}",
        received=snapshot.received,
        kept=snapshot.kept,
        behaviour=describe_behaviour(snapshot.behaviour),
        latest=[request_row(r) for r in snapshot.latest],
    )


def _unused_receiver(name: str) -> ReceiverSnapshot:
    return ReceiverSnapshot(name=name, received=0, kept=0, behaviour=ReceiverBehaviour(), latest=[])


def _html(body: str, status: int = 200) -> Response:
    response = Response(body, status=status, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"  # what was received a second ago, not a cached page
    return response


@blueprint.errorhandler(NotFound)
def _not_a_receiver(exc: NotFound) -> Response:
    return _html(render_template_string(NOT_FOUND_PAGE, message=exc.description), 404)


@dataclass(frozen=True)
class ChannelSection:
    channel: str
    title: str
    messages: list[MessageRow]


@blueprint.get("/sandbox")
@blueprint.get("/sandbox/inbox")
def inbox() -> Response:
    sandbox = current_sandbox()
    only = request.args.get("receiver")
    if only is not None and not RECEIVER_NAME.match(only):
        abort(404, description="a receiver name is 1-64 characters of A-Z a-z 0-9 _ . -")
    snapshots = sandbox.receivers.snapshots(MAX_REQUESTS_PER_RECEIVER, only=only)
    if only is not None and not snapshots:
        snapshots = [_unused_receiver(only)]  # any name is a receiver from its first request on
    sections = [] if only else [
        ChannelSection(channel, title, [message_row(m) for m in sandbox.records.latest(channel, MAX_MESSAGES)])
        for channel, title in CHANNEL_TITLES.items()]
    page = render_template_string(
        INBOX_PAGE,
        only=only,
        host_url=request.host_url,
        sections=sections,
        messages_total=sandbox.records.stats()["messages"],
        max_messages=MAX_MESSAGES,
        receivers=[receiver_section(s, request.host_url) for s in snapshots],
        max_requests=MAX_REQUESTS_PER_RECEIVER,
    )
    return _html(page)


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
h3 { font-size: 1rem; margin: 1.5rem 0 .25rem; }
nav a, .muted { color: #555; } nav a { margin-right: 1rem; }
table { border-collapse: collapse; width: 100%; margin-top: .5rem; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f6; font-weight: 600; }
td.when, td.sid { white-space: nowrap; font-family: ui-monospace, monospace; font-size: 12px; }
pre, code { font-family: ui-monospace, monospace; font-size: 12px; }
pre { margin: 0; white-space: pre-wrap; word-break: break-all; }
.ok { color: #176f2c; } .failed { color: #b3261e; font-weight: 600; }
"""

INBOX_PAGE = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{% if only %}{{ only }} · {% endif %}postroom sandbox inbox</title>
<style>"""
    + STYLE
    + """</style></head>
<body>
<h1>postroom sandbox inbox</h1>
<nav><a href="/sandbox">everything</a><a href="/sandbox/messages">messages as JSON</a>
<a href="/sandbox/receivers">receivers as JSON</a><a href="/sandbox/stats">counters</a></nav>
<p class="muted">Newest first; reload the page to see what arrived since.</p>
{% if not only %}
<p class="muted">{{ messages_total }} messages recorded on every channel; at most {{ max_messages }} shown per channel.</p>
{% for section in sections %}
<h2 id="{{ section.channel }}">{{ section.title }} received</h2>
{% if section.messages %}
<p class="muted">{{ section.messages | length }} shown ·
<a href="/sandbox/messages?channel={{ section.channel }}">as JSON</a></p>
<table>
<tr><th>Received</th><th>To</th><th>From</th><th>Body</th><th>Status</th><th>Provider id</th></tr>
{% for m in section.messages %}
<tr><td class="when">{{ m.at }}</td><td>{{ m.to }}</td><td>{{ m.sender }}</td>
<td><pre>{{ m.body }}</pre></td><td>{{ m.status }}</td><td class="sid">{{ m.sid }}</td></tr>
{% endfor %}
</table>
{% else %}
<p>No {{ section.title }} message received yet.</p>
{% endif %}
{% endfor %}
{% endif %}
<h2 id="receivers">Webhook receivers</h2>
<p>Point a webhook endpoint at <code>{{ host_url }}receiver/&lt;name&gt;</code>: any name of 1-64
characters A-Z a-z 0-9 _ . - is a receiver, which answers <code>200</code> until told otherwise
through <code>PUT /sandbox/receivers/&lt;name&gt;</code>.</p>
{% if not receivers %}
<p>No receiver has been used yet.</p>
{% endif %}
{% for r in receivers %}
<h3><a href="/sandbox/inbox?receiver={{ r.name | urlencode }}">{{ r.name }}</a></h3>
<p>URL <code>{{ r.url }}</code> · {{ r.received }} request{{ "" if r.received == 1 else "s" }}
({{ r.kept }} kept) · {{ r.behaviour }}
· <a href="/sandbox/receivers/{{ r.name | urlencode }}/requests">kept requests as JSON</a></p>
{% if r.latest %}
<p class="muted">The newest {{ r.latest | length }} (at most {{ max_requests }}).</p>
<table>
<tr><th>Received</th><th>Answered</th><th>Webhook headers</th><th>Body</th></tr>
{% for q in r.latest %}
<tr><td class="when">{{ q.at }}</td>
<td class="{{ 'ok' if 200 <= q.status < 300 else 'failed' }}">{{ q.status }}</td>
<td>{% for name, value in q.headers %}<code>{{ name }}: {{ value }}</code><br>{% endfor %}</td>
<td><pre>{{ q.body }}</pre>{% if q.body_note %}<span class="muted">{{ q.body_note }}</span>{% endif %}</td></tr>
{% endfor %}
</table>
{% else %}
<p>No request received yet.</p>
{% endif %}
{% endfor %}
</body></html>
"""
)

NOT_FOUND_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>not found · postroom sandbox inbox</title></head>
<body><p>{{ message }}</p><p><a href="/sandbox">the whole inbox</a></p></body></html>
"""
