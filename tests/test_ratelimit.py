"""The send pacer: a burst of one second's tokens, then one token per interval; 429 pauses."""

from __future__ import annotations

from common import ratelimit


def test_burst_then_one_token_per_interval(clean_db):
    waits = [ratelimit.wait_before_send("twilio", "ACpace", 4) for _ in range(6)]
    assert waits[:4] == [0, 0, 0, 0]  # one second's worth at once
    assert 0.2 <= waits[4] <= 0.25  # the next token is one interval (250 ms) away
    assert waits[5] == waits[4]  # asking again does not take or reserve a token


def test_unlimited_account_never_waits_unless_paused(clean_db):
    assert all(ratelimit.wait_before_send("twilio", "ACfree", 0) == 0 for _ in range(100))
    ratelimit.pause("twilio", "ACfree", 2.0)
    assert 1.5 < ratelimit.wait_before_send("twilio", "ACfree", 0) <= 2.0
    assert ratelimit.wait_before_send("twilio", "ACother", 0) == 0  # a pause is per account


def test_bulk_lane_leaves_a_fifth_of_the_tokens_for_urgent_sends(clean_db):
    reserve = ratelimit.bulk_reserve(10)
    assert reserve == 2 and ratelimit.bulk_reserve(4) == 0
    bulk = [ratelimit.wait_before_send("twilio", "ACshared", 10, reserve=reserve) for _ in range(10)]
    assert bulk[:8] == [0] * 8 and bulk[8] > 0  # a campaign gets 8 of the 10 at once ...
    urgent = [ratelimit.wait_before_send("twilio", "ACshared", 10) for _ in range(3)]
    assert urgent[:2] == [0, 0] and urgent[2] > 0  # ... and an OTP still finds the other 2
