"""What a client sends about contacts, checked: a contact's addresses (normalised as messages
store them) and fields, and the items of an import (JSON items or CSV rows), each checked on
its own so that a bad one is reported by its position while the others are imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from common.quiet_hours import QuietHours, parse_timezone
from services.ingest import csv_import, outgoing
from services.ingest.contact_merge import FIELDS, Candidate
from services.ingest.contact_models import (
    ATTRIBUTE_NAME,
    MAX_ATTRIBUTES,
    MAX_IMPORT,
    ContactChange,
    NewContact,
)
from services.ingest.errors import ApiError
from services.ingest.models import CHANNELS
from services.ingest.validation import describe

OFF = "off"
CSV_FIELDS = ("name", "timezone", "locale", "quiet_hours", "tags")
CSV_TAGS = re.compile(r"[|;]")  # a cell's tags are separated by either (a contact tag holds neither)


def address(channel: str, given: str) -> str:
    """The address as messages store it (a number in E.164, an email address with its domain in
    lower case); 422 naming ``addresses.<channel>`` otherwise."""
    return outgoing.normalized_identity(channel, given, f"addresses.{channel}")


def fields_of(body: NewContact | ContactChange) -> dict[str, Any]:
    """The contact's columns given in ``body``, checked (quiet hours in their canonical form, tags once each)."""
    fields = {name: getattr(body, name) for name in FIELDS if name in body.model_fields_set}
    for name, empty in (("attributes", "{}"), ("tags", "[]")):
        if name in fields and fields[name] is None:
            raise ApiError(422, "invalid_request", f"{name} cannot be null; send {empty} to remove them all", name)
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
    if "tags" in fields:
        fields["tags"] = list(dict.fromkeys(fields["tags"]))
    return fields


def candidate(body: NewContact) -> Candidate:
    """``body`` as a contact to create or update; 422 naming the field at fault."""
    return Candidate({channel: address(channel, given) for channel, given in body.addresses.items()}, fields_of(body))


@dataclass
class Checked:
    """An import's items checked: the valid ones as candidates with their positions (an item's
    index, a row's line), and each refused one's position and error (``ErrorDetail``'s fields)."""

    candidates: list[Candidate] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    failures: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def add(self, position: int, item: Any, columns: bool = False) -> None:
        """Check ``item`` (a create body); ``columns``: name a CSV column as the field at fault."""
        try:
            if not isinstance(item, dict):
                raise ApiError(422, "invalid_request", "an item must be an object, as the body of POST /v1/contacts", "body")
            try:
                body = NewContact.model_validate(item)
            except ValidationError as exc:
                raise _refusal(exc, columns) from None
            self.candidates.append(candidate(body))
            self.positions.append(position)
        except ApiError as exc:
            self.refuse(position, exc.code, exc.message, _column(exc.field) if columns else exc.field)

    def refuse(self, position: int, code: str, message: str, field: str | None) -> None:
        self.failures.append((position, {"code": code, "message": message, "field": field}))


def _refusal(exc: ValidationError, columns: bool) -> ApiError:
    errors = exc.errors(include_url=False)
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    field, message = describe(NewContact, first)
    loc = first["loc"]
    if columns and len(loc) > 1 and loc[0] in ("attributes", "addresses") and isinstance(loc[1], str):
        field = loc[1]  # the CSV column
    return ApiError(422, "invalid_request", message, field)


def _column(field: str | None) -> str | None:
    """A field of the create body as the CSV column it came from (``addresses.sms``: ``sms``)."""
    return field.removeprefix("addresses.") if field else field


def check_items(items: list[Any]) -> Checked:
    checked = Checked()
    for index, item in enumerate(items):
        checked.add(index, item)
    return checked


def check_csv(raw: bytes) -> Checked:
    """The rows of a CSV import, each checked as a create body; 422 naming ``body`` when the CSV
    itself is unusable (not UTF-8, no header naming an address column, too many rows)."""
    checked = Checked()
    for line, cells in csv_import.rows(raw, _header, max_rows=MAX_IMPORT,
                                       empty="the CSV has no contacts: a header row, then a contact per row"):
        if isinstance(cells, str):
            checked.refuse(line, "invalid_request", cells, "body")
        else:
            checked.add(line, _item(cells), columns=True)
    return checked


def _header(header: list[str] | None) -> list[str]:
    names = [h.strip() for h in header or []]
    if not set(names) & set(CHANNELS):
        raise ApiError(422, "invalid_request", "the CSV's first row must name its columns, among them an address column: "
                       + ", ".join(CHANNELS), "body")
    if len(set(names)) != len(names) or "" in names:
        raise ApiError(422, "invalid_request", "the CSV's header names each column once", "body")
    attributes = [n for n in names if n not in CHANNELS and n not in CSV_FIELDS]
    if len(attributes) > MAX_ATTRIBUTES:
        raise ApiError(422, "invalid_request", f"a contact has at most {MAX_ATTRIBUTES} attributes; the header names "
                       f"{len(attributes)} other columns", "body")
    bad = next((n for n in attributes if not re.fullmatch(ATTRIBUTE_NAME, n)), None)
    if bad is not None:
        raise ApiError(422, "invalid_request", f"column {bad[:64]!r} is neither an address, a field nor an attribute name "
                       "(letters, digits, _ . : -, up to 64)", "body")
    return names


def _item(cells: dict[str, str]) -> dict[str, Any]:
    """A CSV row as a create body: empty cells give nothing."""
    item: dict[str, Any] = {"addresses": {}}
    attributes: dict[str, str] = {}
    for name, cell in cells.items():
        value = cell.strip()
        if not value:
            continue
        if name in CHANNELS:
            item["addresses"][name] = value
        elif name == "tags":
            item["tags"] = [t.strip() for t in CSV_TAGS.split(value) if t.strip()]
        elif name in CSV_FIELDS:
            item[name] = value
        else:
            attributes[name] = value
    if attributes:
        item["attributes"] = attributes
    return item

