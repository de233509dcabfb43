"""Recurring schedules' occurrences: cron read in the schedule's zone, correct across DST.

2026 transitions used here. America/New_York springs forward on 8 March (02:00 EST -> 03:00
EDT) and falls back on 1 November (02:00 EDT -> 01:00 EST). Australia/Sydney falls back on
5 April (03:00 AEDT -> 02:00 AEST) and springs forward on 4 October (02:00 AEST -> 03:00 AEDT).
The clock is controlled: every call is given an explicit ``moment``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from common.recurrence import occurrence_key, parse

NEW_YORK = ZoneInfo("America/New_York")
SYDNEY = ZoneInfo("Australia/Sydney")


def wall(*fields: int) -> datetime:
    """A naive date and time: year, month, day[, hour[, minute]]."""
    year, month, day, hour, minute = (*fields, 0, 0)[:5]
    return datetime(year, month, day, hour, minute)


def local(zone: ZoneInfo, *fields: int, fold: int = 0) -> datetime:
    """The UTC instant of a local wall-clock time. Comparing in UTC matters: Python compares two
    datetimes that share a tzinfo by wall clock and ignores ``fold``, so it cannot tell the
    repeated hour's two passes apart."""
    return wall(*fields).replace(tzinfo=zone, fold=fold).astimezone(UTC)


def exists(zone: ZoneInfo, *fields: int) -> bool:
    return local(zone, *fields).astimezone(zone).replace(tzinfo=None) == wall(*fields)


def utc(*fields: int) -> datetime:
    return wall(*fields).replace(tzinfo=UTC)


def gaps(instants: list[datetime]) -> set[timedelta]:
    return {b - a for a, b in pairwise(instants)}


def test_weekday_nine_am_stays_nine_am_local_across_both_transitions():
    schedule = parse("0 9 * * 1-5", "America/New_York")

    # Friday 6 March is EST, Monday 9 March (after the Sunday spring-forward) is EDT.
    assert schedule.next(local(NEW_YORK, 2026, 3, 6), 3) == [
        utc(2026, 3, 6, 14), utc(2026, 3, 9, 13), utc(2026, 3, 10, 13),
    ]
    # Friday 30 October is EDT, Monday 2 November (after the Sunday fall-back) is EST.
    assert schedule.next(local(NEW_YORK, 2026, 10, 30), 3) == [
        utc(2026, 10, 30, 13), utc(2026, 11, 2, 14), utc(2026, 11, 3, 14),
    ]


@pytest.mark.parametrize(
    ("zone", "day", "expected"),
    [
        # 03:00 EDT on the 8th, then 02:30 EDT
        (NEW_YORK, (2026, 3, 8), [utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30), utc(2026, 3, 10, 6, 30)]),
        # 03:00 AEDT on the 4th, then 02:30 AEDT
        (SYDNEY, (2026, 10, 4), [utc(2026, 10, 3, 16), utc(2026, 10, 4, 15, 30), utc(2026, 10, 5, 15, 30)]),
    ],
)
def test_daily_time_in_the_skipped_hour_fires_once_when_the_gap_ends(zone, day, expected):
    # Given 02:30 daily, on the day local time jumps from 02:00 to 03:00
    schedule = parse("30 2 * * *", zone.key)
    assert not exists(zone, *day, 2, 30) and exists(zone, *day, 3, 0)  # premise

    # When the occurrences are listed from the start of that day
    occurrences = schedule.next(local(zone, *day), 3)

    # Then that day fires once, at 03:00, and the following days at 02:30 again
    assert occurrences == expected
    assert [at.astimezone(zone).strftime("%H:%M") for at in occurrences] == ["03:00", "02:30", "02:30"]


@pytest.mark.parametrize(
    ("zone", "day", "hour", "expected"),
    [
        # 01:30 EDT on the 1st, then 01:30 EST on the 2nd
        (NEW_YORK, (2026, 11, 1), 1, [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]),
        # 02:30 AEDT on the 5th, then 02:30 AEST on the 6th
        (SYDNEY, (2026, 4, 5), 2, [utc(2026, 4, 4, 15, 30), utc(2026, 4, 5, 16, 30)]),
    ],
)
def test_daily_time_in_the_repeated_hour_fires_once_at_its_first_pass(zone, day, hour, expected):
    # Given a daily time in the hour that happens twice on the fall-back day
    schedule = parse(f"30 {hour} * * *", zone.key)
    first_pass = local(zone, *day, hour, 30, fold=0)
    second_pass = local(zone, *day, hour, 30, fold=1)
    assert second_pass - first_pass == timedelta(hours=1)  # premise

    # When the occurrences are listed from the start of that day
    occurrences = schedule.next(local(zone, *day), 2)

    # Then the first pass fires, the second does not, and the next day fires once
    assert occurrences == expected
    assert occurrences[0] == first_pass and second_pass not in occurrences


