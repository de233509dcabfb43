"""Request and response bodies of the sequence API (``services.ingest.sequence_api``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.ingest.models import MAX_SMS_BODY, MultiLine, SendAt, SingleLine, TagMap, TimeZone

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]
LocalTime = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["20:00"])]
MAX_STEPS = 50
YEAR = 400 * 86400


class SequenceStep(BaseModel):
    """One step: sent at ``anchor`` + ``days`` (at local time ``at``, if given) + ``offset_seconds``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Name = Field(description="Unique in the sequence, e.g. check_in_reminder_night_before.")
    anchor: Name = Field("enrolment", description="`enrolment` (when the recipient is enrolled) or a named time of the enrolment.")
    offset_seconds: Annotated[int, Field(ge=-YEAR, le=YEAR)] = Field(0, description="Seconds after (negative: before) the anchor.")
    days: Annotated[int, Field(ge=-400, le=400)] = Field(0, description="Days after (negative: before) the anchor's day.")
    at: LocalTime | None = Field(None, description="Local time on that day in the recipient's zone, e.g. 20:00.")
    if_past: Literal["send", "skip"] = Field("send", description="When the step's time has already passed: send now, or skip it.")
    body: Annotated[str, Field(min_length=1, max_length=MAX_SMS_BODY), MultiLine] = Field(
        description="The text; {name} is replaced by the enrolment's variable of that name.")
    priority: Literal["urgent", "normal", "bulk"] = "bulk"
    tags: TagMap = Field(default_factory=dict, description="Tags of the step's message (sequence_id, enrolment_id and step are added).")


class NewSequence(BaseModel):
    """``POST /v1/sequences``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=100), SingleLine]
    channel: Literal["sms", "http"] = "sms"
    steps: Annotated[list[SequenceStep], Field(min_length=1, max_length=MAX_STEPS)]

    @field_validator("steps")
    @classmethod
    def _unique_names(cls, steps: list[SequenceStep]) -> list[SequenceStep]:
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError("step names must be unique")
        return steps


class SequenceView(BaseModel):
    id: int
    name: str
    channel: str
    steps: list[dict[str, Any]]
    created_at: str | None


Anchors = Annotated[dict[Name, SendAt], Field(max_length=20)]


class NewEnrolment(BaseModel):
    """``POST /v1/sequences/{id}/enrolments``: a recipient, the times the steps hang on, and variables."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    to: Annotated[str, Field(min_length=1, max_length=320), SingleLine]
    anchors: Anchors = Field(default_factory=dict, description='Named times (RFC 3339 with an offset), e.g. {"event_start": "2026-12-03T09:00:00-05:00"}.')
    variables: Annotated[dict[Name, Annotated[str, Field(max_length=500), SingleLine]], Field(max_length=50)] = Field(default_factory=dict)
    timezone: TimeZone | None = Field(None, description="The recipient's IANA zone for local step times; left out: the number's, else the workspace's.")


class EnrolmentChange(BaseModel):
    """``PATCH /v1/enrolments/{id}``: moved anchors (the event was rescheduled)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    anchors: Annotated[Anchors, Field(min_length=1)]


class EnrolmentStep(BaseModel):
    step: str
    message_id: int | None
    status: str = Field(description="The message's status, or `skipped` when its time had passed.")
    send_at: str | None


class EnrolmentView(BaseModel):
    id: int
    sequence_id: int
    to: str
    status: str
    timezone: str
    anchors: dict[str, str]
    steps: list[EnrolmentStep]
