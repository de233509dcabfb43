"""Bounded input (invariant 16): body size limits and a JSON nesting limit, checked before parsing.

A body larger than its limit gets 413 without being read (or as soon as the stream passes the
limit, for a body sent without Content-Length). JSON nested deeper than POSTROOM_MAX_JSON_DEPTH
gets 400 from a linear scan that never recurses, so a 100,000-deep body costs milliseconds and
not a RecursionError.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import request

from common.config import settings
from services.ingest.errors import ApiError

# Strings (so that brackets inside them do not count) and the brackets that open or close a level.
# Possessive, and an unterminated string runs to the end: every byte is looked at once, whatever
# the input (a plain `"(...)*"` rescans the rest of the body from every quote of `"\"\"\"...`).
_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]', re.DOTALL)


def body_limit(path: str) -> int:
    """The largest body accepted on ``path``: providers' webhooks have their own, smaller limit."""
    if path.startswith("/webhooks/") or path == "/api/webhooks/whatsapp/status":  # the latter: WhatsApp's, on S1's old path
        return settings.postroom_max_webhook_bytes
    if path in ("/api/campaigns/send", "/api/event-messages/bulk"):  # S1's recipients, S3's up to 1,000 messages
        return settings.postroom_max_campaign_bytes
    if path == "/v1/campaigns" or (path.startswith("/v1/campaigns/") and "/recipients" in path):
        return settings.postroom_max_campaign_bytes
    if path in ("/v1/contacts/import", "/v1/contacts/import/csv"):  # up to 100,000 contacts, as a campaign's recipients
        return settings.postroom_max_campaign_bytes
    if path == "/v1/messages/batch":  # up to 1,000 messages, each as large as POST /v1/messages takes
        return settings.postroom_max_campaign_bytes
    return settings.postroom_max_request_bytes


def limit_body() -> None:
    """Refuse a declared-too-large body up front; cap the stream for one sent without a length."""
    limit = body_limit(request.path)
    request.max_content_length = limit  # werkzeug raises RequestEntityTooLarge past it
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    if request.content_length is None and request.environ.get("wsgi.input_terminated"):
        # A chunked body: the capped stream stops quietly at the limit, so a body that reaches
        # it would be read cut short. Read it now (at most ``limit`` bytes, kept for the view).
        if len(request.get_data(cache=True)) >= limit:
            raise too_large(limit)


def too_large(limit: int | None = None) -> ApiError:
    limit = limit if limit is not None else body_limit(request.path)
    return ApiError(413, "payload_too_large", f"the request body is larger than this endpoint's limit of {limit} bytes", "body")


def nesting_depth(raw: bytes, limit: int) -> int:
    """How deep ``raw`` nests, counting up to just past ``limit`` (then it stops looking)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return 0  # cannot be deeper than the number of brackets: skip the scan
    depth = deepest = 0
    for token in _TOKENS.finditer(raw):
        char = token.group()
        if char in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif char in (b"]", b"}"):
            depth -= 1
    return deepest


def read_json() -> Any:
    """The request body as JSON, within the depth limit.

    Raises:
      ApiError: 400 ``invalid_json`` when it is not JSON or nests deeper than allowed.
    """
    raw = request.get_data(cache=True)
    limit = settings.postroom_max_json_depth
    if nesting_depth(raw, limit) > limit:
        raise ApiError(400, "invalid_json", f"the request body nests deeper than {limit} levels", "body")
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {str(exc)[:200]}", "body") from None
