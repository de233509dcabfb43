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
