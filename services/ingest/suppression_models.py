"""Request and response bodies of the suppression list API (``services.ingest.suppressions_api``).

An address is given as a message's ``to`` would be: a phone number on ``sms``, ``whatsapp_cloud``
and ``whatsapp_qr`` is stored in E.164, an email address with its domain in lower case, so an
entry matches the messages sent to that person however the number was written.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.ingest.models import MAX_RECIPIENT, ChannelName, SingleLine

Reason = Literal["opt_out", "bounce", "complaint", "manual", "provider_21610"]
Address = Annotated[str, Field(min_length=1, max_length=MAX_RECIPIENT, examples=["+15005550006"]), SingleLine]
Source = Annotated[str, Field(min_length=1, max_length=200, examples=["crm import"]), SingleLine]
MAX_ADD = 1000

_REASON = ("Why: `opt_out` (the person asked: STOP, an unsubscribe), `bounce`, `complaint`, `manual` (the default) "
           "or `provider_21610` (Twilio's opt-out). Only `opt_out` can be passed by an `urgent` message, where the "
           "workspace allows it, and only `opt_out` is lifted by the person's START.")


class NewSuppression(BaseModel):
    """One address not to send to on a channel."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    channel: ChannelName
    address: Address = Field(description="Normalised as a message's `to`: E.164 on phone channels.")
    reason: Reason = Field("manual", description=_REASON)
    source: Source | None = Field(None, description="What said so, for the record; default `api`.")


class NewSuppressions(BaseModel):
    """``POST /v1/suppressions``: add one or many entries at once."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    suppressions: Annotated[list[NewSuppression], Field(min_length=1, max_length=MAX_ADD)] = Field(description=(
        f"1 to {MAX_ADD} entries. An address already suppressed on the channel keeps its entry (and its first reason)."))


class SuppressionView(BaseModel):
    """An entry of the suppression list."""

    channel: str
    address: str
    reason: str
    source: str | None
    created_at: str


class SuppressionsAdded(BaseModel):
    """The entries as now stored, in the order given (an earlier entry where there was one)."""

    added: int = Field(description="How many entries are new.")
    suppressions: list[SuppressionView]


class SuppressionPage(BaseModel):
    """A page of the list, newest first."""

    suppressions: list[SuppressionView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
