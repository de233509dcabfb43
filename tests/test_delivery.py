"""Sending through the real stages: exactly once under duplicates and races, errors classified."""

from __future__ import annotations

import threading

import dramatiq

from common import dispatch
from common.db.connection import fetch, transaction
from common.providers.channels import SMS as SMS_CHANNEL
from services.senders import loop
from tests.support import history, message, running_workers, status_of, wait_for

SMS = {"channel": "sms", "to": "+15005550006", "body": "hello"}


def deliver(ids: list[int], lane: str = "urgent") -> loop.Followups:
    return loop.deliver(SMS_CHANNEL, ids, lane)


def post(api, workspace, **overrides) -> int:
    response = api.post("/v1/messages", json={**SMS, **overrides}, headers=workspace["auth"])
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def routed_message(workspace, body: str) -> int:
    """A message already at the sender's door (accepted, processed and routed)."""
    with transaction():
        return fetch(
            "INSERT INTO message (workspace_id, channel, to_addr, body, status) VALUES (%s, 'sms', '+15005550006', %s, 'routed') RETURNING id",
            (workspace["id"], body),
        )[0][0]


def test_message_travels_every_stage_and_is_delivered(api, workspace, sandbox, broker):
    with running_workers(broker):
        message_id = post(api, workspace)
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered")
    assert history(message_id) == ["accepted", "queued", "routed", "sending", "sent", "delivered"]
    received = sandbox.messages()
    assert [(m["to"], m["body"]) for m in received] == [("+15005550006", "hello")]
    assert message(message_id)["provider_message_id"] == received[0]["sid"]


def test_same_broker_message_delivered_twice_sends_one_sms(workspace, sandbox, broker):
    message_id = routed_message(workspace, "duplicate delivery")
    dispatch.to_stage("sms", "urgent", [message_id])
    dispatch.to_stage("sms", "urgent", [message_id])
    assert broker.client.llen("dramatiq:sms_urgent") + broker.client.hlen("dramatiq:sms_urgent.msgs") >= 2
    with running_workers(broker):
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered")
        broker.join("sms_urgent", timeout=10_000)
    assert len(sandbox.messages()) == 1
    assert history(message_id).count("sending") == 1


def test_two_workers_racing_on_one_message_send_one_sms(workspace, sandbox, broker):
    sandbox.fault(latency_ms=100)  # both calls overlap if both were made
    ids = [routed_message(workspace, f"race {n}") for n in range(10)]
    barrier = threading.Barrier(2)

    def worker() -> None:
        barrier.wait()
        for message_id in ids:
            deliver([message_id])

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(m["body"] for m in sandbox.messages()) == sorted(f"race {n}" for n in range(10))
    assert all(status_of(i) in ("sent", "delivered") for i in ids)


