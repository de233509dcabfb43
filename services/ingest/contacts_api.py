"""REST API v1 for contacts: create or update one by any of its addresses, list them with
filters, read, change and delete one, and import many at once (JSON items or CSV rows).

A contact's time zone and quiet hours apply at routing to every message sent to one of its
addresses on that channel (``services.routing.channels``). Numbers are normalised to E.164 as
messages' are, so a contact's ``sms`` address is the ``to`` of the messages sent to it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from flask import Blueprint, Response, g, jsonify, request
from pydantic import Field, StrictStr, TypeAdapter, ValidationError

from common import cursors
from common.config import settings
from common.db.connection import longer_deadline, transaction
from services.ingest import contact_input, contacts
from services.ingest.contact_input import Checked
from services.ingest.contact_merge import Refused, merge
from services.ingest.contact_models import (
    ATTRIBUTE_NAME,
    MAX_CONTACT_TAGS,
    Address,
    ContactChange,
    ContactCsv,
    ContactImport,
    ContactList,
    ContactTag,
    ContactView,
    CsvImportResult,
    ExternalId,
    ImportResult,
    NewContact,
)
from services.ingest.contract import Body, operation, query
from services.ingest.errors import ApiError
from services.ingest.models import CHANNELS, MultiLine
from services.ingest.validation import query_int

contacts_api = Blueprint("contacts", __name__, url_prefix="/v1")
CSV = "text/csv"
MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_ATTRIBUTE_FILTERS = 20
LIST_PARAMS = ("cursor", "limit", "tag", "attribute", "channel", "address", "external_id")
_CURSOR = "contact"
_TAG = TypeAdapter(ContactTag)
_ADDRESS = TypeAdapter(Address)
_EXTERNAL_ID = TypeAdapter(ExternalId)
_VALUE = TypeAdapter(Annotated[StrictStr, Field(max_length=1000), MultiLine])


def _missing(contact_id: int) -> ApiError:
    return ApiError(404, "not_found", f"no contact {contact_id} in this workspace")


def _refused(exc: Refused) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, exc.field)


def _invalid(name: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, name)


@operation(contacts_api, "POST", "/contacts", summary="Create a contact, or update the one that has one of these addresses",
           scope="messages:write", request=NewContact,
           ok={201: Body(ContactView, "Created: no contact of the workspace had any of these addresses."),
               200: Body(ContactView, "Updated: the contact that had one of these addresses, with the fields given.")},
           errors=(409,))
def upsert_contact(body: NewContact) -> tuple[Response, int]:
    given = contact_input.candidate(body)
    with transaction():  # a refusal below rolls back what was changed before it
        try:
            view, created = contacts.upsert(g.workspace_id, given.addresses, given.fields)
            if "external_id" in body.model_fields_set:
                view = contacts.set_external_id(g.workspace_id, view["id"], body.external_id) or view
        except Refused as exc:
            raise _refused(exc) from None
    return jsonify(view), 201 if created else 200


@operation(contacts_api, "GET", "/contacts", summary="List contacts, filtered by tag, attribute or address",
           scope="messages:read", errors=(422,),
           ok={200: Body(ContactList, "A page of contacts in id order; `next_cursor` continues it.")},
           headers=[
               query("cursor", "The previous page's `next_cursor` (send the same filters with it).",
                     pattern="^[A-Za-z0-9_-]{1,64}$"),
               query("limit", f"Contacts per page, 1 to {MAX_PAGE} (default {DEFAULT_PAGE}).",
                     type="integer", minimum=1, maximum=MAX_PAGE),
               query("tag", f"Only contacts with this tag; repeat it, or separate tags with commas, for contacts with all "
                     f"of them (at most {MAX_CONTACT_TAGS}).",
                     type="array", maxItems=MAX_CONTACT_TAGS, items={"type": "string", "minLength": 1}),
               query("attribute", "Only contacts whose attribute equals a value, as `name=value` (`plan=pro`); a value "
                     "that spells a number or boolean also matches it as one (`seats=3` matches 3 and \"3\"). Repeat it "
                     f"for contacts matching all (at most {MAX_ATTRIBUTE_FILTERS}).",
                     type="array", maxItems=MAX_ATTRIBUTE_FILTERS,
                     items={"type": "string", "pattern": ATTRIBUTE_NAME.removesuffix("$") + "=.*$"}),
               query("channel", "Only contacts with an address on this channel.", enum=list(CHANNELS)),
               query("address", "With `channel`: only the contact with this address there (a number in any form "
                     "`POST /v1/contacts` takes).", minLength=1, maxLength=320),
               query("external_id", "Only the contact with this `external_id` (your system's id for it).",
                     minLength=1, maxLength=200),
           ])
def list_contacts() -> tuple[Response, int]:
    unknown = sorted(set(request.args) - set(LIST_PARAMS))
    if unknown:
        raise _invalid(unknown[0][:100], f"unknown query parameter {unknown[0][:100]!r}; accepted: {', '.join(LIST_PARAMS)}")
    for name in ("cursor", "limit", "channel", "address", "external_id"):
        if len(request.args.getlist(name)) > 1:
            raise _invalid(name, f"{name} may be given once")
    limit = query_int("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    after = _cursor(request.args.get("cursor"))
    filters = contacts.Filters(tags=_tags(), attributes=_attributes(), external_id=_external_id(), **_address_filter())
    with transaction():
        rows = contacts.listing(g.workspace_id, after, limit + 1, filters)
    more = len(rows) > limit
    return jsonify({"data": rows[:limit], "next_cursor": cursor_of(rows[limit - 1]["id"]) if more else None}), 200


def cursor_of(contact_id: int) -> str:
    """An opaque cursor: the last contact's id, which the next page starts after."""
    return cursors.encode([_CURSOR, contact_id])


