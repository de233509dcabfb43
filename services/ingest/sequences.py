"""Sequences for the API: store them, enrol recipients (each step becomes a scheduled message),
move anchors (pending steps move with them; sent ones stay sent) and unenrol (the rest is
cancelled). Every query is scoped by workspace; a step's message has the idempotency key
``enrol:<enrolment>:<step>``, so no step is made twice."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from typing import Any

from psycopg2.extras import Json

from common import intake, lifecycle, phones, sequences
from common.config import settings
from common.db.connection import fetch, fetch_dicts
from common.quiet_hours import parse_timezone, recipient_timezone
from services.ingest.errors import ApiError
from services.ingest.messages import RESCHEDULABLE
from services.ingest.sequence_models import EnrolmentChange, NewEnrolment, NewSequence

_VARIABLE = re.compile(r"\{([a-z0-9_]+)\}")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def create(workspace_id: int, body: NewSequence) -> dict[str, Any] | None:
    """The new sequence, or None when the workspace already has one of that name."""
    rows = fetch_dicts(
        "INSERT INTO sequence (workspace_id, name, steps) VALUES (%s, %s, %s) ON CONFLICT (workspace_id, name) DO NOTHING"
        " RETURNING id, name, steps, created_at",
        (workspace_id, body.name, Json({"channel": body.channel, "steps": [s.model_dump() for s in body.steps]})))
    return _sequence_view(rows[0]) if rows else None


def get(workspace_id: int, sequence_id: int) -> dict[str, Any] | None:
    rows = fetch_dicts("SELECT id, name, steps, created_at FROM sequence WHERE workspace_id = %s AND id = %s",
                       (workspace_id, sequence_id))
    return _sequence_view(rows[0]) if rows else None


def _sequence_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "channel": row["steps"]["channel"], "steps": row["steps"]["steps"],
            "created_at": _iso(row["created_at"])}


def _times(raw: dict[str, str], field: str = "anchors") -> dict[str, datetime]:
    anchors = {}
    for name, text in raw.items():
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(422, "invalid_request", f"{field}.{name} must be an RFC 3339 time with an offset", field) from None
        if parsed.tzinfo is None:
            raise ApiError(422, "invalid_request", f"{field}.{name} needs a UTC offset, e.g. 2026-12-03T09:00:00-05:00", field)
        try:
            anchors[name] = parsed.astimezone(UTC)
            if abs(anchors[name] - datetime.now(UTC)) > timedelta(days=settings.postroom_schedule_horizon_days):
                raise OverflowError
        except OverflowError:
            raise ApiError(422, "invalid_request", f"{field}.{name} is more than "
                           f"{settings.postroom_schedule_horizon_days:g} days away", field) from None
    return anchors


def _step_time(step: dict[str, Any]) -> sequences.StepTime:
    at = time.fromisoformat(step["at"]) if step.get("at") else None
    return sequences.StepTime(step["anchor"], step["offset_seconds"], step["days"], at, step["if_past"])


def enrol(workspace_id: int, sequence_id: int, body: NewEnrolment, now: datetime | None = None) -> dict[str, Any] | None:
    """Enrol a recipient: one scheduled message per step whose time has not passed (or whose rule
    sends it anyway). None when there is no such sequence."""
    now = now or datetime.now(UTC)
    seq = get(workspace_id, sequence_id)
    if seq is None:
        return None
    to = body.to
    if seq["channel"] == "sms":
        try:
            to = phones.normalize(body.to)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", f"to: {exc}", "to") from None
    anchors = _times(body.anchors)
    needed = {s["anchor"] for s in seq["steps"]} - {sequences.ENROLMENT} - set(anchors)
    if needed:
        raise ApiError(422, "invalid_request", f"anchors: the steps need {', '.join(sorted(needed))}", "anchors")
    for step in seq["steps"]:
        missing = set(_VARIABLE.findall(step["body"])) - set(body.variables)
        if missing:
            raise ApiError(422, "invalid_request", f"variables: step {step['name']} needs {', '.join(sorted(missing))}", "variables")
    zone = _zone(workspace_id, body.timezone, seq["channel"], to)
    enrolment_id = fetch(
        "INSERT INTO enrolment (sequence_id, workspace_id, channel, to_addr, anchors, variables, timezone, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (sequence_id, workspace_id, seq["channel"], to, Json(body.anchors), Json(body.variables), zone, now))[0][0]
    plans = [(step, sequences.plan(_step_time(step), anchors, now, zone, now)) for step in seq["steps"]]
    _make_steps(workspace_id, sequence_id, enrolment_id, seq["channel"], to, body.variables,
                [(step, at) for step, at in plans if at is not None])
    return view(workspace_id, enrolment_id)


def _zone(workspace_id: int, given: str | None, channel: str, to: str) -> str:
    """The recipient's zone for local step times: the one given, else the contact's, else the one
    the phone number pins down, else the workspace's (as quiet hours choose it)."""
    if given is not None:
        try:
            parse_timezone(given)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", f"timezone: {exc}", "timezone") from None
        return given
    row = fetch("SELECT (SELECT c.timezone FROM contact_address a JOIN contact c ON c.id = a.contact_id"
                "        WHERE a.workspace_id = w.id AND a.channel = %s AND a.address = %s), w.timezone"
                " FROM workspace w WHERE w.id = %s", (channel, to, workspace_id))[0]
    zone, _ = recipient_timezone(row[0], to if channel == "sms" else None, row[1])
    return zone


