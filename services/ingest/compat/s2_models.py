"""Request and response bodies of the S2 compatibility routes (``compat.s2_trigger``): the
Trigger.dev SMS scheduler's API as its document (``002_*.txt``, section 10) shows it.

Old clients send more than these fields at times, so unknown fields are ignored; the ones named
here are checked as /v1 checks them, except ``to`` and ``fromNumber``: the old scheduler took any
and failed the job when it ran, and so does postroom (``outgoing.resolve_deferring``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.ingest.models import MAX_SMS_BODY, MultiLine, Recipient, SendAt, SingleLine, Url

# Ten years of minutes: the scheduling horizon (POSTROOM_SCHEDULE_HORIZON_DAYS) usually refuses sooner.
MAX_DELAY_MINUTES = 10 * 366 * 1440
JOB_ID = r"^job_[0-9]{1,19}$"
JobStatus = Literal["scheduled", "processing", "completed", "failed", "cancelled"]
MessageStatus = Literal["queued", "sending", "sent", "delivered", "read", "failed", "undelivered", "cancelled"]
Identity = Annotated[str, Field(min_length=1, max_length=200, examples=["ws_123"]), SingleLine]
JobId = Annotated[str, Field(min_length=1, max_length=100, examples=["job_42"]), SingleLine]

_WORKSPACE = ("The workspace as the old clients named it: checked against the API key's workspace (its id, its name, or "
              "one of its `compat_identities`), 403 otherwise. Optional: the key decides the workspace.")
_JOB = "The job: `job_<postroom message id>`, as the scheduling call answered."


class SendSms(BaseModel):
    """``POST /api/trigger/send-sms``: send an SMS now."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    to: Recipient = Field(description=(
        "The recipient's number (E.164). One that is not a valid number is accepted, and the job then fails with "
        "`invalid_number` without reaching a provider, as the old scheduler's Twilio call did."))
    body: Annotated[str, Field(min_length=1, max_length=MAX_SMS_BODY, pattern=r"\S"), MultiLine] = Field(
        description="The text (at most 1,600 characters).")
    workspaceId: Identity | None = Field(None, description=_WORKSPACE)  # the document's names, camelCase
    fromNumber: Recipient | None = Field(None, description=(
        "The sender number; left out: the workspace's. One that is not the workspace's own fails the job with "
        "`bad_sender` (it is never sent from)."))
    mediaUrl: Url | None = Field(None, description="A picture to send with it (MMS), by link.")


class ScheduleDelay(SendSms):
    """``POST /api/trigger/schedule-delay``: send an SMS after ``delayMinutes``."""

    delayMinutes: Annotated[float, Field(gt=0, le=MAX_DELAY_MINUTES, allow_inf_nan=False)] = Field(
        description="Minutes from now, fractions allowed (0.05 is 3 seconds).", examples=[5])


class ScheduleUntil(SendSms):
    """``POST /api/trigger/schedule-until``: send an SMS at ``scheduledTime``."""

    scheduledTime: SendAt = Field(description=(
        "When to send: RFC 3339 with an offset (`2025-05-11T16:00:00+10:00`); times come back in that offset. A "
        "time already past sends now."))


class CancelJob(BaseModel):
    """``POST /api/trigger/cancel-job``: cancel a job that has not started sending."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    jobId: JobId = Field(description=_JOB)
    workspaceId: Identity | None = Field(None, description=_WORKSPACE)


class Sent(BaseModel):
    jobId: str
    status: JobStatus
    messageId: str = Field(description="`msg_<postroom message id>`; `GET /v1/messages/{id}` shows the message.")
    scheduledTime: str | None = Field(None, description="When it is due, in the request's offset (scheduled jobs).")
    mediaUrl: str | None = None
    fromNumber: str | None = None


class SentAnswer(BaseModel):
    """A job created (or, for a repeated Idempotency-Key, found)."""

    success: Literal[True]
    data: Sent


class Cancelled(BaseModel):
    jobId: str
    status: Literal["cancelled"]


class CancelAnswer(BaseModel):
    """The job is cancelled (now or before): it is never sent."""

    success: Literal[True]
    data: Cancelled


class Job(BaseModel):
    jobId: str
    status: JobStatus = Field(description=(
        "scheduled; processing (on its way to the provider); completed (sent); failed; cancelled."))
    scheduledTime: str | None = Field(description="When it was due (scheduled jobs), else null.")
    completedTime: str | None = Field(description="When it was sent, or ended failed or cancelled; null before.")
    messageStatus: MessageStatus = Field(description=(
        "The message's own status: queued until it is sent, then sent, delivered, read, failed or undelivered."))
    messageId: str
    errorCode: str | None = Field(None, description="Why it failed (`invalid_number`, `bad_sender`, a provider's code).")
    error: str | None = Field(None, description="The failure in words.")


class JobAnswer(BaseModel):
    """The job's current status."""

    success: Literal[True]
    data: Job
