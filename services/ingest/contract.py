"""The API contract declared once (invariant 17): each operation is registered with its models,
and ``/openapi.json`` is generated from that registry.

``operation(...)`` adds a Flask route and its entry in the contract together, so an endpoint
cannot exist without being documented. It also does what the declaration promises before the
view runs, in this order: authentication and the scope check for an operation that names a scope,
the API rate limits of its key and workspace (``common.apilimits``), parsing and validating a
JSON request body against the request model, and for every authenticated POST the
``Idempotency-Key`` (``services.ingest.idempotency``: a replay gets the first answer). Every
operation documents the statuses it can answer with; the error statuses that follow from the
declaration (401/403/429 with a scope, 409 and the replay marker for an authenticated POST, 413
for a POST or a body, 400/422 with a JSON model, 404 with a text path parameter, 503 when it reads
the database) are added here, so that the document and the behaviour cannot drift apart. A path
parameter is checked against its documented schema before anything else runs: an integer beyond
a bigint, or a text parameter not of its declared form (``text_params``), names nothing (404).
An operation may also be tagged, take its key from another header besides ``Authorization:
Bearer``, and document another error body (the compatibility routes:
``services.ingest.compat.framework.compat_operation``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from flask import Blueprint, Flask, g
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from common import apilimits
from services.ingest import auth, bounds, idempotency
from services.ingest.errors import ApiError
from services.ingest.models import ErrorResponse
from services.ingest.validation import validate

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
BIGINT = 2**63 - 1
RETRY_AFTER_SECONDS = 1

ERROR_TEXT = {
    400: "The body is not JSON, nests too deep, is not an object, or a header is malformed.",
    401: "No valid API key.",
    403: ("Not allowed: the API key lacks the operation's scope, or a webhook's signature is wrong, or (compatibility "
          "routes) an identity field names a workspace other than the key's (`identity_mismatch`)."),
    404: "No such message (or endpoint, delivery, schedule, contact) in this workspace.",
    409: ("Conflicts with the current state: a message already sending, a disabled endpoint, an address of another "
          "contact, a campaign in a status that does not allow it; or the Idempotency-Key was used for a different request "
          "(`idempotency_conflict`), or the first request with it is still running (`idempotency_in_progress`: retry "
          "after `Retry-After` seconds to get its answer)."),
    413: "The body is larger than this endpoint's limit.",
    415: "The body is not of the media type the operation takes.",
    422: "A field is invalid; `error.field` names it.",
    429: ("Over the API rate limit of this API key or of its workspace (`rate_limited`); retry after `Retry-After` "
          "seconds. `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` describe the limit that refused."),
    500: ("With an Idempotency-Key: the first request with it failed after storing part of its work, or stopped before "
          "answering (`incomplete`); what it stored stands, and the key answers this from now on."),
    502: "The provider's gateway answered with something that is not passed on (not the kind asked for, or from a refused address).",
    503: "The database is unavailable; retry after `Retry-After` seconds.",
}


@dataclass(frozen=True)
class Body:
    """One documented response: its media type, model (None: plain text) and headers."""

    model: type[BaseModel] | None
    description: str
    media_type: str = JSON
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})  # when there is no model


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI form, e.g. /v1/messages/{message_id}
    operation_id: str
    summary: str
    scope: str | None
    request: type[BaseModel] | None
    request_media: str
    responses: dict[int, Body]
    parameters: tuple[dict[str, Any], ...]
    tags: tuple[str, ...] = ()
    key_headers: tuple[str, ...] = ()  # headers besides Authorization: Bearer that carry the API key
    body_optional: bool = False


REGISTRY: dict[tuple[str, str], Operation] = {}
# The document's top-level tags: name -> description. An operation's tags must be listed here.
TAGS: dict[str, str] = {
    "compat": ("Compatibility routes for the queue services postroom replaces (S0 broadcast queue, S1 WhatsApp campaign "
               "queue, S2 Trigger.dev SMS scheduler, S3 BullMQ event messages; README section Compatibility). Thin "
               "adapters over /v1: the API key goes in `Authorization: Bearer` or `x-api-key`; errors are "
               "`{\"success\": false, \"error\", \"code\", \"field\"?}`."),
}
_SECONDS = {"type": "integer", "minimum": 0}
ERROR_HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    503: {"Retry-After": {"description": "Seconds to wait before retrying.", "required": True, "schema": _SECONDS}},
    429: {"Retry-After": {"description": "Seconds until the limit lets a request through.", "required": True, "schema": _SECONDS},
          "RateLimit-Limit": {"description": "Requests the refusing limit lets through at once (its burst).", "schema": _SECONDS},
          "RateLimit-Remaining": {"description": "Requests left now under that limit.", "schema": _SECONDS},
          "RateLimit-Reset": {"description": "Seconds until that limit is whole again.", "schema": _SECONDS}},
    409: {"Retry-After": {"description": "With `idempotency_in_progress`: seconds to wait before asking again.", "schema": _SECONDS}},
}
REPLAYED = {idempotency.REPLAYED_HEADER: {
    "description": "`true`: this is the stored answer to an earlier request with the same Idempotency-Key.",
    "schema": {"type": "string", "enum": ["true"]}}}
_PATH_PARAM = re.compile(r"\{(\w+)\}")
# The JSON Schema keywords a text path parameter may declare: those checked (``_shape``), and notes.
_CHECKED = frozenset({"enum", "minLength", "maxLength", "pattern"})
_NOTES = frozenset({"description", "examples", "title"})
_PATTERN_END = re.compile(r"(?<!\\)\$")  # an unescaped `$`


def header(name: str, description: str, **schema: Any) -> dict[str, Any]:
    """A request header parameter, as it appears in the document."""
    return {"name": name, "in": "header", "required": False, "description": description, "schema": {"type": "string", **schema}}


def query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    """An optional query parameter, as it appears in the document (the view checks it)."""
    return {"name": name, "in": "query", "required": False, "description": description, "schema": {"type": "string", **schema}}


def idempotency_key() -> dict[str, Any]:
    """The ``Idempotency-Key`` request header every authenticated POST takes."""
    return header(idempotency.HEADER, (
        "Repeat a request safely: the same key with the same body answers what the first request answered (marked "
        "`Idempotent-Replayed: true`), for POSTROOM_IDEMPOTENCY_TTL_SECONDS (default 24 h); with another body, or while "
        "the first still runs, 409."), minLength=1, maxLength=idempotency.MAX_KEY)


def operation(bp: Blueprint | Flask, method: str, path: str, *, summary: str, ok: dict[int, Body],
              errors: Iterable[int] = (), scope: str | None = None, request: type[BaseModel] | None = None,
              request_media: str = JSON, headers: Iterable[dict[str, Any]] = (),
              uses_database: bool = True, text_params: dict[str, dict[str, Any]] | None = None,
              rerun_safe: bool = False, tags: Iterable[str] = (), key_headers: Iterable[str] = (),
              error_model: type[BaseModel] = ErrorResponse,
              body_optional: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an operation and route it.

    Parameters:
      bp: where the route lives; its ``url_prefix`` is part of the documented path.
      path: relative to ``bp``, with ``{name}`` path parameters: positive integers, except those
        named in ``text_params`` (name -> JSON schema of the string: ``enum``, ``minLength``,
        ``maxLength``, ``pattern``; checked before the view runs, 404 when it does not fit).
      ok: the success statuses and their bodies.
      errors: the error statuses the view itself answers with (others follow from the declaration).
      scope: the API key scope required; None for an unauthenticated endpoint.
      request: the body model; a JSON one is validated and passed to the view as ``body``.
      rerun_safe: an authenticated POST whose view may run again for an Idempotency-Key whose
        first request died mid-way: what it stores carries the key and is found again (messages).
        Any other such view is not run again; the key answers 500 ``incomplete``.
      tags: the document's tags of the operation (each one in ``TAGS``).
      key_headers: headers that may carry the API key when there is no ``Authorization: Bearer``
        (the compatibility routes' ``x-api-key``).
      error_model: the body documented for the error statuses: the blueprint's error style
        (``errors.STYLES``) must answer in it.
      body_optional: an empty body is accepted and validated as ``{}``.
    """
    tags, key_headers = tuple(tags), tuple(key_headers)
    unknown = set(tags) - set(TAGS)
    if unknown:
        raise ValueError(f"undeclared tags {sorted(unknown)}: add them to contract.TAGS")
    full_path = (getattr(bp, "url_prefix", None) or "") + path
    idempotent = method == "POST" and scope is not None  # a workspace to keep the key in
    statuses = set(errors)
    if scope:
        statuses |= {401, 403, 429}
    if idempotent:
        statuses |= {400, 409, 500}  # 400: a malformed Idempotency-Key; 500: incomplete
    if method == "POST" or request is not None:  # bounds.limit_body refuses any method's oversized body
        statuses.add(413)
    if request is not None and request_media == JSON:
        statuses |= {400, 422}
    if uses_database:
        statuses.add(503)
    text_params = text_params or {}
    shapes = {name: _shape(name, schema) for name, schema in text_params.items()}
    if shapes:
        statuses.add(404)  # a text path parameter not of its documented form names nothing
    responses = dict(ok) | {s: Body(error_model, ERROR_TEXT[s], headers=ERROR_HEADERS.get(s, {})) for s in sorted(statuses)}
    if idempotent:  # what the view answered may come back as a replay
        replayable = set(ok) | set(errors) | {409, 422, 500}
        responses = {s: replace(b, headers={**b.headers, **REPLAYED}) if s in replayable else b for s, b in responses.items()}
        headers = (*headers, idempotency_key())
    path_params = tuple(
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "string", **text_params[name]} if name in text_params
         else {"type": "integer", "minimum": 1, "maximum": BIGINT}}
        for name in _PATH_PARAM.findall(path)
    )

    def register(view: Callable[..., Any]) -> Callable[..., Any]:
        op = Operation(method, full_path, view.__name__, summary, scope, request, request_media, responses,
                       path_params + tuple(headers), tags, key_headers, body_optional)
        REGISTRY[(method, full_path)] = op

        @functools.wraps(view)
        def run(**kwargs: Any) -> Any:
            if any(isinstance(v, int) and v > BIGINT for v in kwargs.values()):
                raise ApiError(404, "not_found", "no such id in this workspace")  # beyond any bigint id
            for name, fits in shapes.items():
                if not fits(kwargs[name]):
                    raise ApiError(404, "not_found", f"no such {name} {kwargs[name][:100]!r}: not of the form the API "
                                   "documents for it")
            if scope:
                auth.require(scope, key_headers)
                within_limits()
            if request is not None and request_media == JSON:
                raw = bounds.read_json()
                kwargs["body"] = validate(request, {} if raw is None and body_optional else raw)
            if idempotent:
                return idempotency.run_once(lambda: view(**kwargs), rerun_safe)
            return view(**kwargs)

        rule = _PATH_PARAM.sub(lambda m: f"<{m.group(1)}>" if m.group(1) in text_params else f"<int:{m.group(1)}>", path)
        bp.add_url_rule(rule, endpoint=view.__name__, view_func=run, methods=[method])
        return run

    return register


