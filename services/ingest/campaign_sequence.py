"""A campaign's sequence: when the campaign fans out, each recipient is enrolled in it, set-wise.

A campaign created with ``sequence_id`` (S0's "broadcast with its sequence") enrols every
recipient its fan-out turns into a message through ``services.ingest.sequences.enrol_all``, the
one enrolment ``POST /v1/sequences/{id}/enrolments`` uses: an ``enrolment`` row each and one
scheduled message per step whose time has not passed (or whose rule sends it anyway), two
statements for the whole page. This module only says what a campaign gives the enrolment: the
recipient's address on the sequence's channel, its variables (checked when it was added: each
holds every variable the steps use, ``sequences.needed_variables``), and the times.

Times: the enrolment is made at the campaign's send time (its ``send_at`` when it is scheduled,
else now), so the default ``enrolment`` anchor means "when the recipient's campaign message goes
out"; ``campaign_start`` (and its S0 name ``broadcast_start``) is the campaign's own start.
Sequences carry ``sms`` or ``http`` steps only: an email sequence is not a thing postroom has.
Step messages are no campaign's (they do not count in its total); they are tagged with
``campaign_id``, by which the campaign's pause holds them (``common.campaigns``) and its cancel
stops them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg2.extras import Json

from common import lifecycle
from common import sequences as steps_in_time
from common.db.connection import fetch
from services.ingest import sequences
from services.ingest.campaign_models import CAMPAIGN_ANCHORS
from services.ingest.errors import ApiError
from services.ingest.outgoing import PHONE_CHANNELS

CAMPAIGN_TAG = sequences.CAMPAIGN_TAG


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


def _refuse(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, "sequence_id")


def _address(seq_channel: str, recipient: dict[str, Any]) -> str:
    """The recipient's address for the sequence's channel: its phone number on the route for
    ``sms``, else the campaign's address."""
    if seq_channel == "sms" and recipient.get("routes"):
        return next(r["to"] for r in recipient["routes"] if r["channel"] in PHONE_CHANNELS)
    return str(recipient["to"])


def enrol(campaign: dict[str, Any], recipients: Sequence[dict[str, Any]], now: datetime | None = None) -> int:
    """Enrol ``recipients`` (``to``, ``routes``, ``variables``: as staged) in the campaign's
    sequence, inside the caller's transaction. Returns how many were enrolled."""
    if not campaign.get("sequence_id") or not recipients:
        return 0
    workspace_id = campaign["workspace_id"]
    seq = sequences.get(workspace_id, campaign["sequence_id"])
    if seq is None:
        return 0
    now = now or datetime.now(UTC)
    later = campaign["status"] == "scheduled" and campaign["send_at"] is not None
    started = campaign["send_at"] if later else (campaign.get("started_at") or now)
    addresses = [_address(seq["channel"], r) for r in recipients]
    zones = sequences.zones(workspace_id, seq["channel"], addresses)
    enrolling = [sequences.Recipient(to, {k: str(v) for k, v in (r.get("variables") or {}).items()}, zone)
                 for r, to, zone in zip(recipients, addresses, zones, strict=True)]
    anchors = {name: started.astimezone(UTC).isoformat() for name in CAMPAIGN_ANCHORS}
    return len(sequences.enrol_all(workspace_id, seq, enrolling, anchors, campaign["send_at"] if later else now, now,
                                   campaign_id=campaign["id"]))


def cancel(campaign: dict[str, Any]) -> int:
    """Cancel the pending steps of the campaign's enrolments (the campaign was cancelled), and
    mark those enrolments unenrolled. Returns how many steps were cancelled."""
    if not campaign.get("sequence_id"):
        return 0
    tag = Json({CAMPAIGN_TAG: str(campaign["id"]), "sequence_id": str(campaign["sequence_id"])})
    pending = fetch("SELECT id, enrolment_id FROM message WHERE workspace_id = %s AND tags @> %s AND status = ANY(%s)"
                    " AND enrolment_id IS NOT NULL",
                    (campaign["workspace_id"], tag, list(lifecycle.CANCELLABLE)))
    if not pending:
        return 0
    fetch("UPDATE enrolment SET status = 'unenrolled', updated_at = now() WHERE id = ANY(%s) AND status = 'active'",
          (sorted({r[1] for r in pending}),))
    return len(lifecycle.advance([r[0] for r in pending], lifecycle.CANCELLABLE, "cancelled", detail={"by": "campaign"}))