def _cursor(raw: str | None) -> int:
    if raw is None:
        return 0
    try:
        kind, contact_id = cursors.decode(raw)
    except (cursors.BadCursor, ValueError):
        kind = contact_id = None
    if kind != _CURSOR or not isinstance(contact_id, int) or not 0 <= contact_id < 2**63:
        raise _invalid("cursor", "cursor must be a next_cursor this API returned")
    return contact_id


def _tags() -> list[str]:
    tags = [tag for given in request.args.getlist("tag") for tag in given.split(",")]
    if len(tags) > MAX_CONTACT_TAGS:
        raise _invalid("tag", f"at most {MAX_CONTACT_TAGS} tags")
    for tag in tags:
        try:
            _TAG.validate_python(tag)
        except ValidationError:
            raise _invalid("tag", "tag must be tags of 1 to 100 characters, without control characters, ; or |, "
                           "separated by commas") from None
    return list(dict.fromkeys(tags))


def _attributes() -> list[tuple[str, list[Any]]]:
    given = request.args.getlist("attribute")
    if len(given) > MAX_ATTRIBUTE_FILTERS:
        raise _invalid("attribute", f"at most {MAX_ATTRIBUTE_FILTERS} attribute filters")
    found = []
    for raw in given:
        name, equals, value = raw.partition("=")
        try:
            _VALUE.validate_python(value)
        except ValidationError:
            equals = ""
        if not equals or not re.fullmatch(ATTRIBUTE_NAME, name):
            raise _invalid("attribute", "attribute must be name=value: a name of letters, digits, _ . : - (up to 64), "
                           "and a value of up to 1,000 characters")
        found.append((name, contacts.attribute_values(value)))
    return found


def _external_id() -> str | None:
    given = request.args.get("external_id")
    if given is None:
        return None
    try:
        return _EXTERNAL_ID.validate_python(given)
    except ValidationError:
        raise _invalid("external_id", "external_id must be 1 to 200 characters without control characters") from None


def _address_filter() -> dict[str, str | None]:
    channel, address = request.args.get("channel"), request.args.get("address")
    if channel is not None and channel not in CHANNELS:
        raise _invalid("channel", f"channel must be one of: {', '.join(CHANNELS)}")
    if address is None:
        return {"channel": channel, "address": None}
    if channel is None:
        raise _invalid("address", "address needs channel: the channel the address is on")
    try:
        return {"channel": channel, "address": contact_input.address(channel, _ADDRESS.validate_python(address))}
    except (ValidationError, ApiError) as exc:
        said = exc.message if isinstance(exc, ApiError) else "address must be 1 to 320 characters without control characters"
        raise _invalid("address", said.replace(f"addresses.{channel}", "address")) from None


