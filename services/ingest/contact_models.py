"""Request and response bodies of the contact API (``services.ingest.contacts_api``).

A contact has one address per channel that messages go out on (its number for ``sms``, the
receiving system's id for ``http``); a message to that address on that channel is to this contact,
so its time zone and quiet hours apply at routing.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

from services.ingest.models import (
    CHANNELS,
    MAX_RECIPIENT,
    MAX_TAG,
    ChannelName,
    ErrorDetail,
    MultiLine,
    SingleLine,
    TimeZone,
)

Channel = ChannelName  # the channels messages go out on
Address = Annotated[str, Field(min_length=1, max_length=MAX_RECIPIENT, examples=["+15005550006"]), SingleLine]
Name = Annotated[str, Field(min_length=1, max_length=200), SingleLine]
Locale = Annotated[str, Field(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,4}$", max_length=35, examples=["en-GB"])]
QuietWindow = Annotated[str, Field(max_length=11, examples=["21:00-08:00", "off"]), SingleLine]
ExternalId = Annotated[str, Field(min_length=1, max_length=200, examples=["crm-4711"]), SingleLine]
ATTRIBUTE_NAME = r"^[A-Za-z0-9_.:-]{1,64}$"
AttributeName = Annotated[str, Field(min_length=1, max_length=64, pattern=ATTRIBUTE_NAME)]
AttributeValue = (Annotated[StrictStr, Field(max_length=1000), MultiLine] | Annotated[StrictInt, Field(ge=-(2**53), le=2**53)]
                  | Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictBool | None)
MAX_ATTRIBUTES = 50
Attributes = Annotated[dict[AttributeName, AttributeValue], Field(max_length=MAX_ATTRIBUTES)]
# A tag as a message's (one line, up to MAX_TAG characters), without the characters that separate
# tags in a CSV cell (| ;) or in the listing's tag filter (,).
MAX_CONTACT_TAGS = 50
ContactTag = Annotated[str, Field(min_length=1, max_length=MAX_TAG, pattern=r"^[^,;|]+$", examples=["vip"]), SingleLine]
ContactTags = Annotated[list[ContactTag], Field(max_length=MAX_CONTACT_TAGS)]
MAX_IMPORT = 100_000

_ADDRESSES = ("Addresses by channel: `sms`, `whatsapp_cloud` and `whatsapp_qr` (phone numbers, normalised to E.164), "
              "`email`, and `http` (the id the receiving system knows the recipient by). A message to the contact on a "
              "WhatsApp channel without its own address there uses the `sms` number.")
_EXTERNAL_ID = ("The contact's id in your own system (1 to 200 characters), unique in the workspace; "
                "`GET /v1/contacts?external_id=` finds the contact by it, and the compatibility routes take it where the old "
                "systems named a contact (S0 `contactId`).")
_TIMEZONE = "The contact's IANA time zone (quiet hours are read in it); null: the number's, else the workspace's."
_LOCALE = "BCP 47 language tag, e.g. en-GB."
_QUIET = ("The contact's quiet hours (`21:00-08:00`, in their zone), or `off` for none; null: the workspace's. "
          "A message's own quiet_hours still win.")
_TAGS = (f"Tags: up to {MAX_CONTACT_TAGS} strings of 1 to {MAX_TAG} characters without `,` `;` `|` (kept once each, in the "
         "order given); `GET /v1/contacts?tag=` finds contacts by them. Given, they replace the contact's tags.")
_ATTRIBUTES = (f"Free attributes: up to {MAX_ATTRIBUTES} names (letters, digits, _ . : -) to strings, numbers, "
               "booleans or null. Given, it replaces the whole object.")


class NewContact(BaseModel):
    """``POST /v1/contacts``: create a contact, or update the one that already has one of these addresses."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    addresses: Annotated[dict[Channel, Address], Field(min_length=1, max_length=len(CHANNELS))] = Field(description=(
        _ADDRESSES + " A contact of the workspace that has any of them is updated (the addresses given replace its "
        "address on those channels); else one is created."))
    external_id: ExternalId | None = Field(None, description=_EXTERNAL_ID + " Given, it is set on the contact (409 when "
                                           "another contact has it).")
    name: Name | None = None
    timezone: TimeZone | None = Field(None, description=_TIMEZONE)
    locale: Locale | None = Field(None, description=_LOCALE)
    quiet_hours: QuietWindow | None = Field(None, description=_QUIET)
    attributes: Attributes | None = Field(None, description=_ATTRIBUTES)
    tags: ContactTags | None = Field(None, description=_TAGS)


