"""Throttling per provider account: a token bucket in Redis that every sender shares.

A throttled message waits for its token without spending a retry; a provider 429 with
Retry-After pauses that account for every sender.
"""

from __future__ import annotations

from datetime import datetime

from common.config import settings
from tests.support import message, running_workers, status_of, wait_for


def configure_rate(api, workspace, rate: float) -> None:
    configured = api.put("/v1/channels/sms", json={
        "credentials": {"account_sid": settings.twilio_account_sid, "auth_token": settings.twilio_auth_token},
        "sender": settings.twilio_from, "settings": {"api_base": settings.twilio_api_base},
        "rate_limit_per_second": rate}, headers=workspace["auth"])
    assert configured.status_code == 200, configured.get_json()


def post(api, workspace, body: str, priority: str = "bulk") -> int:
    response = api.post("/v1/messages", json={"channel": "sms", "to": "+15005550006", "body": body, "priority": priority},
                        headers=workspace["auth"])
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def received_times(sandbox) -> list[float]:
    return sorted(datetime.fromisoformat(m["received_at"]).timestamp() for m in sandbox.messages())


def test_fifty_messages_at_five_per_second_all_arrive_spread_over_nine_seconds_without_a_retry(api, workspace, sandbox, broker):
    configure_rate(api, workspace, 5)
    with running_workers(broker):
        ids = [post(api, workspace, f"paced {n}") for n in range(50)]
        wait_for(lambda: all(status_of(i) == "delivered" for i in ids), timeout=40, what="all 50 delivered")
    times = received_times(sandbox)
    assert len(times) == 50  # each arrived once
    # 5 at once (a second's burst), then one token every 200 ms: the 50th no sooner than 9 s after the first
    assert times[-1] - times[0] >= 9.0, times[-1] - times[0]
    assert max(b - a for a, b in zip(times[5:], times[6:], strict=False)) < 1.0  # a steady pace, not one long stall
    for message_id in ids:
        row = message(message_id)
        assert (row["attempts"], row["throttles"], row["status"]) == (1, 0, "delivered")  # waiting for a token is no attempt


def test_a_429_with_retry_after_pauses_every_sender_on_the_account(api, workspace, sandbox, broker):
    configure_rate(api, workspace, 0)  # no pace of our own: only the provider's 429 holds sends back
    sandbox.fault(error_code=20429, retry_after=2, count=1)
    with running_workers(broker):
        first = post(api, workspace, "meets the 429", priority="urgent")
        wait_for(lambda: message(first)["attempts"] == 1, timeout=10, what="the first call answered 429")
        paused_at = datetime.now().timestamp()
        others = [post(api, workspace, f"behind the pause {n}", priority=lane) for n, lane in enumerate(["urgent", "bulk"] * 3)]
        wait_for(lambda: all(status_of(i) == "delivered" for i in [first, *others]), timeout=20, what="all delivered")
    times = received_times(sandbox)
    assert len(times) == 7
    # No send reached the provider during the pause (2 s from the 429, which came just before paused_at)
    assert times[0] - paused_at >= 1.5, times[0] - paused_at
    assert times[0] - paused_at <= 4.0  # and they went as soon as it ended
    row = message(first)
    assert (row["attempts"], row["throttles"]) == (2, 1)  # the 429 did not spend the retry budget
    assert all(message(i)["attempts"] == 1 for i in others)