def test_restart_during_the_repeated_hour_does_not_list_the_first_pass_again():
    # Given 01:30 daily in New York, which fired at 01:30 EDT (05:30Z) on 1 November
    schedule = parse("30 1 * * *", "America/New_York")

    # When a scheduler starts at 01:15 EST (06:15Z), in the second pass, when the wall clock
    # reads before 01:30 again
    restarted = local(NEW_YORK, 2026, 11, 1, 1, 15, fold=1)

    # Then the next occurrence is the following day's, not 01:30 EDT again
    assert schedule.next(restarted, 1) == [utc(2026, 11, 2, 6, 30)]


def test_hourly_job_fires_every_real_hour_through_both_transitions():
    hourly = parse("0 * * * *", "America/New_York")

    # Spring forward: 01:00 EST, then 03:00 EDT, since 02:00 does not exist
    spring = hourly.next(local(NEW_YORK, 2026, 3, 8, 0, 30), 3)
    assert spring == [utc(2026, 3, 8, 6), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8)]

    # Fall back: 01:00 EDT, then 01:00 EST (both passes), then 02:00 EST
    fall = hourly.next(local(NEW_YORK, 2026, 11, 1, 0, 30), 3)
    assert fall == [utc(2026, 11, 1, 5), utc(2026, 11, 1, 6), utc(2026, 11, 1, 7)]
    assert [at.astimezone(NEW_YORK).hour for at in fall] == [1, 1, 2]
    assert gaps(spring) == gaps(fall) == {timedelta(hours=1)}


def test_quarter_hourly_job_fires_every_real_quarter_hour_through_both_transitions():
    quarterly = parse("*/15 * * * *", "America/New_York")

    # 00:00 EST to 04:00 EDT on 8 March is 3 real hours
    spring = list(
        quarterly.after(
            local(NEW_YORK, 2026, 3, 8) - timedelta(seconds=1), end=local(NEW_YORK, 2026, 3, 8, 4)
        )
    )
    # 00:00 EDT to 03:00 EST on 1 November is 4 real hours
    fall = list(
        quarterly.after(
            local(NEW_YORK, 2026, 11, 1) - timedelta(seconds=1), end=local(NEW_YORK, 2026, 11, 1, 3)
        )
    )

    assert len(spring) == 12 and len(fall) == 16
    assert gaps(spring) == gaps(fall) == {timedelta(minutes=15)}


def test_hour_step_from_a_star_skips_the_missing_hour_and_a_range_step_does_not():
    # Cron semantics (Debian, cronsim): "*/2" in the hour field makes the job a wildcard job,
    # matched on real instants, so 02:00 is lost on the spring-forward day. Writing "0-23/2"
    # makes it fixed-time, so 02:00 fires at 03:00 EDT.
    midnight = local(NEW_YORK, 2026, 3, 8) - timedelta(seconds=1)

    wildcard = parse("0 */2 * * *", "America/New_York").next(midnight, 2)
    fixed = parse("0 0-23/2 * * *", "America/New_York").next(midnight, 3)

    assert wildcard == [utc(2026, 3, 8, 5), utc(2026, 3, 8, 8)]  # 00:00 EST, 04:00 EDT
    assert fixed == [utc(2026, 3, 8, 5), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8)]  # ..., 03:00 EDT


def test_occurrences_are_strictly_after_the_moment_and_within_start_and_end():
    schedule = parse("0 9 * * 1-5", "America/New_York")
    monday_nine = local(NEW_YORK, 2026, 3, 9, 9)
    thursday_nine = local(NEW_YORK, 2026, 3, 12, 9)

    # start is inclusive and end exclusive
    assert list(schedule.after(local(NEW_YORK, 2026, 1, 1), start=monday_nine, end=thursday_nine)) == [
        utc(2026, 3, 9, 13), utc(2026, 3, 10, 13), utc(2026, 3, 11, 13),
    ]
    # an occurrence at exactly the moment has already happened
    assert schedule.next(monday_nine, 1) == [utc(2026, 3, 10, 13)]
    # a start one microsecond after an occurrence excludes it
    assert schedule.next(monday_nine - timedelta(days=1), 1, start=monday_nine + timedelta(microseconds=1)) == [
        utc(2026, 3, 10, 13)
    ]
    # the moment wins over an earlier start
    assert schedule.next(monday_nine, 1, start=local(NEW_YORK, 2026, 1, 1)) == [utc(2026, 3, 10, 13)]


