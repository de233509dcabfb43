"""The API's request and response bodies as pydantic models: what is validated and what is documented.

These are the one statement of the contract (invariant 17): requests are validated by them,
responses follow them, and ``/openapi.json`` is generated from them. Text fields refuse NUL,
other control characters and lone surrogates; only a message body may hold newlines and tabs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

E164 = r"^\+[1-9]\d{6,14}$"
CHANNELS = ("sms",)
PLANNED_CHANNELS = ("email", "whatsapp", "whatsapp_qr")
LANES = ("urgent", "bulk")
MAX_SMS_BODY = 1600
MAX_TAGS = 20
MAX_TAG = 100

# C0 controls, DEL, C1 controls, and lone surrogates (JSON "\ud800" decodes to one, and
# PostgreSQL cannot store it). A body may keep \t \n \r; a single-line field keeps none.
_SINGLE_LINE_REFUSED = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_MULTI_LINE_REFUSED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _refuse(pattern: re.Pattern[str], allowed: str) -> AfterValidator:
    def check(value: str) -> str:
        found = pattern.search(value)
        if found:
            raise PydanticCustomError(
                "control_character",
                "contains the character {char} at position {position}; {allowed}",
                {"char": f"U+{ord(found.group()):04X}", "position": found.start(), "allowed": allowed},
            )
        return value

    return AfterValidator(check)


SingleLine = _refuse(_SINGLE_LINE_REFUSED, "control characters are not allowed here")
MultiLine = _refuse(_MULTI_LINE_REFUSED, "of the control characters only newline, carriage return and tab are allowed")

PhoneNumber = Annotated[str, Field(pattern=E164, examples=["+15005550006"]), SingleLine]
Tag = Annotated[str, Field(min_length=1, max_length=MAX_TAG), SingleLine]


class NewMessage(BaseModel):
    """``POST /v1/messages``: one outgoing message."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, frozen=True)

    channel: Literal["sms"] = Field(description="The channel to send through.")
    to: PhoneNumber = Field(description="Recipient, E.164.")
    body: Annotated[str, Field(min_length=1, max_length=MAX_SMS_BODY, pattern=r"\S"), MultiLine] = Field(
        description=f"The text; at most {MAX_SMS_BODY} characters, not only whitespace.")
    from_: PhoneNumber | None = Field(None, alias="from", description=(
        "Sender identity; must be the workspace's own (its SMS channel configuration, or the "
        "deployment's default number). Left out: that identity is used."))
    priority: Literal["urgent", "bulk"] = Field("urgent", description="The lane: urgent (codes, alerts) or bulk (campaigns).")
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS)] = Field(
        default_factory=list, description="Labels for bulk look-up and cancel.")


class MessageAccepted(BaseModel):
    """The 202 answer to a new message: stored, and handed on to processing."""

    id: int
    status: Literal["accepted"]
    channel: str
    to: str
    priority: str
    created_at: str | None


class MessageEvent(BaseModel):
    status: str
    at: str | None
    detail: dict[str, Any] | None


class MessageView(BaseModel):
    """A message as the API shows it; ``events`` is its history, oldest first."""

    model_config = ConfigDict(populate_by_name=True)

    id: int
    channel: str
    direction: str
    to: str
    from_: str | None = Field(alias="from")
    body: str
    status: str
    priority: str
    tags: list[str]
    attempts: int
    provider: str | None
    provider_message_id: str | None
    segments: int | None
    last_error: str | None
    error_code: str | None
    created_at: str | None
    updated_at: str | None
    sent_at: str | None
    delivered_at: str | None
    next_attempt_at: str | None
    events: list[MessageEvent] | None = Field(None, description="Left out of an idempotent replay.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable, e.g. unauthorized, forbidden, invalid_request, unavailable.")
    message: str = Field(description="What is wrong and what to do about it.")
    field: str | None = Field(None, description="The field or header at fault, when there is one.")


class ErrorResponse(BaseModel):
    """Every refusal and failure has this body."""

    error: ErrorDetail


class Health(BaseModel):
    ok: bool


class Readiness(BaseModel):
    """Ready means "can accept": PostgreSQL answers. The broker is reported, not required."""

    ready: bool
    checks: dict[str, str]


class TwilioStatusCallback(BaseModel):
    """A Twilio status callback (form-encoded); only a correctly signed one has any effect."""

    # Twilio adds fields over time: any other form field is a string too.
    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": {"type": "string"}})

    AccountSid: str = ""
    MessageSid: str = ""
    SmsSid: str = ""
    MessageStatus: str = ""
    SmsStatus: str = ""
    ErrorCode: str = ""
    ErrorMessage: str = ""
