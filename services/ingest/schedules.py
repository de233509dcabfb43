"""Recurring schedules for the API: store, read, change, pause, resume and delete them. Every query
is scoped by workspace; the view (``services.ingest.schedules_api``) decides the next run.

Pausing or deleting a schedule also cancels its occurrence already materialised as a message and
not yet due (the scheduler materialises one a few seconds ahead), so nothing more is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from psycopg2.extras import Json

from common import lifecycle
from common.db.connection import fetch, fetch_dicts
from common.occurrences import MATERIALISE_AHEAD, occurrence_keys_like

_COLUMNS = ("id, cron, timezone, message, start_at, end_at, max_count, sent_count, paused, next_run_at,"
            " created_at, updated_at")
# Where a materialised occurrence waiting for its time can be: due within the materialising
# horizon (with room for a scheduler a little late), so the look-up stays on the index's near end.
_PENDING_WINDOW = MATERIALISE_AHEAD + timedelta(minutes=1)


def create(workspace_id: int, fields: Mapping[str, Any], next_run_at: datetime | None) -> dict[str, Any]:
    return fetch_dicts(
        f"""INSERT INTO schedule (workspace_id, cron, timezone, message, start_at, end_at, max_count, next_run_at)
            VALUES (%(ws)s, %(cron)s, %(timezone)s, %(message)s, %(start_at)s, %(end_at)s, %(max_count)s, %(next)s)
            RETURNING {_COLUMNS}""",
        {"ws": workspace_id, **fields, "message": Json(fields["message"]), "next": next_run_at})[0]


def listing(workspace_id: int, limit: int, after: int | None) -> list[dict[str, Any]]:
    """A page of the workspace's schedules, oldest first, after schedule id ``after``."""
    return fetch_dicts(f"SELECT {_COLUMNS} FROM schedule WHERE workspace_id = %s AND id > %s ORDER BY id LIMIT %s",
                       (workspace_id, after or 0, limit))


def get(workspace_id: int, schedule_id: int, *, lock: bool = False) -> dict[str, Any] | None:
    """The schedule; ``lock``: held until the transaction ends (the scheduler skips it meanwhile)."""
    rows = fetch_dicts(f"SELECT {_COLUMNS} FROM schedule WHERE workspace_id = %s AND id = %s"
                       + (" FOR UPDATE" if lock else ""), (workspace_id, schedule_id))
    return rows[0] if rows else None


def change(workspace_id: int, schedule_id: int, fields: Mapping[str, Any], next_run_at: datetime | None) -> dict[str, Any] | None:
    """Set ``fields`` (columns: cron, timezone, message, start_at, end_at, max_count) and the next run."""
    params: dict[str, Any] = {"ws": workspace_id, "id": schedule_id, "next": next_run_at}
    sets = ["next_run_at = %(next)s", "updated_at = now()"]
    for name, value in fields.items():
        sets.append(f"{name} = %({name})s")
        params[name] = Json(value) if name == "message" else value
    rows = fetch_dicts(f"UPDATE schedule SET {', '.join(sets)} WHERE workspace_id = %(ws)s AND id = %(id)s"
                       f" RETURNING {_COLUMNS}", params)
    return rows[0] if rows else None


def pause(workspace_id: int, schedule_id: int) -> dict[str, Any] | None:
    rows = fetch_dicts(f"UPDATE schedule SET paused = true, updated_at = now() WHERE workspace_id = %s AND id = %s"
                       f" RETURNING {_COLUMNS}", (workspace_id, schedule_id))
    if rows:
        cancel_materialised(workspace_id, schedule_id, "schedule paused")
    return rows[0] if rows else None


def resume(workspace_id: int, schedule_id: int, next_run_at: datetime | None) -> dict[str, Any] | None:
    rows = fetch_dicts(f"UPDATE schedule SET paused = false, next_run_at = %s, updated_at = now()"
                       f" WHERE workspace_id = %s AND id = %s RETURNING {_COLUMNS}", (next_run_at, workspace_id, schedule_id))
    return rows[0] if rows else None


def delete(workspace_id: int, schedule_id: int) -> dict[str, Any] | None:
    rows = fetch_dicts(f"DELETE FROM schedule WHERE workspace_id = %s AND id = %s RETURNING {_COLUMNS}",
                       (workspace_id, schedule_id))
    if rows:
        cancel_materialised(workspace_id, schedule_id, "schedule deleted")
    return rows[0] if rows else None


def cancel_materialised(workspace_id: int, schedule_id: int, why: str) -> int:
    """Cancel the schedule's occurrences that are messages still waiting for their time."""
    ids = [r[0] for r in fetch(
        "SELECT id FROM message WHERE status = 'scheduled' AND due_at <= now() + %s AND workspace_id = %s"
        " AND idempotency_key LIKE %s",
        (_PENDING_WINDOW, workspace_id, occurrence_keys_like(schedule_id)))]
    return len(lifecycle.advance(ids, ["scheduled"], "cancelled", detail={"by": why}))
