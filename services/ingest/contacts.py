"""Contacts for the API: create or update one by any of its addresses, list them page by page
with filters, read, change and delete one. Every query is scoped by workspace; the view
(``services.ingest.contacts_api``) checks the fields first.

Creating and updating by address, for one contact or an import of many, is
``services.ingest.contact_merge``; a change of addresses here follows its rules: an address
belongs to one contact, and one that another request gave away meanwhile is refused, not stolen.
A contact's ``external_id`` (its id in the caller's own system) is unique in the workspace in the
same way, and finds it (``by_external_id``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import peewee
import psycopg2
from psycopg2.extras import Json

from common.db.connection import fetch, fetch_dicts
from services.ingest.contact_merge import FIELDS, AddressTaken, Candidate, Refused, merge, owners_of

__all__ = ["FIELDS", "AddressTaken", "ExternalIdTaken", "Filters", "by_external_id", "change", "delete", "get", "listing",
           "set_external_id", "upsert"]

# A contact's addresses by its id alone (its addresses are of its workspace: contact_address's foreign
# key): with the workspace too, a planner without statistics yet (just after an import) would also
# scan the workspace's part of the primary key, for each contact.
_COLUMNS = """c.id, c.external_id, c.name, c.timezone, c.locale, c.quiet_hours, c.attributes, c.tags, c.created_at, c.updated_at,
       (SELECT coalesce(jsonb_object_agg(a.channel, a.address), '{}') FROM contact_address a
        WHERE a.contact_id = c.id) AS addresses"""


@dataclass(frozen=True)
class Filters:
    """What a listing's contacts must all have: every one of ``tags``, each attribute equal to one
    of its values, and an address on ``channel`` (equal to ``address``, when given)."""

    tags: list[str] = field(default_factory=list)
    attributes: list[tuple[str, list[Any]]] = field(default_factory=list)
    channel: str | None = None
    address: str | None = None
    external_id: str | None = None


class ExternalIdTaken(Refused):
    """Another contact of the workspace has this external id (it names one contact)."""

    code = "external_id_taken"
    status = 409

    def __init__(self, external_id: str, owner: int | None):
        self.owner = owner
        whose = f"contact {owner}" if owner is not None else "another contact"
        super().__init__(f"external_id {external_id!r} belongs to {whose}; clear it there first", "external_id")


def attribute_values(raw: str) -> list[Any]:
    """The stored values an attribute filter's text matches: the string itself, and the number or
    boolean it spells (``3`` matches 3 and "3", ``true`` matches true and "true")."""
    values: list[Any] = [raw]
    try:
        parsed = json.loads(raw)
    except ValueError:
        return values
    if isinstance(parsed, bool) or (isinstance(parsed, int | float) and math.isfinite(parsed)):
        values.append(parsed)
    return values


def upsert(workspace_id: int, addresses: Mapping[str, str], fields: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Update the contact that has any of ``addresses``, or create one; returns its view and whether
    it was created. ``fields`` are the columns given (see ``FIELDS``); ``addresses`` replace the
    contact's on their channels.

    Raises:
      Refused: ``AddressTaken`` when the addresses belong to more than one contact.
    """
    outcome = merge(workspace_id, [Candidate(addresses, fields)])[0]
    if outcome.refused is not None:
        raise outcome.refused
    assert outcome.contact_id is not None
    view = get(workspace_id, outcome.contact_id)
    assert view is not None
    return view, outcome.created


def get(workspace_id: int, contact_id: int) -> dict[str, Any] | None:
    rows = fetch_dicts(f"SELECT {_COLUMNS} FROM contact c WHERE c.workspace_id = %s AND c.id = %s", (workspace_id, contact_id))
    return _view(rows[0]) if rows else None


def by_external_id(workspace_id: int, external_id: str) -> dict[str, Any] | None:
    """The contact the caller's own system knows as ``external_id`` (unique in the workspace), or None."""
    rows = fetch_dicts(f"SELECT {_COLUMNS} FROM contact c WHERE c.workspace_id = %s AND c.external_id = %s",
                       (workspace_id, external_id))
    return _view(rows[0]) if rows else None


