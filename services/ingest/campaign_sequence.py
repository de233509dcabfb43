"""A campaign's sequence: when the campaign fans out, each recipient is enrolled in it, set-wise.

A campaign created with ``sequence_id`` (S0's "broadcast with its sequence") enrols every
recipient its fan-out turns into a message, exactly as ``POST /v1/sequences/{id}/enrolments``
would one by one (``services.ingest.sequences``): an ``enrolment`` row each, and one scheduled
message per step whose time has not passed (or whose rule sends it anyway), with the step's
idempotency key ``enrol:<enrolment>:<step>``. Here it is three statements for the whole page of
recipients, however many: the enrolment ids are drawn at once, then the enrolments and then all
their steps' messages are inserted from arrays.

Times: the enrolment is made at the campaign's send time (its ``send_at`` when it is scheduled,
else now), so the default ``enrolment`` anchor means "when the recipient's campaign message goes
out"; ``campaign_start`` (and its S0 name ``broadcast_start``) is the campaign's own start.
Sequences carry ``sms`` or ``http`` steps only: an email sequence is not a thing postroom has.
Step messages are no campaign's (they do not count in its total); they are tagged with
``campaign_id`` so that the campaign's cancel stops them and a report can find them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, time
from typing import Any

from psycopg2.extras import Json

from common import intake, lifecycle
from common import sequences as steps_in_time
from common.db.connection import fetch
from common.quiet_hours import recipient_timezone
from services.ingest import sequences
from services.ingest.campaign_models import CAMPAIGN_ANCHORS
from services.ingest.errors import ApiError
from services.ingest.outgoing import PHONE_CHANNELS

_VARIABLE = re.compile(r"\{([a-z0-9_]+)\}")  # as services.ingest.sequences fills a step's body
CAMPAIGN_TAG = "campaign_id"


def check(workspace_id: int, sequence_id: int, route: Sequence[str]) -> dict[str, Any]:
    """The sequence a new campaign names, if its recipients can be enrolled in it: it is this
    workspace's, an ``sms`` one goes with a phone channel in the route, and its steps hang only on
    times a campaign gives. 422 naming ``sequence_id`` otherwise."""
    seq = sequences.get(workspace_id, sequence_id)
    if seq is None:
        raise _refuse(f"no sequence {sequence_id} in this workspace")
    if seq["channel"] == "sms" and not any(c in PHONE_CHANNELS for c in route):
        raise _refuse(f"sequence {sequence_id} sends sms: the campaign's route needs a phone channel")
    foreign = {s["anchor"] for s in seq["steps"]} - {steps_in_time.ENROLMENT, *CAMPAIGN_ANCHORS}
    if foreign:
        raise _refuse(f"sequence {sequence_id}'s steps hang on {', '.join(sorted(foreign))}; a campaign gives only "
                      f"{', '.join((steps_in_time.ENROLMENT, *CAMPAIGN_ANCHORS))}")
    return seq


def needed_variables(seq: dict[str, Any]) -> set[str]:
    """The variables the sequence's step bodies use: each recipient must have them."""
    return {name for step in seq["steps"] for name in _VARIABLE.findall(step["body"])}


def _refuse(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, "sequence_id")


def _address(seq_channel: str, recipient: dict[str, Any]) -> str:
    """The recipient's address for the sequence's channel: its phone number on the route for
    ``sms``, else the campaign's address."""
    if seq_channel == "sms" and recipient.get("routes"):
        return next(r["to"] for r in recipient["routes"] if r["channel"] in PHONE_CHANNELS)
    return str(recipient["to"])


def _variables(recipient: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (recipient.get("variables") or {}).items()}


def enrol(campaign: dict[str, Any], recipients: Sequence[dict[str, Any]], now: datetime | None = None) -> int:
    """Enrol ``recipients`` (``to``, ``routes``, ``variables``: as staged) in the campaign's
    sequence, inside the caller's transaction. Returns how many were enrolled."""
    if not campaign.get("sequence_id") or not recipients:
        return 0
    workspace_id, sequence_id = campaign["workspace_id"], campaign["sequence_id"]
    seq = sequences.get(workspace_id, sequence_id)
    if seq is None:
        return 0
    now = now or datetime.now(UTC)
    later = campaign["status"] == "scheduled" and campaign["send_at"] is not None
    enrolled_at = campaign["send_at"] if later else now
    started = campaign["send_at"] if later else (campaign.get("started_at") or now)
    anchors_text = {name: started.astimezone(UTC).isoformat() for name in CAMPAIGN_ANCHORS}
    anchors = {name: started for name in CAMPAIGN_ANCHORS}
    channel = seq["channel"]
    addresses = [_address(channel, r) for r in recipients]
    zones = _zones(workspace_id, channel, addresses)
    ids = [r[0] for r in fetch("SELECT nextval(pg_get_serial_sequence('enrolment', 'id')) FROM generate_series(1, %s)",
                               (len(recipients),))]
    variables = [_variables(r) for r in recipients]
    fetch("""INSERT INTO enrolment (id, sequence_id, workspace_id, channel, to_addr, anchors, variables, timezone, created_at)
             SELECT u.id, %s, %s, %s, u.to_addr, %s, u.variables::jsonb, u.timezone, %s
             FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) AS u(id, to_addr, variables, timezone)""",
          (sequence_id, workspace_id, channel, Json(anchors_text), enrolled_at,
           ids, addresses, [json.dumps(v) for v in variables], zones))
    planned = _plan(seq, campaign["id"], ids, addresses, variables, zones, anchors, enrolled_at, now)
    if planned["steps"]:
        fetch(_MAKE, {"ws": workspace_id, "channel": channel, "sequence": sequence_id, **planned})
        intake.wake_scheduler()
    return len(ids)


