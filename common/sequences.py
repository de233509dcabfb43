"""When each step of a sequence is due for one enrolment.

A step is due at an offset from its anchor — the enrolment itself or a named time of the
enrolment (``event_start``, ``session_end``, …) — optionally on a day relative to the anchor at a
fixed local time in the recipient's zone: "the day before ``event_start`` at 20:00", "1 hour
before ``event_start``", "7 minutes after ``session_end``". Moving an anchor moves every step that
hangs on it; a step whose time has already passed is sent now or skipped, by its own rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from common.localtime import resolve

ENROLMENT = "enrolment"


@dataclass(frozen=True)
class StepTime:
    """Where a step sits in time: ``anchor``, then ``days`` (calendar days in the recipient's
    zone when ``at`` is given), at local ``at`` if given, plus ``offset_seconds``."""

    anchor: str = ENROLMENT
    offset_seconds: int = 0
    days: int = 0
    at: time | None = None
    if_past: Literal["send", "skip"] = "send"


def due(step: StepTime, anchors: dict[str, datetime], enrolled_at: datetime, timezone: str) -> datetime:
    """The step's due time in UTC. Raises KeyError when its anchor is missing."""
    base = enrolled_at if step.anchor == ENROLMENT else anchors[step.anchor]
    if step.at is None:
        return (base + timedelta(days=step.days, seconds=step.offset_seconds)).astimezone(UTC)
    zone = ZoneInfo(timezone)
    day = base.astimezone(zone).date() + timedelta(days=step.days)
    return (resolve(datetime.combine(day, step.at), zone) + timedelta(seconds=step.offset_seconds)).astimezone(UTC)


def plan(step: StepTime, anchors: dict[str, datetime], enrolled_at: datetime, timezone: str,
         now: datetime) -> datetime | None:
    """When to send the step: its due time, now when that has passed and the rule is ``send``,
    None when it has passed and the rule is ``skip``."""
    at = due(step, anchors, enrolled_at, timezone)
    if at > now:
        return at
    return now if step.if_past == "send" else None
