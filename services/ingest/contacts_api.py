"""REST API v1 for contacts: create or update one by any of its addresses, read, change and delete it.

A contact's time zone and quiet hours apply at routing to every message sent to one of its
addresses on that channel (``services.routing.channels``). Numbers are normalised to E.164 as
messages' are, so a contact's ``sms`` address is the ``to`` of the messages sent to it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify

from common.db.connection import transaction
from common.quiet_hours import QuietHours, parse_timezone
from services.ingest import contacts, outgoing
from services.ingest.contact_models import ContactChange, ContactView, NewContact
from services.ingest.contract import Body, operation
from services.ingest.errors import ApiError

contacts_api = Blueprint("contacts", __name__, url_prefix="/v1")
OFF = "off"


def _missing(contact_id: int) -> ApiError:
    return ApiError(404, "not_found", f"no contact {contact_id} in this workspace")


def _taken(exc: contacts.AddressTaken, said: str) -> ApiError:
    """409 naming the first address at fault; ``said`` has ``{owners}`` for which contacts have them."""
    channel = next(iter(exc.owners.values()))[0]
    return ApiError(409, "address_taken", said.format(owners=exc), f"addresses.{channel}")


def _address(channel: str, address: str) -> str:
    """The address as messages store it (a number in E.164, an email address with its domain in
    lower case); 422 naming ``addresses.<channel>`` otherwise."""
    return outgoing.normalized_identity(channel, address, f"addresses.{channel}")


def _fields(body: NewContact | ContactChange) -> dict[str, Any]:
    """The contact's columns given in ``body``, checked (quiet hours stored in their canonical form)."""
    fields = {name: getattr(body, name) for name in contacts.FIELDS if name in body.model_fields_set}
    if "attributes" in fields and fields["attributes"] is None:
        raise ApiError(422, "invalid_request", "attributes cannot be null; send {} to remove them all", "attributes")
    if fields.get("timezone") is not None:
        try:
            parse_timezone(fields["timezone"])
        except ValueError as exc:
            raise ApiError(422, "invalid_request", f"timezone: {exc}", "timezone") from None
    window = fields.get("quiet_hours")
    if window is not None and window != OFF:
        try:
            fields["quiet_hours"] = str(QuietHours.parse(window))
        except ValueError as exc:
            raise ApiError(422, "invalid_request", f"quiet_hours: {exc} (or off)", "quiet_hours") from None
    return fields


@operation(contacts_api, "POST", "/contacts", summary="Create a contact, or update the one that has one of these addresses",
           scope="messages:write", request=NewContact,
           ok={201: Body(ContactView, "Created: no contact of the workspace had any of these addresses."),
               200: Body(ContactView, "Updated: the contact that had one of these addresses, with the fields given.")},
           errors=(409,))
def upsert_contact(body: NewContact) -> tuple[Response, int]:
    addresses: dict[str, str] = {channel: _address(channel, address) for channel, address in body.addresses.items()}
    fields = _fields(body)
    with transaction():
        try:
            view, created = contacts.upsert(g.workspace_id, addresses, fields)
        except contacts.AddressTaken as exc:
            raise _taken(exc, "these addresses belong to different contacts ({owners}); give one contact's at a time") from None
    return jsonify(view), 201 if created else 200


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
    addresses: dict[str, str | None] = {channel: None if address is None else _address(channel, address)
                                        for channel, address in (body.addresses or {}).items()}
    fields = _fields(body)
    with transaction():  # a refusal below rolls back what was changed before it
        try:
            view = contacts.change(g.workspace_id, contact_id, fields, addresses)
        except contacts.AddressTaken as exc:
            raise _taken(exc, "another contact has this address ({owners}); remove it there first") from None
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
