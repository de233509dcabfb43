"""S1, the WhatsApp campaign queue (seed ``001_*.txt``): its send, status and worker routes as
thin adapters over the /v1 campaigns core.

- ``POST /api/campaigns/send`` is a WhatsApp Cloud campaign (``campaigns_api``) whose
  ``external_id`` is the caller's ``campaignId``. Repeated sends of the same content add their
  recipients to the newest campaign of that id that is running or scheduled (``campaigns_api.add``);
  other content, or a campaign in any other status (a draft or paused one would only hold them, a
  finished one takes none), makes a new one under the same id (``campaigns_api.create``, started
  at once). ``text`` is the message body; ``template`` is a ``models.Template``.
- ``GET /api/queue/status`` sums ``campaigns.counters`` over the campaigns of that id, in the
  document's cumulative form (a read message was also delivered and sent).
- ``POST`` (and Vercel cron's ``GET``) ``/api/queue/worker`` does nothing: postroom's workers
  always run. It reports what they did in the last minute (``backlog.measure``), so the cron
  callers keep working and do no harm; a second's cache keeps a cron storm to one query.

``x-user-id`` is the old identity: it must name the API key's workspace
(``framework.check_identity``). The webhook under the old path is ``s1_hooks``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import UTC, datetime
from typing import Any

from flask import Response, g, request

from common import backlog, campaigns
from common.db.connection import transaction
from services.ingest import campaigns_api
from services.ingest.campaign_models import CampaignRecipient, NewCampaign
from services.ingest.compat import framework
from services.ingest.compat.s1_models import (
    CampaignQueued,
    CampaignSend,
    MediaObject,
    QueueStatus,
    TemplateContent,
    TemplateParameter,
    WorkerReport,
)
from services.ingest.contract import Body, header, query
from services.ingest.errors import ApiError
from services.ingest.models import CHANNELS
from services.ingest.validation import validate

blueprint = framework.blueprint("compat_s1", __name__)
CHANNEL = "whatsapp_cloud"
WORKER_WINDOW_SECONDS = 60
WORKER_CACHE_SECONDS = 1.0
JOINABLE = ("running", "scheduled")  # a send's recipients join a campaign only while it is going to send them
# /v1's field names in refusals, as the S1 request names them.
FIELDS = {"body": "payload.text.body", "template": "payload.template", "external_id": "campaignId", "name": "campaignName",
          "recipients": "recipients"}
USER_ID = header("x-user-id", "The old identity: the API key's workspace (its id, name or one of its compat_identities); "
                 "403 otherwise.", maxLength=200)


def _identity() -> None:
    framework.check_identity(request.headers.get("x-user-id"), field="x-user-id")


@framework.compat_operation(
    blueprint, "POST", "/campaigns/send", summary="S1: queue a WhatsApp campaign's messages", scope="messages:write",
    request=CampaignSend, headers=[USER_ID], errors=(403, 404, 409),
    ok={200: Body(CampaignQueued, "Queued: the recipients are the campaign's messages, sent by the workers.")})
def send_campaign(body: CampaignSend) -> tuple[Response, int]:
    _identity()
    new = _campaign(body)
    recipients = list(new.recipients or [])
    added = _add_to_current(body, new, recipients)
    if added is None:
        created = _renamed(lambda: campaigns_api.create(g.workspace_id, new))
        queued, total, campaign_id = len(recipients), created["progress"]["total"], created["id"]
    else:
        queued, total, campaign_id = added
    return framework.success(campaignId=body.campaignId, queued=queued, total=total, postroomCampaignId=campaign_id)


def _campaign(body: CampaignSend) -> NewCampaign:
    """The /v1 campaign the send describes, started at once; refusals name the S1 field."""
    content: dict[str, Any] = {}
    if body.messageType == "text":
        if body.payload.text is None:
            raise ApiError(422, "invalid_request", "messageType text needs payload.text.body", "payload.text")
        content["body"] = body.payload.text.body
    else:
        if body.payload.template is None:
            raise ApiError(422, "invalid_request", "messageType template needs payload.template", "payload.template")
        content["template"] = _template(body.payload.template)
    data = {"name": body.campaignName or f"campaign {body.campaignId}", "channel": CHANNEL, "start": True,
            "external_id": str(body.campaignId), "recipients": [{"to": to} for to in body.recipients], **content}
    return _renamed(lambda: validate(NewCampaign, data))


def _template(given: TemplateContent) -> dict[str, Any]:
    """The Graph API template object as ``models.Template``: body parameters, and text header
    parameters or one media header."""
    out: dict[str, Any] = {"name": given.name, "language": given.language.code}
    for n, component in enumerate(given.components):
        where = f"payload.template.components[{n}]"
        for k, p in enumerate(component.parameters):
            media = _parameter(p, f"{where}.parameters[{k}]")
            if component.type == "body":
                if media is not None:
                    raise ApiError(422, "invalid_request", f"{where}: body parameters are text", f"{where}.parameters")
                out.setdefault("body_parameters", []).append(p.text)
            elif media is not None:
                if "header_media" in out or "header_parameters" in out:
                    raise ApiError(422, "invalid_request", f"{where}: a header has one media parameter", f"{where}.parameters")
                out["header_media"] = {"url": media.link, "type": p.type,
                                       **({"filename": media.filename} if media.filename else {})}
            else:
                if "header_media" in out:
                    raise ApiError(422, "invalid_request", f"{where}: a media header has no text", f"{where}.parameters")
                out.setdefault("header_parameters", []).append(p.text)
    return out


def _parameter(p: TemplateParameter, where: str) -> MediaObject | None:
    """A parameter's media object (None for a text one); 422 when its value is missing."""
    if p.type == "text":
        if p.text is None:
            raise ApiError(422, "invalid_request", f"{where}: a text parameter needs text", f"{where}.text")
        return None
    media: MediaObject | None = getattr(p, p.type)
    if media is None:
        raise ApiError(422, "invalid_request", f'{where}: this {p.type} parameter needs its {p.type} object ({{"link": ...}})',
                       f"{where}.{p.type}")
    return media


