"""The reconciler: a flushed broker loses nothing, parked retries are promoted, dead sends end."""

from __future__ import annotations

import time

from common.db.connection import fetch, transaction
from services.scheduler import main as scheduler
from tests.support import history, message, running_workers, status_of, wait_for


def test_flushed_broker_after_accept_still_delivers_once(api, workspace, sandbox, broker):
    message_id = api.post("/v1/messages", json={"channel": "sms", "to": "+15005550006", "body": "survives flush"},
                          headers=workspace["auth"]).get_json()["id"]
    wait_for(lambda: broker.client.llen("dramatiq:processing_normal"), what="the hand-off to reach the broker")
    broker.client.flushall()  # every queued broker message is gone
    assert status_of(message_id) == "accepted"
    with running_workers(broker):
        time.sleep(0.5)
        assert status_of(message_id) == "accepted"  # nothing in the broker to move it
        wait_for(lambda: scheduler.run_once().get("accepted") == 1, timeout=10, what="re-drive after the deadline")
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered")
        time.sleep(0.5)
    assert [m["body"] for m in sandbox.messages()] == ["survives flush"]
    assert history(message_id).count("sent") == 1


def test_each_stuck_stage_is_redriven_to_its_own_stage(workspace, sandbox, broker):
    with transaction():
        ids = [fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, status_changed_at)"
                     " VALUES (%s, 'sms', '+15005550006', %s, %s, now() - interval '1 minute') RETURNING id",
                     (workspace["id"], status, status))[0][0] for status in ("accepted", "queued", "routed")]
    assert scheduler.run_once() == {"accepted": 1, "queued": 1, "routed": 1}
    assert scheduler.run_once() == {}  # re-driven once per deadline, not every pass
    with running_workers(broker):
        wait_for(lambda: all(status_of(i) == "delivered" for i in ids), what="all delivered")
    assert sorted(m["body"] for m in sandbox.messages()) == ["accepted", "queued", "routed"]


def test_retry_parked_longer_than_a_broker_delay_is_promoted_when_due(workspace, sandbox, broker):
    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, status_changed_at, due_at)"
                           " VALUES (%s, 'sms', '+15005550006', 'parked', 'routed', now() - interval '1 minute',"
                           " now() - interval '1 second') RETURNING id", (workspace["id"],))[0][0]
    assert scheduler.run_once().get("promoted") == 1
    with running_workers(broker):
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered")


def in_sending(workspace, body: str, *, claimed_ago: str = "1 hour", lookup_at: str | None = None) -> int:
    """A message a sender claimed and called for, whose answer never got recorded."""
    from common.config import settings

    with transaction():
        return fetch("INSERT INTO message (workspace_id, channel, to_addr, from_addr, body, status, status_changed_at,"
                     " attempts, provider_account, lookup_at, error_code)"
                     " VALUES (%s, 'sms', '+15005550006', '+15005550006', %s, 'sending', now() - %s::interval, 1, %s,"
                     " now() + %s::interval, CASE WHEN %s::text IS NOT NULL THEN 'outcome_unknown' END) RETURNING id",
                     (workspace["id"], body, claimed_ago, settings.twilio_account_sid, lookup_at, lookup_at))[0][0]


def test_send_left_in_sending_that_the_provider_never_got_is_sent_again_once(workspace, sandbox, broker):
    message_id = in_sending(workspace, "never reached Twilio")
    assert scheduler.run_once().get("unknown_resent") == 1
    assert status_of(message_id) == "routed"
    with running_workers(broker):
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered")
    assert [m["body"] for m in sandbox.messages()] == ["never reached Twilio"]
    assert scheduler.run_once().get("unknown_resent") is None


def test_send_left_in_sending_that_the_provider_did_get_is_recorded_as_sent_not_resent(workspace, sandbox, broker):
    import requests

    from common.config import settings

    # The provider took the message (its answer was lost with the sender that made the call)
    taken = requests.post(f"{sandbox.url}/2010-04-01/Accounts/{settings.twilio_account_sid}/Messages.json",
                          data={"To": "+15005550006", "From": "+15005550006", "Body": "reached Twilio"},
                          auth=(settings.twilio_account_sid, settings.twilio_auth_token), timeout=5).json()
    message_id = in_sending(workspace, "reached Twilio", claimed_ago="2 minutes")
    other = in_sending(workspace, "reached Twilio", claimed_ago="2 minutes")  # same text, same number: only one was taken
    done = scheduler.run_once()
    assert done.get("unknown_found") == 1 and done.get("unknown_resent") == 1
    found = message(message_id) if message(message_id)["provider_message_id"] else message(other)
    assert found["status"] in ("sent", "delivered") and found["provider_message_id"] == taken["sid"]
    assert found["error_code"] is None
    with running_workers(broker):
        wait_for(lambda: status_of(message_id) in ("sent", "delivered") and status_of(other) in ("sent", "delivered"), what="both sent")
    assert [m["body"] for m in sandbox.messages()] == ["reached Twilio", "reached Twilio"]  # one each, no third


def test_unknown_outcome_is_not_looked_up_before_its_time(workspace, sandbox):
    message_id = in_sending(workspace, "answer lost a moment ago", claimed_ago="1 second", lookup_at="1 minute")
    assert scheduler.run_once() == {}
    assert status_of(message_id) == "sending"


