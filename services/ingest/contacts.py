"""Contacts for the API: create or update one by any of its addresses, read, change and delete
it. Every query is scoped by workspace; the view (``services.ingest.contacts_api``) checks the
fields first.

An address (channel and address) belongs to at most one contact of a workspace. Whoever gives an
address to a contact first takes that address's advisory lock for the rest of the transaction, so
two requests naming the same new address run one after the other and the second finds the
first's contact, instead of both creating one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from psycopg2.extras import Json

from common.db.connection import fetch, fetch_dicts

FIELDS = ("name", "timezone", "locale", "quiet_hours", "attributes")
_VIEW = """
SELECT c.id, c.name, c.timezone, c.locale, c.quiet_hours, c.attributes, c.created_at, c.updated_at,
       (SELECT coalesce(jsonb_object_agg(a.channel, a.address), '{}') FROM contact_address a
        WHERE a.workspace_id = c.workspace_id AND a.contact_id = c.id) AS addresses
FROM contact c WHERE c.workspace_id = %s AND c.id = %s
"""


class AddressTaken(Exception):
    """The addresses given belong to another contact (``owners``: contact id -> its channels among them)."""

    def __init__(self, owners: Mapping[int, list[str]]):
        self.owners = dict(owners)
        super().__init__(", ".join(f"{'/'.join(chs)} of contact {cid}" for cid, chs in sorted(self.owners.items())))


def upsert(workspace_id: int, addresses: Mapping[str, str], fields: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Update the contact that has any of ``addresses``, or create one; returns its view and whether
    it was created. ``fields`` are the columns given (see ``FIELDS``); ``addresses`` replace the
    contact's on their channels.

    Raises:
      AddressTaken: the addresses belong to more than one contact.
    """
    _lock(workspace_id, addresses)
    owners = _owners(workspace_id, addresses)
    if len(owners) > 1:
        raise AddressTaken(owners)
    if owners:
        contact_id = next(iter(owners))
        _update(workspace_id, contact_id, fields)
        created = False
    else:
        contact_id = fetch(
            "INSERT INTO contact (workspace_id, name, timezone, locale, quiet_hours, attributes)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (workspace_id, fields.get("name"), fields.get("timezone"), fields.get("locale"), fields.get("quiet_hours"),
             Json(fields.get("attributes") or {})))[0][0]
        created = True
    _set_addresses(workspace_id, contact_id, addresses)
    view = get(workspace_id, contact_id)
    assert view is not None
    return view, created


def get(workspace_id: int, contact_id: int) -> dict[str, Any] | None:
    rows = fetch_dicts(_VIEW, (workspace_id, contact_id))
    return _view(rows[0]) if rows else None


def change(workspace_id: int, contact_id: int, fields: Mapping[str, Any],
           addresses: Mapping[str, str | None]) -> dict[str, Any] | None:
    """Set ``fields`` and replace the contact's address on each channel of ``addresses`` (None
    removes it); None when there is no such contact.

    Raises:
      AddressTaken: a new address belongs to another contact.
    """
    given = {channel: address for channel, address in addresses.items() if address is not None}
    _lock(workspace_id, given)
    taken = {owner: chs for owner, chs in _owners(workspace_id, given).items() if owner != contact_id}
    if not _update(workspace_id, contact_id, fields):
        return None
    if taken:
        raise AddressTaken(taken)
    _set_addresses(workspace_id, contact_id, addresses)
    return get(workspace_id, contact_id)


def delete(workspace_id: int, contact_id: int) -> dict[str, Any] | None:
    """Delete the contact and its addresses; returns it as it was, or None when there is none."""
    view = get(workspace_id, contact_id)
    if view is not None:
        fetch("DELETE FROM contact WHERE workspace_id = %s AND id = %s", (workspace_id, contact_id))
    return view


def _lock(workspace_id: int, addresses: Mapping[str, str]) -> None:
    """Hold each address's lock until the transaction ends (in one order, so that two requests
    never each hold a lock the other waits for)."""
    for channel, address in sorted(addresses.items()):
        fetch("SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))", (f"contact:{channel}:{address}", workspace_id))


def _owners(workspace_id: int, addresses: Mapping[str, str]) -> dict[int, list[str]]:
    """The contacts that have any of ``addresses``: contact id -> its channels among them."""
    if not addresses:
        return {}
    owners: dict[int, list[str]] = {}
    for contact_id, channel in fetch(
            "SELECT a.contact_id, a.channel FROM contact_address a"
            " JOIN unnest(%s::text[], %s::text[]) AS given(channel, address) USING (channel, address)"
            " WHERE a.workspace_id = %s ORDER BY a.channel",
            (list(addresses), list(addresses.values()), workspace_id)):
        owners.setdefault(contact_id, []).append(channel)
    return owners


def _update(workspace_id: int, contact_id: int, fields: Mapping[str, Any]) -> bool:
    """Set ``fields`` (and updated_at, for a change of addresses alone); False when there is no such contact."""
    sets = ["updated_at = now()"]
    params: dict[str, Any] = {"ws": workspace_id, "id": contact_id}
    for name in FIELDS:
        if name in fields:
            sets.append(f"{name} = %({name})s")
            params[name] = Json(fields[name]) if name == "attributes" else fields[name]
    return bool(fetch(f"UPDATE contact SET {', '.join(sets)} WHERE workspace_id = %(ws)s AND id = %(id)s RETURNING id",
                      params))


def _set_addresses(workspace_id: int, contact_id: int, addresses: Mapping[str, str | None]) -> None:
    """Replace the contact's address on each channel of ``addresses`` (None: remove it). The
    caller holds the new addresses' locks and has checked that no other contact has them."""
    if not addresses:
        return
    fetch("DELETE FROM contact_address WHERE workspace_id = %s AND contact_id = %s AND channel = ANY(%s)",
          (workspace_id, contact_id, list(addresses)))
    given = {channel: address for channel, address in addresses.items() if address is not None}
    if given:
        fetch("INSERT INTO contact_address (workspace_id, channel, address, contact_id)"
              " SELECT %s, channel, address, %s FROM unnest(%s::text[], %s::text[]) AS given(channel, address)",
              (workspace_id, contact_id, list(given), list(given.values())))


def _view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "addresses": row["addresses"], "name": row["name"], "timezone": row["timezone"],
            "locale": row["locale"], "quiet_hours": row["quiet_hours"], "attributes": row["attributes"],
            "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"])}


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None
