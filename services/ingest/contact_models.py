"""Request and response bodies of the contact API (``services.ingest.contacts_api``).

A contact has one address per channel that messages go out on (its number for ``sms``, the
receiving system's id for ``http``); a message to that address on that channel is to this contact,
so its time zone and quiet hours apply at routing.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from services.ingest.models import (
    CHANNELS,
    MAX_RECIPIENT,
    ChannelName,
    MultiLine,
    SingleLine,
    TimeZone,
)

Channel = ChannelName  # the channels messages go out on
Address = Annotated[str, Field(min_length=1, max_length=MAX_RECIPIENT, examples=["+15005550006"]), SingleLine]
Name = Annotated[str, Field(min_length=1, max_length=200), SingleLine]
Locale = Annotated[str, Field(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,4}$", max_length=35, examples=["en-GB"])]
QuietWindow = Annotated[str, Field(max_length=11, examples=["21:00-08:00", "off"]), SingleLine]
AttributeName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
AttributeValue = (Annotated[StrictStr, Field(max_length=1000), MultiLine] | Annotated[StrictInt, Field(ge=-(2**53), le=2**53)]
                  | Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictBool | None)
MAX_ATTRIBUTES = 50
Attributes = Annotated[dict[AttributeName, AttributeValue], Field(max_length=MAX_ATTRIBUTES)]

_ADDRESSES = ("Addresses by channel: `sms`, `whatsapp_cloud` and `whatsapp_qr` (phone numbers, normalised to E.164), "
              "`email`, and `http` (the id the receiving system knows the recipient by). A message to the contact on a "
              "WhatsApp channel without its own address there uses the `sms` number.")
_TIMEZONE = "The contact's IANA time zone (quiet hours are read in it); null: the number's, else the workspace's."
_LOCALE = "BCP 47 language tag, e.g. en-GB."
_QUIET = ("The contact's quiet hours (`21:00-08:00`, in their zone), or `off` for none; null: the workspace's. "
          "A message's own quiet_hours still win.")
_ATTRIBUTES = (f"Free attributes: up to {MAX_ATTRIBUTES} names (letters, digits, _ . : -) to strings, numbers, "
               "booleans or null. Given, it replaces the whole object.")


class NewContact(BaseModel):
    """``POST /v1/contacts``: create a contact, or update the one that already has one of these addresses."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    addresses: Annotated[dict[Channel, Address], Field(min_length=1, max_length=len(CHANNELS))] = Field(description=(
        _ADDRESSES + " A contact of the workspace that has any of them is updated (the addresses given replace its "
        "address on those channels); else one is created."))
    name: Name | None = None
    timezone: TimeZone | None = Field(None, description=_TIMEZONE)
    locale: Locale | None = Field(None, description=_LOCALE)
    quiet_hours: QuietWindow | None = Field(None, description=_QUIET)
    attributes: Attributes | None = Field(None, description=_ATTRIBUTES)


class ContactChange(BaseModel):
    """``PATCH /v1/contacts/{id}``: the fields to change; null clears name, timezone, locale or quiet_hours."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    addresses: Annotated[dict[Channel, Address | None], Field(max_length=len(CHANNELS))] | None = Field(None, description=(
        _ADDRESSES + " Each one given replaces the contact's address on that channel; null removes it."))
    name: Name | None = None
    timezone: TimeZone | None = Field(None, description=_TIMEZONE)
    locale: Locale | None = Field(None, description=_LOCALE)
    quiet_hours: QuietWindow | None = Field(None, description=_QUIET)
    attributes: Attributes | None = Field(None, description=_ATTRIBUTES)


class ContactView(BaseModel):
    """A contact as the API shows it."""

    id: int
    addresses: dict[str, str]
    name: str | None
    timezone: str | None
    locale: str | None
    quiet_hours: str | None
    attributes: dict[str, Any]
    created_at: str | None
    updated_at: str | None
