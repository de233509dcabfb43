"""Phone numbers: validation to E.164 and the recipient's time zone, both from libphonenumber.

``normalize`` turns what a caller sent into the canonical E.164 string postroom stores and
sends to, or raises ``ValueError`` saying what is wrong with it. ``timezone_for`` names the
IANA zone a number belongs to when the numbering plan pins it to exactly one, for quiet hours.

The rule for accepting a number: it must be *valid* by the library's metadata (the country's
assigned ranges, not only a plausible length), or lie in a range reserved for fiction and
testing, which the library marks invalid on purpose but which examples, staging set-ups and
postroom's own tests use because no real person can be reached there (see
``FICTIONAL_RANGES``). Twilio's magic test numbers (+1 500 555 xxxx) are valid as they are.
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones
from phonenumbers.phonenumberutil import ValidationResult

# Characters people put between digits; they are ignored wherever they appear. Anything else
# (letters, "ext.", "tel:", non-ASCII digits) is refused rather than interpreted, because the
# library would quietly drop an extension or read letters as a vanity number.
SEPARATORS = re.compile(r"[ \-.()]")
DIGITS_AFTER_PLUS = re.compile(r"\+[0-9]+")

# Ranges set aside for drama and examples, which libphonenumber does not count as valid:
# NANPA reserves 555-0100 to 555-0199 in every area code (area code 555 itself is unassigned);
# Ofcom reserves 07700 900000-900999 and 01632 960000-960999 (its other drama ranges are inside
# ordinary geographic blocks, which the library already accepts).
FICTIONAL_RANGES = re.compile(r"\+1[2-9][0-9]{2}55501[0-9]{2}|\+447700900[0-9]{3}|\+441632960[0-9]{3}")

EXAMPLE = "+15005550006"
_LENGTH_PROBLEMS = {
    ValidationResult.TOO_SHORT: "too short for +{code}",
    ValidationResult.TOO_LONG: "too long for +{code}",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "too short for +{code}",  # a local number: no area code
}
_CALLING_CODES = frozenset(str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def normalize(raw: str) -> str:
    """The E.164 form of a number given in international form.

    Parameters:
      raw: ``+``, the country calling code and the number; spaces, dashes, dots and
        parentheses between the digits are allowed and dropped ("+1 (500) 555-0006"), as is a
        national trunk prefix written after the country code ("+44 (0)20 7946 0123").

    Raises:
      ValueError: the text is not a number in international form, its country calling code
        does not exist, it is too short or too long for that code, or it is not a valid
        number there (and not in a range reserved for fiction). The message says which.

    Returns:
      The number as ``+`` and digits only, e.g. ``+15005550006``.
    """
    compact = SEPARATORS.sub("", raw)
    if not compact.startswith("+"):
        raise ValueError(f"not a phone number: it must start with + and the country calling code, such as {EXAMPLE}")
    if compact == "+":
        raise ValueError("not a phone number: no digits after the +")
    if not DIGITS_AFTER_PLUS.fullmatch(compact):
        raise ValueError("not a phone number: only digits, spaces, dashes, dots and parentheses may follow the +")
    digits = compact[1:]
    code = _country_code(digits)
    try:
        number = phonenumbers.parse(compact, None)
    except phonenumbers.NumberParseException as exc:
        # The prefix was checked above, so what is left is a number too short or too long.
        if exc.error_type == phonenumbers.NumberParseException.TOO_LONG:
            raise ValueError(f"too long for +{code}") from None
        raise ValueError(f"too short for +{code}") from None
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible != ValidationResult.IS_POSSIBLE:
        raise ValueError(_LENGTH_PROBLEMS.get(possible, "not a possible length for +{code}").format(code=code))
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not phonenumbers.is_valid_number(number) and not FICTIONAL_RANGES.fullmatch(e164):
        raise ValueError(f"not a valid number for {_regions(code)}")
    return e164


def timezone_for(number_e164: str) -> str | None:
    """The IANA time zone of a number, when its country and area put it in exactly one.

    Returns ``None`` when the library names several zones (a mobile number in a country that
    spans zones, a toll-free number), none (an invalid or fictional number), or a zone this
    machine's time zone database does not have, and for text that is not a phone number at
    all: in every case the caller falls back to another source.
    """
    try:
        number = phonenumbers.parse(number_e164, None)
    except phonenumbers.NumberParseException:
        return None
    zones = phone_timezones.time_zones_for_number(number)
    if len(zones) != 1 or zones[0] == phone_timezones.UNKNOWN_TIMEZONE:
        return None
    try:
        ZoneInfo(zones[0])
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return zones[0]


def _country_code(digits: str) -> int:
    """The country calling code ``digits`` start with, or ``ValueError`` naming the bad prefix.

    Calling codes are a prefix code (no code begins another), so at most one of the first
    one, two or three digits is a code, and the shortest prefix no code begins with is the
    part that is wrong.
    """
    for length in range(1, min(3, len(digits)) + 1):
        prefix = digits[:length]
        if prefix in _CALLING_CODES:
            return int(prefix)
        if not any(code.startswith(prefix) for code in _CALLING_CODES):
            raise ValueError(f"+{prefix} is not a country calling code")
    raise ValueError(f"too short: +{digits} is not even a whole country calling code")


def _regions(code: int) -> str:
    """Where numbers under ``code`` belong, for messages: "FR", "+44 (GB, GG, IM, JE)", "+800"."""
    regions = phonenumbers.region_codes_for_country_code(code)
    if regions == (phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY,):
        return f"+{code}"
    if len(regions) == 1:
        return regions[0]
    shown = ", ".join(regions[:4]) + (f" and {len(regions) - 4} more" if len(regions) > 4 else "")
    return f"+{code} ({shown})"
