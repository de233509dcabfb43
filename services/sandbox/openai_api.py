"""An OpenAI-compatible server on its wire format, for the AI stage: chat completions and models.

A chatbot's ``base_url`` is ``<sandbox>/openai/v1``. ``POST /openai/v1/chat/completions`` and
``GET /openai/v1/models`` take ``Authorization: Bearer <key>`` with a known key (``sk-sandbox`` and
those added by ``POST /sandbox/openai/keys``), else 401 ``invalid_api_key``. Order of a call: the
request is recorded as it arrives (``openai_state``), then the injected latency, the key, an
injected error (consumed only by authenticated calls), OpenAI's own validation — and a request
carrying ``tools``/``functions`` is refused 400, since postroom must never send any — then the
deterministic answer (``openai_answer``). Errors have OpenAI's body, ``{"error": {"message",
"type", "param", "code"}}``; a 429 carries ``Retry-After``.

Control API: ``GET/DELETE /sandbox/openai/requests`` (``?after=<id>``), ``GET /sandbox/openai/stats``
(``in_flight`` among them), ``GET/POST/DELETE /sandbox/openai/faults``, ``POST /sandbox/openai/keys``,
and ``DELETE /sandbox/openai`` to forget everything (keys, records, faults).
"""

from __future__ import annotations

import json
from typing import Any

import gevent
from flask import Blueprint, Response, jsonify, request

from services.sandbox.fault_kinds import FaultRequestError
from services.sandbox.openai_answer import completion, content_text
from services.sandbox.openai_state import InjectedError, OpenAIState, RecordedRequest
from services.sandbox.state import current_sandbox

blueprint = Blueprint("openai", __name__)

MAX_RECORDED_TEXT = 64 * 1024  # a body that is not JSON is kept as text, this much of it
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
TOOL_KEYS = ("tools", "functions", "tool_choice", "function_call", "parallel_tool_calls")
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})


