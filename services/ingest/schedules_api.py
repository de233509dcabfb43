"""REST API v1 for recurring schedules: create, list, read, change, pause, resume and delete them.

A schedule sends its message at every occurrence of a cron expression read in an IANA time zone.
Ingest validates it and sets its next run (``next_run_at``); the scheduler turns each occurrence
into a scheduled message a few seconds ahead (``services.scheduler.recurring``). Storing,
changing or resuming a schedule wakes the scheduler, which may need to wake sooner.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, g, jsonify

from common import intake
from common.config import settings
from common.db.connection import transaction
from common.occurrences import Plan
from common.recurrence import parse
from services.ingest import outgoing, schedules
from services.ingest.contract import Body, operation, query
from services.ingest.errors import ApiError
from services.ingest.models import NewMessage
from services.ingest.schedule_models import (
    NEXT_OCCURRENCES,
    NOT_FOR_SCHEDULES,
    NewSchedule,
    ScheduleChange,
    ScheduleList,
    ScheduleView,
)
from services.ingest.validation import query_int

schedules_api = Blueprint("schedules", __name__, url_prefix="/v1")
MAX_PAGE = 200
_TIMING = ("cron", "timezone", "start", "end", "max_count")  # a change to any recomputes the next run
_COLUMN = {"start": "start_at", "end": "end_at"}


def _missing(schedule_id: int) -> ApiError:
    return ApiError(404, "not_found", f"no schedule {schedule_id} in this workspace")


def _content(message: NewMessage) -> dict[str, Any]:
    """The message fields a schedule stores, checked as ``POST /v1/messages`` checks them."""
    for name in NOT_FOR_SCHEDULES:
        if name in message.model_fields_set:
            raise ApiError(422, "invalid_request", f"message.{name} does not apply to a schedule: its cron and timezone "
                           "decide when each occurrence is sent", f"message.{name}")
    try:
        with transaction():
            checked = outgoing.resolve(g.workspace_id, message)
    except ApiError as exc:
        raise ApiError(exc.status, exc.code, f"message: {exc.message}", f"message.{exc.field}" if exc.field else "message") from None
    return {name: value for name, value in checked.items() if name not in NOT_FOR_SCHEDULES}


def _instant(value: str | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        if parsed.tzinfo is None:
            raise ApiError(422, "invalid_request", f"{field} needs a UTC offset, e.g. 2026-12-01T00:00:00-05:00", field)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ApiError(422, "invalid_request", f"{field} must be an RFC 3339 time such as 2026-12-01T00:00:00-05:00", field) from None


def _plan(fields: Mapping[str, Any], sent_count: int, now: datetime) -> Plan:
    """The schedule's plan from its columns, each checked; 422 naming the field at fault."""
    try:
        recurrence = parse(fields["cron"], fields["timezone"])
    except ValueError as exc:  # "cron: ..." or "timezone: ..."
        raise ApiError(422, "invalid_request", str(exc), str(exc).partition(":")[0]) from None
    start, end = fields["start_at"], fields["end_at"]
    horizon = settings.postroom_schedule_horizon_days
    if start is not None and start - now > timedelta(days=horizon):
        raise ApiError(422, "invalid_request", f"start is more than {horizon:g} days ahead", "start")
    if start is not None and end is not None and end <= start:
        raise ApiError(422, "invalid_request", "end must be after start", "end")
    return Plan(recurrence, start, end, fields["max_count"], sent_count)


def _view(row: Mapping[str, Any], *, occurrences: bool = True) -> dict[str, Any]:
    finished = row["next_run_at"] is None
    out: dict[str, Any] = {
        "id": row["id"], "cron": row["cron"], "timezone": row["timezone"], "message": row["message"],
        "start": _iso(row["start_at"]), "end": _iso(row["end_at"]), "max_count": row["max_count"],
        "sent_count": row["sent_count"], "status": "finished" if finished else "paused" if row["paused"] else "active",
        "next_run_at": _iso(row["next_run_at"]), "next_occurrences": None,
        "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"]),
    }
    if occurrences:
        out["next_occurrences"] = [] if row["paused"] else [_iso(at) for at in _upcoming(row)]
    return out


def _upcoming(row: Mapping[str, Any]) -> list[datetime]:
    try:
        return Plan.of(row).upcoming(row["next_run_at"], NEXT_OCCURRENCES)
    except ValueError:  # its time zone left the tz database since: the scheduler logs it
        return []


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


@operation(schedules_api, "POST", "/schedules", summary="Send a message at every occurrence of a cron expression",
           scope="messages:write", request=NewSchedule,
           ok={201: Body(ScheduleView, "Created; `next_occurrences` shows when it will send.")})
