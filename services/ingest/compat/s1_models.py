"""Request and response bodies of the S1 compatibility routes (the WhatsApp campaign queue,
seed document 001): ``POST /api/campaigns/send``, ``GET /api/queue/status``, ``/api/queue/worker``.

The request models take the old clients' bodies as the document writes them (camelCase, a
``campaignId`` that is a number or a string) and ignore the fields postroom does not use, as the
old service did. ``payload`` is the Graph API's own: ``{"text": {"body"}}`` for ``messageType:
"text"``, ``{"template": {name, language: {code}, components}}`` for ``"template"``; a template
maps onto ``models.Template`` (body and text-header parameters, or one media header).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from services.ingest.campaign_models import MAX_RECIPIENTS, ExternalId
from services.ingest.models import MultiLine, Recipient, ShortText, SingleLine, Url

_OLD_CLIENT = ConfigDict(extra="ignore", strict=True, frozen=True)
_REF = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")  # ExternalId's rule


def _campaign_ref(value: object) -> object:
    """One refusal that says what a campaignId may be (the union's would name one branch only)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**63 - 1:
        return value
    if isinstance(value, str) and _REF.fullmatch(value):
        return value
    raise ValueError("campaignId is your campaign's id: a whole number, or 1-100 letters, digits, _ . : -")


CampaignRef = Annotated[Annotated[int, Field(ge=0, le=2**63 - 1)] | ExternalId, BeforeValidator(_campaign_ref)]


class TextContent(BaseModel):
    """``payload.text``: the Graph API's text object."""

    model_config = _OLD_CLIENT

    body: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"\S"), MultiLine] = Field(
        examples=["Hello from our campaign!"])


class MediaObject(BaseModel):
    """A media parameter's object (``image``, ``document``, ``video``), by link."""

    model_config = _OLD_CLIENT

    link: Url
    filename: Annotated[str, Field(min_length=1, max_length=240), SingleLine] | None = None


class TemplateParameter(BaseModel):
    """One component parameter: ``{"type": "text", "text"}`` or a media one by link."""

    model_config = _OLD_CLIENT

    type: Literal["text", "image", "document", "video"]
    text: Annotated[str, Field(max_length=1024), MultiLine] | None = None
    image: MediaObject | None = None
    document: MediaObject | None = None
    video: MediaObject | None = None


class TemplateComponent(BaseModel):
    """A template component: its ``body`` or its ``header`` parameters (buttons are not sent)."""

    model_config = _OLD_CLIENT

    type: Literal["body", "header"]
    parameters: Annotated[list[TemplateParameter], Field(max_length=64)] = Field(default_factory=list)


class TemplateLanguage(BaseModel):
    model_config = _OLD_CLIENT

    code: Annotated[str, Field(min_length=2, max_length=16, pattern=r"^[A-Za-z]{2,3}(_[A-Za-z0-9]{2,8})?$")] = Field(
        examples=["en_US"])


class TemplateContent(BaseModel):
    """``payload.template``: the Graph API's template object."""

    model_config = _OLD_CLIENT

    name: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[a-z0-9_]+$")] = Field(examples=["summer_sale"])
    language: TemplateLanguage = Field(default_factory=lambda: TemplateLanguage(code="en_US"))
    components: Annotated[list[TemplateComponent], Field(max_length=4)] = Field(default_factory=list)


class SendPayload(BaseModel):
    """What to send: the object named by ``messageType``."""

    model_config = _OLD_CLIENT

    text: TextContent | None = None
    template: TemplateContent | None = None


class CampaignSend(BaseModel):
    """``POST /api/campaigns/send``: queue messages of a campaign to its recipients."""

    model_config = _OLD_CLIENT

    campaignId: CampaignRef = Field(description=(
        "Your campaign's id: a number or a string. Sends with the same id and content add to one postroom campaign "
        "(its `external_id`); a new content makes a new one under the same id, and the status sums them."),
        examples=[123])
    recipients: Annotated[list[Recipient], Field(min_length=1, max_length=MAX_RECIPIENTS)] = Field(
        examples=[["+919876543210", "+919876543211"]])
    messageType: Literal["text", "template"] = Field(description=(
        "`text` (free-form: only inside the recipient's 24-hour window) or `template`."))
    payload: SendPayload
    campaignName: ShortText | None = Field(None, description="The campaign's name; left out: `campaign <campaignId>`.")


class CampaignQueued(BaseModel):
    success: Literal[True]
    campaignId: int | str = Field(description="As given.")
    queued: int = Field(description="Recipients this request queued.")
    total: int = Field(description="Recipients of the postroom campaign they were added to.")
    postroomCampaignId: int = Field(description="The postroom campaign (`GET /v1/campaigns/{id}`).")


class QueueStats(BaseModel):
    """Cumulative, as the old dashboard counted: a read message was also delivered and sent."""

    pending: int = Field(description="Not yet with the provider.")
    processing: int = Field(description="With the provider now.")
    sent: int = Field(description="Sent, delivered or read.")
    failed: int = Field(description="Failed, undelivered or suppressed.")
    delivered: int = Field(description="Delivered or read.")
    read: int


class CampaignSummary(BaseModel):
    id: int | str = Field(description="The campaignId asked for (a number stays a number).")
    name: str | None
    status: str = Field(description="The newest postroom campaign's status.")
    progress: int = Field(description="Percent done (sent, failed or cancelled), rounded down.")
    total: int
    sent: int
    delivered: int
    failed: int


class QueueStatus(BaseModel):
    success: Literal[True]
    stats: QueueStats
    avgSendRate: str = Field(description="Mean send rate since the start, e.g. `15.2 msg/sec`.", examples=["15.2 msg/sec"])
    campaign: CampaignSummary


class WorkerReport(BaseModel):
    """What the always-running workers did: nothing is processed by this call."""

    success: Literal[True]
    workers: Literal["continuous"]
    intervalSeconds: int = Field(description="The window the counts cover, ending now.")
    processed: int = Field(description="Messages the senders finished (sent or failed) in the window.")
    sent: int
    failed: int
    pending: int = Field(description="Messages waiting at a stage now.")
    processing: int = Field(description="Messages with a provider now.")
