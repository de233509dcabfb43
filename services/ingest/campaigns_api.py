"""REST API v1 for campaigns: create one, add recipients in pages (JSON or CSV), start, pause,
resume, cancel, and read its live progress.

The content is checked once, as ``POST /v1/messages`` checks a message (``outgoing``); each
recipient's address, and every variable the template needs, is checked when the recipient is
added, with a 422 naming the recipient. Recipients are staged set-wise and fanned out into
messages in one statement when the campaign starts (``common.campaigns``); ids are handed to
processing only after that commits.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from psycopg2.extras import Json

from common import campaigns, dispatch
from common.config import settings
from common.db.connection import fetch, fetch_dicts, longer_deadline, transaction
from services.ingest import outgoing, templates
from services.ingest.campaign_models import (
    MAX_RECIPIENTS,
    CampaignList,
    CampaignRecipient,
    CampaignView,
    CsvRecipients,
    NewCampaign,
    RecipientPage,
    RecipientsAdded,
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


_COLUMNS = "id, workspace_id, name, status, message, priority, rate_limit_per_second, send_at, total, created_at, started_at, completed_at"


def _load(campaign_id: int, *, lock: bool = False) -> dict[str, Any]:
    rows = fetch_dicts(f"SELECT {_COLUMNS} FROM campaign WHERE id = %s AND workspace_id = %s" + (" FOR UPDATE" if lock else ""),
                       (campaign_id, g.workspace_id))
    if not rows:
        raise _missing(campaign_id)
    return rows[0]


def _view(c: dict[str, Any]) -> dict[str, Any]:
    message = c["message"]
    return {
        "id": c["id"], "name": c["name"], "status": c["status"], "channel": message["channel"],
        "channels": message.get("channels"), "priority": c["priority"], "rate_limit_per_second": c["rate_limit_per_second"],
        "send_at": _iso(c["send_at"]), "created_at": _iso(c["created_at"]), "started_at": _iso(c["started_at"]),
        "completed_at": _iso(c["completed_at"]), "template_id": message.get("template_id"),
        "progress": campaigns.counters(c),
    }


def _recipients(workspace_id: int, message: dict[str, Any], template: dict[str, Any] | None,
                given: list[CampaignRecipient], first: int) -> list[dict[str, Any]]:
    """Each recipient's address on every channel of the route and its variables; 422 naming the
    first recipient at fault (by its position in the campaign) and what is wrong."""
    route = message.get("channels") or [message["channel"]]
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
        elif r.variables is not None:
            raise _refuse(f"{field}.variables", "variables apply only with template_id")
        out.append({"to": addresses[0], "variables": variables if template is not None else None,
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
    due = due_time(body.send_at, body.timezone, None)
    route = outgoing.route_of(body)
    with transaction(), longer_deadline(settings.postroom_campaign_db_timeout_seconds):
        template = outgoing.template_for(g.workspace_id, body, route)
        fields = outgoing.resolve_content(g.workspace_id, body, route, template)
        message = {"channel": route[0], "channels": route if len(route) > 1 else None, "from": fields.get("from"),
                   "body": fields["body"], "content": fields["content"], "encoding": fields.get("encoding"),
                   "template_id": body.template_id, "tags": content_of(body)["tags"], "quiet_hours": body.quiet_hours}
        staged = _recipients(g.workspace_id, message, template, list(body.recipients or []), 0)
        rows = fetch_dicts(
            f"""INSERT INTO campaign (workspace_id, name, message, priority, rate_limit_per_second, send_at, total)
                VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
            (g.workspace_id, body.name, Json(message), body.priority, body.rate_limit_per_second, due.at, len(staged)))
        campaign = rows[0]
        ids: list[int] = []
        if body.start:
            campaign, ids = _start(campaign, staged)
        elif staged:
            campaigns.stage(staged, campaign["id"], 0)
        view = _view(campaign)
    campaigns.hand_on(campaign, ids)
    return jsonify(view), 201


def _start(campaign: dict[str, Any], given: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], list[int]]:
    """Start a draft (running now, or scheduled for its ``send_at``) and fan out its recipients:
    the staged ones, or ``given`` with the request that creates it."""
    later = campaign["send_at"] is not None and fetch("SELECT %s::timestamptz > now()", (campaign["send_at"],))[0][0]
    campaign = fetch_dicts(
        f"""UPDATE campaign SET status = %s, updated_at = now(), started_at = CASE WHEN %s THEN NULL ELSE now() END
            WHERE id = %s RETURNING {_COLUMNS}""", ("scheduled" if later else "running", later, campaign["id"]))[0]
    return campaign, campaigns.fan_out(campaign, given)


@operation(campaigns_api, "GET", "/campaigns", summary="List campaigns", scope="messages:read",
           ok={200: Body(CampaignList, "The workspace's campaigns, newest first, with their progress.")})
def list_campaigns() -> tuple[Response, int]:
    limit = query_int("limit", 20, 1, 100)
    after = query_int("after", None, 1, 2**63 - 1)
    with transaction():
        rows = fetch_dicts(f"SELECT {_COLUMNS} FROM campaign WHERE workspace_id = %s AND (%s::bigint IS NULL OR id < %s)"
                           " ORDER BY id DESC LIMIT %s", (g.workspace_id, after, after, limit + 1))
        views = [_view(c) for c in rows[:limit]]
    return jsonify({"campaigns": views, "next_after": rows[limit - 1]["id"] if len(rows) > limit else None}), 200


