"""A customer's webhook endpoint on the wire: ``POST /receiver/<name>``, and its control API.

Postroom's outbound webhooks (Standard Webhooks signed POSTs) and its generic ``http`` channel
are pointed here in tests and benchmarks. Every POST is recorded — arrival time, headers, the
body as text (the first 64 KiB) and its JSON if it parses — and answered as the receiver's
behaviour says: by default ``200 {"id": "rcv_<hex>", "received": true}``, the id being what the
``http`` channel keeps as the provider's message id. ``/sandbox/receivers`` lists the receivers;
``PUT /sandbox/receivers/<name>`` sets one's behaviour (``receivers.ReceiverBehaviour``),
``DELETE`` forgets it (or all of them), and ``GET .../requests`` lists what it received.
"""

from __future__ import annotations

import json
import re
import time
from http import HTTPStatus

import gevent
from flask import Blueprint, Response, abort, jsonify, request
from werkzeug.exceptions import NotFound

from services.sandbox.receivers import ReceiverBehaviour, ReceiverRequestError
from services.sandbox.state import current_sandbox

MAX_BODY_BYTES = 64 * 1024
RECEIVER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

blueprint = Blueprint("receivers", __name__)


def _receiver_name(name: str) -> str:
    if not RECEIVER_NAME.match(name):
        abort(404, description="a receiver name is 1-64 characters of A-Z a-z 0-9 _ . -")
    return name


@blueprint.errorhandler(NotFound)
def _not_a_receiver(exc: NotFound) -> tuple[Response, int]:
    return jsonify({"error": exc.description}), 404


def _bounded_body() -> tuple[bytes, bool]:
    """The first ``MAX_BODY_BYTES`` of the request body, and whether there was more.

    Read from the stream rather than ``get_data()`` so that a huge body is never held whole.
    """
    chunks, size = [], 0
    while size <= MAX_BODY_BYTES:
        chunk = request.stream.read(MAX_BODY_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    raw = b"".join(chunks)
    return raw[:MAX_BODY_BYTES], len(raw) > MAX_BODY_BYTES


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _parsed(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser
        return None


@blueprint.post("/receiver/<name>")
def receive(name: str) -> tuple[Response, int]:
    at = time.time()
    name = _receiver_name(name)
    raw, truncated = _bounded_body()
    answer = current_sandbox().receivers.receive(
        name,
        at,
        dict(request.headers),
        raw.decode("utf-8", errors="replace"),
        truncated,
        None if truncated else _parsed(raw),
    )
    if answer.delay_seconds:
        # Cooperative under the gevent worker, and no lock is held: other requests go on.
        gevent.sleep(answer.delay_seconds)
    if answer.body is not None:
        response = jsonify(answer.body)
    elif answer.id is not None:
        response = jsonify({"id": answer.id, "received": True})
    else:
        response = jsonify({"error": _phrase(answer.status), "received": True})
    if answer.retry_after is not None:
        response.headers["Retry-After"] = str(answer.retry_after)
    return response, answer.status


@blueprint.get("/sandbox/receivers")
def list_receivers() -> Response:
    return jsonify({"receivers": current_sandbox().receivers.summary()})


@blueprint.delete("/sandbox/receivers")
def clear_receivers() -> Response:
    current_sandbox().receivers.clear()
    return jsonify({"receivers": []})


@blueprint.put("/sandbox/receivers/<name>")
def configure_receiver(name: str) -> Response | tuple[Response, int]:
    try:
        behaviour = ReceiverBehaviour.from_request(request.get_json(force=True, silent=True))
    except ReceiverRequestError as exc:
        return jsonify({"error": str(exc)}), 400
    return jsonify(current_sandbox().receivers.configure(_receiver_name(name), behaviour))


@blueprint.delete("/sandbox/receivers/<name>")
def forget_receiver(name: str) -> Response:
    current_sandbox().receivers.forget(_receiver_name(name))
    return jsonify(ReceiverBehaviour().as_json())


@blueprint.get("/sandbox/receivers/<name>/requests")
def list_requests(name: str) -> Response:
    kept = current_sandbox().receivers.requests(_receiver_name(name))
    return jsonify({"requests": [r.as_json() for r in kept]})
