"""Sequences for the API: store them, enrol recipients (each step becomes a scheduled message),
move anchors (pending steps move with them; sent ones stay sent) and unenrol (the rest is
cancelled). Every query is scoped by workspace; a step's message has the idempotency key
``enrol:<enrolment>:<step>``, so no step is made twice.

Enrolling is set-wise (``enrol_all``): one recipient through ``POST
/v1/sequences/{id}/enrolments``, or a page of a campaign's recipients at its fan-out
(``services.ingest.campaign_sequence``), is the same two statements."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from psycopg2.extras import Json

from common import campaigns, intake, lifecycle, phones, sequences
from common.config import settings
from common.db.connection import fetch, fetch_dicts
from common.quiet_hours import parse_timezone, recipient_timezone
from services.ingest.errors import ApiError
from services.ingest.messages import RESCHEDULABLE
from services.ingest.sequence_models import EnrolmentChange, NewEnrolment, NewSequence

_VARIABLE = re.compile(r"\{([a-z0-9_]+)\}")
# A step's tag naming the campaign whose fan-out made its enrolment (``common.campaigns`` holds a
# paused campaign's steps by it); postroom sets it, never a step's own tags.
CAMPAIGN_TAG = campaigns.STEP_CAMPAIGN_TAG


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
    _times(body.anchors)
    needed = {s["anchor"] for s in seq["steps"]} - {sequences.ENROLMENT} - set(body.anchors)
    if needed:
        raise ApiError(422, "invalid_request", f"anchors: the steps need {', '.join(sorted(needed))}", "anchors")
    for step in seq["steps"]:
        missing = set(_VARIABLE.findall(step["body"])) - set(body.variables)
        if missing:
            raise ApiError(422, "invalid_request", f"variables: step {step['name']} needs {', '.join(sorted(missing))}", "variables")
    if body.timezone is not None:
        try:
            parse_timezone(body.timezone)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", f"timezone: {exc}", "timezone") from None
    zone = body.timezone or zones(workspace_id, seq["channel"], [to])[0]
    enrolment_id = enrol_all(workspace_id, seq, [Recipient(to, dict(body.variables), zone)], body.anchors, now, now)[0]
    return view(workspace_id, enrolment_id)


def needed_variables(seq: dict[str, Any]) -> set[str]:
    """The variables the sequence's step bodies use: every enrolment must have them (a campaign
    checks its recipients against them when they are added)."""
    return {name for step in seq["steps"] for name in _VARIABLE.findall(step["body"])}


@dataclass(frozen=True)
class Recipient:
    """One recipient to enrol: its address on the sequence's channel, its variables (holding
    every one the steps use) and its zone for local step times."""

    to: str
    variables: dict[str, str]
    timezone: str


def enrol_all(workspace_id: int, seq: dict[str, Any], recipients: Sequence[Recipient], anchors: dict[str, str],
              enrolled_at: datetime, now: datetime, campaign_id: int | None = None) -> list[int]:
    """Enrol ``recipients`` in ``seq`` (as ``get`` reads it), all at ``enrolled_at`` with the same
    ``anchors`` (checked RFC 3339 text, kept as given), inside the caller's transaction: two
    statements however many, the enrolments and then all their step messages. ``campaign_id``:
    the campaign whose fan-out enrols them, tagged on each step (its pause holds the steps, its
    cancel stops them). Returns the enrolment ids, in the recipients' order."""
    if not recipients:
        return []
    ids = [r[0] for r in fetch(_ENROL, {
        "sequence": seq["id"], "ws": workspace_id, "channel": seq["channel"], "anchors": Json(anchors), "at": enrolled_at,
        "to": [r.to for r in recipients], "variables": [json.dumps(r.variables) for r in recipients],
        "zones": [r.timezone for r in recipients]})]
    times = {name: datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC) for name, text in anchors.items()}
    steps = [(step, _step_time(step)) for step in seq["steps"]]
    planned = [Planned(enrolment_id, r.to, r.variables, step, at)
               for enrolment_id, r in zip(ids, recipients, strict=True)
               for step, when in steps
               if (at := sequences.plan(when, times, enrolled_at, r.timezone, now)) is not None]
    _make_steps(workspace_id, seq["id"], seq["channel"], planned, campaign_id)
    return ids


# The enrolments' ids are drawn in a CTE (materialized: nextval is volatile) so that they come back
# in the recipients' order.
_ENROL = """
WITH u AS (
    SELECT nextval(pg_get_serial_sequence('enrolment', 'id')) AS id, n, to_addr, variables::jsonb AS variables, timezone
    FROM unnest(%(to)s::text[], %(variables)s::text[], %(zones)s::text[]) WITH ORDINALITY AS u(to_addr, variables, timezone, n)
), ins AS (
    INSERT INTO enrolment (id, sequence_id, workspace_id, channel, to_addr, anchors, variables, timezone, created_at)
    SELECT id, %(sequence)s, %(ws)s, %(channel)s, to_addr, %(anchors)s, variables, timezone, %(at)s FROM u
)
SELECT id FROM u ORDER BY n
"""


