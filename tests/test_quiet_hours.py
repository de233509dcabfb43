"""Quiet hours: which messages are held, until when, in whose time zone; DST nights included.

Every clock here is an explicit datetime: nothing reads the current time.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from common.quiet_hours import QuietHours, hold_until, recipient_timezone

NIGHT = QuietHours(time(21, 0), time(8, 0))
LUNCH = QuietHours(time(12, 0), time(14, 0))
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
SYDNEY = ZoneInfo("Australia/Sydney")


def at(zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, fold: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone, fold=fold)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# The window --------------------------------------------------------------------------------


def test_a_window_is_parsed_from_start_dash_end_and_prints_the_same():
    assert QuietHours.parse("21:00-08:00") == NIGHT
    assert QuietHours.parse(" 9:30 - 17:05 ") == QuietHours(time(9, 30), time(17, 5))
    assert str(NIGHT) == "21:00-08:00"
    assert QuietHours.parse(str(LUNCH)) == LUNCH


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("21:00", "quiet hours must look like 21:00-08:00"),
        ("9pm-8am", "quiet hours must look like 21:00-08:00"),
        ("21.00-08.00", "quiet hours must look like 21:00-08:00"),
        ("", "quiet hours must look like 21:00-08:00"),
        ("24:00-08:00", "24:00 is not a time of day"),
        ("21:00-08:60", "08:60 is not a time of day"),
    ],
)
def test_a_malformed_window_is_refused_saying_why(text, reason):
    with pytest.raises(ValueError) as refused:
        QuietHours.parse(text)
    assert str(refused.value).startswith(reason)


def test_a_window_is_wall_clock_time_in_whole_minutes():
    with pytest.raises(ValueError, match="takes no time zone"):
        QuietHours(time(21, 0, tzinfo=UTC), time(8, 0))
    with pytest.raises(ValueError, match="whole minute"):
        QuietHours(time(21, 0, 30), time(8, 0))


@pytest.mark.parametrize(
    ("window", "inside", "outside"),
    [
        (NIGHT, [time(21, 0), time(23, 59), time(0, 0), time(7, 59)], [time(8, 0), time(12, 0), time(20, 59)]),
        (LUNCH, [time(12, 0), time(13, 59)], [time(11, 59), time(14, 0), time(23, 0), time(0, 0)]),
    ],
)
def test_the_start_is_inside_the_window_and_the_end_is_not(window, inside, outside):
    assert all(window.contains(t) for t in inside)
    assert not any(window.contains(t) for t in outside)


def test_a_window_that_starts_where_it_ends_holds_nothing():
    never = QuietHours.parse("22:00-22:00")
    assert never.empty
    for hour in range(24):
        assert hold_until(at(LONDON, 2026, 1, 15, hour, 0), never, "Europe/London") is None


# Holding -----------------------------------------------------------------------------------


def test_a_message_due_at_night_is_held_until_the_window_ends_in_the_recipients_zone():
    # Given 23:00 in London in winter (GMT), when the night window applies,
    # then it goes at 08:00 London the next morning.
    assert hold_until(at(LONDON, 2026, 1, 15, 23, 0), NIGHT, "Europe/London") == utc(2026, 1, 16, 8, 0)
    # In summer (BST) the same wall-clock hours are an hour earlier in UTC.
    assert hold_until(at(LONDON, 2026, 7, 15, 23, 0), NIGHT, "Europe/London") == utc(2026, 7, 16, 7, 0)


def test_after_midnight_the_hold_ends_the_same_morning():
    assert hold_until(at(LONDON, 2026, 1, 16, 3, 0), NIGHT, "Europe/London") == utc(2026, 1, 16, 8, 0)


def test_outside_the_window_nothing_is_held():
    assert hold_until(at(LONDON, 2026, 1, 15, 8, 0), NIGHT, "Europe/London") is None
    assert hold_until(at(LONDON, 2026, 1, 15, 20, 59), NIGHT, "Europe/London") is None
    assert hold_until(at(LONDON, 2026, 1, 15, 11, 59), LUNCH, "Europe/London") is None
    assert hold_until(at(LONDON, 2026, 1, 15, 14, 0), LUNCH, "Europe/London") is None


def test_a_window_that_does_not_wrap_holds_until_its_end_the_same_day():
    assert hold_until(at(LONDON, 2026, 1, 15, 12, 0), LUNCH, "Europe/London") == utc(2026, 1, 15, 14, 0)
    assert hold_until(at(LONDON, 2026, 1, 15, 13, 30), LUNCH, "Europe/London") == utc(2026, 1, 15, 14, 0)


def test_the_window_is_read_in_the_recipients_zone_not_the_zone_due_is_written_in():
    # 23:00 in London is 18:00 in New York: a New York recipient is not in quiet hours ...
    assert hold_until(at(LONDON, 2026, 1, 15, 23, 0), NIGHT, "America/New_York") is None
    # ... but 03:00 in London is 22:00 in New York, held until 08:00 New York (13:00 UTC).
    assert hold_until(at(LONDON, 2026, 1, 16, 3, 0), NIGHT, "America/New_York") == utc(2026, 1, 16, 13, 0)


def test_the_release_is_an_aware_utc_instant():
    release = hold_until(at(SYDNEY, 2026, 1, 15, 23, 0), NIGHT, "Australia/Sydney")
    assert release is not None and release.utcoffset() == timedelta(0)
    assert release.astimezone(SYDNEY) == at(SYDNEY, 2026, 1, 16, 8, 0)


def test_no_window_holds_nothing():
    assert hold_until(at(LONDON, 2026, 1, 15, 23, 0), None, "Europe/London") is None


def test_a_naive_due_time_or_an_unknown_zone_is_refused():
    with pytest.raises(ValueError, match="aware"):
        hold_until(datetime(2026, 1, 15, 23, 0), NIGHT, "Europe/London")
    with pytest.raises(ValueError, match="not an IANA time zone"):
        hold_until(at(LONDON, 2026, 1, 15, 23, 0), NIGHT, "Mars/Olympus")


# DST nights --------------------------------------------------------------------------------


def test_across_the_spring_forward_night_the_hold_ends_at_8_local_on_the_new_offset():
    # New York, 8 March 2026: 02:00 EST becomes 03:00 EDT. 23:00 EST (04:00 UTC) is held until
    # 08:00 EDT (12:00 UTC): eight hours later, not nine.
    release = hold_until(at(NEW_YORK, 2026, 3, 7, 23, 0), NIGHT, "America/New_York")
    assert release == utc(2026, 3, 8, 12, 0)
    assert release - at(NEW_YORK, 2026, 3, 7, 23, 0) == timedelta(hours=8)


def test_a_window_ending_in_the_skipped_hour_ends_when_the_clocks_jump():
    # 02:30 does not exist in New York on 8 March 2026: the first instant after it is 03:00 EDT.
    window = QuietHours.parse("22:00-02:30")
    release = hold_until(at(NEW_YORK, 2026, 3, 8, 1, 0), window, "America/New_York")
    assert release == utc(2026, 3, 8, 7, 0)
    assert release.astimezone(NEW_YORK).time() == time(3, 0)


def test_across_the_fall_back_night_the_hold_ends_at_8_local_on_the_new_offset():
    # Sydney, 5 April 2026: 03:00 AEDT (+11) becomes 02:00 AEST (+10). 22:00 AEDT (11:00 UTC)
    # is held until 08:00 AEST (22:00 UTC): eleven hours later, not ten.
    release = hold_until(at(SYDNEY, 2026, 4, 4, 22, 0), NIGHT, "Australia/Sydney")
    assert release == utc(2026, 4, 4, 22, 0)
    assert release - at(SYDNEY, 2026, 4, 4, 22, 0) == timedelta(hours=11)


def test_a_window_ending_in_the_repeated_hour_ends_at_its_first_occurrence():
    # 02:30 happens twice in Sydney on 5 April 2026: at 15:30 UTC (AEDT) and 16:30 UTC (AEST).
    window = QuietHours.parse("22:00-02:30")
    assert hold_until(at(SYDNEY, 2026, 4, 4, 23, 0), window, "Australia/Sydney") == utc(2026, 4, 4, 15, 30)


def test_due_inside_the_repeated_hour_after_the_first_end_is_held_until_the_second():
    # 02:15 the second time round (AEST, 16:15 UTC) is inside 22:00-02:30 by the wall clock, and
    # the first 02:30 has passed already: it waits for the second 02:30, 16:30 UTC.
    window = QuietHours.parse("22:00-02:30")
    due = at(SYDNEY, 2026, 4, 5, 2, 15, fold=1)
    assert due.astimezone(UTC) == utc(2026, 4, 4, 16, 15)  # == never holds across zones for a repeated hour
    assert hold_until(due, window, "Australia/Sydney") == utc(2026, 4, 4, 16, 30)


def test_when_going_back_leaves_the_window_early_the_message_goes_then():
    # New York, 1 November 2026: 02:00 EDT becomes 01:00 EST. Inside 01:30-02:30 at 01:40 EDT,
    # the clock reads 01:00 at the change, outside the window: the message goes at 06:00 UTC,
    # not at 02:30 EST an hour and a half later.
    window = QuietHours.parse("01:30-02:30")
    assert hold_until(at(NEW_YORK, 2026, 11, 1, 1, 40), window, "America/New_York") == utc(2026, 11, 1, 6, 0)


DST_CHANGES_2026 = {
    "America/New_York": [(3, 8), (11, 1)],
    "Australia/Sydney": [(4, 5), (10, 4)],
    "Europe/London": [(3, 29), (10, 25)],
}


@pytest.mark.parametrize("zone_name", sorted(DST_CHANGES_2026))
@pytest.mark.parametrize("window", ["21:00-08:00", "01:30-02:30", "02:30-03:30", "00:30-01:30", "12:00-14:00"])
def test_around_every_dst_night_a_held_message_goes_the_moment_the_window_opens(zone_name, window):
    # Given every 10-minute instant from 2 days before to 2 days after each 2026 DST change,
    # then it is held exactly when the recipient's clock reads inside the window, and goes at
    # the first second the clock reads outside it: never early, never later, never dropped.
    quiet = QuietHours.parse(window)
    zone = ZoneInfo(zone_name)

    def quiet_at(instant: datetime) -> bool:
        return quiet.contains(instant.astimezone(zone).time())

    held = 0
    for month, day in DST_CHANGES_2026[zone_name]:
        due = utc(2026, month, day) - timedelta(days=2)
        while due < utc(2026, month, day) + timedelta(days=2):
            release = hold_until(due, quiet, zone_name)
            assert (release is not None) == quiet_at(due), due
            if release is not None:
                held += 1
                assert release > due and not quiet_at(release), (due, release)
                step = due
                while step < release:  # inside all the way: checked every minute and at the last second
                    assert quiet_at(step), (due, release, step)
                    step += timedelta(minutes=1)
                assert quiet_at(release - timedelta(seconds=1)), (due, release)
            due += timedelta(minutes=10)
    assert held > 0


# Whose time zone ---------------------------------------------------------------------------


def test_the_contacts_own_zone_comes_first():
    assert recipient_timezone("Asia/Tokyo", "+442079460123", "Europe/Berlin") == ("Asia/Tokyo", "contact")


def test_without_a_contact_zone_a_number_pinned_to_one_zone_decides():
    assert recipient_timezone(None, "+442079460123", "Europe/Berlin") == ("Europe/London", "phone")
    assert recipient_timezone("", "+61291234567", "Europe/Berlin") == ("Australia/Sydney", "phone")


def test_a_number_spanning_zones_falls_back_to_the_workspace():
    assert recipient_timezone(None, "+15005550006", "Europe/Berlin") == ("Europe/Berlin", "workspace")
    assert recipient_timezone(None, "+61412345678", "Europe/Berlin") == ("Europe/Berlin", "workspace")


def test_without_a_phone_the_workspace_decides():
    assert recipient_timezone(None, None, "Europe/Berlin") == ("Europe/Berlin", "workspace")


def test_an_unknown_contact_zone_is_passed_over_not_fatal():
    assert recipient_timezone("Mars/Olympus", "+12125550100", "Europe/Berlin") == ("America/New_York", "phone")
    assert recipient_timezone("Mars/Olympus", None, "Europe/Berlin") == ("Europe/Berlin", "workspace")


def test_an_unknown_workspace_zone_is_refused():
    with pytest.raises(ValueError, match="not an IANA time zone"):
        recipient_timezone(None, None, "Mars/Olympus")