@operation(campaigns_api, "GET", "/campaigns/{campaign_id}", summary="Read a campaign and its live progress",
           scope="messages:read", ok={200: Body(CampaignView, "The campaign, its counters read live.")}, errors=(404,))
def get_campaign(campaign_id: int) -> tuple[Response, int]:
    with transaction():
        view = _view(_load(campaign_id))
    return jsonify(view), 200


def _add(campaign_id: int, given: list[CampaignRecipient]) -> tuple[Response, int]:
    with transaction(), longer_deadline(settings.postroom_campaign_db_timeout_seconds):
        campaign = _load(campaign_id, lock=True)
        if campaign["status"] in ("completed", "cancelled"):
            raise ApiError(409, "conflict", f"campaign {campaign_id} is {campaign['status']}; recipients can no longer be added", "status")
        if campaign["total"] + len(given) > MAX_CAMPAIGN_RECIPIENTS:
            raise _refuse("recipients", f"a campaign holds at most {MAX_CAMPAIGN_RECIPIENTS:,} recipients")
        checked = _recipients(g.workspace_id, campaign["message"], _template(g.workspace_id, campaign["message"]), given, campaign["total"])
        campaign = fetch_dicts(f"UPDATE campaign SET total = total + %s, updated_at = now() WHERE id = %s RETURNING {_COLUMNS}",
                               (len(checked), campaign_id))[0]
        ids: list[int] = []
        if campaign["status"] == "draft":
            campaigns.stage(checked, campaign["id"], campaign["total"] - len(checked))
        else:  # a started campaign sends what is added at once (a paused one holds it at the sender)
            ids = campaigns.fan_out(campaign, checked)
    campaigns.hand_on(campaign, ids)
    return jsonify({"added": len(checked), "total": campaign["total"], "status": campaign["status"]}), 200


@operation(campaigns_api, "POST", "/campaigns/{campaign_id}/recipients", summary="Add a page of recipients",
           scope="messages:write", request=RecipientPage,
           ok={200: Body(RecipientsAdded, "Added; a started campaign sends them at once.")}, errors=(404, 409))
def add_recipients(campaign_id: int, body: RecipientPage) -> tuple[Response, int]:
    return _add(campaign_id, list(body.recipients))


@operation(campaigns_api, "POST", "/campaigns/{campaign_id}/recipients/csv", summary="Add a CSV page of recipients",
           scope="messages:write", request=CsvRecipients, request_media=CSV,
           ok={200: Body(RecipientsAdded, "Added; a started campaign sends them at once.")}, errors=(400, 404, 409, 415, 422))
def add_recipients_csv(campaign_id: int) -> tuple[Response, int]:
    if request.mimetype != CSV:
        raise ApiError(415, "unsupported_media_type", f"send the recipients as {CSV} (a header row, then one recipient per row)", "body")
    return _add(campaign_id, parse_csv(request.get_data(cache=True)))


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
    campaign = _load(campaign_id, lock=True)
    if campaign["status"] not in allowed:
        raise ApiError(409, "conflict", f"campaign {campaign_id} is {campaign['status']}; only a campaign that is "
                       f"{' or '.join(allowed)} can be {verb}", "status")
    return campaign


@operation(campaigns_api, "POST", "/campaigns/{campaign_id}/start", summary="Start a campaign",
           scope="messages:write", ok={200: Body(CampaignView, "Running, or scheduled for its send_at.")}, errors=(404, 409))
def start_campaign(campaign_id: int) -> tuple[Response, int]:
    with transaction(), longer_deadline(settings.postroom_campaign_db_timeout_seconds):
        campaign, ids = _start(_move(campaign_id, ("draft",), "started"))
        view = _view(campaign)
    campaigns.hand_on(campaign, ids)
    return jsonify(view), 200


@operation(campaigns_api, "POST", "/campaigns/{campaign_id}/pause", summary="Pause a campaign",
           scope="messages:write", ok={200: Body(CampaignView, "Paused: no further message is claimed for sending.")},
           errors=(404, 409))
def pause_campaign(campaign_id: int) -> tuple[Response, int]:
    with transaction():
        _move(campaign_id, ("scheduled", "running"), "paused")
        campaign = fetch_dicts(f"UPDATE campaign SET status = 'paused', updated_at = now() WHERE id = %s RETURNING {_COLUMNS}",
                               (campaign_id,))[0]
        view = _view(campaign)
    return jsonify(view), 200


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
        waiting = campaigns.waiting(campaign_id)
        view = _view(campaign)
    dispatch.to_waiting_stages(waiting, committed=True)
    return jsonify(view), 200


@operation(campaigns_api, "POST", "/campaigns/{campaign_id}/cancel", summary="Cancel a campaign",
           scope="messages:write", ok={200: Body(CampaignView, "Cancelled: nothing more is sent; what was sent stays sent.")},
           errors=(404, 409))
def cancel_campaign(campaign_id: int) -> tuple[Response, int]:
    with transaction(), longer_deadline(settings.postroom_campaign_db_timeout_seconds):
        campaign = _move(campaign_id, ("draft", "scheduled", "running", "paused"), "cancelled")
        campaign = fetch_dicts(f"UPDATE campaign SET status = 'cancelled', completed_at = now(), updated_at = now()"
                               f" WHERE id = %s RETURNING {_COLUMNS}", (campaign_id,))[0]
        campaigns.cancel_messages(campaign)
        view = _view(campaign)
    return jsonify(view), 200
