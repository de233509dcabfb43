"""Create or update contacts by any of their addresses, set-wise: one contact or 100,000 in a
handful of statements (``POST /v1/contacts`` and the imports both come here).

An address (channel and address) belongs to at most one contact of a workspace: contact_address's
primary key says so, and it is what keeps two requests that name the same new address from both
creating a contact. Each round:

1. **resolve** the addresses' owners in one query, locking their rows (in address order, so that
   two writers never each hold a row the other waits for) until the transaction ends;
2. **create** the contacts no address found, with ids drawn beforehand so that each item knows
   its contact, in one INSERT;
3. **claim** every address its contact does not have yet, in one ``INSERT ... ON CONFLICT DO
   NOTHING`` in address order. An address another transaction took meanwhile is not inserted
   (the insert waited for that transaction to commit): the items that lost one undo their claims
   and go to the next round, which finds the address's owner;
4. **update** the contacts found: their other addresses on the channels given are removed, and the
   fields each item gives are set, one statement each for all of them.

The caller runs this inside one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg2.extras import Json

from common.db.connection import fetch

FIELDS = ("name", "timezone", "locale", "quiet_hours", "attributes", "tags")
MAX_ROUNDS = 4  # a round is repeated only for items that lost an address to a concurrent request

Key = tuple[str, str]  # (channel, address)


@dataclass(frozen=True)
class Candidate:
    """One contact to create or update: its addresses (normalised) and the fields given (see ``FIELDS``)."""

    addresses: Mapping[str, str]
    fields: Mapping[str, Any]

    def keys(self) -> list[Key]:
        return sorted(self.addresses.items())


class Refused(Exception):
    """Why an item was not imported."""

    code = "invalid_request"
    status = 422

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.message, self.field = message, field


class AddressTaken(Refused):
    """The addresses given belong to more than one contact (``owners``: contact id -> its channels among them)."""

    code = "address_taken"
    status = 409

    def __init__(self, owners: Mapping[int, list[str]]):
        self.owners = dict(owners)
        self.said = ", ".join(f"{'/'.join(chs)} of contact {cid}" for cid, chs in sorted(self.owners.items()))
        first = next(iter(self.owners.values()), [""])[0]
        super().__init__(f"these addresses belong to different contacts ({self.said}); give one contact's at a time",
                         f"addresses.{first}" if first else "addresses")


class Contended(Refused):
    """Other requests kept taking this item's addresses round after round."""

    code = "conflict"
    status = 409


@dataclass
class Outcome:
    """What became of one item: its contact (created or updated), or why it was refused."""

    contact_id: int | None = None
    created: bool = False
    refused: Refused | None = None


@dataclass
class _Round:
    """The items of one round by what happens to them."""

    new: dict[int, int] = field(default_factory=dict)  # item -> id drawn for its contact
    found: dict[int, int] = field(default_factory=dict)  # item -> its existing contact
    claims: dict[Key, int] = field(default_factory=dict)  # address -> the item that claims it


def merge(workspace_id: int, items: Sequence[Candidate]) -> list[Outcome]:
    """Create or update a contact for each of ``items``; an outcome per item, in their order.

    An item is refused (and the rest go on) when it names an address an earlier item names, its
    addresses belong to two contacts, or its contact is the one an earlier item updates.
    """
    outcomes = [Outcome() for _ in items]
    pending = _distinct(items, outcomes)
    updated: dict[int, int] = {}  # contact -> the item that updates it
    for _ in range(MAX_ROUNDS):
        if not pending:
            break
        pending = _round(workspace_id, items, pending, outcomes, updated)
    for n in pending:
        outcomes[n].refused = Contended("other requests changed these addresses at the same time; send the item again",
                                        "addresses")
    return outcomes


def _distinct(items: Sequence[Candidate], outcomes: list[Outcome]) -> list[int]:
    """The items to merge: those that name no address an earlier item names."""
    first: dict[Key, int] = {}
    pending = []
    for n, item in enumerate(items):
        repeated = next(((key, first[key]) for key in item.keys() if key in first), None)
        if repeated is not None:
            (channel, address), earlier = repeated
            outcomes[n].refused = Refused(f"{channel} address {address} is also in item {earlier} of this request",
                                          f"addresses.{channel}")
            continue
        for key in item.keys():
            first[key] = n
        pending.append(n)
    return pending


def _round(workspace_id: int, items: Sequence[Candidate], pending: list[int], outcomes: list[Outcome],
           updated: dict[int, int]) -> list[int]:
    """One round over ``pending``; returns the items to try again (they lost an address to another request)."""
    owners = owners_of(workspace_id, [key for n in pending for key in items[n].keys()])
    plan = _Round()
    for n in pending:
        found: dict[int, list[str]] = {}
        for channel, address in items[n].keys():
            if (channel, address) in owners:
                found.setdefault(owners[channel, address], []).append(channel)
        if len(found) > 1:
            outcomes[n].refused = AddressTaken(found)
        elif found:
            contact_id = next(iter(found))
            if contact_id in updated:
                outcomes[n].refused = Refused(f"its contact {contact_id} is updated by item {updated[contact_id]} of this "
                                              "request; give each contact once", "addresses")
                continue
            updated[contact_id] = n
            plan.found[n] = contact_id
        else:
            plan.new[n] = 0
    for n, contact_id in zip(plan.new, _draw_ids(len(plan.new)), strict=True):
        plan.new[n] = contact_id
    for n in [*plan.new, *plan.found]:
        for key in items[n].keys():
            if key not in owners:
                plan.claims[key] = n
    _create(workspace_id, [(plan.new[n], items[n]) for n in plan.new])
    lost = _claim(workspace_id, plan)
    if lost:
        _undo(workspace_id, plan, lost)
        for n in lost:
            updated.pop(plan.found.pop(n, -1), None)
            plan.new.pop(n, None)
    _update(workspace_id, [(plan.found[n], items[n]) for n in plan.found])
    for n, contact_id in plan.new.items():
        outcomes[n].contact_id, outcomes[n].created = contact_id, True
    for n, contact_id in plan.found.items():
        outcomes[n].contact_id = contact_id
    return sorted(lost)


