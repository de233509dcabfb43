"""REST API v1 for the suppression list: list it a page at a time, add entries, lift one.

Entries also come from providers (21610, bounces), complaints, unsubscribe links and inbound STOP
keywords; routing ends every message to a listed address as ``suppressed`` (``common.suppression``).
Addresses are normalised as a message's ``to`` is (``services.ingest.outgoing``), so an entry
matches the messages sent to that person. ``DELETE`` names its entry in the query
(``?channel=sms&address=%2B15005550006``), as ``GET`` filters do: a DELETE body is dropped by
some clients and proxies.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from common import cursors, suppression
from common.db.connection import transaction
from services.ingest import outgoing
from services.ingest.contract import Body, operation, query
from services.ingest.errors import ApiError
from services.ingest.models import CHANNELS, MAX_RECIPIENT
from services.ingest.suppression_models import (
    NewSuppressions,
    SuppressionPage,
    SuppressionsAdded,
    SuppressionView,
)
from services.ingest.validation import query_int

suppressions_api = Blueprint("suppressions", __name__, url_prefix="/v1")
MAX_LIMIT = 500
DEFAULT_LIMIT = 100
MAX_CURSOR = 600  # a cursor carries an address of up to MAX_RECIPIENT characters, base64-encoded
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # as models.SingleLine refuses
_ADDRESS_DOC = "Phone numbers in E.164 (encode `+` as `%2B`), or any form a message's `to` takes."


def _required(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {**query(name, description, **schema), "required": True}


def _view(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "created_at": entry["created_at"].isoformat()}


def _address(channel: str, address: str, field: str) -> str:
    """``address`` as messages store it on ``channel``; 422 naming ``field``. A query string's
    ``+`` arrives as a space when the client did not encode it: read back as the ``+`` it was."""
    if channel in outgoing.PHONE_CHANNELS and address[:1] == " " and address[1:2].isdigit():
        address = "+" + address[1:]
    return outgoing.normalized_identity(channel, address, field)


def _query_choice(name: str, choices: tuple[str, ...]) -> str | None:
    value = request.args.get(name)
    if value is not None and value not in choices:
        raise ApiError(422, "invalid_request", f"{name} must be one of: {', '.join(choices)}", name)
    return value


def _query_address(name: str, *, required: bool) -> str | None:
    value = request.args.get(name)
    if value is None and not required:
        return None
    if value is None or not 0 < len(value) <= MAX_RECIPIENT:
        raise ApiError(422, "invalid_request", f"{name} is required: 1 to {MAX_RECIPIENT} characters", name)
    if _CONTROL.search(value):
        raise ApiError(422, "invalid_request", f"{name} contains a control character", name)
    return value


def _candidates(channel: str | None, address: str) -> list[str]:
    """The stored forms ``address`` may have: on ``channel`` its one form, else each channel's."""
    if channel is not None:
        return [_address(channel, address, "address")]
    forms = {address}
    for each in ("sms", "email"):
        try:
            forms.add(_address(each, address, "address"))
        except ApiError:
            pass  # not an address of that kind
    return sorted(forms)


@operation(suppressions_api, "GET", "/suppressions", summary="List the suppression list, newest first", scope="messages:read",
           errors=(422,), ok={200: Body(SuppressionPage, "A page of the workspace's entries, newest first.")},
           headers=[query("channel", "Only this channel's entries.", enum=list(CHANNELS)),
                    query("address", "Only this address's entries. " + _ADDRESS_DOC, minLength=1, maxLength=MAX_RECIPIENT),
                    query("reason", "Only entries with this reason.", enum=list(suppression.REASONS)),
                    query("limit", f"Entries per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}).",
                          type="integer", minimum=1, maximum=MAX_LIMIT),
                    query("cursor", "The previous page's `next_cursor`.", maxLength=MAX_CURSOR)])
def list_suppressions() -> tuple[Response, int]:
    channel = _query_choice("channel", CHANNELS)
    reason = _query_choice("reason", suppression.REASONS)
    address = _query_address("address", required=False)
    addresses = _candidates(channel, address) if address is not None else None
    limit = query_int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = None
    if (cursor := request.args.get("cursor")) is not None:
        try:
            after = suppression.parse_cursor(cursor)
        except cursors.BadCursor:
            raise ApiError(422, "invalid_request", "cursor must be a next_cursor this API returned", "cursor") from None
    with transaction():
        found = suppression.page(g.workspace_id, channel=channel, addresses=addresses, reason=reason, limit=limit, after=after)
    return jsonify({"suppressions": [_view(e) for e in found.entries], "next_cursor": found.next_cursor}), 200


@operation(suppressions_api, "POST", "/suppressions", summary="Add addresses to the suppression list", scope="messages:write",
           request=NewSuppressions,
           ok={201: Body(SuppressionsAdded, "At least one entry is new; each entry as now stored."),
               200: Body(SuppressionsAdded, "Every address was suppressed already; each entry as stored.")})
def add_suppressions(body: NewSuppressions) -> tuple[Response, int]:
    entries = [{"workspace_id": g.workspace_id, "channel": item.channel,
                "address": _address(item.channel, item.address, f"suppressions[{n}].address"),
                "reason": item.reason, "source": item.source or "api"} for n, item in enumerate(body.suppressions)]
    with transaction():
        added = suppression.add_returning(entries)
        stored = {(e["channel"], e["address"]): e for e in
                  suppression.entries(g.workspace_id, [(e["channel"], e["address"]) for e in entries])}
    views = [_view(stored[(e["channel"], e["address"])]) for e in entries]
    return jsonify({"added": len(added), "suppressions": views}), 201 if added else 200


@operation(suppressions_api, "DELETE", "/suppressions", summary="Lift an address's suppression on a channel",
           scope="messages:write", errors=(404, 422),
           ok={200: Body(SuppressionView, "The entry as it was; the address may be sent to again on this channel.")},
           headers=[_required("channel", "The entry's channel.", enum=list(CHANNELS)),
                    _required("address", "The entry's address. " + _ADDRESS_DOC, minLength=1, maxLength=MAX_RECIPIENT)])
def delete_suppression() -> tuple[Response, int]:
    channel = _query_choice("channel", CHANNELS)
    if channel is None:
        raise ApiError(422, "invalid_request", f"channel is required: one of {', '.join(CHANNELS)}", "channel")
    address = _address(channel, _query_address("address", required=True) or "", "address")
    with transaction():
        removed = suppression.remove_returning(g.workspace_id, channel, address)
    if removed is None:
        raise ApiError(404, "not_found", f"{address} is not suppressed on {channel} in this workspace")
    return jsonify(_view(removed)), 200