def _renamed(call: Any) -> Any:
    """Run ``call``; a refusal naming a /v1 field names the S1 field instead."""
    try:
        return call()
    except ApiError as exc:
        if exc.field:
            head, dot, rest = exc.field.partition(".")
            base, bracket, index = head.partition("[")
            if base in FIELDS:
                exc.field = FIELDS[base] + bracket + index + dot + rest
        raise


def _add_to_current(body: CampaignSend, new: NewCampaign,
                    recipients: list[CampaignRecipient]) -> tuple[int, int, int] | None:
    """Add the recipients to the newest campaign of this ``campaignId`` that is running or
    scheduled and sends the same content: (queued, total, postroom id). None when there is none
    (or it finished meanwhile), so that a new campaign is made."""
    with transaction():
        message = json.loads(json.dumps(_renamed(lambda: campaigns_api.message_of(g.workspace_id, new)), default=str))
        current = next((c for c in campaigns_api.by_external_id(g.workspace_id, str(body.campaignId))
                        if c["status"] in JOINABLE and c["message"] == message), None)
    if current is None:
        return None
    try:
        added = _renamed(lambda: campaigns_api.add(g.workspace_id, current["id"], recipients))
    except ApiError as exc:
        if exc.status == 409:  # it completed (or was cancelled) since: a new campaign takes these
            return None
        raise
    return int(added["added"]), int(added["total"]), int(current["id"])


@framework.compat_operation(
    blueprint, "GET", "/queue/status", summary="S1: a campaign's queue status", scope="messages:read",
    headers=[query("campaignId", "Your campaign's id, as sent to /api/campaigns/send.", minLength=1, maxLength=100,
                   pattern=r"^[A-Za-z0-9_.:-]+$"), USER_ID],
    errors=(403, 404, 422), ok={200: Body(QueueStatus, "The campaigns of that id, summed.")})
def queue_status() -> tuple[Response, int]:
    _identity()
    ref = request.args.get("campaignId", "")
    if not ref or len(ref) > 100 or not all(c.isascii() and (c.isalnum() or c in "_.:-") for c in ref):
        raise ApiError(422, "invalid_request", "campaignId must be your campaign's id (letters, digits, _ . : -; at most 100)",
                       "campaignId")
    with transaction():
        rows = campaigns_api.by_external_id(g.workspace_id, ref)
        if not rows:
            found = campaigns_api.find(g.workspace_id, ref)
            rows = [found] if found is not None else []
        counts = [campaigns.counters(c) for c in rows]
    if not rows:
        raise ApiError(404, "not_found", f"no campaign {ref} in this workspace", "campaignId")
    return framework.success(**status_of(int(ref) if ref.isdigit() and len(ref) < 19 else ref, rows, counts))


