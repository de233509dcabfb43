"""The reconciler: a flushed broker loses nothing, parked retries are promoted, dead sends end."""

from __future__ import annotations

import time

from common.db.connection import fetch, transaction
from services.scheduler import main as scheduler
from tests.support import history, running_workers, status_of, wait_for


def test_flushed_broker_after_accept_still_delivers_once(api, workspace, sandbox, broker):
    message_id = api.post("/v1/messages", json={"channel": "sms", "to": "+15005550006", "body": "survives flush"},
                          headers=workspace["auth"]).get_json()["id"]
    wait_for(lambda: broker.client.llen("dramatiq:processing_urgent"), what="the hand-off to reach the broker")
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


def test_message_left_in_sending_by_a_dead_sender_fails_as_interrupted_and_is_not_resent(workspace, sandbox):
    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, status_changed_at)"
                           " VALUES (%s, 'sms', '+15005550006', 'stuck', 'sending', now() - interval '1 hour') RETURNING id",
                           (workspace["id"],))[0][0]
    assert scheduler.run_once().get("interrupted") == 1
    assert status_of(message_id) == "failed"
    with transaction():
        assert fetch("SELECT error_code FROM message WHERE id = %s", (message_id,))[0][0] == "interrupted"
    assert sandbox.messages() == []


def test_rows_waiting_behind_a_broker_backlog_are_not_redriven(workspace, broker):
    from common import dispatch

    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, status_changed_at)"
                           " VALUES (%s, 'sms', '+15005550006', 'in the backlog', 'accepted', now() - interval '1 minute')"
                           " RETURNING id", (workspace["id"],))[0][0]
    dispatch.to_stage("processing", "urgent", [message_id])  # the queue holds work: a backlog, not a loss
    assert scheduler.run_once().get("accepted") is None
    broker.client.delete("dramatiq:processing_urgent")  # now the broker lost it
    assert scheduler.run_once().get("accepted") == 1


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
