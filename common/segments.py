"""How many SMS segments a message body costs, the way carriers (and Twilio) count them.

Ingest shows the count and encoding when it accepts a message (so an emoji that quadruples the
cost is seen before sending), and the sandbox reports it as Twilio does. A body made only of
GSM-7 characters costs septets (extension-table characters cost two); any other character makes
the whole body UCS-2, counted in UTF-16 code units. A single-part message holds 160 septets or
70 units; a multi-part message loses room to its header (153 / 67 per part), and an escape pair
or a surrogate pair is never split across parts.
"""

from __future__ import annotations

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


def is_gsm7(body: str) -> bool:
    """True when every character of ``body`` is in the GSM-7 basic or extension table."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in body)


def _unit_costs(body: str) -> tuple[list[int], int, int]:
    """Cost of each character in its encoding, and the single-part and per-part capacities."""
    if is_gsm7(body):
        return [2 if ch in GSM7_EXTENSION else 1 for ch in body], GSM7_SINGLE, GSM7_PART
    return [2 if ord(ch) > 0xFFFF else 1 for ch in body], UCS2_SINGLE, UCS2_PART


def count_segments(body: str) -> int:
    """Number of segments ``body`` is sent as (at least 1, as Twilio reports for media-only)."""
    costs, single, per_part = _unit_costs(body)
    if sum(costs) <= single:
        return 1
    parts, used = 1, 0
    for cost in costs:
        if used + cost > per_part:  # the pair would straddle parts: it moves whole to the next
            parts, used = parts + 1, 0
        used += cost
    return parts


def encoding(body: str) -> str:
    """``GSM-7`` or ``UCS-2``: how ``body`` is sent."""
    return "GSM-7" if is_gsm7(body) else "UCS-2"
