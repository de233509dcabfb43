"""Quiet hours: whether a message due now would land inside them, and when to release it.

A ``QuietHours`` window is wall-clock time in the recipient's time zone (21:00-08:00 means
nine in the evening to eight in the morning wherever the recipient is). ``hold_until`` answers
for one message: ``None`` to send when due, or the instant the window opens again; a message
inside quiet hours is held, never dropped. ``recipient_timezone`` picks the zone to apply:
the contact's own, else one the phone number pins down, else the workspace's.

Which window applies (workspace, contact or message override) and whether an urgent message
bypasses it are decided by the caller; this module only does the clock arithmetic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from common import phones

WINDOW = re.compile(r" *([0-9]{1,2}):([0-9]{2}) *- *([0-9]{1,2}):([0-9]{2}) *")

TimezoneSource = Literal["contact", "phone", "workspace"]


@dataclass(frozen=True)
class QuietHours:
    """A daily window of local wall-clock time, ``start`` included, ``end`` excluded.

    ``start`` after ``end`` wraps midnight (21:00-08:00, the usual case); ``start == end`` is
    an empty window: no quiet hours. Times are whole minutes without a time zone.
    """

    start: time
    end: time

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if value.tzinfo is not None:
                raise ValueError(f"quiet hours {name} is wall-clock time: it takes no time zone")
            if value.second or value.microsecond:
                raise ValueError(f"quiet hours {name} must be a whole minute, not {value.isoformat()}")

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        """A window from ``"HH:MM-HH:MM"``, e.g. ``"21:00-08:00"``.

        Raises:
          ValueError: the text is not two 24-hour times joined by a dash, or a time is out of
            range (hours 00-23, minutes 00-59).
        """
        match = WINDOW.fullmatch(text)
        if match is None:
            raise ValueError(f"quiet hours must look like 21:00-08:00 (start-end, 24-hour clock), not {text!r}")
        start_h, start_m, end_h, end_m = (int(part) for part in match.groups())
        for hours, minutes in ((start_h, start_m), (end_h, end_m)):
            if hours > 23 or minutes > 59:
                raise ValueError(f"{hours:02d}:{minutes:02d} is not a time of day (hours 00-23, minutes 00-59)")
        return cls(time(start_h, start_m), time(end_h, end_m))

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    @property
    def empty(self) -> bool:
        """The window never contains anything: nothing is ever held."""
        return self.start == self.end

    def contains(self, wall_clock: time) -> bool:
        """``wall_clock`` (local, naive) falls inside the window."""
        if self.start < self.end:
            return self.start <= wall_clock < self.end
        if self.start > self.end:
            return wall_clock >= self.start or wall_clock < self.end
        return False


def parse_timezone(name: str) -> ZoneInfo:
    """The IANA zone called ``name`` (e.g. ``Europe/London``).

    Raises:
      ValueError: no such zone in this machine's time zone database.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone such as Europe/London") from None


def hold_until(due: datetime, quiet: QuietHours | None, timezone: str) -> datetime | None:
    """When a message due at ``due`` may go, if quiet hours hold it back.

    Parameters:
      due: when the message would be sent; must carry a time zone.
      quiet: the window that applies, or ``None`` for none.
      timezone: the recipient's IANA zone, in which the window is read.

    Raises:
      ValueError: ``due`` is naive, or ``timezone`` is not a known zone.

    Returns:
      ``None`` when ``due`` is outside the window in that zone (send as planned); else the
      instant, in UTC, at which the window next ends there: the first after ``due`` at which
      the local clock reads outside it. When the end time does not exist that day (the clocks
      jump over it) that is the first instant after the jump; when it occurs twice (the
      clocks go back) the first occurrence, or the second if ``due`` is past the first; and
      when going back puts the clock outside the window before its end, that moment.
    """
    if due.tzinfo is None or due.utcoffset() is None:
        raise ValueError("due must be an aware datetime")
    if quiet is None or quiet.empty:
        return None
    zone = parse_timezone(timezone)
    due = due.astimezone(UTC)  # comparisons with a repeated local hour are only safe in UTC
    local = due.astimezone(zone)
    if not quiet.contains(local.time()):
        return None
    end_day = local.date()
    if quiet.start > quiet.end and local.time() >= quiet.start:
        end_day += timedelta(days=1)  # a wrapping window entered this evening ends tomorrow
    release = _first_instant_at(datetime.combine(end_day, quiet.end), zone, after=due)
    if release.astimezone(zone).utcoffset() != local.utcoffset():
        # The clocks change before the window ends. Going back can put the wall clock outside
        # the window early (01:59 BST -> 01:00 GMT leaves 01:30-02:30): the window is open then.
        change = _offset_change(due, release, zone)
        if change < release and not quiet.contains(change.astimezone(zone).time()):
            return change
    return release


def recipient_timezone(contact_tz: str | None, phone: str | None, workspace_tz: str) -> tuple[str, TimezoneSource]:
    """The zone quiet hours are read in for one recipient, and where it came from.

    The contact's own zone if set and known; else the zone the phone number pins down (see
    ``phones.timezone_for``); else the workspace's. A contact zone this machine does not know
    is passed over rather than failing the send, so the next source decides.

    Raises:
      ValueError: it came to the workspace's zone and that is not a known zone.
    """
    if contact_tz:
        try:
            parse_timezone(contact_tz)
        except ValueError:
            pass
        else:
            return contact_tz, "contact"
    if phone:
        derived = phones.timezone_for(phone)
        if derived is not None:
            return derived, "phone"
    parse_timezone(workspace_tz)
    return workspace_tz, "workspace"


def _first_instant_at(wall: datetime, zone: ZoneInfo, *, after: datetime) -> datetime:
    """The first instant (UTC) later than ``after`` whose local time in ``zone`` is ``wall``,
    or the end of the jump if the clocks skip ``wall`` that day."""
    earlier = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    later = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if earlier <= later:
        # One occurrence (earlier == later) or two (the clocks go back over it).
        return earlier if earlier > after else later
    # Skipped: fold=0 reads the wall time with the offset from before the jump and fold=1 with
    # the one after, so the jump lies between the two.
    return _offset_change(later, earlier, zone)


def _offset_change(old: datetime, new: datetime, zone: ZoneInfo) -> datetime:
    """The first whole second (UTC) after ``old`` on the UTC offset ``new`` has in ``zone``.

    Assumes one change of offset between the two, as there is between any instant and a
    window's end at most a day later. Transitions fall on whole seconds, so a bisection over
    seconds finds the exact one.
    """
    new_offset = new.astimezone(zone).utcoffset()
    old_side, new_side = int(old.timestamp()), int(new.timestamp())
    while new_side - old_side > 1:
        middle = (old_side + new_side) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == new_offset:
            new_side = middle
        else:
            old_side = middle
    return datetime.fromtimestamp(new_side, UTC)
