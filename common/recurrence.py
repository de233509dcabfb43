"""When a recurring schedule fires: a 5-field cron expression read in an IANA time zone.

``parse`` validates a schedule's ``cron`` and ``timezone`` (``POST /v1/schedules``);
``Recurrence.after`` and ``Recurrence.next`` give its occurrences as UTC instants; and
``occurrence_key`` names each occurrence, so that a restarted scheduler or a second replica claims
it at most once. Matching is left to cronsim, which follows Debian's (Vixie) cron, DST quirks
included. That gives a fixed answer for the days when local clocks jump:

* A *fixed-time* expression is one where neither the minute nor the hour field starts with ``*``
  (``30 2 * * *``, ``0 9 * * 1-5``, ``0 0-23/2 * * *``). It is matched against the local wall
  clock. A time that does not exist (the hour skipped when DST starts) fires once, at the first
  instant after the gap: 02:30 fires at 03:00 in New York on 8 March 2026. A time that happens
  twice (the hour repeated when DST ends) fires once, at its first pass.
* Every other expression (``*/15 * * * *``, ``0 * * * *``, ``0 */2 * * *``) is matched against
  each real instant. It fires in both passes of a repeated hour and never in a skipped one, so
  an hourly job stays one real hour apart (01:00 EST, then 03:00 EDT). A consequence is that
  ``0 */2 * * *`` runs 00:00 and then 04:00 on the spring-forward day. Writing the hours as
  ``0-23/2`` makes it fixed-time instead.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice

from cronsim import CronSim, CronSimError

_FIELDS = "minute hour day-of-month month day-of-week"


@dataclass(frozen=True)
class Recurrence:
    """A validated cron expression (fields separated by single spaces) and the zone it is read in."""

    cron: str
    zone: zoneinfo.ZoneInfo

    def after(
        self, moment: datetime, *, start: datetime | None = None, end: datetime | None = None
    ) -> Iterator[datetime]:
        """Yield the occurrences strictly after ``moment``, earliest first, as UTC datetimes.

        Parameters:
            moment: the instant to count from, usually now or the last occurrence sent.
            start: no occurrence before it. The bound is inclusive: an occurrence at exactly
                ``start`` is yielded.
            end: occurrences stop before it. The bound is exclusive: none at exactly ``end``.

        Raises:
            ValueError: ``moment``, ``start`` or ``end`` is naive.

        Without ``end``, the iterator ends only when no match exists within 50 years.
        """
        _require_aware(moment=moment, start=start, end=end)
        base = moment if start is None or start <= moment else start - timedelta(seconds=1)
        for local in CronSim(self.cron, base.astimezone(self.zone)):
            at = local.astimezone(UTC)
            # A fixed-time expression is matched on the wall clock. Starting from the repeated
            # hour's second pass, cronsim can return an occurrence from the first pass, which has
            # already happened.
            if at <= moment or (start is not None and at < start):
                continue
            if end is not None and at >= end:
                return
            yield at

    def next(
        self,
        moment: datetime,
        count: int = 5,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[datetime]:
        """Return the first ``count`` occurrences of :meth:`after`, such as the five that
        ``GET /v1/schedules/{id}`` shows."""
        return list(islice(self.after(moment, start=start, end=end), count))


def parse(cron: str, timezone: str) -> Recurrence:
    """Validate a schedule's cron expression and time zone.

    Raises:
        ValueError: the message starts with ``cron:`` or ``timezone:`` and says what is wrong.
    """
    fields = cron.split()
    if len(fields) != 5:
        # cronsim would also accept a sixth field for seconds. Schedules fire at most once a
        # minute, and occurrence_key depends on that.
        raise ValueError(f"cron: expected 5 fields ({_FIELDS}), got {len(fields)} in {cron!r}")
    normalized = " ".join(fields)
    try:
        CronSim(normalized, datetime(2000, 1, 1))
    except CronSimError as exc:  # "Bad minute", "Bad day-of-month", ...
        raise ValueError(f"cron: {str(exc).lower()} field in {cron!r}") from None
    if timezone not in _zone_names():
        raise ValueError(
            f"timezone: unknown zone {timezone!r} (expected an IANA name such as 'Europe/Paris')"
        )
    return Recurrence(normalized, zoneinfo.ZoneInfo(timezone))


def occurrence_key(schedule_id: int, at: datetime) -> str:
    """Return the dedupe key of one occurrence, ``sched:<id>:<UTC minute>``.

    For example ``sched:42:2026-03-09T13:00Z``. The key depends only on the instant, not on the
    zone ``at`` is given in. Every replica computes the same key, and no schedule fires twice in
    one minute.

    Raises:
        ValueError: ``at`` is naive.
    """
    _require_aware(at=at)
    return f"sched:{schedule_id}:{at.astimezone(UTC):%Y-%m-%dT%H:%MZ}"


@functools.cache
def _zone_names() -> frozenset[str]:
    # Only names from the IANA database are accepted. ZoneInfo() itself also takes "localtime",
    # which means whatever zone the host running the scheduler happens to be in.
    return frozenset(zoneinfo.available_timezones() - {"localtime"})


def _require_aware(**moments: datetime | None) -> None:
    for name, value in moments.items():
        if value is not None and value.utcoffset() is None:
            raise ValueError(f"{name}: naive datetime {value.isoformat()}; give it a time zone")