def owners_of(workspace_id: int, keys: Iterable[Key]) -> dict[Key, int]:
    """The contact of each of ``keys`` that has one, its row locked until the transaction ends."""
    given = sorted(set(keys))
    if not given:
        return {}
    rows = fetch(
        "SELECT a.channel, a.address, a.contact_id FROM contact_address a"
        " JOIN unnest(%s::text[], %s::text[]) AS given(channel, address) USING (channel, address)"
        " WHERE a.workspace_id = %s ORDER BY a.channel, a.address FOR UPDATE OF a",
        ([c for c, _ in given], [a for _, a in given], workspace_id))
    return {(channel, address): contact_id for channel, address, contact_id in rows}


def _draw_ids(count: int) -> list[int]:
    if not count:
        return []
    return [r[0] for r in fetch("SELECT nextval(pg_get_serial_sequence('contact', 'id')) FROM generate_series(1, %s)", (count,))]


def _create(workspace_id: int, made: list[tuple[int, Candidate]]) -> None:
    if not made:
        return
    fetch("INSERT INTO contact (id, workspace_id, name, timezone, locale, quiet_hours, attributes, tags)"
          " SELECT r.id, %s, r.name, r.timezone, r.locale, r.quiet_hours, coalesce(r.attributes, '{}'), coalesce(r.tags, '{}')"
          " FROM jsonb_to_recordset(%s) AS r(id bigint, name text, timezone text, locale text, quiet_hours text,"
          " attributes jsonb, tags text[])",
          (workspace_id, Json([{"id": contact_id, **item.fields} for contact_id, item in made])))


def _claim(workspace_id: int, plan: _Round) -> set[int]:
    """Give each claimed address to its item's contact; the items that lost one to another request."""
    if not plan.claims:
        return set()
    keys = sorted(plan.claims)
    owner = {n: plan.new.get(n) or plan.found[n] for n in set(plan.claims.values())}
    got = fetch(
        "INSERT INTO contact_address (workspace_id, channel, address, contact_id)"
        " SELECT %s, channel, address, contact_id FROM unnest(%s::text[], %s::text[], %s::bigint[])"
        " AS given(channel, address, contact_id) ORDER BY channel, address"
        " ON CONFLICT DO NOTHING RETURNING channel, address",
        (workspace_id, [c for c, _ in keys], [a for _, a in keys], [owner[plan.claims[k]] for k in keys]))
    taken = set(keys) - {(c, a) for c, a in got}
    return {plan.claims[key] for key in taken}


def _undo(workspace_id: int, plan: _Round, lost: set[int]) -> None:
    """Take back what the items in ``lost`` did this round: the contacts they created, the addresses they claimed."""
    created = [plan.new[n] for n in lost if n in plan.new]
    if created:
        fetch("DELETE FROM contact WHERE workspace_id = %s AND id = ANY(%s)", (workspace_id, created))
    claimed = sorted(key for key, n in plan.claims.items() if n in lost and n in plan.found)
    if claimed:
        fetch("DELETE FROM contact_address a USING unnest(%s::text[], %s::text[], %s::bigint[]) AS given(channel, address, contact_id)"
              " WHERE a.workspace_id = %s AND a.channel = given.channel AND a.address = given.address"
              " AND a.contact_id = given.contact_id",
              ([c for c, _ in claimed], [a for _, a in claimed], [plan.found[plan.claims[k]] for k in claimed], workspace_id))


def _update(workspace_id: int, found: list[tuple[int, Candidate]]) -> None:
    """Set the fields each item gives on its contact, and drop the contact's other addresses on the
    channels the item gives (its address there is replaced)."""
    if not found:
        return
    replaced = [(contact_id, channel, address) for contact_id, item in found for channel, address in item.keys()]
    fetch("DELETE FROM contact_address a USING unnest(%s::bigint[], %s::text[], %s::text[]) AS given(contact_id, channel, address)"
          " WHERE a.workspace_id = %s AND a.contact_id = given.contact_id AND a.channel = given.channel"
          " AND a.address <> given.address",
          ([r[0] for r in replaced], [r[1] for r in replaced], [r[2] for r in replaced], workspace_id))
    fetch("""UPDATE contact c SET updated_at = now(),
                 name = CASE WHEN r.given ? 'name' THEN r.given->>'name' ELSE c.name END,
                 timezone = CASE WHEN r.given ? 'timezone' THEN r.given->>'timezone' ELSE c.timezone END,
                 locale = CASE WHEN r.given ? 'locale' THEN r.given->>'locale' ELSE c.locale END,
                 quiet_hours = CASE WHEN r.given ? 'quiet_hours' THEN r.given->>'quiet_hours' ELSE c.quiet_hours END,
                 attributes = CASE WHEN r.given ? 'attributes' THEN r.given->'attributes' ELSE c.attributes END,
                 tags = CASE WHEN r.given ? 'tags' THEN ARRAY(SELECT jsonb_array_elements_text(r.given->'tags'))
                             ELSE c.tags END
             FROM jsonb_to_recordset(%s) AS r(id bigint, given jsonb)
             WHERE c.workspace_id = %s AND c.id = r.id""",
          (Json([{"id": contact_id, "given": dict(item.fields)} for contact_id, item in found]), workspace_id))