_MAKE = """
WITH v AS (
    SELECT unnest(%(steps)s::text[]) AS step, unnest(%(bodies)s::text[]) AS body, unnest(%(dues)s::timestamptz[]) AS due,
           unnest(%(priorities)s::text[]) AS priority, unnest(%(tags)s::jsonb[]) AS tags
), ins AS (
    INSERT INTO message (workspace_id, channel, to_addr, body, status, priority, idempotency_key, tags, due_at,
                         status_changed_at, enrolment_id, step)
    SELECT %(ws)s, %(channel)s, %(to)s, v.body, 'scheduled', v.priority, 'enrol:' || %(enrolment)s || ':' || v.step, v.tags,
           v.due, """ + lifecycle.stamped_before("v.due") + """, %(enrolment)s, v.step
    FROM v
    ON CONFLICT DO NOTHING
    RETURNING id, due_at
)
INSERT INTO message_event (message_id, status, detail)
SELECT id, 'scheduled', jsonb_build_object('send_at', due_at, 'sequence_id', %(sequence)s::bigint) FROM ins
"""


def _make_steps(workspace_id: int, sequence_id: int, enrolment_id: int, channel: str, to: str,
                variables: dict[str, str], planned: list[tuple[dict[str, Any], datetime]]) -> None:
    if not planned:
        return
    fetch(_MAKE, {
        "ws": workspace_id, "channel": channel, "to": to, "enrolment": enrolment_id, "sequence": sequence_id,
        "steps": [s["name"] for s, _ in planned],
        "bodies": [_VARIABLE.sub(lambda m: variables[m.group(1)], s["body"]) for s, _ in planned],
        "dues": [at for _, at in planned],
        "priorities": [s["priority"] for s, _ in planned],
        "tags": [Json({**s["tags"], "sequence_id": str(sequence_id), "enrolment_id": str(enrolment_id), "step": s["name"]})
                 for s, _ in planned],
    })
    intake.wake_scheduler()


def view(workspace_id: int, enrolment_id: int) -> dict[str, Any] | None:
    rows = fetch_dicts("SELECT e.*, s.steps FROM enrolment e JOIN sequence s ON s.id = e.sequence_id"
                       " WHERE e.workspace_id = %s AND e.id = %s", (workspace_id, enrolment_id))
    if not rows:
        return None
    e = rows[0]
    made = {m["step"]: m for m in fetch_dicts("SELECT id, step, status, due_at FROM message WHERE enrolment_id = %s",
                                              (enrolment_id,))}
    steps = []
    for step in e["steps"]["steps"]:
        m = made.get(step["name"])
        steps.append({"step": step["name"], "message_id": m["id"] if m else None, "status": m["status"] if m else "skipped",
                      "send_at": _iso(m["due_at"]) if m else None})
    return {"id": e["id"], "sequence_id": e["sequence_id"], "to": e["to_addr"], "status": e["status"],
            "timezone": e["timezone"], "anchors": e["anchors"], "steps": steps}