def test_next_lists_five_occurrences_in_utc_by_default():
    schedule = parse("0 9 * * 1-5", "America/New_York")

    upcoming = schedule.next(local(NEW_YORK, 2026, 3, 6, 10))  # Friday, after 09:00

    assert upcoming == [utc(2026, 3, d, 13) for d in (9, 10, 11, 12, 13)]
    assert all(at.tzinfo is UTC for at in upcoming)
    assert schedule.next(local(NEW_YORK, 2026, 3, 6, 10), end=local(NEW_YORK, 2026, 3, 11)) == [
        utc(2026, 3, 9, 13), utc(2026, 3, 10, 13),
    ]


def test_parse_normalises_spacing_and_keeps_the_zone():
    schedule = parse("  0  9 * *\t1-5 ", "Australia/Sydney")

    assert schedule.cron == "0 9 * * 1-5"
    assert schedule.zone.key == "Australia/Sydney"


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("61 * * * *", "cron: bad minute field in '61 * * * *'"),
        ("0 24 * * *", "cron: bad hour field in '0 24 * * *'"),
        ("0 0 31 2 *", "cron: bad day-of-month field in '0 0 31 2 *'"),  # never happens
        ("0 9 * * MON-FOO", "cron: bad day-of-week field in '0 9 * * MON-FOO'"),
        ("0 9 * *", "cron: expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("0 0 9 * * *", "cron: expected 5 fields (minute hour day-of-month month day-of-week), got 6"),
        ("@daily", "cron: expected 5 fields (minute hour day-of-month month day-of-week), got 1"),
        ("", "cron: expected 5 fields (minute hour day-of-month month day-of-week), got 0"),
    ],
)
def test_invalid_cron_is_refused_with_what_is_wrong(cron, message):
    with pytest.raises(ValueError) as refused:
        parse(cron, "UTC")

    assert str(refused.value).startswith(message)


@pytest.mark.parametrize(
    "timezone", ["Mars/Base", "america/new_york", "", "../etc/passwd", "/etc/localtime", "localtime"]
)
def test_unknown_timezone_is_refused_by_name(timezone):
    with pytest.raises(ValueError) as refused:
        parse("0 9 * * *", timezone)

    assert str(refused.value).startswith(f"timezone: unknown zone {timezone!r}")


def test_naive_datetimes_are_refused():
    schedule = parse("0 9 * * *", "UTC")

    with pytest.raises(ValueError, match="^moment: naive datetime"):
        schedule.next(datetime(2026, 3, 6))
    with pytest.raises(ValueError, match="^end: naive datetime"):
        schedule.next(utc(2026, 3, 6), end=datetime(2026, 4, 1))
    with pytest.raises(ValueError, match="^at: naive datetime"):
        occurrence_key(1, datetime(2026, 3, 6))


def test_occurrence_key_names_the_instant_whatever_zone_it_is_given_in():
    instant = utc(2026, 3, 9, 13)

    key = occurrence_key(42, instant)

    assert key == "sched:42:2026-03-09T13:00Z"
    assert occurrence_key(42, instant.astimezone(NEW_YORK)) == key  # 09:00 EDT
    assert occurrence_key(42, instant.astimezone(SYDNEY)) == key  # 00:00 AEDT on the 10th
    assert occurrence_key(43, instant) != key


def test_every_replica_derives_the_same_keys_and_each_occurrence_has_its_own():
    # Two schedulers (or one before and one after a restart) list the same occurrences across the
    # fall-back, including both passes of the hourly job's repeated 01:00.
    moment = local(NEW_YORK, 2026, 11, 1)
    first = [occurrence_key(7, at) for at in parse("0 * * * *", "America/New_York").next(moment, 4)]
    second = [occurrence_key(7, at) for at in parse("0 * * * *", "America/New_York").next(moment, 4)]

    assert first == second == [
        "sched:7:2026-11-01T05:00Z", "sched:7:2026-11-01T06:00Z",
        "sched:7:2026-11-01T07:00Z", "sched:7:2026-11-01T08:00Z",
    ]
