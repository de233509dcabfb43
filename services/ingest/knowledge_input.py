"""Knowledge items as given to the API made ready to store: one checked (``item``), or an import's
many (JSON items or CSV rows), each valid one kept and each refused one reported by its position.

An item's ``language`` is stored as a PostgreSQL text search configuration; left out, it is the
workspace's first chatbot's (``common.chatbots.first_language``), else English. Within one import a
title (any case) counts once: a later item with an earlier one's title is refused, since one
statement cannot update a row twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from common.knowledge import REGCONFIG
from services.ingest import csv_import
from services.ingest.errors import ApiError
from services.ingest.knowledge_models import MAX_IMPORT, KnowledgeItemNew
from services.ingest.validation import describe

CSV_COLUMNS = ("title", "body", "source_url", "tags", "language")
CSV_TAGS = re.compile(r"\|")


def item(body: KnowledgeItemNew, default_language: str) -> dict[str, Any]:
    """``body`` as ``common.knowledge`` stores it (language as a regconfig)."""
    return {"title": body.title.strip(), "body": body.body, "source_url": body.source_url,
            "tags": list(dict.fromkeys(body.tags)), "language": REGCONFIG[body.language or default_language]}


@dataclass
class Checked:
    """An import's items: the valid ones with their positions, and each refused one's error."""

    default_language: str
    items: list[dict[str, Any]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    failures: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    _titles: set[str] = field(default_factory=set)

    def add(self, position: int, raw: Any) -> None:
        if not isinstance(raw, dict):
            self.refuse(position, "an item must be an object, as the body of POST /v1/knowledge-items", "body")
            return
        try:
            body = KnowledgeItemNew.model_validate(raw)
        except ValidationError as exc:
            field_name, message = describe(KnowledgeItemNew, exc.errors(include_url=False)[0])
            self.refuse(position, message, field_name)
            return
        stored = item(body, self.default_language)
        if stored["title"].lower() in self._titles:
            self.refuse(position, "an earlier item of this import has the same title", "title")
            return
        self._titles.add(stored["title"].lower())
        self.items.append(stored)
        self.positions.append(position)

    def refuse(self, position: int, message: str, field_name: str | None) -> None:
        self.failures.append((position, {"code": "invalid_request", "message": message, "field": field_name}))


def check_items(items: list[Any], default_language: str) -> Checked:
    checked = Checked(default_language)
    for index, raw in enumerate(items):
        checked.add(index, raw)
    return checked


def check_csv(raw: bytes, default_language: str) -> Checked:
    """The rows of a CSV import, each checked as a create body; 422 naming ``body`` when the CSV
    itself is unusable (not UTF-8, malformed, no title and body columns, too many rows)."""
    checked = Checked(default_language)
    for line, cells in csv_import.rows(raw, _header, max_rows=MAX_IMPORT,
                                       empty="the CSV has no items: a header row, then an item per row"):
        if isinstance(cells, str):
            checked.refuse(line, cells, "body")
        else:
            checked.add(line, _item(cells))
    return checked


def _header(header: list[str] | None) -> list[str]:
    names = [h.strip().lower() for h in header or []]
    if "title" not in names or "body" not in names:
        raise ApiError(422, "invalid_request", "the CSV's first row must name its columns: title, body, and optionally "
                       "source_url, tags, language", "body")
    unknown = next((n for n in names if n not in CSV_COLUMNS), None)
    if unknown is not None or len(set(names)) != len(names):
        raise ApiError(422, "invalid_request", f"the CSV's header names each of {', '.join(CSV_COLUMNS)} at most once"
                       + (f"; {unknown[:64]!r} is none of them" if unknown is not None else ""), "body")
    return names


def _item(cells: dict[str, str]) -> dict[str, Any]:
    """A CSV row as a create body: empty cells give nothing."""
    out: dict[str, Any] = {}
    for name, cell in cells.items():
        value = cell.strip() if name != "body" else cell
        if not value.strip():
            continue
        out[name] = [t.strip() for t in CSV_TAGS.split(value) if t.strip()] if name == "tags" else value
    return out
