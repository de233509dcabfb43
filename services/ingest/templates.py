"""Templates for the API: store one (its variables found once, here), read, delete, and load one
to check or render a message with. Every query is scoped by workspace; the view
(``services.ingest.templates_api``) checks the fields first.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from psycopg2.extras import Json

from common.db.connection import fetch_dicts

_COLUMNS = "id, name, channel, subject, text, html, whatsapp, variables, created_at, updated_at"


class NameTaken(Exception):
    """The workspace already has a template with this name."""


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def create(workspace_id: int, fields: Mapping[str, Any], variables: list[str]) -> dict[str, Any]:
    """Store a template; returns its view.

    Raises:
      NameTaken: the workspace has a template with this name (nothing is stored).
    """
    rows = fetch_dicts(
        f"""INSERT INTO template (workspace_id, name, channel, subject, text, html, whatsapp, variables)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (workspace_id, name) DO NOTHING RETURNING {_COLUMNS}""",
        (workspace_id, fields["name"], fields["channel"], fields.get("subject"), fields.get("text"), fields.get("html"),
         Json(fields["whatsapp"]) if fields.get("whatsapp") else None, variables))
    if not rows:
        raise NameTaken(fields["name"])
    return _view(rows[0])


def get(workspace_id: int, template_id: int) -> dict[str, Any] | None:
    """The template's view (which ``common.templates.render`` takes as the row), or None."""
    rows = fetch_dicts(f"SELECT {_COLUMNS} FROM template WHERE workspace_id = %s AND id = %s", (workspace_id, template_id))
    return _view(rows[0]) if rows else None


def delete(workspace_id: int, template_id: int) -> dict[str, Any] | None:
    """Delete the template; returns it as it was, or None. Messages not yet rendered with it fail."""
    rows = fetch_dicts(f"DELETE FROM template WHERE workspace_id = %s AND id = %s RETURNING {_COLUMNS}",
                       (workspace_id, template_id))
    return _view(rows[0]) if rows else None