def set_external_id(workspace_id: int, contact_id: int, external_id: str | None) -> dict[str, Any] | None:
    """Give the contact ``external_id`` (None clears it); returns its view, None when there is no
    such contact.

    Raises:
      ExternalIdTaken: another contact of the workspace has it (also when one took it meanwhile:
        the unique index ``contact_external_id`` decides; the caller's transaction is then spent).
    """
    try:
        rows = fetch(
            """WITH taken AS (SELECT id FROM contact WHERE workspace_id = %(ws)s AND external_id = %(ext)s AND id <> %(id)s),
               changed AS (UPDATE contact SET external_id = %(ext)s, updated_at = now()
                           WHERE workspace_id = %(ws)s AND id = %(id)s AND NOT EXISTS (SELECT 1 FROM taken) RETURNING id)
               SELECT (SELECT id FROM taken LIMIT 1), (SELECT id FROM changed)""",
            {"ws": workspace_id, "id": contact_id, "ext": external_id})
    except (peewee.IntegrityError, psycopg2.IntegrityError):
        raise ExternalIdTaken(str(external_id), None) from None
    owner, _ = rows[0]
    if owner is not None:
        raise ExternalIdTaken(str(external_id), owner)
    return get(workspace_id, contact_id)


def listing(workspace_id: int, after: int, limit: int, filters: Filters) -> list[dict[str, Any]]:
    """Up to ``limit`` contacts with an id above ``after``, in id order, that pass ``filters``."""
    where = ["c.workspace_id = %(ws)s", "c.id > %(after)s"]
    params: dict[str, Any] = {"ws": workspace_id, "after": after, "limit": limit}
    if filters.tags:
        where.append("c.tags @> %(tags)s::text[]")
        params["tags"] = filters.tags
    for n, (name, values) in enumerate(filters.attributes):
        ors = []
        for m, value in enumerate(values):
            params[f"attr{n}_{m}"] = Json({name: value})
            ors.append(f"c.attributes @> %(attr{n}_{m})s")
        where.append(f"({' OR '.join(ors)})")
    if filters.external_id is not None:  # one contact at most, by contact_external_id
        where.append("c.external_id = %(external_id)s")
        params["external_id"] = filters.external_id
    if filters.address is not None:  # one contact at most, found by the address's key
        params["channel"], params["address"] = filters.channel, filters.address
        where.append("c.id = (SELECT f.contact_id FROM contact_address f WHERE f.workspace_id = %(ws)s"
                     " AND f.channel = %(channel)s AND f.address = %(address)s)")
    elif filters.channel is not None:
        params["channel"] = filters.channel
        where.append("EXISTS (SELECT 1 FROM contact_address f WHERE f.contact_id = c.id AND f.channel = %(channel)s)")
    rows = fetch_dicts(f"SELECT {_COLUMNS} FROM contact c WHERE {' AND '.join(where)} ORDER BY c.id LIMIT %(limit)s", params)
    return [_view(r) for r in rows]


def change(workspace_id: int, contact_id: int, fields: Mapping[str, Any],
           addresses: Mapping[str, str | None]) -> dict[str, Any] | None:
    """Set ``fields`` and replace the contact's address on each channel of ``addresses`` (None
    removes it); None when there is no such contact.

    Raises:
      AddressTaken: a new address belongs to another contact.
    """
    given = {channel: address for channel, address in addresses.items() if address is not None}
    taken = _others(workspace_id, contact_id, given)
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


def _others(workspace_id: int, contact_id: int, addresses: Mapping[str, str]) -> dict[int, list[str]]:
    """The other contacts that have any of ``addresses`` (their rows locked): contact id -> its channels among them."""
    found: dict[int, list[str]] = {}
    for (channel, _), owner in sorted(owners_of(workspace_id, addresses.items()).items()):
        if owner != contact_id:
            found.setdefault(owner, []).append(channel)
    return found


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
    """Replace the contact's address on each channel of ``addresses`` (None: remove it).

    Raises:
      AddressTaken: another request gave a new address to another contact since it was looked up.
    """
    if not addresses:
        return
    fetch("DELETE FROM contact_address WHERE workspace_id = %s AND contact_id = %s AND channel = ANY(%s)",
          (workspace_id, contact_id, list(addresses)))
    given = sorted((channel, address) for channel, address in addresses.items() if address is not None)
    if not given:
        return
    got = fetch("INSERT INTO contact_address (workspace_id, channel, address, contact_id)"
                " SELECT %s, channel, address, %s FROM unnest(%s::text[], %s::text[]) AS given(channel, address)"
                " ORDER BY channel, address ON CONFLICT DO NOTHING RETURNING channel",
                (workspace_id, contact_id, [c for c, _ in given], [a for _, a in given]))
    if len(got) < len(given):
        raise AddressTaken(_others(workspace_id, contact_id, dict(given)))


def _view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "external_id": row["external_id"], "addresses": row["addresses"], "name": row["name"],
            "timezone": row["timezone"], "locale": row["locale"], "quiet_hours": row["quiet_hours"], "attributes": row["attributes"],
            "tags": row["tags"], "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"])}


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None
