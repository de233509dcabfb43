"""What is still to come of a recurring schedule: the occurrences of its cron expression in its
time zone (``common.recurrence``), bounded by its start, its end and its max_count.

Ingest uses it to set a schedule's first run and to show the next ones; the scheduler to move a
schedule on once it has materialised an occurrence as a message. Every function takes the
current time as an argument, so that tests can control the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from common.recurrence import Recurrence, parse

# An occurrence becomes a 'scheduled' message this long before its time, so the message exists
# (and the scheduler wakes for its due time) before it is due.
MATERIALISE_AHEAD = timedelta(seconds=5)


@dataclass(frozen=True)
class Plan:
    """A schedule's recurrence and its bounds: no occurrence before ``start``, none at or after
    ``end``, and no more than ``max_count`` sent (``sent_count`` are sent already)."""

    recurrence: Recurrence
    start: datetime | None = None
    end: datetime | None = None
    max_count: int | None = None
    sent_count: int = 0

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Plan:
        """The plan of a ``schedule`` row.

        Raises:
          ValueError: its cron or time zone is no longer valid (a time zone removed from tzdata).
        """
        return cls(parse(row["cron"], row["timezone"]), row["start_at"], row["end_at"], row["max_count"], row["sent_count"])

    @property
    def remaining(self) -> int | None:
        """How many more occurrences may be sent; None: no limit."""
        return None if self.max_count is None else max(0, self.max_count - self.sent_count)

    def first_after(self, moment: datetime) -> datetime | None:
        """The first occurrence after ``moment`` that would be sent; None: the schedule has finished."""
        if self.remaining == 0:
            return None
        return next(self.recurrence.after(moment, start=self.start, end=self.end), None)

    def upcoming(self, first: datetime | None, count: int) -> list[datetime]:
        """``first`` (the next run) and the occurrences after it: ``count`` at most, and no more
        than may still be sent."""
        limit = count if self.remaining is None else min(count, self.remaining)
        if first is None or limit <= 0:
            return []
        return [first, *self.recurrence.next(first, limit - 1, start=self.start, end=self.end)]


def occurrence_keys_like(schedule_id: int) -> str:
    """A SQL ``LIKE`` pattern matching every ``occurrence_key`` of one schedule (``sched:<id>:...``)."""
    return f"sched:{schedule_id}:%"
