"""Validation of API request bodies: each failure names the field and says what is wrong."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
CHANNELS = ("sms",)
PLANNED_CHANNELS = ("email", "whatsapp", "whatsapp_qr")
LANES = ("urgent", "bulk")
MAX_SMS_BODY = 1600
MAX_TAGS = 20


class ValidationError(Exception):
    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True)
class NewMessage:
    channel: str
    to: str
    body: str
    from_: str | None
    priority: str
    tags: tuple[str, ...]


FIELDS = {"channel", "to", "body", "from", "priority", "tags"}


def parse_new_message(payload: Any) -> NewMessage:
    """Check a ``POST /v1/messages`` body.

    Raises:
      ValidationError: naming the first field that is wrong.
    """
    if not isinstance(payload, dict):
        raise ValidationError("body", "the request body must be a JSON object", status=400)
    unknown = sorted(set(payload) - FIELDS)
    if unknown:
        raise ValidationError(unknown[0], f"unknown field {unknown[0]!r}; accepted fields: {', '.join(sorted(FIELDS))}")
    channel = payload.get("channel")
    if channel is None:
        raise ValidationError("channel", "channel is required")
    if channel not in CHANNELS:
        planned = " (not available yet)" if channel in PLANNED_CHANNELS else ""
        raise ValidationError("channel", f"unknown channel {channel!r}{planned}; supported: {', '.join(CHANNELS)}")
    to = payload.get("to")
    if not isinstance(to, str) or not E164.match(to):
        raise ValidationError("to", "to must be a phone number in E.164 form, such as +15005550006")
    body = payload.get("body")
    if not isinstance(body, str) or not body.strip():
        raise ValidationError("body", "body must be a non-empty string")
    if len(body) > MAX_SMS_BODY:
        raise ValidationError("body", f"body is {len(body)} characters; an SMS body holds at most {MAX_SMS_BODY}")
    from_ = payload.get("from")
    if from_ is not None and (not isinstance(from_, str) or not E164.match(from_)):
        raise ValidationError("from", "from must be a phone number in E.164 form")
    priority = payload.get("priority", "urgent")
    if priority not in LANES:
        raise ValidationError("priority", f"priority must be one of: {', '.join(LANES)}")
    tags = payload.get("tags", [])
    if not isinstance(tags, list) or len(tags) > MAX_TAGS or not all(isinstance(t, str) and 0 < len(t) <= 100 for t in tags):
        raise ValidationError("tags", f"tags must be a list of at most {MAX_TAGS} non-empty strings of up to 100 characters")
    return NewMessage(channel, to, body, from_, priority, tuple(tags))
