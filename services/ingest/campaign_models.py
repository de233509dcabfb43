"""Request and response bodies of the campaign API (``services.ingest.campaigns_api``).

A campaign's content takes the same fields, with the same rules, as ``POST /v1/messages``
(``NewMessage``); only the recipients, the lane (bulk by default), the campaign's own rate limit
and its schedule are its own.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from services.ingest.models import (
    PRIORITY_DOC,
    NewMessage,
    Priority,
    Recipient,
    SendAt,
    SingleLine,
    TimeZone,
    Variables,
)

MAX_RECIPIENTS = 100_000
# A campaign's id in the caller's own system (compatibility routes find campaigns by it).
ExternalId = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$", examples=["summer-sale-2026"])]
CAMPAIGN_ANCHORS = ("campaign_start", "broadcast_start")  # the named times a campaign's enrolments have
# The fields of a message a campaign sends to everyone (NewMessage's, with its rules).
CONTENT = ("channel", "channels", "body", "from_", "subject", "html", "reply_to", "attachments", "media", "template",
           "fallback_template", "context_message_id", "messaging_service_sid", "template_id", "tags", "quiet_hours",
           "track_clicks")
CampaignStatus = Literal["draft", "scheduled", "running", "paused", "completed", "cancelled"]


class CampaignRecipient(BaseModel):
    """One recipient: an address (`to`) or a contact (`contact_id`), and the template's variables."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    to: Recipient | None = Field(None, description="The address, on every channel of the route.")
    contact_id: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = Field(None, description=(
        "A contact of the workspace: its address on each channel; its name and attributes are variables too."))
    variables: Variables | None = Field(None, description="With `template_id`: this recipient's variables.")


Recipients = Annotated[list[CampaignRecipient], Field(max_length=MAX_RECIPIENTS)]

_Content: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "CampaignContent", __config__=ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True),
    **{name: (NewMessage.model_fields[name].annotation, NewMessage.model_fields[name]) for name in CONTENT})


class NewCampaign(_Content):  # type: ignore[misc, valid-type]
    """``POST /v1/campaigns``: what to send (as for a message), to whom, when and how fast."""

    name: Annotated[str, Field(min_length=1, max_length=200), SingleLine] = Field(examples=["December newsletter"])
    recipients: Recipients | None = Field(None, description=(
        f"Up to {MAX_RECIPIENTS:,} recipients; more in pages with `POST /v1/campaigns/{{id}}/recipients`."))
    priority: Priority = Field("bulk", description=PRIORITY_DOC + " A campaign's default is `bulk`.")
    rate_limit_per_second: Annotated[float, Field(gt=0, le=100_000)] | None = Field(None, description=(
        "The campaign's own limit, below its provider account's (messages per second)."))
    send_at: SendAt | None = Field(None, description="Start at this time (RFC 3339, or local with `timezone`); left out: on start.")
    timezone: TimeZone | None = Field(None, description="IANA time zone of a local `send_at`.")
    start: bool = Field(False, description="Start at once (or at `send_at`) instead of staying a draft.")
    external_id: ExternalId | None = Field(None, description=(
        "The campaign's id in your own system: the compatibility routes (`/api/campaigns/send`, `/api/broadcasts/{id}`) "
        "find the campaign by it. Several campaigns may share one."))
    sequence_id: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = Field(None, description=(
        "Enrol every recipient in this sequence (`POST /v1/sequences`) when the campaign fans out: its steps hang on "
        "`enrolment` (= `campaign_start`, the campaign's send time). An `sms` sequence needs a phone channel."))


class RecipientPage(BaseModel):
    """``POST /v1/campaigns/{id}/recipients``: one more page of recipients."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    recipients: Annotated[list[CampaignRecipient], Field(min_length=1, max_length=MAX_RECIPIENTS)]


class CsvRecipients(BaseModel):
    """A CSV page of recipients: a header row naming `to` or `contact_id`, the other columns variables."""

    model_config = ConfigDict(json_schema_extra={"type": "string", "examples": ["to,first_name\n+15005550006,Ada\n"]})


class StartCampaign(BaseModel):
    """``POST /v1/campaigns/{id}/start``: optionally, when (the body may be left out: now, or the draft's `send_at`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    send_at: SendAt | None = Field(None, description="Start at this time instead (RFC 3339, or local with `timezone`); a past time starts now.")
    timezone: TimeZone | None = Field(None, description="IANA time zone of a local `send_at`.")


class RecipientsAdded(BaseModel):
    added: int = Field(description="Recipients this page added.")
    total: int = Field(description="The campaign's recipients so far.")
    status: CampaignStatus


class Progress(BaseModel):
    """Live counters: pending, processing, sent, delivered, read, failed, suppressed and cancelled add up to total."""

    total: int
    pending: int = Field(description="Not yet sent: waiting at a stage, scheduled, or not yet fanned out.")
    processing: int = Field(description="With the provider now.")
    sent: int
    delivered: int
    read: int
    failed: int
    suppressed: int
    cancelled: int
    clicked: int = Field(description=(
        "Messages with a tracked link clicked at least once (a message clicked twice counts once); not part of total."))
    percent_done: float
    send_rate_per_second: float = Field(description="Messages done sending per second over the last minute.")
    seconds_left: float | None = Field(description="At the current rate; null when nothing is moving.")


class CampaignView(BaseModel):
    id: int
    name: str
    status: CampaignStatus
    channel: str
    channels: list[str] | None
    priority: str
    rate_limit_per_second: float | None
    send_at: str | None
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    template_id: int | None
    external_id: str | None = Field(description="The campaign's id in your own system, if given.")
    sequence_id: int | None = Field(description="The sequence its recipients are enrolled in, if any.")
    progress: Progress


class CampaignList(BaseModel):
    campaigns: list[CampaignView]
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last.")


def content_of(body: Any) -> dict[str, Any]:
    """The content fields of a campaign request."""
    return {name: getattr(body, name) for name in CONTENT}
