"""The API's request and response bodies as pydantic models: what is validated and what is documented.

These are the one statement of the contract (invariant 17): requests are validated by them,
responses follow them, and ``/openapi.json`` is generated from them. Text fields refuse NUL,
other control characters and lone surrogates; only a message body may hold newlines and tabs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from pydantic_core import PydanticCustomError

from common import limits

E164 = r"^\+[1-9]\d{6,14}$"
CHANNELS = ("sms", "http", "email", "whatsapp_cloud", "whatsapp_qr")
PLANNED_CHANNELS = ("whatsapp",)
ChannelName = Literal["sms", "http", "email", "whatsapp_cloud", "whatsapp_qr"]
# Longest text per channel (common.limits: the bot's replies are cut to the same): Twilio's 1,600
# characters, WhatsApp's 4,096, an email body's 100,000.
MAX_BODY = limits.MAX_BODY
LANES = ("urgent", "normal", "bulk")


def _lane(priority: str | int) -> str:
    """A numeric priority as its lane: 1–2 urgent, 3–7 normal, 8–10 bulk (DESIGN.md invariant 6)."""
    if isinstance(priority, int):
        return "urgent" if priority <= 2 else "normal" if priority <= 7 else "bulk"
    return priority


# A lane by name, or a number 1–10 stored as its lane; answers always name the lane.
Priority = Annotated[Literal["urgent", "normal", "bulk"] | Annotated[StrictInt, Field(ge=1, le=10)], AfterValidator(_lane)]
PRIORITY_DOC = ("The lane: `urgent` (codes, alerts), `normal` (single sends, the default) or `bulk` (campaigns); "
                "or a number 1–10 (1–2 urgent, 3–7 normal, 8–10 bulk).")
MAX_SMS_BODY = 1600
MAX_RECIPIENT = 320
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


SendAt = Annotated[str, Field(min_length=10, max_length=40, examples=["2026-12-01T09:00:00-05:00"]), SingleLine]
TimeZone = Annotated[str, Field(min_length=1, max_length=64, examples=["America/New_York"]), SingleLine]
DelaySeconds = Annotated[int, Field(ge=0, le=10 * 366 * 86400)]


TagName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
TagValue = Annotated[str, Field(max_length=MAX_TAG), SingleLine]
TagMap = Annotated[dict[TagName, TagValue], Field(max_length=MAX_TAGS)]
Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS)] | TagMap


Url = Annotated[str, Field(min_length=8, max_length=2048, pattern=r"^https?://\S+$", examples=["https://example.com/a.png"]),
                SingleLine]
ShortText = Annotated[str, Field(min_length=1, max_length=1024), SingleLine]
Recipient = Annotated[str, Field(min_length=1, max_length=MAX_RECIPIENT, examples=["+15005550006"]), SingleLine]


# A message's template variables: names to strings or numbers, bounded.
MAX_VARIABLES = 100
VariableName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
VariableValue = (Annotated[StrictStr, Field(max_length=1000), MultiLine] | Annotated[StrictInt, Field(ge=-(2**53), le=2**53)]
                 | Annotated[StrictFloat, Field(allow_inf_nan=False)])
Variables = Annotated[dict[VariableName, VariableValue], Field(max_length=MAX_VARIABLES)]


class Media(BaseModel):
    """A file sent by link: an MMS picture, a WhatsApp image, document, audio or video."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    url: Url
    type: Literal["image", "document", "audio", "video"] = Field("image", description="WhatsApp's media kind.")
    filename: Annotated[str, Field(min_length=1, max_length=240), SingleLine] | None = Field(
        None, description="The name a document is shown with.")
    caption: Annotated[str, Field(min_length=1, max_length=1024), MultiLine] | None = None


class Attachment(BaseModel):
    """An email attachment, fetched from ``url`` when the message is sent."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    url: Url
    filename: Annotated[str, Field(min_length=1, max_length=240), SingleLine] | None = None


class Template(BaseModel):
    """An approved WhatsApp template: its name, language and parameters."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[a-z0-9_]+$")] = Field(examples=["order_update"])
    language: Annotated[str, Field(min_length=2, max_length=16, pattern=r"^[A-Za-z]{2,3}(_[A-Za-z0-9]{2,8})?$")] = Field(
        "en_US", examples=["en_US"])
    body_parameters: Annotated[list[Annotated[str, Field(max_length=1024), MultiLine]], Field(max_length=64)] = Field(
        default_factory=list, description="Values of the body's {{1}}, {{2}}, ... in order.")
    header_parameters: Annotated[list[ShortText], Field(max_length=8)] = Field(
        default_factory=list, description="Values of a text header's parameters.")
    header_media: Media | None = Field(None, description="A media header: an image, document or video by link.")


