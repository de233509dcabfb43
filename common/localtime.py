"""A wall-clock time in a zone as one instant, the way cron does it: in a repeated hour (clocks
go back) the first of the two instants; in a skipped hour (clocks go forward) the first instant
after the gap (02:30 → 03:00). Used for local ``send_at`` times and sequence steps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo


def resolve(naive: datetime, zone: ZoneInfo) -> datetime:
    first = naive.replace(tzinfo=zone, fold=0)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive:
        return first
    # In a gap: the clock jumps between these two instants; find the jump to the second.
    low, high = sorted((first.astimezone(UTC), naive.replace(tzinfo=zone, fold=1).astimezone(UTC)))
    before = low.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)