class Refused(Exception):
    """A request OpenAI would refuse: answered with its status and error body."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.error_type, self.code, self.param = status, error_type, code, param


def _openai() -> OpenAIState:
    return current_sandbox().openai


def _bearer() -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, key = header.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else header


def _arrived() -> RecordedRequest:
    raw = request.get_data(cache=True)
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw[:MAX_RECORDED_TEXT].decode(errors="replace")
    return _openai().arrived(request.method, request.path, dict(request.headers), _bearer(), body)


def _error_response(exc: Refused) -> Response:
    response = jsonify({"error": {"message": str(exc), "type": exc.error_type, "param": exc.param, "code": exc.code}})
    response.status_code = exc.status
    return response


def _injected(error: InjectedError) -> Response:
    messages = {
        "rate_limit_exceeded": "Rate limit reached for requests (sandbox). Please try again later.",
        "insufficient_quota": "You exceeded your current quota, please check your plan and billing details.",
        "invalid_api_key": "Incorrect API key provided.",
        "model_not_found": "The model does not exist or you do not have access to it.",
        "server_error": "The server had an error while processing your request. Sorry about that!",
    }
    response = _error_response(Refused(error.http_status, messages.get(error.error, "Injected error (sandbox)."),
                                       error.error_type, error.code))
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def _check_auth(state: OpenAIState) -> None:
    if not state.accepts(_bearer()):
        raise Refused(401, "Incorrect API key provided. You can find your API key in the sandbox's README.",
                      code="invalid_api_key")


def _check_number(body: dict[str, Any], key: str, low: float, high: float, integer: bool = False) -> None:
    value = body.get(key)
    if value is None:
        return
    kind_ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not kind_ok or not low <= value <= high:
        raise Refused(400, f"Invalid value for '{key}': expected a number from {low:g} to {high:g}.", param=key)


def _validate(body: Any) -> dict[str, Any]:
    """The request body if OpenAI would take it (as far as the sandbox serves it), else ``Refused``."""
    if not isinstance(body, dict):
        raise Refused(400, "We could not parse the JSON body of your request.")
    for key in TOOL_KEYS:
        if key in body:
            raise Refused(400, f"The sandbox refuses '{key}': postroom must send the model no tools.", param=key)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Refused(400, "you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Refused(400, "'messages' must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise Refused(400, f"Invalid 'messages[{i}]': a role among {sorted(ROLES)} is required.", param=f"messages[{i}]")
        content = message.get("content")
        if not (isinstance(content, str | list) or (content is None and message["role"] == "assistant")):
            raise Refused(400, f"Invalid 'messages[{i}].content': expected a string or an array.", param=f"messages[{i}].content")
    if body.get("stream"):
        raise Refused(400, "The sandbox does not stream: send 'stream': false.", param="stream")
    if body.get("n", 1) != 1:
        raise Refused(400, "The sandbox answers one choice: 'n' must be 1.", param="n")
    _check_number(body, "temperature", 0, 2)
    _check_number(body, "max_tokens", 1, 128_000, integer=True)
    _check_number(body, "max_completion_tokens", 1, 128_000, integer=True)
    _check_response_format(body)
    return body


def _check_response_format(body: dict[str, Any]) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in RESPONSE_FORMATS:
        raise Refused(400, f"Invalid 'response_format': 'type' must be one of {sorted(RESPONSE_FORMATS)}.",
                      param="response_format")
    said_json = any("json" in content_text(m.get("content")).lower() for m in body["messages"])
    if fmt["type"] == "json_object" and not said_json:  # OpenAI's own rule for JSON mode
        raise Refused(400, "'messages' must contain the word 'json' in some form, to use 'response_format' of type"
                      " 'json_object'.", param="messages")


def _answer(state: OpenAIState, record: RecordedRequest) -> tuple[Response, dict[str, int] | None]:
    gevent.sleep(state.latency_seconds())  # cooperative: other calls proceed meanwhile
    _check_auth(state)
    injected = state.take_error()
    if injected is not None:
        state.count("errors_injected")
        return _injected(injected), None
    body = _validate(record.body)
    state.saw_model(body["model"])
    malformed = state.take_malformed()
    if malformed is not None:
        state.count("malformed_injected")
    if malformed == "bad_body":
        return Response('{"id": "chatcmpl-', status=200, mimetype="application/json"), None
    result = completion(body, malformed=malformed, obey_injection=state.obey_injection(),
                        omit_usage=state.omit_usage())
    return jsonify(result), result.get("usage")


@blueprint.post("/openai/v1/chat/completions")
def chat_completions() -> Response:
    state = _openai()
    record = _arrived()
    response, usage = _error_response(Refused(500, "sandbox failure", "server_error")), None
    try:
        response, usage = _answer(state, record)
    except Refused as exc:
        response = _error_response(exc)
    finally:
        state.answered(record, response.status_code, usage)
    return response


@blueprint.get("/openai/v1/models")
def list_models() -> Response:
    state = _openai()
    record = _arrived()
    try:
        gevent.sleep(state.latency_seconds())
        _check_auth(state)
        response = jsonify({"object": "list", "data": [
            {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "sandbox"} for model in state.models()]})
    except Refused as exc:
        response = _error_response(exc)
    state.answered(record, response.status_code)
    return response


# -- control API ----------------------------------------------------------------------------

@blueprint.get("/sandbox/openai/requests")
def show_requests() -> Response | tuple[Response, int]:
    after = request.args.get("after", "0")
    if not after.isdigit():
        return jsonify({"error": "'after' must be a request id"}), 400
    return jsonify({"requests": _openai().listing(int(after))})


@blueprint.delete("/sandbox/openai/requests")
def clear_requests() -> Response:
    _openai().clear_records()
    return jsonify({"requests": []})


@blueprint.get("/sandbox/openai/stats")
def stats() -> Response:
    return jsonify(_openai().stats())


@blueprint.get("/sandbox/openai/faults")
def show_faults() -> Response:
    return jsonify(_openai().faults_json())


@blueprint.post("/sandbox/openai/faults")
def add_faults() -> Response | tuple[Response, int]:
    state = _openai()
    try:
        state.apply_faults(request.get_json(force=True, silent=True))
    except FaultRequestError as exc:
        return jsonify({"error": str(exc)}), 400
    return jsonify(state.faults_json())


@blueprint.delete("/sandbox/openai/faults")
def reset_faults() -> Response:
    state = _openai()
    state.reset_faults()
    return jsonify(state.faults_json())


@blueprint.post("/sandbox/openai/keys")
def add_key() -> Response | tuple[Response, int]:
    try:
        _openai().add_key(request.get_json(force=True, silent=True))
    except FaultRequestError as exc:
        return jsonify({"error": str(exc)}), 400
    return jsonify({"added": True}), 201


@blueprint.delete("/sandbox/openai")
def reset_all() -> Response:
    """Keys, records, counters and faults back to a fresh provider's."""
    state = _openai()
    state.reset()
    return jsonify({"reset": True, **state.stats()})
