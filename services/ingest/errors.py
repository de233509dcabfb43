"""The API's one error shape, ``{"error": {"code", "message", "field"}}``, and the exception that carries it.

Anything below a view (authentication, bounds, validation) raises ``ApiError``; the app turns it
into the JSON body with its status and headers, so every refusal reads the same way.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify


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


def error(status: int, code: str, message: str, field: str | None = None,
          headers: dict[str, str] | None = None) -> tuple[Response, int]:
    """The JSON error response; ``field`` is left out when no single field is at fault."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    response = jsonify({"error": body})
    response.headers.update(headers or {})
    return response, status


def render(exc: ApiError) -> tuple[Response, int]:
    return error(exc.status, exc.code, exc.message, exc.field, exc.headers)