def test_cancel_racing_a_send_never_lets_a_cancelled_message_reach_the_provider(api, workspace, sandbox):
    sandbox.fault(latency_ms=20)
    ids = [routed_message(workspace, f"cancel race {n}") for n in range(30)]
    outcomes: dict[int, int] = {}

    def send_all() -> None:
        for message_id in ids:
            deliver([message_id])

    def cancel_all() -> None:
        for message_id in reversed(ids):
            outcomes[message_id] = api.post(f"/v1/messages/{message_id}/cancel", headers=workspace["auth"]).status_code

    threads = [threading.Thread(target=send_all), threading.Thread(target=cancel_all)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent_bodies = {m["body"] for m in sandbox.messages()}
    cancelled = [i for i in ids if status_of(i) == "cancelled"]
    assert cancelled and len(cancelled) < len(ids), "the race should go both ways at least once"
    for message_id in ids:
        body = f"cancel race {ids.index(message_id)}"
        if status_of(message_id) == "cancelled":
            assert outcomes[message_id] == 200 and body not in sent_bodies
            assert "sending" not in history(message_id)
        else:
            assert outcomes[message_id] == 409 and body in sent_bodies


def test_invalid_number_21211_fails_at_once_with_its_error(api, workspace, sandbox, broker):
    sandbox.fault(error_code=21211, count=1)
    with running_workers(broker):
        message_id = post(api, workspace)
        wait_for(lambda: status_of(message_id) == "failed", what="failed")
    view = api.get(f"/v1/messages/{message_id}", headers=workspace["auth"]).get_json()
    assert view["attempts"] == 1
    assert view["error_code"] == "21211" and "21211" in view["last_error"]
    assert sandbox.messages() == []


def test_throttling_20429_and_server_errors_are_retried_then_sent(api, workspace, sandbox, broker):
    sandbox.fault(error_code=20429, retry_after=1, count=1)
    sandbox.fault(http_status=500, count=2)
    with running_workers(broker):
        message_id = post(api, workspace)
        wait_for(lambda: status_of(message_id) == "delivered", timeout=30, what="delivered after retries")
    view = api.get(f"/v1/messages/{message_id}", headers=workspace["auth"]).get_json()
    assert view["attempts"] == 4  # 429, 500, 500, then accepted
    assert "20500" in view["last_error"]
    retries = [e for e in view["events"] if e["status"] == "routed" and e["detail"].get("error")]
    assert [e["detail"]["error_code"] for e in retries] == ["20429", "20500", "20500"]
    assert retries[0]["detail"]["retry_in_seconds"] == 1.0  # Retry-After honoured
    assert len(sandbox.messages()) == 1


def test_transient_errors_past_the_retry_budget_fail_the_message(api, workspace, sandbox, broker, monkeypatch):
    from common import config

    monkeypatch.setattr("services.senders.loop.settings", config.load({**dict(__import__("os").environ), "POSTROOM_MAX_ATTEMPTS": "2"}))
    sandbox.fault(http_status=500, count=5)
    with running_workers(broker):
        message_id = post(api, workspace)
        wait_for(lambda: status_of(message_id) == "failed", timeout=20, what="failed after retries")
    view = api.get(f"/v1/messages/{message_id}", headers=workspace["auth"]).get_json()
    assert view["attempts"] == 2 and view["error_code"] == "20500"


def test_actors_are_declared_per_lane_on_their_own_queues(broker):
    names = set(broker.get_declared_actors())
    assert {"send_sms_urgent", "send_sms_bulk", "process_messages_urgent", "route_messages_bulk"} <= names
    assert broker.get_actor("send_sms_urgent").queue_name == "sms_urgent"
    assert broker.get_actor("send_sms_urgent").priority < broker.get_actor("send_sms_bulk").priority
    assert isinstance(broker, dramatiq.brokers.redis.RedisBroker)


def test_account_rate_limit_throttles_without_spending_retries(api, workspace, sandbox, broker):
    from datetime import datetime

    from common.config import settings
    from common.crypto import seal

    with transaction():
        fetch("INSERT INTO channel_config (workspace_id, channel, provider, account_ref, credentials, sender_identity, rate_limit_per_second)"
              " VALUES (%s, 'sms', 'twilio', %s, %s, '+15005550007', 5)",
              (workspace["id"], settings.twilio_account_sid,
               seal({"account_sid": settings.twilio_account_sid, "auth_token": settings.twilio_auth_token})))
    with running_workers(broker):
        ids = [post(api, workspace, body=f"paced {n}") for n in range(8)]
        wait_for(lambda: all(status_of(i) in ("sent", "delivered") for i in ids), timeout=20, what="all sent")
    received = sandbox.messages()
    assert len(received) == 8 and {m["from"] for m in received} == {"+15005550007"}
    times = sorted(datetime.fromisoformat(m["received_at"]).timestamp() for m in received)
    assert times[-1] - times[0] >= 0.5  # 5 at once (one second's burst), then one token every 200 ms
    assert all(message(i)["attempts"] == 1 for i in ids)  # waiting for a token is not an attempt
    throttled = [e for i in ids for e in api.get(f"/v1/messages/{i}", headers=workspace["auth"]).get_json()["events"]
                 if e["detail"].get("error_code") == "rate_limit"]
    assert throttled


def test_batch_without_tokens_gets_successive_slots_not_one_shared_wait(broker):
    from common.providers.accounts import SmsAccount

    broker.client.delete("postroom:rate:twilio:ACpaced")
    paced = SmsAccount("ACpaced", "t", "+15005550006", "", 4.0)
    rows = [{"id": n, "account": paced} for n in range(7)]
    go, waiting = loop.take_tokens(SMS_CHANNEL, rows, "urgent")  # one Redis round trip for the batch
    assert [r["id"] for r in go] == [0, 1, 2, 3]  # a second's burst
    waits = [w for _, w in waiting]
    assert 0.2 < waits[0] <= 0.25  # the next token, then one interval (250 ms) apart
    assert [round(b - a, 3) for a, b in zip(waits, waits[1:], strict=False)] == [0.25, 0.25]


def test_throttled_messages_stay_routed_and_never_enter_sending(workspace, sandbox, broker):
    from common.config import settings
    from common.crypto import seal

    with transaction():
        fetch("INSERT INTO channel_config (workspace_id, channel, provider, account_ref, credentials, sender_identity, rate_limit_per_second)"
              " VALUES (%s, 'sms', 'twilio', %s, %s, '+15005550006', 2)",
              (workspace["id"], settings.twilio_account_sid,
               seal({"account_sid": settings.twilio_account_sid, "auth_token": settings.twilio_auth_token})))
    broker.client.delete(f"postroom:rate:twilio:{settings.twilio_account_sid}")
    ids = [routed_message(workspace, f"paced {n}") for n in range(5)]
    followups = deliver(ids)
    statuses = [status_of(i) for i in ids]
    assert statuses.count("routed") == 3 and len(sandbox.messages()) == 2  # a burst of two went
    for i in ids:
        if status_of(i) == "routed":
            assert "sending" not in history(i)  # waiting for a token never claims the message
            assert message(i)["due_at"] is not None and message(i)["attempts"] == 0
    assert sorted(i for _, batch, _ in followups.retries for i in batch) == [i for i in ids if status_of(i) == "routed"]


def test_send_outcomes_are_recorded_even_if_the_database_fails_briefly(workspace, sandbox, monkeypatch):
    from peewee import OperationalError

    real = loop.record_results
    failures = iter([OperationalError("server closed the connection unexpectedly")])

    def flaky(channel, results):
        for failure in failures:
            raise failure
        return real(channel, results)

    monkeypatch.setattr(loop, "record_results", flaky)
    monkeypatch.setattr(loop, "RECORD_RETRY_SECONDS", (0.01,))
    message_id = routed_message(workspace, "recorded after a blip")
    deliver([message_id])
    assert status_of(message_id) in ("sent", "delivered")
    assert len(sandbox.messages()) == 1


def test_unexpected_error_in_a_provider_call_makes_that_message_unknown_and_it_is_not_resent_blindly(workspace, sandbox, monkeypatch):
    from common.providers import twilio_sms

    real_send = twilio_sms.TwilioSmsSender.send

    def send(self, sms):
        if sms.body == "breaks the client":
            raise ValueError("could not parse the provider's answer")
        return real_send(self, sms)

    monkeypatch.setattr(twilio_sms.TwilioSmsSender, "send", send)
    broken, fine = routed_message(workspace, "breaks the client"), routed_message(workspace, "goes out")
    followups = deliver([broken, fine])
    # Unknown, so it waits in sending for a look-up at the provider instead of a blind retry.
    assert status_of(broken) == "sending" and message(broken)["error_code"] == "outcome_unknown"
    assert message(broken)["lookup_at"] is not None and followups.retries == []
    assert status_of(fine) in ("sent", "delivered")
    assert [m["body"] for m in sandbox.messages()] == ["goes out"]
