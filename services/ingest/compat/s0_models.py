"""Request and response bodies of the S0 compatibility routes (``compat.s0_broadcast``): the
broadcast queue service's ``QueueMessage`` and broadcast endpoints, as its document
(``000_*.txt``, "Step 1" and "Step 3") declares them.

The document gives request shapes only; the answers are postroom's, in the document's
vocabulary (``queue_status``: pending, queued, processing, completed, failed, cancelled).
Unknown fields are ignored: old clients send what their own rows hold.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from services.ingest.models import MAX_BODY, MultiLine, SingleLine

QueueStatus = Literal["pending", "queued", "processing", "completed", "failed", "cancelled"]
Text = Annotated[str, Field(min_length=1, max_length=200), SingleLine]
Time = Annotated[str, Field(max_length=40, examples=["2026-12-01T09:00:00-05:00"]), SingleLine]
MAX_METADATA = 50
BROADCAST_ID = {"minLength": 1, "maxLength": 100, "pattern": "^[A-Za-z0-9_.:-]+$"}

_WORKSPACE = ("The workspace as the old clients named it (`QueueServiceConfig.workspaceId`; also read from "
              "`metadata.workspaceId` and the `x-workspace-id` header): checked against the API key's workspace (its id, "
              "name or one of its `compat_identities`), 403 otherwise. Optional: the key decides the workspace.")
_TIME = ("When to send: RFC 3339 with an offset, or a local time read in the workspace's time zone; empty or left out: now. "
         "A time already past sends now.")


class QueueMessage(BaseModel):
    """``POST /api/schedule-sms`` and ``/api/schedule-email``: one message to queue."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    contactId: Annotated[StrictStr, Field(min_length=1, max_length=200), SingleLine] | Annotated[
        StrictInt, Field(ge=1, le=2**63 - 1)] = Field(description=(
            "The contact: a postroom contact id, or the contact's `external_id` (your system's id). When neither names a "
            "contact, `metadata.phone` (SMS) or `metadata.email` (email) is the address."), examples=["crm-4711"])
    messageId: Text = Field(description=(
        "Your id for this message, and its idempotency key: the same messageId with the same content answers the message "
        "queued first; with other content, 409."), examples=["bcast-7-contact-4711"])
    scheduledTime: Time | None = Field(None, description=_TIME)
    content: Annotated[str, Field(min_length=1, max_length=MAX_BODY["email"], pattern=r"\S"), MultiLine] = Field(
        description="The text (at most 1,600 characters for SMS).")
    metadata: Annotated[dict[str, Any], Field(max_length=MAX_METADATA)] = Field(default_factory=dict, description=(
        "Anything your system keeps with the message. Read here: `phone`, `email` (the address when contactId names no "
        "contact), `subject` and `html` (email), `workspaceId`; string values of names such as `broadcast_id` become the "
        "message's tags (`GET /v1/messages`, cancel by tags)."))
    workspaceId: Text | None = Field(None, description=_WORKSPACE)


class QueueAnswer(BaseModel):
    """The queued message (``QueueResponse``)."""

    success: Literal[True]
    queueMessageId: str = Field(description="The postroom message id (`GET /v1/messages/{id}`).")
    messageId: str = Field(description="Your messageId, as sent.")
    status: QueueStatus
    scheduledTime: str | None = Field(description="When it is due (UTC), for a message sent later; null: now.")


class QueueBroadcast(BaseModel):
    """``POST /api/broadcasts/{id}/queue``: start the broadcast, now or at ``scheduleTime``."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    scheduleTime: Time | None = Field(None, description=_TIME)
    workspaceId: Text | None = Field(None, description=_WORKSPACE)


class BroadcastCounts(BaseModel):
    pending: int = Field(description="Not yet handed to a provider (waiting, scheduled, or recipients not yet fanned out).")
    processing: int = Field(description="Being sent now.")
    completed: int = Field(description="Sent (and delivered or read).")
    failed: int = Field(description="Failed, undelivered or suppressed.")
    cancelled: int


class BroadcastStatus(BaseModel):
    """A broadcast (a postroom campaign) and its progress."""

    success: Literal[True]
    id: str = Field(description="The broadcast id as given in the path.")
    campaignId: int = Field(description="The postroom campaign (`GET /v1/campaigns/{id}`).")
    name: str
    queue_status: QueueStatus = Field(description=(
        "pending (a draft, not queued), queued (scheduled or paused), processing (sending), completed, failed (every "
        "message failed), cancelled."))
    queued_at: str | None = Field(description="When it started sending; null before.")
    scheduled_time: str | None = Field(description="When it is set to start (UTC), if it was given a time.")
    total: int = Field(description="Recipients.")
    progress: float = Field(description="Percent done (sent, failed or cancelled).")
    counts: BroadcastCounts