class NewMessage(BaseModel):
    """``POST /v1/messages``: one outgoing message."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, frozen=True)

    channel: ChannelName | None = Field(None, description=(
        "The channel to send through: `sms`, `email`, `whatsapp_cloud` (the Graph API), `whatsapp_qr` (a WAHA "
        "session), or `http` (a signed POST to the workspace's own URL). Give `channel` or `channels`."))
    channels: Annotated[list[ChannelName], Field(min_length=1, max_length=4)] | None = Field(None, description=(
        "A fallback route: the channels to try in order (`[\"whatsapp_cloud\", \"sms\"]`). When the recipient is "
        "not reachable on one (not on WhatsApp, outside the 24-hour window without a template, not a mobile "
        "number) the message moves on to the next."))
    to: Recipient | Annotated[dict[ChannelName, Recipient], Field(min_length=1, max_length=5)] | None = Field(None, description=(
        "Recipient: E.164 for `sms` and WhatsApp, an email address for `email`; for `http`, whatever the receiving "
        "system identifies a recipient by. With `channels`, one address for all or an object of channel to address. "
        "Give `to` or `contact_id`."))
    contact_id: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = Field(None, description=(
        "Send to this contact, at its address for each channel."))
    body: Annotated[str, Field(min_length=1, max_length=MAX_BODY["email"], pattern=r"\S"), MultiLine] | None = Field(None, description=(
        "The text; not only whitespace. At most 1,600 characters for `sms` and `http`, 4,096 for WhatsApp and "
        "100,000 for `email`. It may be left out of a message with `media`, `template` or `html`."))
    from_: Recipient | None = Field(None, alias="from", description=(
        "Sender identity; must be the workspace's own (its channel configuration, or the deployment's default). "
        "Left out: that identity is used."))
    subject: Annotated[str, Field(min_length=1, max_length=998), SingleLine] | None = Field(None, description="`email`: the subject.")
    html: Annotated[str, Field(min_length=1, max_length=500_000), MultiLine] | None = Field(None, description=(
        "`email`: an HTML part, sent with the text as multipart/alternative."))
    reply_to: Recipient | None = Field(None, description="`email`: the Reply-To address.")
    attachments: Annotated[list[Attachment], Field(max_length=10)] | None = Field(None, description="`email`: files by URL.")
    media: Annotated[list[Media], Field(min_length=1, max_length=10)] | None = Field(None, description=(
        "`sms`: up to 10 pictures (MMS); WhatsApp: one image, document, audio or video by link."))
    template: Template | None = Field(None, description="`whatsapp_cloud`: send this approved template.")
    fallback_template: Template | None = Field(None, description=(
        "`whatsapp_cloud`: the template to send instead when the recipient's 24-hour window is closed."))
    context_message_id: Annotated[str, Field(min_length=1, max_length=256), SingleLine] | None = Field(None, description=(
        "WhatsApp: the provider id of the message this one replies to."))
    messaging_service_sid: Annotated[str, Field(pattern=r"^MG[0-9a-f]{32}$")] | None = Field(None, description=(
        "`sms`: send through this Twilio Messaging Service instead of a `from` number."))
    template_id: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = Field(None, description=(
        "Send the workspace's template with this id (`POST /v1/templates`), rendered with `variables`; "
        "then leave out body, subject, html and template."))
    variables: Variables | None = Field(None, description=(
        f"With `template_id`: the template's variables, names to strings (up to 1,000 characters) or numbers; "
        f"at most {MAX_VARIABLES}. Every variable the template uses must be given."))
    priority: Priority = Field("normal", description=PRIORITY_DOC)
    tags: Tags = Field(default_factory=list, description=(
        "Names and values for look-up, cancel and reschedule by tag "
        '(`{"event_id": "41", "message_type": "speaker_alert"}`); a list of labels is accepted too.'))
    quiet_hours: Annotated[str, Field(max_length=11, examples=["21:00-08:00", "off"]), SingleLine] | None = Field(None, description=(
        "This message's quiet hours in the recipient's time zone (`21:00-08:00`), or `off`; left out: the workspace's. "
        "Inside them the message waits until they end."))
    track_clicks: bool = Field(True, description=(
        "Rewrite the body's http(s) links (and the links of an email's HTML anchors) to short links "
        "(`/r/{code}`) that record clicks and redirect; `false` sends the links as written. Default on."))
    unique_tags: Annotated[list[TagName], Field(min_length=1, max_length=MAX_TAGS)] | None = Field(None, description=(
        "This message's own unique tag names, instead of the workspace's: while a message whose `tags` have the same "
        "values for these names is pending, another is a duplicate (see `on_conflict`). Every name must be in `tags`."))
    on_conflict: Literal["error", "return"] = Field("error", description=(
        "When the workspace declares unique tags (or the message gives `unique_tags`) and a pending message already "
        "has these values: `error` answers 409, `return` answers 200 with that message."))
    send_at: SendAt | None = Field(None, description=(
        "Send at this time: RFC 3339 with an offset (`2026-12-01T09:00:00-05:00`), or a local time without one "
        "(`2026-12-01T09:00:00`) together with `timezone`. A time in the past sends now."))
    timezone: TimeZone | None = Field(None, description="IANA time zone of a local `send_at`, e.g. America/New_York.")
    delay_seconds: DelaySeconds | None = Field(None, description="Send this many seconds from now (instead of `send_at`).")


class MessageAccepted(BaseModel):
    """The 202 answer to a new message: stored, and handed on to processing (or scheduled)."""

    id: int
    status: Literal["accepted", "scheduled"]
    channel: str
    to: str
    priority: str
    created_at: str | None
    send_at: str | None = Field(None, description="When it is due (UTC), for a scheduled message.")
    note: str | None = Field(None, description="Said when a requested time was already past: the message is sent now.")
    segments: int | None = Field(None, description="`sms`: how many segments the body is sent as (each is billed).")
    encoding: Literal["GSM-7", "UCS-2"] | None = Field(None, description=(
        "`sms`: GSM-7, or UCS-2 when one character is outside GSM-7 (an emoji): 70 characters per segment instead of 160."))
    channels: list[str] | None = Field(None, description="The fallback route, in order.")


class Reschedule(BaseModel):
    """``POST /v1/messages/{id}/reschedule``: a new time, as for a new message."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    send_at: SendAt | None = None
    timezone: TimeZone | None = None
    delay_seconds: DelaySeconds | None = None


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
    tags: list[str] | dict[str, str]
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
    clicked_at: str | None = Field(None, description="When a tracked link of the message was first clicked.")
    content: dict[str, Any] = Field(default_factory=dict, description=(
        "What the channel carries beyond the text: subject, html, media, template, ...; for an inbound message the "
        "sender's name, profile and media."))
    encoding: str | None = Field(None, description="`sms`: GSM-7 or UCS-2.")
    conversation_id: int | None = Field(None, description="The conversation of an inbound message.")
    channels: list[str] | None = Field(None, description="The fallback route's channels, in order (null: `channel` only).")
    route: list[dict[str, str]] | None = Field(None, description="The fallback route: each channel with its address.")
    route_step: int = Field(0, description="Which entry of `route` the message is on (0 first); each move is in `events`.")
    next_attempt_at: str | None
    send_at: str | None = Field(None, description="When a scheduled message is due.")
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