def move(workspace_id: int, enrolment_id: int, body: EnrolmentChange, now: datetime | None = None) -> dict[str, Any] | None:
    """Move anchors: each pending step hanging on a moved anchor gets its new time (or is sent
    now, or skipped, when that has passed); sent steps stay sent; a skipped step whose new time
    is ahead is made."""
    now = now or datetime.now(UTC)
    rows = fetch_dicts("SELECT e.*, s.steps FROM enrolment e JOIN sequence s ON s.id = e.sequence_id"
                       " WHERE e.workspace_id = %s AND e.id = %s AND e.status = 'active' FOR UPDATE OF e",
                       (workspace_id, enrolment_id))
    if not rows:
        return None
    e = rows[0]
    _times(body.anchors)  # refuse a malformed one before changing anything
    merged = {**e["anchors"], **body.anchors}
    fetch("UPDATE enrolment SET anchors = %s, updated_at = now() WHERE id = %s", (Json(merged), enrolment_id))
    anchors = _times(merged)
    made = {m["step"]: m for m in fetch_dicts("SELECT id, step, status FROM message WHERE enrolment_id = %s FOR UPDATE",
                                              (enrolment_id,))}
    moved: list[tuple[int, datetime]] = []
    skipped: list[int] = []
    new: list[tuple[dict[str, Any], datetime]] = []
    for step in e["steps"]["steps"]:
        if step["anchor"] not in body.anchors:
            continue
        at = sequences.plan(_step_time(step), anchors, e["created_at"], e["timezone"], now)
        message = made.get(step["name"])
        if message is None:
            if at is not None and at > now:
                new.append((step, at))
        elif message["status"] in RESCHEDULABLE:
            if at is None:
                skipped.append(message["id"])
            else:
                moved.append((message["id"], at))
    if moved:
        fetch("""WITH v AS (SELECT unnest(%s::bigint[]) AS id, unnest(%s::timestamptz[]) AS due),
                      m AS (UPDATE message SET status = 'scheduled', due_at = v.due, updated_at = now(), redrives = 0,
                                   status_changed_at = """ + lifecycle.stamped_before("v.due") + """
                            FROM v WHERE message.id = v.id AND message.status = ANY(%s)
                            RETURNING message.id, message.due_at)
                 INSERT INTO message_event (message_id, status, detail)
                 SELECT id, 'scheduled', jsonb_build_object('rescheduled', true, 'send_at', due_at, 'anchor_moved', true) FROM m""",
              ([i for i, _ in moved], [at for _, at in moved], list(RESCHEDULABLE)))
        intake.wake_scheduler()
    if skipped:
        lifecycle.advance(skipped, RESCHEDULABLE, "cancelled", detail={"by": "sequence", "reason": "its moved time had passed"})
    _make_steps(workspace_id, e["sequence_id"], enrolment_id, e["channel"], e["to_addr"], e["variables"], new)
    return view(workspace_id, enrolment_id)


def unenrol(workspace_id: int, enrolment_id: int) -> dict[str, Any] | None:
    """Stop the enrolment: every step not yet sending is cancelled."""
    rows = fetch("UPDATE enrolment SET status = 'unenrolled', updated_at = now() WHERE workspace_id = %s AND id = %s RETURNING id",
                 (workspace_id, enrolment_id))
    if not rows:
        return None
    pending = [r[0] for r in fetch("SELECT id FROM message WHERE enrolment_id = %s AND status = ANY(%s)",
                                   (enrolment_id, list(lifecycle.CANCELLABLE)))]
    lifecycle.advance(pending, lifecycle.CANCELLABLE, "cancelled", detail={"by": "unenrolment"})
    return view(workspace_id, enrolment_id)
