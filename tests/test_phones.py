"""Phone numbers: what normalize accepts and why it refuses, and the zone a number pins down."""

from __future__ import annotations

import pytest

from common.phones import normalize, timezone_for


@pytest.mark.parametrize(
    "number",
    [
        "+15005550006",  # Twilio magic: valid destination (the number most tests send to)
        "+15005550001",  # Twilio magic: "invalid number"; refusing it is Twilio's job, not ours
        "+15005550007",  # Twilio magic: cannot route
        "+15005550008",  # Twilio magic: queue full
        "+15005550009",  # Twilio magic: cannot receive SMS
        "+15005550010",  # used by test_receipts / test_twilio_client
        "+15005550999",  # the spoofed sender in test_tenancy
        "+14155550100",  # 555-01xx in a real area code
    ],
)
def test_numbers_the_tests_and_the_twilio_sandbox_use_are_accepted_as_they_are(number):
    assert normalize(number) == number


@pytest.mark.parametrize(
    "number",
    [
        "+15555550100",  # NANP 555-0100..0199, reserved for fiction in every area code, even 555
        "+12125550199",
        "+447700900123",  # Ofcom drama range, mobile
        "+441632960000",  # Ofcom drama range, geographic
    ],
)
def test_numbers_reserved_for_fiction_are_accepted_although_the_library_calls_them_invalid(number):
    assert normalize(number) == number


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+1 500-555-0006", "+15005550006"),
        ("+1 (500) 555-0006", "+15005550006"),
        ("+1.500.555.0006", "+15005550006"),
        ("+44 7700 900123", "+447700900123"),
        ("+44 (0)20 7946 0123", "+442079460123"),  # the trunk 0 people write after +44 is dropped
        ("+33 6 12 34 56 78", "+33612345678"),
    ],
)
def test_separators_between_digits_are_dropped(raw, e164):
    assert normalize(raw) == e164


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "not a phone number: it must start with +"),
        ("5550006", "not a phone number: it must start with +"),
        ("15005550006", "not a phone number: it must start with +"),
        ("+", "not a phone number: no digits after the +"),
        ("+1 500 555 0006 ext 1", "not a phone number: only digits"),  # an extension is not textable
        ("+1 800 FLOWERS", "not a phone number: only digits"),  # no vanity letters
        ("+１５００５５５０００６", "not a phone number: only digits"),  # fullwidth digits
        ("+15005550006\n", "not a phone number: only digits"),
        ("+0123", "+0 is not a country calling code"),
        ("+99 1234 5678", "+991 is not a country calling code"),
        ("+28 1234 5678", "+28 is not a country calling code"),
        ("+35", "too short: +35 is not even a whole country calling code"),
        ("+1", "too short for +1"),
        ("+44 20 7946", "too short for +44"),
        ("+44 20 7946 01234", "too long for +44"),
        ("+34 100 000 000", "not a valid number for ES"),  # Spanish numbers never start with 1
        ("+1 555 123 0001", "not a valid number for +1 (US, AG, AI, AS and 21 more)"),  # no area code 555
    ],
)
def test_what_is_not_a_valid_number_is_refused_saying_why(raw, reason):
    with pytest.raises(ValueError) as refused:
        normalize(raw)
    assert str(refused.value).startswith(reason)


@pytest.mark.parametrize(
    ("number", "zone"),
    [
        ("+442079460123", "Europe/London"),  # London geographic
        ("+12125550100", "America/New_York"),  # area code 212: one zone
        ("+14155550100", "America/Los_Angeles"),
        ("+12083451234", "America/Denver"),  # Idaho's 208 spans two zones; this exchange does not
        ("+61291234567", "Australia/Sydney"),  # +61 2: New South Wales
        ("+33612345678", "Europe/Paris"),  # a mobile, but France has one zone
    ],
)
def test_a_number_pinned_to_one_zone_gives_that_zone(number, zone):
    assert timezone_for(number) == zone


@pytest.mark.parametrize(
    "number",
    [
        "+12085551234",  # 208-555: America/Boise or America/Los_Angeles
        "+15005550006",  # 500: personal numbers anywhere in the NANP
        "+61412345678",  # an Australian mobile: any of Australia's zones
        "+79161234567",  # a Russian mobile: any of sixteen zones
        "+447911123456",  # a UK mobile: London or the Crown Dependencies' own zone names
        "+80012345678",  # international freephone: nowhere
        "+447700900123",  # fictional: the library knows no zone ("Etc/Unknown")
        "+15555550100",
        "not a number",
    ],
)
def test_a_number_not_pinned_to_one_zone_gives_none(number):
    assert timezone_for(number) is None
