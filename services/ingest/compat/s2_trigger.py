"""S2, the Trigger.dev SMS scheduler (seed ``002_*.txt``): its five routes as thin adapters over
the /v1 messages core.

A job is one postroom message: ``jobId`` is ``job_<message id>`` and ``messageId`` is
``msg_<message id>``. Sending now, after ``delayMinutes`` or at ``scheduledTime`` is
``api.accept_one`` with ``send_at``; cancel-job is ``messages.cancel``; job-status reads
``messages.view``. Times come back in the offset the caller wrote (``scheduledTime``), kept as the
message's ``s2_offset`` tag, else in the workspace's time zone.

The old scheduler took any ``to`` and ``fromNumber`` and failed the job when Twilio refused it;
these routes do the same (``outgoing.resolve_deferring``): a number that does not validate, or a
sender that is not the workspace's own, is accepted, and the processing stage fails the message
(``invalid_number``, ``bad_sender``) before any provider sees it. /v1 refuses both with 422.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from flask import Response, g, request

from common.db.connection import transaction
from services.ingest import api, messages, outgoing
from services.ingest.compat import framework
from services.ingest.compat.s2_models import (
    JOB_ID,
    CancelAnswer,
    CancelJob,
    JobAnswer,
    ScheduleDelay,
    ScheduleUntil,
    SendSms,
    SentAnswer,
)
from services.ingest.contract import Body, query
from services.ingest.errors import ApiError
from services.ingest.models import NewMessage
from services.ingest.validation import validate

blueprint = framework.blueprint("compat_s2", __name__, url_prefix="/api/trigger")
TAG = {"compat": "s2"}

JOB_STATUS = {"scheduled": "scheduled", "accepted": "processing", "queued": "processing", "routed": "processing",
              "sending": "processing", "sent": "completed", "delivered": "completed", "read": "completed",
              "failed": "failed", "undelivered": "failed", "suppressed": "failed", "cancelled": "cancelled"}
MESSAGE_STATUS = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed", "undelivered": "undelivered",
                  "sending": "sending", "cancelled": "cancelled", "suppressed": "failed"}  # else queued
ENDED = ("failed", "undelivered", "suppressed", "cancelled")
# /v1's field names in refusals, as the S2 request names them.
FIELDS = {"from": "fromNumber", "media": "mediaUrl"}
_JOB = re.compile(JOB_ID)


def _declare(path: str, summary: str, request_model: type[SendSms]) -> Any:
    return framework.compat_operation(
        blueprint, "POST", path, summary=summary, scope="messages:write", request=request_model,
        ok={200: Body(SentAnswer, "The job: created (or, with a repeated Idempotency-Key, the one created then).")},
        errors=(403, 409), rerun_safe=True)  # the key is on the message row


@_declare("/send-sms", "S2: send an SMS now", SendSms)
def send_sms(body: SendSms) -> tuple[Response, int]:
    return _schedule(body, None, "send_at")


@_declare("/schedule-delay", "S2: send an SMS after delayMinutes", ScheduleDelay)
def schedule_delay(body: ScheduleDelay) -> tuple[Response, int]:
    at = datetime.now(UTC) + timedelta(minutes=body.delayMinutes)
    return _schedule(body, at.isoformat(), "delayMinutes")


@_declare("/schedule-until", "S2: send an SMS at scheduledTime", ScheduleUntil)
def schedule_until(body: ScheduleUntil) -> tuple[Response, int]:
    return _schedule(body, body.scheduledTime, "scheduledTime")


def _schedule(body: SendSms, send_at: str | None, time_field: str) -> tuple[Response, int]:
    """Accept the job's message as ``POST /v1/messages`` does, checks of ``to`` and ``fromNumber``
    deferred to processing; refusals name the S2 field (``time_field`` for the due time)."""
    framework.check_identity(body.workspaceId, field="workspaceId")
    offset = _offset_text(framework.offset_of(send_at)) if time_field == "scheduledTime" else None
    tags = {**TAG, "s2_offset": offset} if offset is not None else dict(TAG)
    held = g.get("idempotency")
    try:
        given = {"channel": "sms", "to": body.to, "body": body.body, "from": body.fromNumber, "tags": tags, "send_at": send_at,
                 "media": [{"url": body.mediaUrl}] if body.mediaUrl else None}
        new = validate(NewMessage, {k: v for k, v in given.items() if v is not None})
        answer, _ = api.accept_one(g.workspace_id, new, held.key if held is not None else None,
                                   resolve=outgoing.resolve_deferring)
    except ApiError as exc:
        renamed = {**FIELDS, "send_at": time_field, "delay_seconds": time_field}.get(exc.field or "", exc.field)
        raise ApiError(exc.status, exc.code, exc.message, renamed, exc.headers) from None
    data: dict[str, Any] = {"jobId": f"job_{answer['id']}", "status": JOB_STATUS.get(answer["status"], "processing"),
                            "messageId": f"msg_{answer['id']}"}
    if time_field != "send_at":
        data["scheduledTime"] = framework.iso_in_offset(answer.get("send_at") or datetime.now(UTC), send_at,
                                                       framework.workspace_zone(g.workspace_id))
    if body.mediaUrl:
        data["mediaUrl"] = body.mediaUrl
    if body.fromNumber:
        data["fromNumber"] = body.fromNumber
    return framework.success(data=data)


@framework.compat_operation(blueprint, "POST", "/cancel-job", summary="S2: cancel a job that has not started sending",
                            scope="messages:write", request=CancelJob, errors=(403, 404, 409),
                            ok={200: Body(CancelAnswer, "Cancelled (now or before): it is never sent.")})
def cancel_job(body: CancelJob) -> tuple[Response, int]:
    framework.check_identity(body.workspaceId, field="workspaceId")
    message_id = _message_id(body.jobId)
    with transaction():
        outcome, _ = messages.cancel(g.workspace_id, message_id)
    if outcome == "not_found":
        raise _no_job(body.jobId)
    if outcome == "too_late":
        raise ApiError(409, "not_cancellable", f"job {body.jobId} has started sending or has ended; it cannot be cancelled",
                       "jobId")
    return framework.success(data={"jobId": body.jobId, "status": "cancelled"})


@framework.compat_operation(
    blueprint, "GET", "/job-status", summary="S2: a job's status", scope="messages:read", errors=(403, 404, 422),
    ok={200: Body(JobAnswer, "The job's status, and its message's.")},
    headers=[query("jobId", "The job (`job_<id>`), as the scheduling call answered.", minLength=1, maxLength=100),
             query("workspaceId", "The workspace as the old clients named it; checked against the API key's.",
                   minLength=1, maxLength=200)])
def job_status() -> tuple[Response, int]:
    framework.check_identity(request.args.get("workspaceId"), field="workspaceId")
    job_id = request.args.get("jobId")
    if not job_id:
        raise ApiError(422, "invalid_request", "jobId is required: the job id the scheduling call answered", "jobId")
    message_id = _message_id(job_id)
    with transaction():
        job = _job(message_id)
    return framework.success(data=job)


def _job(message_id: int) -> dict[str, Any]:
    """The message as an S2 job: its status, times (in the caller's offset) and message status.
    The due time is the latest one its history records (a reschedule moves it)."""
    view = messages.view(g.workspace_id, message_id)
    if view is None:
        raise _no_job(f"job_{message_id}")
    events = view.get("events") or []
    like = _stored_offset(view["tags"])
    zone = framework.workspace_zone(g.workspace_id)
    due = next((e["detail"]["send_at"] for e in reversed(events) if e["status"] == "scheduled" and e["detail"].get("send_at")),
               view["send_at"])
    ended = next((e["at"] for e in reversed(events) if e["status"] in ENDED), None)
    job = {"jobId": f"job_{message_id}", "status": JOB_STATUS.get(view["status"], "processing"),
           "messageId": f"msg_{message_id}", "messageStatus": MESSAGE_STATUS.get(view["status"], "queued"),
           "scheduledTime": framework.iso_in_offset(due, like, zone),
           "completedTime": framework.iso_in_offset(view["sent_at"] or view["delivered_at"] or ended, like, zone)}
    if view["error_code"] is not None or view["last_error"] is not None:
        job.update(errorCode=view["error_code"], error=view["last_error"])
    return job


def _message_id(job_id: str) -> int:
    if not _JOB.match(job_id) or int(job_id[4:]) > 2**63 - 1:
        raise _no_job(job_id)
    return int(job_id[4:])


def _no_job(job_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no job {job_id[:100]} in this workspace", "jobId")


def _offset_text(offset: timezone | None) -> str | None:
    """A caller's UTC offset (``framework.offset_of``) as the ``s2_offset`` tag keeps it: ``+10:00``."""
    written = offset.utcoffset(None) if offset is not None else None
    if written is None:
        return None
    minutes = int(written.total_seconds()) // 60
    return f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _stored_offset(tags: Any) -> str | None:
    """A timestamp in the caller's offset, from the message's ``s2_offset`` tag, for
    ``framework.iso_in_offset`` to answer in (None: there is none)."""
    offset = tags.get("s2_offset") if isinstance(tags, dict) else None
    return f"2000-01-01T00:00:00{offset}" if offset else None
