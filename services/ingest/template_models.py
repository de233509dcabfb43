"""Request and response bodies of the template API (``services.ingest.templates_api``).

A template's parts (``subject``, ``text``, ``html``) are Jinja2 source run in a sandbox
(``common.templates``); a WhatsApp template names an approved template and the variable that fills
each of its body parameters.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.ingest.models import ChannelName, MultiLine, SingleLine, VariableName, Variables

TemplateName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$", examples=["welcome"])]


class WhatsAppTemplateMapping(BaseModel):
    """An approved WhatsApp template and the variables that fill its body's {{1}}, {{2}}, ... in order."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[a-z0-9_]+$")] = Field(examples=["order_update"])
    language: Annotated[str, Field(min_length=2, max_length=16, pattern=r"^[A-Za-z]{2,3}(_[A-Za-z0-9]{2,8})?$")] = "en_US"
    body_parameters: Annotated[list[VariableName], Field(max_length=64)] = Field(
        default_factory=list, examples=[["first_name", "order_id"]])


class NewTemplate(BaseModel):
    """``POST /v1/templates``: a named template of the workspace."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: TemplateName = Field(description="Unique in the workspace.")
    channel: ChannelName = Field(description="The channel its messages go out on.")
    subject: Annotated[str, Field(min_length=1, max_length=2000), SingleLine] | None = Field(None, description="`email`: the subject.")
    text: Annotated[str, Field(min_length=1, max_length=100_000), MultiLine] | None = Field(None, description=(
        "The text body, e.g. `Hi {{ first_name }}`."))
    html: Annotated[str, Field(min_length=1, max_length=500_000), MultiLine] | None = Field(None, description=(
        "`email`: the HTML part; variables are HTML-escaped in it."))
    whatsapp: WhatsAppTemplateMapping | None = Field(None, description="`whatsapp_cloud`: send this approved template.")


class TemplateView(BaseModel):
    id: int
    name: str
    channel: str
    subject: str | None
    text: str | None
    html: str | None
    whatsapp: dict[str, Any] | None
    variables: list[str] = Field(description="Every variable a message with this template must give.")
    created_at: str | None
    updated_at: str | None


class TemplatePreviewRequest(BaseModel):
    """``POST /v1/templates/{id}/preview``: the variables to render with."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    variables: Variables = Field(default_factory=dict)


class Preview(BaseModel):
    """Rendered content, as it would be sent; nothing is stored."""

    body: str
    subject: str | None = None
    html: str | None = None
    template: dict[str, Any] | None = Field(None, description="`whatsapp_cloud`: the template and its body parameters' values.")
    encoding: Literal["GSM-7", "UCS-2"] | None = Field(None, description="`sms`: how the body is sent.")
    segments: int | None = Field(None, description="`sms`: how many segments the body is sent as.")
