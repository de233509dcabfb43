"""The API's one error shape, ``{"error": {"code", "message", "field"}}``, and the exception that carries it.

Anything below a view (authentication, bounds, validation) raises ``ApiError``; the app turns it
into the JSON body with its status and headers, so every refusal reads the same way.

A blueprint may answer its errors in another shape: the compatibility routes keep the one their
old clients parse. ``STYLES`` maps a blueprint's name to the function that renders its errors;
``error`` looks at ``request.blueprint`` (known once the URL matched), so every refusal of such a
route takes its shape, whoever raised it: the contract, the body limit, idempotency, the
database-outage and the 500 handlers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, has_request_context, jsonify, request


class ApiError(Exception):
    """A refusal the client can act on: status, machine-readable code, sentence, and the field at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


Style = Callable[[int, str, str, str | None, dict[str, str]], tuple[Response, int]]
STYLES: dict[str, Style] = {}  # blueprint name -> how its errors are rendered
# Path prefix -> style, for a request that matched no route (404, 405) under a styled family.
PATH_STYLES: dict[str, Style] = {}


def error(status: int, code: str, message: str, field: str | None = None,
          headers: dict[str, str] | None = None) -> tuple[Response, int]:
    """The JSON error response; ``field`` is left out when no single field is at fault. In the
    shape of the request's blueprint when it has one of its own (``STYLES``)."""
    style = _style() if has_request_context() else None
    if style is not None:
        return style(status, code, message, field, headers or {})
    return standard(status, code, message, field, headers)


def _style() -> Style | None:
    if request.blueprint is not None:
        return STYLES.get(request.blueprint)
    return next((style for prefix, style in PATH_STYLES.items() if request.path.startswith(prefix)), None)


def standard(status: int, code: str, message: str, field: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[Response, int]:
    """The API's own error shape, ``{"error": {"code", "message", "field"?}}``."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    response = jsonify({"error": body})
    response.headers.update(headers or {})
    return response, status


def render(exc: ApiError) -> tuple[Response, int]:
    return error(exc.status, exc.code, exc.message, exc.field, exc.headers)