@operation(contacts_api, "POST", "/contacts/import", summary="Create or update many contacts at once",
           scope="messages:write", request=ContactImport,
           ok={200: Body(ImportResult, "Imported: the valid items (set-wise, in one transaction); the others are in `errors`.")})
def import_contacts(body: ContactImport) -> tuple[Response, int]:
    checked = contact_input.Checked()
    for index, item in enumerate(body.contacts):
        if isinstance(item, dict) and "external_id" in item:  # one contact's id: set it with POST /v1/contacts or PATCH
            checked.refuse(index, "invalid_request", "external_id is not imported; set it with POST /v1/contacts or "
                           "PATCH /v1/contacts/{id}", "external_id")
        else:
            checked.add(index, item)
    return _import(checked, "index")


@operation(contacts_api, "POST", "/contacts/import/csv", summary="Create or update many contacts from CSV",
           scope="messages:write", request=ContactCsv, request_media=CSV, errors=(400, 415, 422),
           ok={200: Body(CsvImportResult, "Imported: the valid rows (set-wise, in one transaction); the others are in `errors`.")})
def import_contacts_csv() -> tuple[Response, int]:
    if request.mimetype != CSV:
        raise ApiError(415, "unsupported_media_type", f"send the contacts as {CSV} (a header row, then one contact per row)", "body")
    return _import(contact_input.check_csv(request.get_data(cache=True)), "line")


def _import(checked: Checked, position: str) -> tuple[Response, int]:
    """Merge the checked items in one transaction, and say what became of each refused one."""
    with transaction(), longer_deadline(settings.postroom_campaign_db_timeout_seconds):
        outcomes = merge(g.workspace_id, checked.candidates) if checked.candidates else []
    failures = list(checked.failures)
    for at, outcome in zip(checked.positions, outcomes, strict=True):
        if outcome.refused is not None:
            failures.append((at, {"code": outcome.refused.code, "message": outcome.refused.message, "field": outcome.refused.field}))
    failures.sort(key=lambda f: f[0])
    merged = [o for o in outcomes if o.refused is None]
    created = sum(o.created for o in merged)
    return jsonify({"created": created, "updated": len(merged) - created, "failed": len(failures),
                    "errors": [{position: at, "error": error} for at, error in failures]}), 200


@operation(contacts_api, "GET", "/contacts/{contact_id}", summary="Read a contact", scope="messages:read",
           ok={200: Body(ContactView, "The contact.")}, errors=(404,))
def get_contact(contact_id: int) -> tuple[Response, int]:
    with transaction():
        view = contacts.get(g.workspace_id, contact_id)
    if view is None:
        raise _missing(contact_id)
    return jsonify(view), 200


@operation(contacts_api, "PATCH", "/contacts/{contact_id}", summary="Change a contact", scope="messages:write",
           request=ContactChange, ok={200: Body(ContactView, "The changed contact.")}, errors=(404, 409))
def change_contact(contact_id: int, body: ContactChange) -> tuple[Response, int]:
    if "addresses" in body.model_fields_set and body.addresses is None:
        raise ApiError(422, "invalid_request", 'addresses cannot be null; remove one with {"sms": null}', "addresses")
    addresses: dict[str, str | None] = {channel: None if address is None else contact_input.address(channel, address)
                                        for channel, address in (body.addresses or {}).items()}
    fields = contact_input.fields_of(body)
    with transaction():  # a refusal below rolls back what was changed before it
        try:
            view = contacts.change(g.workspace_id, contact_id, fields, addresses)
            if view is not None and "external_id" in body.model_fields_set:
                view = contacts.set_external_id(g.workspace_id, contact_id, body.external_id)
        except contacts.AddressTaken as exc:
            raise ApiError(409, exc.code, f"another contact has this address ({exc.said}); remove it there first",
                           exc.field) from None
        except contacts.ExternalIdTaken as exc:
            raise _refused(exc) from None
        if view is None:
            raise _missing(contact_id)
    return jsonify(view), 200


@operation(contacts_api, "DELETE", "/contacts/{contact_id}", summary="Delete a contact and its addresses",
           scope="messages:write", ok={200: Body(ContactView, "The contact as it was.")}, errors=(404,))
def delete_contact(contact_id: int) -> tuple[Response, int]:
    with transaction():
        view = contacts.delete(g.workspace_id, contact_id)
    if view is None:
        raise _missing(contact_id)
    return jsonify(view), 200