def create_schedule(body: NewSchedule) -> tuple[Response, int]:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {"cron": body.cron, "timezone": body.timezone, "start_at": _instant(body.start, "start"),
              "end_at": _instant(body.end, "end"), "max_count": body.max_count}
    plan = _plan(fields, 0, now)
    first = plan.first_after(now)
    if first is None:
        field = "end" if plan.end is not None else "cron"
        raise ApiError(422, "invalid_request", f"{field}: the schedule would never send (no occurrence of "
                       f"{plan.recurrence.cron!r} in {body.timezone} before its end)", field)
    fields["message"] = _content(body.message)
    with transaction():
        row = schedules.create(g.workspace_id, fields, first)
        intake.wake_scheduler()
    return jsonify(_view(row)), 201


@operation(schedules_api, "GET", "/schedules", summary="List the workspace's schedules", scope="messages:read",
           ok={200: Body(ScheduleList, "A page of schedules, oldest first (without `next_occurrences`).")}, errors=(422,),
           headers=[query("limit", f"Schedules per page, 1 to {MAX_PAGE} (default 50).", type="integer", minimum=1, maximum=MAX_PAGE),
                    query("after", "Only schedules after this id (the previous page's `next_after`).",
                          type="integer", minimum=1, maximum=2**63 - 1)])
def list_schedules() -> tuple[Response, int]:
    limit = query_int("limit", 50, 1, MAX_PAGE)
    after = query_int("after", None, 1, 2**63 - 1)
    with transaction():
        rows = schedules.listing(g.workspace_id, limit, after)
    return jsonify({"schedules": [_view(r, occurrences=False) for r in rows],
                    "next_after": rows[-1]["id"] if len(rows) == limit else None}), 200


@operation(schedules_api, "GET", "/schedules/{schedule_id}", summary="Read a schedule and its next occurrences",
           scope="messages:read", ok={200: Body(ScheduleView, "The schedule, with its next five occurrences.")}, errors=(404,))
def get_schedule(schedule_id: int) -> tuple[Response, int]:
    with transaction():
        row = schedules.get(g.workspace_id, schedule_id)
    if row is None:
        raise _missing(schedule_id)
    return jsonify(_view(row)), 200


@operation(schedules_api, "PATCH", "/schedules/{schedule_id}", summary="Change a schedule", scope="messages:write",
           request=ScheduleChange, ok={200: Body(ScheduleView, "The changed schedule; its next run computed again from now.")},
           errors=(404,))
def change_schedule(schedule_id: int, body: ScheduleChange) -> tuple[Response, int]:
    given = body.model_fields_set
    for name in ("cron", "timezone", "message"):
        if name in given and getattr(body, name) is None:
            raise ApiError(422, "invalid_request", f"{name} cannot be cleared; leave it out to keep it", name)
    now = datetime.now(UTC)
    changes: dict[str, Any] = {_COLUMN.get(name, name): getattr(body, name) for name in given if name != "message"}
    for name in ("start", "end"):
        if name in given:
            changes[_COLUMN[name]] = _instant(getattr(body, name), name)
    if body.message is not None:
        changes["message"] = _content(body.message)
    with transaction():
        row = schedules.get(g.workspace_id, schedule_id, lock=True)
        if row is None:
            raise _missing(schedule_id)
        next_run_at = row["next_run_at"]
        if given & set(_TIMING):
            next_run_at = _plan({**row, **changes}, row["sent_count"], now).first_after(now)
        row = schedules.change(g.workspace_id, schedule_id, changes, next_run_at)
        intake.wake_scheduler()
    assert row is not None
    return jsonify(_view(row)), 200


@operation(schedules_api, "POST", "/schedules/{schedule_id}/pause", summary="Pause a schedule", scope="messages:write",
           ok={200: Body(ScheduleView, "Paused: nothing more is sent, not even an occurrence already due in a few seconds.")},
           errors=(404,))
def pause_schedule(schedule_id: int) -> tuple[Response, int]:
    with transaction():
        row = schedules.pause(g.workspace_id, schedule_id)
    if row is None:
        raise _missing(schedule_id)
    return jsonify(_view(row)), 200


@operation(schedules_api, "POST", "/schedules/{schedule_id}/resume", summary="Resume a paused schedule", scope="messages:write",
           ok={200: Body(ScheduleView, "Active again from its next occurrence after now (those missed while paused are not sent).")},
           errors=(404,))
def resume_schedule(schedule_id: int) -> tuple[Response, int]:
    now = datetime.now(UTC)
    with transaction():
        row = schedules.get(g.workspace_id, schedule_id, lock=True)
        if row is None:
            raise _missing(schedule_id)
        if row["paused"]:
            row = schedules.resume(g.workspace_id, schedule_id, _plan(row, row["sent_count"], now).first_after(now))
            intake.wake_scheduler()
    assert row is not None
    return jsonify(_view(row)), 200


@operation(schedules_api, "DELETE", "/schedules/{schedule_id}", summary="Delete a schedule", scope="messages:write",
           ok={200: Body(ScheduleView, "The schedule as it was; an occurrence already due in a few seconds is cancelled.")},
           errors=(404,))
def delete_schedule(schedule_id: int) -> tuple[Response, int]:
    with transaction():
        row = schedules.delete(g.workspace_id, schedule_id)
    if row is None:
        raise _missing(schedule_id)
    return jsonify(_view(row, occurrences=False)), 200
