"""Request and response bodies of the recurring schedule API (``/v1/schedules``).

A schedule's ``message`` is a ``NewMessage``, validated by the same rules as ``POST /v1/messages``;
only the fields that say when (or what to answer when a twin is pending) do not apply to it,
since the schedule's cron and time zone decide when each occurrence is sent.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.ingest.models import NewMessage, SingleLine, TimeZone

# NewMessage fields a schedule's message refuses (422 naming them).
NOT_FOR_SCHEDULES = ("send_at", "timezone", "delay_seconds", "on_conflict")
NEXT_OCCURRENCES = 5

Cron = Annotated[str, Field(min_length=1, max_length=120, examples=["0 9 * * 1-5"]), SingleLine]
Instant = Annotated[str, Field(min_length=10, max_length=40, examples=["2026-12-01T00:00:00-05:00"]), SingleLine]
MaxCount = Annotated[int, Field(ge=1, le=1_000_000)]

_CRON = ("A 5-field cron expression (minute hour day-of-month month day-of-week), e.g. `0 9 * * 1-5`: "
         "09:00 on weekdays. Read on the wall clock of `timezone`, so it keeps its local time across DST.")
_TIMEZONE = "The IANA time zone the cron expression is read in, e.g. America/New_York."
_MESSAGE = ("What each occurrence sends: the fields of `POST /v1/messages` (channel, to, body, from, priority, tags), "
            f"checked the same way; {', '.join(NOT_FOR_SCHEDULES)} do not apply (422).")
_START = "RFC 3339 with an offset: no occurrence before it."
_END = "RFC 3339 with an offset: no occurrence at or after it."
_MAX_COUNT = "Send at most this many occurrences in all."


class NewSchedule(BaseModel):
    """``POST /v1/schedules``: send a message at every occurrence of a cron expression."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    cron: Cron = Field(description=_CRON)
    timezone: TimeZone = Field("UTC", description=_TIMEZONE)
    message: NewMessage = Field(description=_MESSAGE)
    start: Instant | None = Field(None, description=_START)
    end: Instant | None = Field(None, description=_END)
    max_count: MaxCount | None = Field(None, description=_MAX_COUNT)


class ScheduleChange(BaseModel):
    """``PATCH /v1/schedules/{id}``: the fields to change (``null`` clears start, end or max_count).
    The next run is computed again from now; occurrences already materialised keep their message."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    cron: Cron | None = Field(None, description=_CRON)
    timezone: TimeZone | None = Field(None, description=_TIMEZONE)
    message: NewMessage | None = Field(None, description=_MESSAGE + " Replaces the whole message.")
    start: Instant | None = Field(None, description=_START)
    end: Instant | None = Field(None, description=_END)
    max_count: MaxCount | None = Field(None, description=_MAX_COUNT)


class ScheduledMessage(BaseModel):
    """The message a schedule sends, as it was given (the number in E.164)."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    channel: str
    to: str
    from_: str | None = Field(None, alias="from")
    body: str
    priority: str
    tags: list[str] | dict[str, str]


class ScheduleView(BaseModel):
    """A recurring schedule as the API shows it."""

    id: int
    cron: str
    timezone: str
    message: ScheduledMessage
    start: str | None
    end: str | None
    max_count: int | None
    sent_count: int = Field(description="Occurrences sent so far (each became a message).")
    status: Literal["active", "paused", "finished"] = Field(
        description="`finished`: past its end, or max_count sent (a PATCH can extend it).")
    next_run_at: str | None = Field(description="The next occurrence (UTC) not yet turned into a message.")
    next_occurrences: list[str] | None = Field(None, description=(
        f"The next {NEXT_OCCURRENCES} occurrences (UTC), honouring pause, end and max_count; left out of listings."))
    created_at: str | None
    updated_at: str | None


class ScheduleList(BaseModel):
    schedules: list[ScheduleView]
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last page.")
