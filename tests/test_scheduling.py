"""Scheduled sends in this process against the session's database, broker and sandbox: when a
message is due, the scheduler hands it on once, and cancel and reschedule act until it is claimed."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from common.db.connection import fetch, transaction
from services.ingest.errors import ApiError
from services.ingest.timing import due_time
from services.scheduler import main as scheduler
from services.scheduler import reconciler
from tests.support import history, running_workers, status_of, wait_for

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def post(api, workspace, **fields):
    return api.post("/v1/messages", json={"channel": "sms", "to": "+15005550006", "body": "later", **fields},
                    headers=workspace["auth"])


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(("send_at", "timezone", "expected"), [
    ("2026-12-01T09:00:00-05:00", None, datetime(2026, 12, 1, 14, 0, tzinfo=UTC)),
    ("2026-12-01T09:00:00Z", None, datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
    ("2026-12-01T09:00:00", "America/New_York", datetime(2026, 12, 1, 14, 0, tzinfo=UTC)),
    ("2027-01-10T20:00:00", "Australia/Sydney", datetime(2027, 1, 10, 9, 0, tzinfo=UTC)),  # summer: +11
    ("2027-03-14T02:30:00", "America/New_York", datetime(2027, 3, 14, 7, 0, tzinfo=UTC)),  # skipped: 03:00 EDT
    ("2026-12-01T09:00:00.250+01:00", None, datetime(2026, 12, 1, 8, 0, 0, 250000, tzinfo=UTC)),
])
def test_send_at_forms_give_the_instant_meant(send_at, timezone, expected):
    assert due_time(send_at, timezone, None, now=NOW).at == expected


def test_delay_past_times_and_the_horizon():
    assert due_time(None, None, 90, now=NOW).at == NOW + timedelta(seconds=90)
    past = due_time("2026-11-30T11:00:00Z", None, None, now=NOW)
    assert past.at is None and "in the past" in (past.note or "")
    assert due_time(None, None, 0, now=NOW).at is None  # now is now
    for args, field in [(("2030-01-01T00:00:00Z", None, None), "send_at"), ((None, None, 500 * 86400), "delay_seconds"),
                        (("2026-12-01T09:00:00Z", None, 5), "delay_seconds"), (("2026-12-01T09:00:00", None, None), "send_at"),
                        (("2026-12-01T09:00:00", "Mars/Base", None), "timezone"), (("tomorrow", None, None), "send_at"),
                        (("2026-12-01T09:00:00Z", "UTC", None), "timezone"), ((None, "UTC", 60), "timezone")]:
        with pytest.raises(ApiError) as refused:
            due_time(*args, now=NOW)
        assert refused.value.status == 422 and refused.value.field == field, args


def test_a_scheduled_message_waits_and_is_handed_on_once_when_due(api, workspace, sandbox, broker):
    due = datetime.now(UTC) + timedelta(seconds=2)
    response = post(api, workspace, send_at=iso(due))
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "scheduled" and datetime.fromisoformat(body["send_at"]) == due.replace(microsecond=due.microsecond)
    message_id = body["id"]
    assert broker.client.llen("dramatiq:processing_normal") == 0  # nothing handed on before its time
    assert reconciler.promote_scheduled(2.0) == 0
    assert 0 < reconciler.next_scheduled_in() <= 2.0
    with running_workers(broker):
        wait_for(lambda: datetime.now(UTC) >= due, timeout=5, what="the due time")
        assert reconciler.promote_scheduled(2.0) == 1
        assert reconciler.promote_scheduled(2.0) == 0  # handed on once
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered")
    sent = sandbox.messages()
    assert [m["body"] for m in sent] == ["later"]
    assert datetime.fromisoformat(sent[0]["received_at"]) >= due
    assert history(message_id)[:3] == ["scheduled", "queued", "routed"]


def test_a_hand_off_lost_with_the_broker_is_made_again(api, workspace, sandbox, broker):
    message_id = post(api, workspace, delay_seconds=1).get_json()["id"]
    time.sleep(1.1)
    assert reconciler.promote_scheduled(1.0) == 1
    broker.client.flushall()  # the hand-off is gone
    time.sleep(1.1)
    assert reconciler.promote_scheduled(1.0) == 1  # a deadline later, held nowhere: handed on again
    with running_workers(broker):
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered")
    assert len(sandbox.messages()) == 1


def test_cancel_and_reschedule_act_until_the_message_is_claimed(api, workspace, sandbox, broker):
    auth = workspace["auth"]
    first = post(api, workspace, delay_seconds=3600).get_json()["id"]
    moved = api.post(f"/v1/messages/{first}/reschedule", json={"delay_seconds": 7200}, headers=auth)
    assert moved.status_code == 200 and moved.get_json()["status"] == "scheduled"
    assert datetime.fromisoformat(moved.get_json()["send_at"]) > datetime.now(UTC) + timedelta(seconds=7000)
    now = api.post(f"/v1/messages/{first}/reschedule", json={"send_at": "2020-01-01T00:00:00Z"}, headers=auth)
    assert now.status_code == 200  # a past time: due at once
    assert reconciler.promote_scheduled(30.0) == 1
    with running_workers(broker):
        wait_for(lambda: status_of(first) == "delivered", what="delivered")
    late = api.post(f"/v1/messages/{first}/reschedule", json={"delay_seconds": 60}, headers=auth)
    assert late.status_code == 409 and late.get_json()["error"]["code"] == "not_reschedulable"

    second = post(api, workspace, delay_seconds=1).get_json()["id"]
    assert api.post(f"/v1/messages/{second}/cancel", headers=auth).status_code == 200
    time.sleep(1.1)
    assert reconciler.promote_scheduled(30.0) == 0  # a cancelled message is never handed on
    assert api.post(f"/v1/messages/{second}/reschedule", json={"delay_seconds": 5}, headers=auth).status_code == 409
    assert api.post("/v1/messages/999999/reschedule", json={"delay_seconds": 5}, headers=auth).status_code == 404
    assert [m["body"] for m in sandbox.messages()] == ["later"]


def test_the_scheduler_pass_promotes_due_messages(api, workspace, broker):
    message_id = post(api, workspace, delay_seconds=1).get_json()["id"]
    with transaction():
        fetch("UPDATE message SET due_at = now() - interval '1 second', status_changed_at = now() - interval '2 seconds'"
              " WHERE id = %s", (message_id,))
    assert scheduler.run_once().get("scheduled") == 1


def test_times_at_the_edge_of_the_calendar_are_refused_not_crashed(api, workspace):
    for fields in ({"send_at": "9999-12-31T23:59:59-05:00"}, {"send_at": "0001-01-01T00:00:00+05:00"},
                   {"send_at": "9999-12-31T23:59:59", "timezone": "Etc/GMT+12"}):
        refused = post(api, workspace, **fields)
        assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "send_at", fields
    listing = api.get("/v1/schedules?limit=\u00b2", headers=workspace["auth"])
    assert listing.status_code == 422 and listing.get_json()["error"]["field"] == "limit"
    cursor = api.get("/v1/messages/upcoming?cursor=\u00b2_1", headers=workspace["auth"])
    assert cursor.status_code == 422
