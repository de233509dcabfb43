"""Opaque page cursors: a keyset position (the last item's sort values) as URL-safe text.

A listing hands out ``encode([...])`` as ``next_cursor`` and reads it back with ``decode``; the
caller checks the values' types, so a cursor it did not make is refused as one, never trusted.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


class BadCursor(ValueError):
    """Not a cursor ``encode`` made."""


def encode(position: list[Any]) -> str:
    """``position`` (JSON values) as an opaque, URL-safe cursor."""
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode().rstrip("=")


def decode(cursor: str) -> list[Any]:
    """The position ``encode`` was given.

    Raises:
      BadCursor: not base64 of a JSON list.
    """
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor(cursor) from None
    if not isinstance(position, list):
        raise BadCursor(cursor)
    return position