class ContactChange(BaseModel):
    """``PATCH /v1/contacts/{id}``: the fields to change; null clears name, timezone, locale or quiet_hours."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    addresses: Annotated[dict[Channel, Address | None], Field(max_length=len(CHANNELS))] | None = Field(None, description=(
        _ADDRESSES + " Each one given replaces the contact's address on that channel; null removes it."))
    external_id: ExternalId | None = Field(None, description=_EXTERNAL_ID + " null clears it.")
    name: Name | None = None
    timezone: TimeZone | None = Field(None, description=_TIMEZONE)
    locale: Locale | None = Field(None, description=_LOCALE)
    quiet_hours: QuietWindow | None = Field(None, description=_QUIET)
    attributes: Attributes | None = Field(None, description=_ATTRIBUTES)
    tags: ContactTags | None = Field(None, description=_TAGS)


class ContactView(BaseModel):
    """A contact as the API shows it."""

    id: int
    external_id: str | None = Field(description=_EXTERNAL_ID)
    addresses: dict[str, str]
    name: str | None
    timezone: str | None
    locale: str | None
    quiet_hours: str | None
    attributes: dict[str, Any]
    tags: list[str]
    created_at: str | None
    updated_at: str | None


class ContactList(BaseModel):
    """``GET /v1/contacts``: a page of contacts in id order."""

    data: list[ContactView]
    next_cursor: str | None = Field(description="Pass as `cursor` (with the same filters) for the next page; null on the last.")


# Each item is checked on its own (a bad one is reported, the others imported), so the body's model
# takes any items; the document shows them as the create body they must be.
ImportItems = Annotated[list[Any], Field(min_length=1, max_length=MAX_IMPORT),
                        WithJsonSchema({"type": "array", "minItems": 1, "maxItems": MAX_IMPORT,
                                        "items": {"$ref": "#/components/schemas/NewContact"}})]


class ContactImport(BaseModel):
    """``POST /v1/contacts/import``: many contacts at once, each as for ``POST /v1/contacts``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    contacts: ImportItems = Field(description=(
        f"Up to {MAX_IMPORT:,} contacts, each as the body of `POST /v1/contacts`: the contact of the workspace that has "
        "any of an item's addresses is updated with the fields the item gives, else one is created. An item that is "
        "invalid, names an address of an earlier item or a contact an earlier item updates, or has addresses of two "
        "contacts, is reported in `errors` and skipped; the others are imported. `external_id` is not imported (an item with "
        "it is refused): set it with `POST /v1/contacts` or `PATCH /v1/contacts/{id}`."))


class ContactCsv(BaseModel):
    """A CSV of contacts: the document's description of the ``text/csv`` body."""

    model_config = ConfigDict(json_schema_extra={
        "type": "string",
        "description": (
            "A header row, then a contact per row. Columns named after a channel (`sms`, `email`, `whatsapp_cloud`, "
            "`whatsapp_qr`, `http`) hold its addresses; `name`, `timezone`, `locale` and `quiet_hours` its fields; "
            "`tags` its tags separated by `|` or `;`; any other column is an attribute (a string). Cells are trimmed "
            "and an empty cell gives nothing. Up to 100,000 rows, imported as the JSON import does."),
        "examples": ["sms,email,name,tags,plan\n+15005550006,ada@example.com,Ada,vip|beta,pro\n"]})


class ItemFailure(BaseModel):
    index: int = Field(description="The item's position in `contacts`, from 0.")
    error: ErrorDetail


class LineFailure(BaseModel):
    line: int = Field(description="The row's line in the CSV, the header being line 1.")
    error: ErrorDetail


class ImportResult(BaseModel):
    """What an import did: counts, and the items refused (not imported)."""

    created: int = Field(description="Contacts created.")
    updated: int = Field(description="Existing contacts updated (found by one of their addresses).")
    failed: int = Field(description="Items refused: each is in `errors`.")
    errors: list[ItemFailure]


class CsvImportResult(BaseModel):
    """What a CSV import did: counts, and the rows refused (not imported)."""

    created: int = Field(description="Contacts created.")
    updated: int = Field(description="Existing contacts updated (found by one of their addresses).")
    failed: int = Field(description="Rows refused: each is in `errors`.")
    errors: list[LineFailure]