# --- Webhook endpoints -------------------------------------------------------------------------

MAX_URL = 2048
MAX_ENDPOINT_HEADERS = 20
HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"
EventType = Literal[
    "*", "message.accepted", "message.scheduled", "message.sent", "message.delivered", "message.read", "message.failed",
    "message.undelivered", "message.cancelled", "message.suppressed", "message.received",
    "message.clicked", "campaign.completed", "conversation.bot", "conversation.open", "conversation.resolved",
    "webhook_endpoint.disabled",
]
# Headers a delivery sets itself, or that would break the request: not settable per endpoint.
RESERVED_HEADERS = ("host", "content-length", "content-type", "transfer-encoding", "connection", "user-agent")
RESERVED_HEADER_PREFIXES = ("webhook-", "x-webhook-")


def _no_reserved(headers: dict[str, str]) -> dict[str, str]:
    for name in headers:
        low = name.lower()
        if low in RESERVED_HEADERS or low.startswith(RESERVED_HEADER_PREFIXES):
            raise PydanticCustomError("reserved_header", "the header {name} is set by postroom itself", {"name": name})
    return headers

EndpointUrl = Annotated[str, Field(min_length=8, max_length=MAX_URL, pattern=r"^https?://\S+$",
                                   examples=["https://hooks.example.com/postroom"]), SingleLine]
HeaderValue = Annotated[str, Field(max_length=1000), SingleLine]
EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=len(EventType.__args__))]  # type: ignore[attr-defined]
Description = Annotated[str, Field(max_length=500), SingleLine]
RatePerSecond = Annotated[float, Field(ge=0, le=10000)]
CustomHeaders = Annotated[dict[Annotated[str, Field(pattern=HEADER_NAME)], HeaderValue], Field(max_length=MAX_ENDPOINT_HEADERS),
                          AfterValidator(_no_reserved)]