def zones(workspace_id: int, channel: str, addresses: Sequence[str]) -> list[str]:
    """Each recipient's zone for local step times when none is given: its contact's, else the
    one its phone number pins down, else the workspace's, as quiet hours choose it (one query)."""
    workspace_zone, contact_zones = fetch(
        """SELECT w.timezone, (SELECT coalesce(jsonb_object_agg(a.address, c.timezone), '{}'::jsonb)
                               FROM contact_address a JOIN contact c ON c.id = a.contact_id
                               WHERE a.workspace_id = w.id AND a.channel = %s AND a.address = ANY(%s)
                                 AND c.timezone IS NOT NULL)
           FROM workspace w WHERE w.id = %s""", (channel, sorted(set(addresses)), workspace_id))[0]
    phone = channel == "sms"
    return [recipient_timezone(contact_zones.get(a), a if phone else None, workspace_zone)[0] for a in addresses]


@dataclass(frozen=True)
class Planned:
    """A step message to make: the enrolment's, at ``at``, to its address, its body filled from ``variables``."""

    enrolment_id: int
    to: str
    variables: dict[str, str]
    step: dict[str, Any]
    at: datetime


_MAKE = """
WITH v AS (
    SELECT * FROM unnest(%(enrolments)s::bigint[], %(to)s::text[], %(steps)s::text[], %(bodies)s::text[],
                         %(dues)s::timestamptz[], %(priorities)s::text[], %(tags)s::jsonb[])
           AS u(enrolment, to_addr, step, body, due, priority, tags)
), ins AS (
    INSERT INTO message (workspace_id, channel, to_addr, body, status, priority, idempotency_key, tags, due_at,
                         status_changed_at, enrolment_id, step)
    SELECT %(ws)s, %(channel)s, v.to_addr, v.body, 'scheduled', v.priority, 'enrol:' || v.enrolment || ':' || v.step, v.tags,
           v.due, """ + lifecycle.stamped_before("v.due") + """, v.enrolment, v.step
    FROM v
    ON CONFLICT DO NOTHING
    RETURNING id, due_at
)
INSERT INTO message_event (message_id, status, detail)
SELECT id, 'scheduled', jsonb_build_object('send_at', due_at, 'sequence_id', %(sequence)s::bigint) FROM ins
"""


def _fill(body: str, variables: dict[str, str]) -> str:
    """The step's text with each ``{name}`` replaced by the variable (every one was checked to be
    there when the recipient was enrolled or added to its campaign)."""
    return _VARIABLE.sub(lambda m: variables[m.group(1)], body)


def _make_steps(workspace_id: int, sequence_id: int, channel: str, planned: Sequence[Planned],
                campaign_id: int | None = None) -> None:
    """Make the planned step messages, of any number of enrolments, in one statement. A step's
    tags are its own plus ``sequence_id``, ``enrolment_id``, ``step`` and, only for a campaign's
    enrolment, ``campaign_id`` (reserved: a step's own tag of that name is dropped, so that only a
    campaign holds or stops a step)."""
    if not planned:
        return
    made_by = {CAMPAIGN_TAG: str(campaign_id)} if campaign_id is not None else {}
    fetch(_MAKE, {
        "ws": workspace_id, "channel": channel, "sequence": sequence_id,
        "enrolments": [p.enrolment_id for p in planned],
        "to": [p.to for p in planned],
        "steps": [p.step["name"] for p in planned],
        "bodies": [_fill(p.step["body"], p.variables) for p in planned],
        "dues": [p.at for p in planned],
        "priorities": [p.step["priority"] for p in planned],
        "tags": [Json({**{k: v for k, v in p.step["tags"].items() if k != CAMPAIGN_TAG}, "sequence_id": str(sequence_id),
                       "enrolment_id": str(p.enrolment_id), "step": p.step["name"], **made_by}) for p in planned],
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
    made = {m["step"]: m for m in fetch_dicts("SELECT id, step, status, tags->>%s AS campaign FROM message"
                                              " WHERE enrolment_id = %s FOR UPDATE", (CAMPAIGN_TAG, enrolment_id))}
    campaign = next((int(m["campaign"]) for m in made.values() if (m["campaign"] or "").isdigit()), None)  # stays its campaign's
    moved: list[tuple[int, datetime]] = []
    skipped: list[int] = []
    new: list[Planned] = []
    for step in e["steps"]["steps"]:
        if step["anchor"] not in body.anchors:
            continue
        at = sequences.plan(_step_time(step), anchors, e["created_at"], e["timezone"], now)
        message = made.get(step["name"])
        if message is None:
            if at is not None and at > now:
                new.append(Planned(enrolment_id, e["to_addr"], e["variables"], step, at))
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
    _make_steps(workspace_id, e["sequence_id"], e["channel"], new, campaign)
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