def _zones(workspace_id: int, channel: str, addresses: list[str]) -> list[str]:
    """Each recipient's zone for local step times, as ``sequences.enrol`` chooses it: its
    contact's, else the one its phone number pins down, else the workspace's (one query)."""
    rows = fetch("""SELECT w.timezone, (SELECT coalesce(jsonb_object_agg(a.address, c.timezone), '{}'::jsonb)
                                         FROM contact_address a JOIN contact c ON c.id = a.contact_id
                                         WHERE a.workspace_id = w.id AND a.channel = %s AND a.address = ANY(%s)
                                           AND c.timezone IS NOT NULL)
                    FROM workspace w WHERE w.id = %s""", (channel, sorted(set(addresses)), workspace_id))
    workspace_zone, contact_zones = rows[0]
    phone = channel == "sms"
    return [recipient_timezone(contact_zones.get(a), a if phone else None, workspace_zone)[0] for a in addresses]


def _step_time(step: dict[str, Any]) -> steps_in_time.StepTime:
    at = time.fromisoformat(step["at"]) if step.get("at") else None
    return steps_in_time.StepTime(step["anchor"], step["offset_seconds"], step["days"], at, step["if_past"])


def _plan(seq: dict[str, Any], campaign_id: int, ids: list[int], addresses: list[str], variables: list[dict[str, str]],
          zones: list[str], anchors: dict[str, datetime], enrolled_at: datetime, now: datetime) -> dict[str, list[Any]]:
    """The step messages to make, as arrays for ``_MAKE``: one entry per enrolment and step
    whose time has not passed (or whose rule sends it anyway)."""
    out: dict[str, list[Any]] = {k: [] for k in ("enrolments", "to", "steps", "bodies", "dues", "priorities", "tags")}
    times = [(step, _step_time(step)) for step in seq["steps"]]
    for enrolment_id, to, values, zone in zip(ids, addresses, variables, zones, strict=True):
        for step, when in times:
            at = steps_in_time.plan(when, anchors, enrolled_at, zone, now)
            if at is None:
                continue
            out["enrolments"].append(enrolment_id)
            out["to"].append(to)
            out["steps"].append(step["name"])
            out["bodies"].append(_VARIABLE.sub(lambda m, v=values: v.get(m.group(1), ""), step["body"]))  # type: ignore[misc]
            out["dues"].append(at)
            out["priorities"].append(step["priority"])
            out["tags"].append(Json({**step["tags"], "sequence_id": str(seq["id"]), "enrolment_id": str(enrolment_id),
                                     "step": step["name"], CAMPAIGN_TAG: str(campaign_id)}))
    return out


# As services.ingest.sequences makes one enrolment's steps, for every enrolment of the page at once.
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


def cancel(campaign: dict[str, Any]) -> int:
    """Cancel the pending steps of the campaign's enrolments (the campaign was cancelled), and
    mark those enrolments unenrolled. Returns how many steps were cancelled."""
    if not campaign.get("sequence_id"):
        return 0
    tag = Json({CAMPAIGN_TAG: str(campaign["id"]), "sequence_id": str(campaign["sequence_id"])})
    pending = fetch("SELECT id, enrolment_id FROM message WHERE workspace_id = %s AND tags @> %s AND status = ANY(%s)",
                    (campaign["workspace_id"], tag, list(lifecycle.CANCELLABLE)))
    if not pending:
        return 0
    fetch("UPDATE enrolment SET status = 'unenrolled', updated_at = now() WHERE id = ANY(%s) AND status = 'active'",
          (sorted({r[1] for r in pending}),))
    return len(lifecycle.advance([r[0] for r in pending], lifecycle.CANCELLABLE, "cancelled", detail={"by": "campaign"}))
