"""REST API v1 for campaigns: create one, add recipients in pages (JSON or CSV), start, pause,
resume, cancel, and read its live progress.

The content is checked once, as ``POST /v1/messages`` checks a message (``outgoing``); each
recipient's address, and every variable the template needs, is checked when the recipient is
added, with a 422 naming the recipient. Recipients are staged set-wise and fanned out into
messages in one statement when the campaign starts (``common.campaigns``); ids are handed to
processing only after that commits.

The same work is public to the compatibility routes (``services.ingest.compat``), which are
adapters over it: ``create``, ``add`` and ``start`` (each its own transaction, handing on after
the commit), ``load``, ``find`` (by postroom id or ``external_id``), ``by_external_id`` and
``view``. A campaign with ``sequence_id`` enrols each recipient in that sequence when it fans out
(``services.ingest.campaign_sequence``).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from psycopg2.extras import Json

from common import campaigns, dispatch
from common.config import settings
from common.db.connection import fetch, fetch_dicts, longer_deadline, transaction
from services.ingest import campaign_sequence, outgoing, sequences, templates
from services.ingest.campaign_models import (
    MAX_RECIPIENTS,
    CampaignList,
    CampaignRecipient,
    CampaignView,
    CsvRecipients,
    NewCampaign,
    RecipientPage,
    RecipientsAdded,
    StartCampaign,
    content_of,
)
from services.ingest.contract import Body, operation
from services.ingest.errors import ApiError
from services.ingest.timing import due_time
from services.ingest.validation import query_int

campaigns_api = Blueprint("campaigns", __name__, url_prefix="/v1")
CSV = "text/csv"
MAX_CAMPAIGN_RECIPIENTS = 10_000_000
PHONE_CHANNELS = outgoing.PHONE_CHANNELS


def _refuse(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, field)


def _missing(campaign_id: int) -> ApiError:
    return ApiError(404, "not_found", f"no campaign {campaign_id} in this workspace")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


_COLUMNS = ("id, workspace_id, name, status, message, priority, rate_limit_per_second, send_at, total, created_at, started_at,"
            " completed_at, external_id, sequence_id")
STARTED = ("scheduled", "running", "paused")


def load(workspace_id: int, campaign_id: int, *, lock: bool = False) -> dict[str, Any]:
    """The campaign row (inside the caller's transaction).

    Raises:
      ApiError: 404 when the workspace has no such campaign.
    """
    rows = fetch_dicts(f"SELECT {_COLUMNS} FROM campaign WHERE id = %s AND workspace_id = %s" + (" FOR UPDATE" if lock else ""),
                       (campaign_id, workspace_id))
    if not rows:
        raise _missing(campaign_id)
    return rows[0]


def by_external_id(workspace_id: int, external_id: str) -> list[dict[str, Any]]:
    """Every campaign of the workspace with this ``external_id``, newest first (inside the
    caller's transaction)."""
    return fetch_dicts(f"SELECT {_COLUMNS} FROM campaign WHERE workspace_id = %s AND external_id = %s ORDER BY id DESC",
                       (workspace_id, external_id))


def find(workspace_id: int, ref: str | int) -> dict[str, Any] | None:
    """The campaign a caller's reference names: the newest with that ``external_id``, else the
    one with that postroom id (the caller's own ids come first: they are what old clients send).
    None when neither exists."""
    text = str(ref)
    rows = by_external_id(workspace_id, text)[:1]
    if not rows and text.isascii() and text.isdigit() and 0 < int(text) <= 2**63 - 1:
        rows = fetch_dicts(f"SELECT {_COLUMNS} FROM campaign WHERE id = %s AND workspace_id = %s", (int(text), workspace_id))
    return rows[0] if rows else None


def view(c: dict[str, Any]) -> dict[str, Any]:
    """The campaign as the API shows it (``CampaignView``), its counters read live."""
    message = c["message"]
    return {
        "id": c["id"], "name": c["name"], "status": c["status"], "channel": message["channel"],
        "channels": message.get("channels"), "priority": c["priority"], "rate_limit_per_second": c["rate_limit_per_second"],
        "send_at": _iso(c["send_at"]), "created_at": _iso(c["created_at"]), "started_at": _iso(c["started_at"]),
        "completed_at": _iso(c["completed_at"]), "template_id": message.get("template_id"),
        "external_id": c.get("external_id"), "sequence_id": c.get("sequence_id"),
        "progress": campaigns.counters(c),
    }


def message_of(workspace_id: int, body: NewCampaign) -> dict[str, Any]:
    """What the campaign sends to everyone, checked as ``POST /v1/messages`` checks a message
    (inside the caller's transaction): the ``message`` a campaign row keeps, so a caller can
    tell whether a campaign it holds sends the same content."""
    route = outgoing.route_of(body)
    return _message(workspace_id, body, route, outgoing.template_for(workspace_id, body, route))


def _message(workspace_id: int, body: NewCampaign, route: list[str], template: dict[str, Any] | None) -> dict[str, Any]:
    fields = outgoing.resolve_content(workspace_id, body, route, template)
    return {"channel": route[0], "channels": route if len(route) > 1 else None, "from": fields.get("from"),
            "body": fields["body"], "content": fields["content"], "encoding": fields.get("encoding"),
            "template_id": body.template_id, "tags": content_of(body)["tags"], "quiet_hours": body.quiet_hours}


def _sequence_of(workspace_id: int, campaign: dict[str, Any]) -> dict[str, Any] | None:
    if not campaign.get("sequence_id"):
        return None
    message = campaign["message"]
    return campaign_sequence.check(workspace_id, campaign["sequence_id"], message.get("channels") or [message["channel"]])


def _recipients(workspace_id: int, message: dict[str, Any], template: dict[str, Any] | None,
                given: list[CampaignRecipient], first: int, sequence: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each recipient's address on every channel of the route and its variables; 422 naming the
    first recipient at fault (by its position in the campaign) and what is wrong. With a
    ``sequence``, the variables are kept for the enrolment too and must hold what its steps use."""
    route = message.get("channels") or [message["channel"]]
    needed = sequences.needed_variables(sequence) if sequence is not None else set()
    keep = template is not None or sequence is not None
    contacts = _contacts(workspace_id, [r.contact_id for r in given if r.contact_id is not None])
    out = []
    for n, r in enumerate(given):
        field = f"recipients[{first + n}]"
        if (r.to is None) == (r.contact_id is None):
            raise _refuse(f"{field}.to", f"recipient {first + n}: give to (an address) or contact_id, not both")
        if r.to is not None:
            addresses = [outgoing.normalized_identity(channel, r.to, f"{field}.to") for channel in route]
            variables = r.variables
        else:
            contact = contacts.get(r.contact_id or 0)
            if contact is None:
                raise _refuse(f"{field}.contact_id", f"recipient {first + n}: no contact {r.contact_id} in this workspace")
            found = [contact["addresses"].get(c) or (contact["addresses"].get("sms") if c in PHONE_CHANNELS else None) for c in route]
            if None in found:
                raise _refuse(f"{field}.contact_id", f"recipient {first + n}: contact {r.contact_id} has no address for "
                              + ", ".join(c for c, a in zip(route, found, strict=True) if a is None))
            addresses = [str(a) for a in found]
            variables = {**contact["variables"], **(r.variables or {})}
        if template is not None:
            outgoing.check_variables(template, variables or {}, f"{field}.variables", who=f"recipient {first + n} ({addresses[0]})")
        elif r.variables is not None and sequence is None:
            raise _refuse(f"{field}.variables", "variables apply only with template_id or sequence_id")
        missing = needed - set(variables or {})
        if missing:
            raise _refuse(f"{field}.variables", f"recipient {first + n} ({addresses[0]}): the sequence's steps need "
                          + ", ".join(sorted(missing)))
        out.append({"to": addresses[0], "variables": variables if keep else None,
                    "routes": [{"channel": c, "to": a} for c, a in zip(route, addresses, strict=True)] if len(route) > 1 else None})
    return out


def _contacts(workspace_id: int, ids: list[int]) -> dict[int, dict[str, Any]]:
    """The contacts among ``ids`` (one query): their addresses by channel, and their name and
    attributes as template variables."""
    if not ids:
        return {}
    found: dict[int, dict[str, Any]] = {}
    for contact_id, name, attributes, channel, address in fetch(
            "SELECT c.id, c.name, c.attributes, a.channel, a.address FROM contact c"
            " LEFT JOIN contact_address a ON a.workspace_id = c.workspace_id AND a.contact_id = c.id"
            " WHERE c.workspace_id = %s AND c.id = ANY(%s)", (workspace_id, sorted(set(ids)))):
        entry = found.setdefault(contact_id, {"addresses": {}, "variables": {
            **{k: v for k, v in (attributes or {}).items() if isinstance(v, str | int | float)},
            **({"name": name} if name else {})}})
        if channel is not None:
            entry["addresses"][channel] = address
    return found


def _template(workspace_id: int, message: dict[str, Any]) -> dict[str, Any] | None:
    if message.get("template_id") is None:
        return None
    return templates.get(workspace_id, message["template_id"])


@operation(campaigns_api, "POST", "/campaigns", summary="Create a campaign", scope="messages:write", request=NewCampaign,
           ok={201: Body(CampaignView, "Created: a draft, or started (`start`), with its recipients staged.")})
def create_campaign(body: NewCampaign) -> tuple[Response, int]:
    return jsonify(create(g.workspace_id, body)), 201


def create(workspace_id: int, body: NewCampaign) -> dict[str, Any]:
    """Create a campaign (a draft, or started with ``body.start``) with its first recipients, in
    a transaction of its own, and hand its messages on after the commit. Returns its view.

    Raises:
      ApiError: 422 naming the field (content, a recipient, the sequence) at fault.
    """
    due = due_time(body.send_at, body.timezone, None)
    route = outgoing.route_of(body)
    with transaction(), longer_deadline(settings.postroom_campaign_db_timeout_seconds):
        template = outgoing.template_for(workspace_id, body, route)
        message = _message(workspace_id, body, route, template)
        sequence = campaign_sequence.check(workspace_id, body.sequence_id, route) if body.sequence_id else None
        staged = _recipients(workspace_id, message, template, list(body.recipients or []), 0, sequence)
        rows = fetch_dicts(
            f"""INSERT INTO campaign (workspace_id, name, message, priority, rate_limit_per_second, send_at, total,
                                      external_id, sequence_id)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
            (workspace_id, body.name, Json(message), body.priority, body.rate_limit_per_second, due.at, len(staged),
             body.external_id, body.sequence_id))
        campaign = rows[0]
        ids: list[int] = []
        if body.start:
            campaign, ids = _start(campaign, staged)
        elif staged:
            campaigns.stage(staged, campaign["id"], 0)
        shown = view(campaign)
    campaigns.hand_on(campaign, ids)
    return shown


def _start(campaign: dict[str, Any], given: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], list[int]]:
    """Start a draft (running now, or scheduled for its ``send_at``) and fan out its recipients:
    the staged ones, or ``given`` with the request that creates it; enrol them in the
    campaign's sequence, if it has one."""
    later = campaign["send_at"] is not None and fetch("SELECT %s::timestamptz > now()", (campaign["send_at"],))[0][0]
    campaign = fetch_dicts(
        f"""UPDATE campaign SET status = %s, updated_at = now(), started_at = CASE WHEN %s THEN NULL ELSE now() END
            WHERE id = %s RETURNING {_COLUMNS}""", ("scheduled" if later else "running", later, campaign["id"]))[0]
    enrolled = given
    if campaign["sequence_id"] and given is None:  # the staged ones, read before the fan-out takes them out of staging
        enrolled = fetch_dicts("SELECT to_addr AS to, routes, variables FROM campaign_recipient WHERE campaign_id = %s"
                               " ORDER BY position", (campaign["id"],))
    ids = campaigns.fan_out(campaign, given)
    campaign_sequence.enrol(campaign, enrolled or [])
    return campaign, ids


def start(workspace_id: int, campaign_id: int, send_at: str | datetime | None = None, timezone: str | None = None, *,
          again_ok: bool = False) -> dict[str, Any]:
    """Start a draft campaign, in a transaction of its own, and hand its messages on after the
    commit. Returns its view.

    Parameters:
      send_at: start at this time instead of the draft's own ``send_at``: RFC 3339 text (or local
        with ``timezone``, as ``POST /v1/messages`` takes it) or an aware datetime; a past time
        starts now.
      again_ok: a campaign already started (scheduled, running or paused) answers its view
        unchanged instead of 409 (a queue request repeated by an old client).

    Raises:
      ApiError: 404 no such campaign; 409 it is not a draft (completed or cancelled, or
        started without ``again_ok``); 422 a bad ``send_at``.
    """
    when = _send_time(send_at, timezone)
    with transaction(), longer_deadline(settings.postroom_campaign_db_timeout_seconds):
        campaign = load(workspace_id, campaign_id, lock=True)
        ids: list[int] = []
        if not (again_ok and campaign["status"] in STARTED):
            _allowed(campaign, ("draft",), "started")
            if send_at is not None:
                campaign = fetch_dicts(f"UPDATE campaign SET send_at = %s, updated_at = now() WHERE id = %s RETURNING {_COLUMNS}",
                                       (when, campaign_id))[0]
            _sequence_of(workspace_id, campaign)  # its sequence still takes these recipients
            campaign, ids = _start(campaign)
        shown = view(campaign)
    campaigns.hand_on(campaign, ids)
    return shown


def _send_time(send_at: str | datetime | None, timezone: str | None) -> datetime | None:
    """When to start: None for now (nothing given, or a time already past)."""
    if isinstance(send_at, datetime):
        if send_at.tzinfo is None:
            raise ApiError(422, "invalid_request", "send_at needs a UTC offset", "send_at")
        return send_at.astimezone(UTC) if send_at > datetime.now(UTC) else None
    return due_time(send_at, timezone, None).at if send_at is not None or timezone is not None else None


@operation(campaigns_api, "GET", "/campaigns", summary="List campaigns", scope="messages:read",
           ok={200: Body(CampaignList, "The workspace's campaigns, newest first, with their progress.")})
def list_campaigns() -> tuple[Response, int]:
    limit = query_int("limit", 20, 1, 100)
    after = query_int("after", None, 1, 2**63 - 1)
    with transaction():
        rows = fetch_dicts(f"SELECT {_COLUMNS} FROM campaign WHERE workspace_id = %s AND (%s::bigint IS NULL OR id < %s)"
                           " ORDER BY id DESC LIMIT %s", (g.workspace_id, after, after, limit + 1))
        views = [view(c) for c in rows[:limit]]
    return jsonify({"campaigns": views, "next_after": rows[limit - 1]["id"] if len(rows) > limit else None}), 200


@operation(campaigns_api, "GET", "/campaigns/{campaign_id}", summary="Read a campaign and its live progress",
           scope="messages:read", ok={200: Body(CampaignView, "The campaign, its counters read live.")}, errors=(404,))
def get_campaign(campaign_id: int) -> tuple[Response, int]:
    with transaction():
        shown = view(load(g.workspace_id, campaign_id))
    return jsonify(shown), 200


def add(workspace_id: int, campaign_id: int, given: list[CampaignRecipient]) -> dict[str, Any]:
    """Add a page of recipients, in a transaction of its own: staged for a draft, fanned out (and
    enrolled in its sequence) at once for a started campaign and handed on after the commit.
    Returns ``{"added", "total", "status"}``.

    Raises:
      ApiError: 404 no such campaign; 409 it is completed or cancelled; 422 naming the recipient.
    """
    with transaction(), longer_deadline(settings.postroom_campaign_db_timeout_seconds):
        campaign = load(workspace_id, campaign_id, lock=True)
        if campaign["status"] in ("completed", "cancelled"):
            raise ApiError(409, "conflict", f"campaign {campaign_id} is {campaign['status']}; recipients can no longer be added", "status")
        if campaign["total"] + len(given) > MAX_CAMPAIGN_RECIPIENTS:
            raise _refuse("recipients", f"a campaign holds at most {MAX_CAMPAIGN_RECIPIENTS:,} recipients")
        checked = _recipients(workspace_id, campaign["message"], _template(workspace_id, campaign["message"]), given,
                              campaign["total"], _sequence_of(workspace_id, campaign))
        campaign = fetch_dicts(f"UPDATE campaign SET total = total + %s, updated_at = now() WHERE id = %s RETURNING {_COLUMNS}",
                               (len(checked), campaign_id))[0]
        ids: list[int] = []
        if campaign["status"] == "draft":
            campaigns.stage(checked, campaign["id"], campaign["total"] - len(checked))
        else:  # a started campaign sends what is added at once (a paused one holds it at the sender)
            ids = campaigns.fan_out(campaign, checked)
            campaign_sequence.enrol(campaign, checked)
    campaigns.hand_on(campaign, ids)
    return {"added": len(checked), "total": campaign["total"], "status": campaign["status"]}


@operation(campaigns_api, "POST", "/campaigns/{campaign_id}/recipients", summary="Add a page of recipients",
           scope="messages:write", request=RecipientPage,
           ok={200: Body(RecipientsAdded, "Added; a started campaign sends them at once.")}, errors=(404, 409))
def add_recipients(campaign_id: int, body: RecipientPage) -> tuple[Response, int]:
    return jsonify(add(g.workspace_id, campaign_id, list(body.recipients))), 200


@operation(campaigns_api, "POST", "/campaigns/{campaign_id}/recipients/csv", summary="Add a CSV page of recipients",
           scope="messages:write", request=CsvRecipients, request_media=CSV,
           ok={200: Body(RecipientsAdded, "Added; a started campaign sends them at once.")}, errors=(400, 404, 409, 415, 422))
def add_recipients_csv(campaign_id: int) -> tuple[Response, int]:
    if request.mimetype != CSV:
        raise ApiError(415, "unsupported_media_type", f"send the recipients as {CSV} (a header row, then one recipient per row)", "body")
    return jsonify(add(g.workspace_id, campaign_id, parse_csv(request.get_data(cache=True)))), 200


def parse_csv(raw: bytes) -> list[CampaignRecipient]:
    """Recipients from CSV: a header naming ``to`` or ``contact_id`` (the other columns are
    variables), then a row per recipient; 422 naming the line at fault."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _refuse("body", "the CSV must be UTF-8") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or not ({"to", "contact_id"} & set(header)):
        raise _refuse("body", "the CSV's first row must name its columns, among them to or contact_id")
    if len(set(header)) != len(header) or any(not h for h in header):
        raise _refuse("body", "the CSV's header names each column once")
    out: list[CampaignRecipient] = []
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise _refuse("body", f"line {line} has {len(row)} fields; the header names {len(header)}")
        if len(out) >= MAX_RECIPIENTS:
            raise _refuse("body", f"a page holds at most {MAX_RECIPIENTS:,} recipients")
        fields = dict(zip(header, row, strict=True))
        variables = {k: v for k, v in fields.items() if k not in ("to", "contact_id") and v != ""}
        recipient: dict[str, Any] = {"variables": variables or None}
        if fields.get("to"):
            recipient["to"] = fields["to"]
        if fields.get("contact_id"):
            if not fields["contact_id"].isdigit():
                raise _refuse("body", f"line {line}: contact_id must be a whole number")
            recipient["contact_id"] = int(fields["contact_id"])
        try:
            out.append(CampaignRecipient.model_validate(recipient))
        except Exception as exc:
            raise _refuse("body", f"line {line}: {str(exc).splitlines()[-1].strip() if str(exc) else 'not a recipient'}") from None
    if not out:
        raise _refuse("body", "the CSV has no recipients")
    return out


def _move(campaign_id: int, allowed: tuple[str, ...], verb: str) -> dict[str, Any]:
    return _allowed(load(g.workspace_id, campaign_id, lock=True), allowed, verb)


def _allowed(campaign: dict[str, Any], allowed: tuple[str, ...], verb: str) -> dict[str, Any]:
    if campaign["status"] not in allowed:
        raise ApiError(409, "conflict", f"campaign {campaign['id']} is {campaign['status']}; only a campaign that is "
                       f"{' or '.join(allowed)} can be {verb}", "status")
    return campaign


@operation(campaigns_api, "POST", "/campaigns/{campaign_id}/start", summary="Start a campaign",
           scope="messages:write", request=StartCampaign, body_optional=True,
           ok={200: Body(CampaignView, "Running, or scheduled for its send_at (the one given here, else the draft's).")},
           errors=(404, 409))
def start_campaign(campaign_id: int, body: StartCampaign) -> tuple[Response, int]:
    return jsonify(start(g.workspace_id, campaign_id, body.send_at, body.timezone)), 200


@operation(campaigns_api, "POST", "/campaigns/{campaign_id}/pause", summary="Pause a campaign",
           scope="messages:write", ok={200: Body(CampaignView, "Paused: no further message is claimed for sending.")},
           errors=(404, 409))
def pause_campaign(campaign_id: int) -> tuple[Response, int]:
    with transaction():
        _move(campaign_id, ("scheduled", "running"), "paused")
        campaign = fetch_dicts(f"UPDATE campaign SET status = 'paused', updated_at = now() WHERE id = %s RETURNING {_COLUMNS}",
                               (campaign_id,))[0]
        shown = view(campaign)
    return jsonify(shown), 200


@operation(campaigns_api, "POST", "/campaigns/{campaign_id}/resume", summary="Resume a paused campaign",
           scope="messages:write", ok={200: Body(CampaignView, "Running again (or scheduled): every waiting message is handed on.")},
           errors=(404, 409))
def resume_campaign(campaign_id: int) -> tuple[Response, int]:
    with transaction(), longer_deadline(settings.postroom_campaign_db_timeout_seconds):
        _move(campaign_id, ("paused",), "resumed")
        campaign = fetch_dicts(
            f"""UPDATE campaign SET updated_at = now(),
                       status = CASE WHEN send_at > now() THEN 'scheduled' ELSE 'running' END,
                       started_at = CASE WHEN send_at > now() THEN started_at ELSE coalesce(started_at, now()) END
                WHERE id = %s RETURNING {_COLUMNS}""", (campaign_id,))[0]
        waiting = campaigns.waiting(campaign)
        shown = view(campaign)
    dispatch.to_waiting_stages(waiting, committed=True)
    return jsonify(shown), 200


@operation(campaigns_api, "POST", "/campaigns/{campaign_id}/cancel", summary="Cancel a campaign",
           scope="messages:write", ok={200: Body(CampaignView, "Cancelled: nothing more is sent; what was sent stays sent.")},
           errors=(404, 409))
def cancel_campaign(campaign_id: int) -> tuple[Response, int]:
    with transaction(), longer_deadline(settings.postroom_campaign_db_timeout_seconds):
        campaign = _move(campaign_id, ("draft", "scheduled", "running", "paused"), "cancelled")
        campaign = fetch_dicts(f"UPDATE campaign SET status = 'cancelled', completed_at = now(), updated_at = now()"
                               f" WHERE id = %s RETURNING {_COLUMNS}", (campaign_id,))[0]
        campaigns.cancel_messages(campaign)
        campaign_sequence.cancel(campaign)
        shown = view(campaign)
    return jsonify(shown), 200
