"""Request and response bodies of the S3 routes (BullMQ event messages, ``services.ingest.compat.s3_events``).

The request fields are the ``event_messages`` columns the old ``scheduleEventMessage`` took
(seed 003, "Database Field Alignment"); any other column of that row (``status``,
``actual_send_time``, ``response_received`` ...) is ignored, so a caller may pass its rows as
they are. Ids are integers, or the digit strings a PostgreSQL driver hands out for a bigint.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SkipValidation, StrictInt, StrictStr

from services.ingest.models import MAX_BODY, MAX_RECIPIENT, MAX_VARIABLES, MultiLine, SingleLine

MAX_BULK = 1000
MAX_SHIFT_SECONDS = 366 * 86400

Id = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)] | Annotated[StrictStr, Field(pattern=r"^[1-9][0-9]{0,17}$")]
Label = Annotated[str, Field(min_length=1, max_length=100), SingleLine]  # kept as a tag: at most 100 characters
MessageType = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$",
                                   examples=["speaker_alert", "check_in_reminder_1_hour"])]
Time = Annotated[str, Field(min_length=10, max_length=40, examples=["2025-10-17T19:07:00", "2025-10-17T23:07:00.000Z"]),
                 SingleLine]
Address = Annotated[str, Field(min_length=1, max_length=MAX_RECIPIENT), SingleLine]


class EventMessage(BaseModel):
    """One event message, as ``scheduleEventMessage(messageData)`` took it."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    id: Id = Field(description="`event_messages.id`: the handle for cancel and reschedule (`/api/event-messages/{id}/...`).")
    event_id: Id
    contractor_id: Id
    message_type: MessageType = Field(description=(
        "With `event_id` and `contractor_id` the message's natural key: while one is pending, another with the same "
        "three is the same message (answered with `duplicate: true`). Also sets the priority when `priority` is absent."))
    message_category: Label | None = Field(None, examples=["event_day"])
    scheduled_time: Time = Field(description=(
        "When to send: ISO 8601 with an offset (`...Z`, `...-04:00`), or a local time, read in the workspace's time "
        "zone (`PATCH /v1/workspace/settings`). A time in the past sends now."))
    message_content: Annotated[str, Field(min_length=1, max_length=MAX_BODY["email"], pattern=r"\S"), MultiLine] = Field(
        description="The text sent (at most 1,600 characters for SMS).")
    personalization_data: Annotated[dict[str, Any], Field(max_length=MAX_VARIABLES)] | None = Field(None, description=(
        "Accepted as the old rows hold it; `email` is the address of an `email` message. The content is sent as "
        "`message_content` says (postroom does not personalise it again)."))
    phone: Address | None = Field(None, description="The contractor's phone (E.164); required unless `channel` is `email`.")
    email: Address | None = Field(None, description="`channel: email`: the address (else `personalization_data.email`).")
    channel: Literal["sms", "email"] | None = Field(None, description=(
        "`email`, or `sms` (the default): delivered through the workspace's generic `http` channel (the n8n webhook) "
        "when it has one, else as SMS."))
    priority: Annotated[StrictInt, Field(ge=1, le=10)] | None = Field(None, description=(
        "1 (highest) to 10; left out: from `message_type` (event start 1, speaker alert 2, 1-hour check-in 3, sponsor 5, "
        "PCR 7, night before 8, else 10). 1–2 go in the urgent lane, 3–7 normal, 8–10 bulk."))
    ghl_contact_id: Label | None = None
    ghl_location_id: Label | None = None


class EventMessageBulk(BaseModel):
    """``scheduleBulkEventMessages(messagesArray)``: each message validated on its own."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    messages: Annotated[list[SkipValidation[EventMessage]], Field(min_length=1, max_length=MAX_BULK)] = Field(description=(
        "Up to 1,000 event messages; an invalid one is listed in `failed` while the others are scheduled."))


class Reschedule(BaseModel):
    """``rescheduleEventMessage(message_id, new_time, data)``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    new_time: Time = Field(description="The new time (as `scheduled_time`); in the past: now.")
    data: SkipValidation[EventMessage] | None = Field(None, description=(
        "The message's row: when no pending message has this id (it failed, or was sent or cancelled) it is "
        "scheduled anew at `new_time`, as the old recovery loop did for failed messages."))


class EventReschedule(BaseModel):
    """Move every pending message of an event (or of one contractor in it)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    shift_seconds: Annotated[int, Field(ge=-MAX_SHIFT_SECONDS, le=MAX_SHIFT_SECONDS)] | None = Field(
        None, description="Move each by this many seconds from its own time (negative: earlier).")
    new_time: Time | None = Field(None, description="Or move them all to this time.")
    contractor_id: Id | None = Field(None, description="Only this contractor's messages.")


class Scheduled(BaseModel):
    """One event message as stored."""

    success: Literal[True]
    id: int | str = Field(description="The `id` given.")
    queueMessageId: int = Field(description="The postroom message id (`GET /v1/messages/{id}`).")
    status: Literal["scheduled", "sent", "failed", "cancelled"]
    scheduled_time: str | None = Field(description="When it is due (UTC); null once it is no longer waiting.")
    priority: str = Field(description="The lane the priority maps to: urgent, normal or bulk.")
    channel: str
    duplicate: bool = Field(description="`true`: a pending message with the same event, contractor and type was found instead.")


class BulkItem(BaseModel):
    index: int = Field(description="The message's position in `messages`, from 0.")
    id: int | str | None = Field(None, description="The `id` given.")
    queueMessageId: int | None = None
    status: str | None = None
    duplicate: bool | None = None
    error: str | None = None
    code: str | None = None
    field: str | None = Field(None, description="The field at fault, e.g. `messages[3].phone`.")


class BulkScheduled(BaseModel):
    success: Literal[True]
    scheduled: int = Field(description="New messages stored.")
    duplicates: int = Field(description="Messages already pending (same event, contractor and type), not stored again.")
    failed: list[BulkItem] = Field(description="The refused messages, each with its error.")
    messages: list[BulkItem] = Field(description="Every message's outcome, in request order.")


class Counted(BaseModel):
    success: Literal[True]
    count: int = Field(description="How many pending messages were cancelled or moved.")
    queueMessageId: int | None = Field(None, description="Reschedule with `data` of a message no longer pending: the new message.")


class QueueStats(BaseModel):
    """``getQueueStats()``, over this workspace's S3 messages."""

    success: Literal[True]
    waiting: int = Field(description="Ready and waiting for a stage.")
    active: int = Field(description="Being sent now.")
    completed: int = Field(description="Sent in the last hour.")
    failed: int = Field(description="Failed in the last hour.")
    delayed: int = Field(description="Scheduled for later (every future one), and retries waiting for their time.")
    total: int = Field(description="waiting + active + delayed (as BullMQ counted it).")


class UpcomingMessage(BaseModel):
    id: int | str | None = Field(description="The `id` it was scheduled with.")
    queueMessageId: int
    event_id: int | str | None
    contractor_id: int | str | None
    message_type: str | None
    message_category: str | None
    scheduled_time: str = Field(description="When it is due (UTC).")
    phone: str = Field(description="The address it goes to (an email address for an email message).")
    channel: str
    priority: str
    status: Literal["scheduled"]


class Upcoming(BaseModel):
    """``getUpcomingMessages()``: the next 24 hours, soonest first."""

    success: Literal[True]
    messages: list[UpcomingMessage]
    count: int = Field(description="Messages in the whole window (not only this page).")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