def test_without_a_lookup_an_unknown_outcome_fails_unless_the_workspace_chose_to_resend(workspace, sandbox, monkeypatch):
    from dataclasses import replace

    from common.providers import channels

    monkeypatch.setitem(channels.CHANNELS, "sms", replace(channels.SMS, find_sent=None))
    failed = in_sending(workspace, "no lookup")
    assert scheduler.run_once().get("unknown_failed") == 1
    assert status_of(failed) == "failed" and message(failed)["error_code"] == "outcome_unknown"
    with transaction():
        fetch("UPDATE workspace SET resend_unknown = true WHERE id = %s", (workspace["id"],))
    resent = in_sending(workspace, "no lookup, resend")
    assert scheduler.run_once().get("unknown_resent") == 1
    assert status_of(resent) == "routed"


def test_rows_waiting_behind_a_broker_backlog_are_not_redriven(workspace, broker):
    from common import dispatch

    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, status_changed_at)"
                           " VALUES (%s, 'sms', '+15005550006', 'in the backlog', 'accepted', now() - interval '1 minute')"
                           " RETURNING id", (workspace["id"],))[0][0]
    with transaction():
        lost = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, status_changed_at)"
                     " VALUES (%s, 'sms', '+15005550006', 'lost', 'accepted', now() - interval '1 minute')"
                     " RETURNING id", (workspace["id"],))[0][0]
    dispatch.to_stage("processing", "normal", [message_id])  # the queue holds work: a backlog...
    assert scheduler.run_once().get("accepted") == 1  # ...yet the message it lacks is re-driven
    assert history(lost)[-1] == "accepted" and history(message_id) == []  # the one in the backlog is left alone
    with transaction():
        fetch("UPDATE message SET status_changed_at = now() - interval '1 minute'")
    broker.client.delete("dramatiq:processing_normal")  # now the broker lost the backlog too
    assert scheduler.run_once().get("accepted") == 2


def test_message_prefetched_by_a_worker_is_not_redriven(workspace, broker):
    from common import dispatch

    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, status_changed_at)"
                           " VALUES (%s, 'sms', '+15005550006', 'prefetched', 'accepted', now() - interval '1 minute')"
                           " RETURNING id", (workspace["id"],))[0][0]
    dispatch.to_stage("processing", "normal", [message_id])
    consumer = broker.consume("processing_normal", prefetch=1, timeout=100)
    taken = next(m for m in consumer if m is not None)  # a worker holds it (in its ack set)
    assert broker.client.llen("dramatiq:processing_normal") == 0
    assert scheduler.run_once().get("accepted") is None
    consumer.nack(taken)
    consumer.close()


def test_message_its_stage_keeps_failing_on_is_failed_as_stuck_not_redriven_forever(workspace, broker):
    from common.config import settings

    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, status_changed_at)"
                           " VALUES (%s, 'sms', '+15005550006', 'poison', 'queued', now() - interval '1 minute')"
                           " RETURNING id", (workspace["id"],))[0][0]
    for _ in range(settings.postroom_max_redrives):
        assert scheduler.run_once().get("queued") == 1
        broker.client.flushall()  # the stage failed on it again: nothing of it is left in the broker
        with transaction():
            fetch("UPDATE message SET status_changed_at = now() - interval '1 minute' WHERE id = %s", (message_id,))
    assert scheduler.run_once().get("stuck") == 1
    assert status_of(message_id) == "failed"
    with transaction():
        assert fetch("SELECT error_code, redrives FROM message WHERE id = %s", (message_id,))[0] == ("stuck", settings.postroom_max_redrives + 1)


def test_accepted_message_whose_hand_off_failed_is_redriven_and_delivered(api, workspace, sandbox, broker, monkeypatch):
    from common import dispatch

    def broker_down(*args, **kwargs):
        raise ConnectionError("Redis is unreachable")

    monkeypatch.setattr(dispatch, "to_stage", broker_down)
    response = api.post("/v1/messages", json={"channel": "sms", "to": "+15005550006", "body": "enqueue failed"},
                        headers=workspace["auth"])
    assert response.status_code == 202  # committed first: the failed enqueue loses nothing
    message_id = response.get_json()["id"]
    time.sleep(0.2)  # the hand-off was attempted (and failed) in the background
    monkeypatch.undo()
    assert status_of(message_id) == "accepted"
    with running_workers(broker):
        wait_for(lambda: scheduler.run_once().get("accepted") == 1, timeout=10, what="re-drive after the deadline")
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered")
    assert [m["body"] for m in sandbox.messages()] == ["enqueue failed"]


def test_message_taken_by_a_worker_that_died_is_redriven(workspace, broker):
    from common import dispatch

    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, status_changed_at)"
                           " VALUES (%s, 'sms', '+15005550006', 'taken by the dead', 'accepted', now() - interval '1 minute')"
                           " RETURNING id", (workspace["id"],))[0][0]
    dispatch.to_stage("processing", "normal", [message_id])
    consumer = broker.consume("processing_normal", prefetch=1, timeout=100)
    next(m for m in consumer if m is not None)  # taken into this worker's ack set...
    broker.client.zadd("dramatiq:__heartbeats__", {broker.broker_id: 0})  # ...and the worker went silent (killed)
    assert scheduler.run_once().get("accepted") == 1
    consumer.close()
