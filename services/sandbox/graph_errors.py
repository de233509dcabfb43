"""The Graph API's error vocabulary as the sandbox speaks it: code → HTTP status, title, envelope.

Every failure is ``{"error": {"message", "type", "code", "error_data": {"messaging_product",
"details"}, "fbtrace_id"}}``; clients key on ``code`` (PROVIDERS.md). Asynchronous failures
(131026 and friends) use the same titles inside a ``failed`` status webhook's ``errors``.
"""

from __future__ import annotations

import json
import uuid

from flask import Response

ERRORS: dict[int, tuple[int, str]] = {
    0: (401, "AuthException"),
    2: (503, "Service temporarily unavailable"),
    4: (429, "Too many calls"),
    100: (400, "Invalid parameter"),
    190: (401, "Invalid OAuth access token - Cannot parse access token"),
    368: (403, "Temporarily blocked for policies violations"),
    80007: (429, "Rate limit issues"),
    130429: (429, "Rate limit hit"),
    131000: (500, "Something went wrong"),
    131026: (400, "Message undeliverable"),
    131047: (400, "Re-engagement message"),
    131048: (400, "Spam rate limit hit"),
    131049: (400, "Meta chose not to deliver."),
    131050: (400, "User has stopped receiving marketing messages"),
    131056: (400, "(Business Account, Consumer Account) pair rate limit hit"),
}
OAUTH_CODES = frozenset({0, 190})


def http_status_for_code(code: int) -> int:
    return ERRORS.get(code, (400, ""))[0]


def error_code_for_http_status(status: int) -> int:
    return {401: 190, 429: 130429, 503: 2}.get(status, 131000 if status >= 500 else 100)


def title(code: int) -> str:
    return ERRORS.get(code, (400, "Unknown error"))[1]


def graph_error(code: int, details: str = "", http_status: int | None = None,
                retry_after: int | None = None) -> Response:
    """A Graph API error response for ``code``."""
    status = http_status or http_status_for_code(code)
    body = {"error": {
        "message": f"(#{code}) {title(code)}",
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details or title(code)},
        "fbtrace_id": uuid.uuid4().hex[:22],
    }}
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    if code in OAUTH_CODES:
        response.headers["WWW-Authenticate"] = 'OAuth "Facebook Platform" "invalid_token"'
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response