def _shape(name: str, schema: dict[str, Any]) -> Callable[[str], bool]:
    """The check that a text path parameter is of the form its schema documents (``enum``,
    ``minLength``, ``maxLength``, ``pattern``), so that a view never sees one the document rules out.

    A JSON Schema ``pattern`` is a search whose ``$`` is the end of the text; Python's ``$`` also
    matches before a final newline, so it is checked as ``\\Z``.

    Raises:
      ValueError: at declaration, for a keyword that would be documented but not checked.
    """
    unchecked = set(schema) - _CHECKED - _NOTES
    if unchecked:
        raise ValueError(f"path parameter {name}: keywords {sorted(unchecked)} are not checked; use {sorted(_CHECKED)}")
    enum = schema.get("enum")
    shortest, longest = schema.get("minLength", 0), schema.get("maxLength")
    pattern = re.compile(_PATTERN_END.sub(r"\\Z", schema["pattern"])) if "pattern" in schema else None

    def fits(value: str) -> bool:
        return ((enum is None or value in enum) and shortest <= len(value) and (longest is None or len(value) <= longest)
                and (pattern is None or pattern.search(value) is not None))

    return fits


def within_limits() -> None:
    """The caller's key and workspace are within their API rate limits (one Redis round trip).

    Raises:
      ApiError: 429 ``rate_limited`` with Retry-After and the RateLimit-* headers.
    """
    verdict = apilimits.check(g.api_key_id, g.workspace_id)
    if not verdict.allowed:
        who = "workspace" if verdict.scope == "workspace" else "API key"
        raise ApiError(429, "rate_limited", f"too many requests for this {who}; retry after "
                       f"{verdict.headers()['Retry-After']} s", "Authorization", headers=verdict.headers())


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every declared operation, schemas generated by pydantic."""
    inputs = {op.request for op in REGISTRY.values() if op.request is not None}
    outputs = {b.model for op in REGISTRY.values() for b in op.responses.values() if b.model is not None}
    pairs = [(m, "validation") for m in sorted(inputs, key=lambda m: m.__name__)]
    pairs += [(m, "serialization") for m in sorted(outputs, key=lambda m: m.__name__)]
    refs, defs = models_json_schema(pairs, ref_template="#/components/schemas/{model}")  # type: ignore[arg-type]
    paths: dict[str, dict[str, Any]] = {}
    used_tags = {tag for op in REGISTRY.values() for tag in op.tags}
    for op in sorted(REGISTRY.values(), key=lambda o: (o.path, o.method)):
        entry: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "responses": {str(status): _response(body, refs) for status, body in sorted(op.responses.items())},
        }
        if op.parameters:
            entry["parameters"] = list(op.parameters)
        if op.tags:
            entry["tags"] = list(op.tags)
        if op.scope:
            entry["security"] = [{"apiKey": []}] + ([{"apiKeyHeader": []}] if op.key_headers else [])
            entry["description"] = f"Requires an API key with the scope `{op.scope}` (or `admin`)." + "".join(
                f" The key may also be sent as `{name}: <key>`." for name in op.key_headers)
        if op.request is not None:
            entry["requestBody"] = {"required": not op.body_optional,
                                    "content": {op.request_media: {"schema": refs[(op.request, "validation")]}}}
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "postroom ingest API", "version": "1",
                 "description": "Send, read and cancel messages; webhook endpoints; provider webhooks; health and metrics."},
        "tags": [{"name": name, "description": TAGS[name]} for name in sorted(used_tags)],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer pr_...`"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key",
                                 "description": "The same API key in `x-api-key: pr_...`; compatibility routes only."},
            },
        },
    }


def _response(body: Body, refs: dict[Any, Any]) -> dict[str, Any]:
    schema = refs[(body.model, "serialization")] if body.model is not None else body.schema
    out: dict[str, Any] = {"description": body.description, "content": {body.media_type: {"schema": schema}}}
    if body.headers:
        out["headers"] = body.headers
    return out
