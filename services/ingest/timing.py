"""When a message is due: ``send_at`` (RFC 3339 with an offset, or a local time and an IANA
``timezone``) or ``delay_seconds``, bounded by the scheduling horizon. Refusals name the field."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from common.config import settings
from common.localtime import resolve
from services.ingest.errors import ApiError

# Closer than this to now is simply "now": not worth a trip through the scheduler.
IMMEDIATE = timedelta(milliseconds=200)


@dataclass(frozen=True)
class Due:
    at: datetime | None  # None: send now
    note: str | None = None


def due_time(send_at: str | None, timezone: str | None, delay_seconds: int | None, now: datetime | None = None) -> Due:
    now = now or datetime.now(UTC)
    if send_at is not None and delay_seconds is not None:
        raise ApiError(422, "invalid_request", "give send_at or delay_seconds, not both", "delay_seconds")
    if timezone is not None and send_at is None:
        raise ApiError(422, "invalid_request", "timezone applies to a local send_at; give send_at too", "timezone")
    if send_at is None and delay_seconds is None:
        return Due(None)
    if delay_seconds is not None:
        at = now + timedelta(seconds=delay_seconds)
    else:
        assert send_at is not None
        at = _parse(send_at, timezone)
    horizon = timedelta(days=settings.postroom_schedule_horizon_days)
    if at - now > horizon:
        field = "delay_seconds" if delay_seconds is not None else "send_at"
        raise ApiError(422, "invalid_request", f"{field} is more than {settings.postroom_schedule_horizon_days:g} days ahead", field)
    if at <= now:
        return Due(None, f"send_at {at.isoformat()} is in the past; the message is sent now")
    if at - now < IMMEDIATE:
        return Due(None)
    return Due(at)


def _parse(send_at: str, timezone: str | None) -> datetime:
    try:
        parsed = datetime.fromisoformat(send_at.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ApiError(422, "invalid_request", "send_at must be an RFC 3339 time such as 2026-12-01T09:00:00-05:00 "
                       "(or a local time with timezone)", "send_at") from None
    if parsed.tzinfo is None:
        if timezone is None:
            raise ApiError(422, "invalid_request", "send_at has no UTC offset: add one, or give timezone", "send_at")
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ApiError(422, "invalid_request", f"timezone {timezone[:64]!r} is not an IANA time zone", "timezone") from None
        try:
            parsed = resolve(parsed, zone)
        except OverflowError:
            raise ApiError(422, "invalid_request", "send_at is out of range", "send_at") from None
    elif timezone is not None:
        raise ApiError(422, "invalid_request", "send_at has a UTC offset already; leave timezone out", "timezone")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # a time at the very edge of the calendar
        raise ApiError(422, "invalid_request", "send_at is out of range", "send_at") from None