def status_of(ref: int | str, rows: list[dict[str, Any]], counts: list[dict[str, Any]]) -> dict[str, Any]:
    """The document's status answer from campaigns (newest first) and their counters; progress is
    the counters' ``percent_done`` over them all (weighted by size), rounded down."""
    total = {k: sum(c[k] for c in counts) for k in ("total", "pending", "processing", "sent", "delivered", "read", "failed",
                                                    "suppressed", "cancelled")}
    sent = total["sent"] + total["delivered"] + total["read"]
    delivered = total["delivered"] + total["read"]
    failed = total["failed"] + total["suppressed"]
    return {
        "stats": {"pending": total["pending"], "processing": total["processing"], "sent": sent, "failed": failed,
                  "delivered": delivered, "read": total["read"]},
        "avgSendRate": f"{_mean_rate(rows, sent + failed):.1f} msg/sec",
        "campaign": {"id": ref, "name": rows[0]["name"], "status": rows[0]["status"], "progress": _progress(counts),
                     "total": total["total"], "sent": sent, "delivered": delivered, "failed": failed},
    }


def _progress(counts: list[dict[str, Any]]) -> int:
    """The campaigns' ``percent_done`` together (weighted by size, in the counters' hundredths),
    rounded down; 100 only when nothing is left (hundredths can make 99.999 read as 100)."""
    size = sum(c["total"] for c in counts)
    if not size:
        return 100
    percent = math.floor(round(sum(c["percent_done"] * c["total"] for c in counts) / size, 2))
    left = any(c["pending"] or c["processing"] for c in counts)
    return min(percent, 99) if left else 100


def _mean_rate(rows: list[dict[str, Any]], finished: int) -> float:
    """Messages finished sending per second since the first campaign started, until the last
    one completed (or now): the campaign's lifetime mean, as the old dashboard showed it."""
    starts = [c["started_at"] for c in rows if c["started_at"] is not None]
    if not starts or not finished:
        return 0.0
    going = any(c["completed_at"] is None for c in rows)
    end = datetime.now(UTC) if going else max(c["completed_at"] for c in rows)
    return finished / max(1.0, (end - min(starts)).total_seconds())


_reports: dict[int, tuple[float, dict[str, Any]]] = {}
_reports_lock = threading.Lock()


@framework.compat_operation(
    blueprint, "POST", "/queue/worker", summary="S1: the cron's worker call (postroom's workers always run)",
    scope="messages:read", ok={200: Body(WorkerReport, "What the workers did in the last minute; nothing is processed by the call.")})
def worker_post() -> tuple[Response, int]:
    return framework.success(**worker_report(g.workspace_id))


@framework.compat_operation(
    blueprint, "GET", "/queue/worker", summary="S1: the worker call as Vercel cron makes it (GET)",
    scope="messages:read", ok={200: Body(WorkerReport, "What the workers did in the last minute; nothing is processed by the call.")})
def worker_get() -> tuple[Response, int]:
    return framework.success(**worker_report(g.workspace_id))


def worker_report(workspace_id: int) -> dict[str, Any]:
    """The senders' work in the last ``WORKER_WINDOW_SECONDS`` and what waits now, for the
    workspace; computed at most once a second per process."""
    now = time.monotonic()
    with _reports_lock:
        cached = _reports.get(workspace_id)
    if cached is not None and now - cached[0] < WORKER_CACHE_SECONDS:
        return cached[1]
    with transaction():
        figures = backlog.measure(workspace_id, scheduled=False, window_seconds=WORKER_WINDOW_SECONDS)
    message_stages = [(key, f) for key, f in figures.items() if key[0] != "webhooks"]
    sent = sum(f.completed_last_hour for (stage, _), f in message_stages if stage in CHANNELS)
    failed = sum(f.failed_last_hour for _, f in message_stages)
    report = {"workers": "continuous", "intervalSeconds": WORKER_WINDOW_SECONDS, "processed": sent + failed, "sent": sent,
              "failed": failed, "pending": sum(f.waiting for _, f in message_stages),
              "processing": sum(f.active for _, f in message_stages)}
    with _reports_lock:
        _reports[workspace_id] = (now, report)
    return report