class NewWebhookEndpoint(BaseModel):
    """``POST /v1/webhook-endpoints``: where to send which events."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    url: EndpointUrl = Field(description="http(s) URL; it must resolve to public addresses only (checked now and at every delivery).")
    event_types: EventTypes = Field(description="The event types wanted, or `*` for every one.")
    description: Description = ""
    headers: CustomHeaders = Field(default_factory=dict, description="Extra headers sent with every delivery (not the signing headers).")
    rate_limit_per_second: RatePerSecond = Field(0.0, description="Most deliveries per second to this endpoint; 0: no limit.")
    enabled: bool = True


class WebhookEndpointChange(BaseModel):
    """``PATCH /v1/webhook-endpoints/{id}``: the fields to change. Enabling clears the failure record."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    url: EndpointUrl | None = None
    event_types: EventTypes | None = None
    description: Description | None = None
    headers: CustomHeaders | None = None
    rate_limit_per_second: RatePerSecond | None = None
    enabled: bool | None = None


class WebhookEndpointView(BaseModel):
    id: int
    url: str
    description: str
    event_types: list[str]
    headers: dict[str, str]
    rate_limit_per_second: float
    enabled: bool
    disabled_reason: str | None
    failing_since: str | None
    paused_until: str | None
    created_at: str | None
    updated_at: str | None
    secret: str | None = Field(None, description="The signing secret (`whsec_...`): shown only when created or rotated.")


class WebhookEndpointList(BaseModel):
    endpoints: list[WebhookEndpointView]


class SecretRotated(BaseModel):
    """The new secret, shown once; the previous one keeps signing (beside it) until ``previous_valid_until``."""

    secret: str
    previous_valid_until: str


class ReplaySince(BaseModel):
    """``POST /v1/webhook-endpoints/{id}/replay``: send again every event delivered (or not) since a time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    since: Annotated[str, Field(max_length=64, description="RFC 3339 time with an offset, e.g. 2026-11-30T12:00:00Z.",
                                examples=["2026-11-30T12:00:00Z"]), SingleLine]


class DeliveryQueued(BaseModel):
    delivery_id: int
    webhook_id: str = Field(description="The webhook-id header the receiver sees (the same as the original's for a replay).")
    event_type: str


class Count(BaseModel):
    count: int


class DeliveryAttempt(BaseModel):
    """One attempt to deliver one event."""

    attempt_id: int
    delivery_id: int
    webhook_id: str
    event_type: str
    attempt: int
    at: str | None
    status_code: int | None
    latency_ms: float | None
    response: str | None = Field(description="The first KiB of the answer.")
    error: str | None
    next_attempt_at: str | None
    delivery_status: str = Field(description="pending, delivering, succeeded or failed.")


class DeliveryAttempts(BaseModel):
    attempts: list[DeliveryAttempt]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null on the last page.")


class TagFilter(BaseModel):
    """``POST /v1/messages/cancel``: every message not yet sending whose tags include all of these."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    tags: Annotated[TagMap, Field(min_length=1)] = Field(description='Names and values that must all match, e.g. {"event_id": "41"}.')


class TagReschedule(BaseModel):
    """``POST /v1/messages/reschedule``: move every message not yet sending whose tags match."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    tags: Annotated[TagMap, Field(min_length=1)] = Field(description='Names and values that must all match, e.g. {"event_id": "41"}.')
    send_at: SendAt | None = None
    timezone: TimeZone | None = None
    shift_seconds: Annotated[int, Field(ge=-366 * 86400, le=366 * 86400)] | None = Field(
        None, description="Move each by this many seconds (negative: earlier), from its own due time.")


class ConversationView(BaseModel):
    """One customer on one channel of the workspace."""

    id: int
    channel: str
    address: str = Field(description="The customer's address on the channel.")
    contact_id: int | None
    name: str | None = Field(description="The sender's name as the provider reported it.")
    profile: dict[str, Any]
    status: Literal["bot", "open", "resolved"] = Field(description=(
        "`bot`: the chatbot answers (if the channel has one); `open`: a person has it, the bot is silent; `resolved`."))
    status_changed_at: str | None = Field(None, description="When the status last changed.")
    status_reason: str | None = Field(None, description="Why: api, agent_reply, inbound, keyword, low_confidence, model, ...")
    last_inbound_at: str | None = Field(description="The customer's last message (WhatsApp's 24-hour window runs from it).")
    last_message_at: str | None
    created_at: str | None


class ConversationList(BaseModel):
    conversations: list[ConversationView]
    next_before: int | None = Field(description="Pass as `before` for the next page; null on the last page.")


class ConversationMessages(BaseModel):
    messages: list[MessageView]
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last page.")
