"""The reading every CSV import shares (contacts, knowledge items): UTF-8 (a byte-order mark
allowed), a header row checked by the caller, then each non-blank record with the line it starts
on (a quoted cell may span lines), at most ``max_rows`` of them.

What is wrong with the CSV as a whole is a 422 naming ``body``; a record with another number of
fields than the header names is handed back as a message for the caller to report by its line,
so that the other rows are still imported.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator

from services.ingest.errors import ApiError

Header = Callable[[list[str] | None], list[str]]


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, "body")


def records(raw: bytes) -> Iterator[tuple[int, list[str]]]:
    """Each CSV record with the line it starts on."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _invalid("the CSV must be UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    line = 1
    try:
        for row in reader:
            yield line, row
            line = reader.line_num + 1
    except csv.Error as exc:
        raise _invalid(f"the CSV is malformed at line {reader.line_num}: {exc}") from None


def rows(raw: bytes, header: Header, *, max_rows: int, empty: str) -> Iterator[tuple[int, dict[str, str] | str]]:
    """The data rows of ``raw``: each non-blank one's line and its cells by column name (``header``
    checks the first row and returns the column names, each once), or, for a row with another number
    of fields, the message saying so. 422 past ``max_rows`` rows, and with ``empty`` when there is none."""
    found = records(raw)
    first = next(found, None)
    columns = header(first[1] if first else None)
    count = 0
    for line, row in found:
        if not any(cell.strip() for cell in row):
            continue
        count += 1
        if count > max_rows:
            raise _invalid(f"a CSV import holds at most {max_rows:,} rows; send the rest in another")
        if len(row) != len(columns):
            yield line, f"line {line} has {len(row)} fields; the header names {len(columns)}"
        else:
            yield line, dict(zip(columns, row, strict=True))
    if not count:
        raise _invalid(empty)
