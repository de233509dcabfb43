"""Looking ahead and inside: ``GET /v1/messages/upcoming`` lists a workspace's scheduled messages
due within a window, a page at a time, with counts; ``GET /v1/stats`` and the scheduler's gauges
report the backlog per stage and lane from the database and the broker."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import REGISTRY

from common import apikeys, dispatch
from common.db.connection import fetch, transaction
from services.scheduler import backlog, reconciler


def insert(workspace_id: int, status: str, *, channel: str = "sms", priority: str = "urgent", due: str | None = None,
           tags: Any = (), waited: str = "0 seconds") -> int:
    """A message stored directly in ``status``; ``due`` and ``waited`` are SQL intervals from now
    (``waited``: how long ago it entered its status)."""
    with transaction():
        return fetch(
            "INSERT INTO message (workspace_id, channel, to_addr, body, status, priority, tags, due_at, updated_at)"
            " VALUES (%s, %s, '+15005550006', 'hi', %s, %s, %s::jsonb, now() + %s::interval, now() - %s::interval)"
            " RETURNING id",
            (workspace_id, channel, status, priority, json.dumps(list(tags) if isinstance(tags, tuple) else tags),
             due, waited))[0][0]


def event(message_id: int, status: str, ago: str, detail: dict[str, Any] | None = None) -> None:
    with transaction():
        fetch("INSERT INTO message_event (message_id, status, at, detail) VALUES (%s, %s, now() - %s::interval, %s::jsonb)",
              (message_id, status, ago, json.dumps(detail or {})))


def other_workspace() -> dict[str, Any]:
    with transaction():
        ws = apikeys.create_workspace("globex")
        key = apikeys.issue(ws)
    return {"id": ws, "auth": {"Authorization": f"Bearer {key}"}}


def upcoming(api, workspace, **params: str):
    return api.get("/v1/messages/upcoming", query_string=params, headers=workspace["auth"])


def figures(body: dict[str, Any], stage: str, lane: str) -> dict[str, Any]:
    (row,) = [r for r in body["stages"] if (r["stage"], r["lane"]) == (stage, lane)]
    return row


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


# -- GET /v1/messages/upcoming --------------------------------------------------------------------
def test_upcoming_lists_scheduled_messages_due_within_the_window_a_page_at_a_time_with_counts(api, workspace):
    # Given scheduled messages in the next 24 hours (two due at the same instant), one later, and
    # messages that are not scheduled
    ws = workspace["id"]
    first = insert(ws, "scheduled", due="1 hour", tags={"event_id": "41", "message_type": "reminder"})
    tied = [insert(ws, "scheduled", due="2 hours", tags={"event_id": "41"}) for _ in range(2)]
    with transaction():
        fetch("UPDATE message SET due_at = (SELECT max(due_at) FROM message WHERE id = ANY(%(ids)s)) WHERE id = ANY(%(ids)s)",
              {"ids": tied})
    listed = insert(ws, "scheduled", channel="http", priority="bulk", due="20 hours", tags=["vip"])
    overdue = insert(ws, "scheduled", due="-5 seconds")  # due, not yet handed on: still to go
    insert(ws, "scheduled", due="30 hours", tags={"event_id": "41"})
    insert(ws, "accepted")
    insert(ws, "routed", due="1 hour")

    # When the window is read two messages at a time
    pages, cursor = [], None
    while True:
        response = upcoming(api, workspace, within="24h", limit="2", **({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        pages.append([m["id"] for m in body["messages"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break

    # Then every scheduled message due within it comes once, soonest first, and the counts cover the window
    assert pages == [[overdue, first], tied, [listed]]
    assert body["messages"][0] == {"id": listed, "channel": "http", "to": "+15005550006", "priority": "bulk",
                                   "tags": ["vip"], "send_at": body["messages"][0]["send_at"], "status": "scheduled"}
    assert body["counts"] == {"total": 5, "by_channel": {"http": 1, "sms": 4},
                              "by_tag": {"event_id=41": 3, "message_type=reminder": 1, "vip": 1}, "by_tag_truncated": False}
    # And a shorter window holds fewer; the default is 24 hours
    assert upcoming(api, workspace, within="90m").get_json()["counts"]["total"] == 2
    assert upcoming(api, workspace).get_json()["counts"]["total"] == 5
    assert upcoming(api, workspace, within="31d").get_json()["counts"]["total"] == 6


def test_upcoming_is_its_own_route_beside_a_message_by_id(api, workspace):
    from services.ingest.app import create_app

    # Given the app's routes, "upcoming" is not an id: GET /v1/messages/<int:message_id> cannot take it
    adapter = create_app().url_map.bind("localhost")
    assert adapter.match("/v1/messages/upcoming", method="GET")[0] == "stats.list_upcoming"
    assert adapter.match("/v1/messages/7", method="GET") == ("api_v1.get_message", {"message_id": 7})
    # And a scheduled message is still read by its id
    message_id = insert(workspace["id"], "scheduled", due="1 hour")
    assert api.get(f"/v1/messages/{message_id}", headers=workspace["auth"]).get_json()["status"] == "scheduled"


@pytest.mark.parametrize(("params", "field"), [
    ({"within": "0m"}, "within"), ({"within": "32d"}, "within"), ({"within": "745h"}, "within"),
    ({"within": "24"}, "within"), ({"within": "1w"}, "within"), ({"within": ""}, "within"),
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"), ({"limit": "-1"}, "limit"),
    ({"cursor": "not-a-cursor"}, "cursor"), ({"cursor": "1_9223372036854775808"}, "cursor"),
])
def test_an_invalid_window_page_size_or_cursor_is_refused_naming_the_field(api, workspace, params, field):
    response = upcoming(api, workspace, **params)
    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == field


def test_another_workspaces_messages_never_appear(api, workspace):
    # Given another workspace with scheduled, waiting and finished work
    other = other_workspace()
    theirs = insert(other["id"], "scheduled", due="1 hour", tags={"event_id": "41"})
    insert(other["id"], "accepted", waited="5 minutes")
    insert(other["id"], "scheduled", due="3 days")
    event(theirs, "queued", "1 minute")
    # When this workspace looks
    listed = upcoming(api, workspace, within="7d").get_json()
    stats = api.get("/v1/stats", headers=workspace["auth"]).get_json()
    # Then it sees nothing of theirs, while they see their own
    assert listed["messages"] == [] and listed["counts"] == {"total": 0, "by_channel": {}, "by_tag": {}, "by_tag_truncated": False}
    assert all(r[k] == 0 for r in stats["stages"] for k in
               ("waiting", "active", "scheduled", "completed_last_hour", "failed_last_hour", "oldest_waiting_seconds"))
    assert [m["id"] for m in upcoming(api, other, within="2d").get_json()["messages"]] == [theirs]
    theirs_stats = api.get("/v1/stats", headers=other["auth"]).get_json()
    assert figures(theirs_stats, "processing", "urgent")["waiting"] == 1
    assert figures(theirs_stats, "processing", "urgent")["scheduled"] == 2
    # And a key without messages:read reads neither
    with transaction():
        writer = {"Authorization": f"Bearer {apikeys.issue(workspace['id'], ('messages:write',))}"}
    assert api.get("/v1/stats", headers=writer).status_code == 403
    assert api.get("/v1/messages/upcoming", headers=writer).status_code == 403


# -- GET /v1/stats ------------------------------------------------------------------------------
def test_stats_count_each_stage_and_lane_from_the_database_and_the_broker(api, workspace, broker):
    ws = workspace["id"]
    # Given messages waiting for each stage, one the reconciler looked at just now (its re-drive
    # clock reset) after it had waited 90 s, messages due later, and one being sent
    waited = insert(ws, "accepted", waited="90 seconds")
    with transaction():
        fetch("UPDATE message SET status_changed_at = now() WHERE id = %s", (waited,))
    insert(ws, "accepted")
    insert(ws, "scheduled", due="-10 seconds")  # due: waits for processing
    insert(ws, "scheduled", priority="bulk", due="1 hour")
    insert(ws, "scheduled", priority="bulk", due="2 days")
    queued = insert(ws, "queued", priority="bulk")
    routed = insert(ws, "routed", waited="3 seconds")
    insert(ws, "routed", due="1 hour")  # a retry parked until then
    insert(ws, "sending", channel="http", priority="bulk")
    # And the last hour's history: a message processed, routed and sent; one that failed while
    # sending; one the provider reported failed after the send; a throttled send; and older events
    sent = insert(ws, "sent")
    for status, ago in (("queued", "10 minutes"), ("routed", "9 minutes"), ("sending", "9 minutes"), ("sent", "8 minutes")):
        event(sent, status, ago)
    failed = insert(ws, "failed")
    event(failed, "routed", "5 minutes")
    event(failed, "sending", "5 minutes")
    event(failed, "failed", "4 minutes", {"error_code": "21211"})
    receipt = insert(ws, "failed")
    event(receipt, "sending", "40 minutes")
    event(receipt, "sent", "30 minutes")
    event(receipt, "failed", "20 minutes")
    event(routed, "routed", "1 minute", {"error_code": "rate_limit"})
    old = insert(ws, "sent")
    event(old, "queued", "3 hours")
    event(old, "sent", "2 hours")
    # And webhook deliveries: one due, one retry due later, one delivered in the last hour
    with transaction():
        endpoint = fetch("INSERT INTO webhook_endpoint (workspace_id, url, event_types, secret)"
                         " VALUES (%s, 'http://127.0.0.1:9/hook', '{*}', '\\x00') RETURNING id", (ws,))[0][0]
        for status, due, finished in (("pending", "-20 seconds", None), ("pending", "5 minutes", None),
                                      ("succeeded", "-10 minutes", "-9 minutes")):
            fetch("INSERT INTO webhook_delivery (endpoint_id, workspace_id, event_key, event_type, body, rank, status, due_at,"
                  " finished_at) VALUES (%s, %s, 'evt', 'message.sent', '{}', 0, %s, now() + %s::interval,"
                  " now() + %s::interval)", (endpoint, ws, status, due, finished))
    # And broker messages: routing's bulk queue holds one, sms's urgent lane one delayed retry
    dispatch.to_stage("routing", "bulk", [queued])
    dispatch.to_stage("sms", "urgent", [routed], delay_ms=60_000)

    # When the stats are read
    response = api.get("/v1/stats", headers=workspace["auth"])

    # Then each stage and lane has its figures
    assert response.status_code == 200
    body = response.get_json()
    assert {(r["stage"], r["lane"]) for r in body["stages"]} == {
        (stage, lane) for stage in ("processing", "routing", "sms", "http", "email", "whatsapp_cloud", "whatsapp_qr", "widget",
                                    "webhooks")
        for lane in ("urgent", "normal", "bulk")} | {("ai", plan) for plan in ("premium", "pro", "basic")}
    processing = figures(body, "processing", "urgent")
    assert (processing["waiting"], processing["active"], processing["scheduled"]) == (3, 0, 0)
    assert 89 <= processing["oldest_waiting_seconds"] < 150  # since it entered accepted, not since the re-drive clock
    assert (processing["completed_last_hour"], processing["failed_last_hour"]) == (1, 0)
    assert figures(body, "processing", "bulk")["scheduled"] == 2
    assert figures(body, "routing", "bulk")["waiting"] == 1
    assert figures(body, "routing", "urgent")["completed_last_hour"] == 2  # not the throttled send's routed event
    sms = figures(body, "sms", "urgent")
    assert (sms["waiting"], sms["active"], sms["scheduled"], sms["completed_last_hour"], sms["failed_last_hour"]) == (1, 0, 1, 2, 1)
    assert 2 <= sms["oldest_waiting_seconds"] < 60
    assert figures(body, "http", "bulk")["active"] == 1
    hooks = figures(body, "webhooks", "urgent")
    assert (hooks["waiting"], hooks["scheduled"], hooks["completed_last_hour"]) == (1, 1, 1)
    assert 19 <= hooks["oldest_waiting_seconds"] < 80
    # And the broker's queues are listed for the whole deployment
    queues = {(q["stage"], q["lane"]): q for q in body["queues"]}
    assert queues["routing", "bulk"] == {"stage": "routing", "lane": "bulk", "queue": "routing_bulk", "ready": 1, "taken": 0, "delayed": 0}
    assert queues["sms", "urgent"]["delayed"] == 1 and queues["sms", "urgent"]["ready"] == 0
    assert sum(q["ready"] + q["delayed"] + q["taken"] for q in body["queues"]) == 2


# -- the scheduler's gauges ---------------------------------------------------------------------
def test_the_backlog_duty_sets_the_gauges_for_the_whole_deployment(workspace):
    # Given waiting messages in two workspaces, and scheduled ones due within and after the next hour
    other = other_workspace()
    insert(workspace["id"], "accepted", waited="45 seconds")
    insert(other["id"], "accepted")
    insert(other["id"], "routed", channel="http", priority="bulk")
    insert(workspace["id"], "scheduled", due="30 minutes")
    insert(other["id"], "scheduled", due="59 minutes")
    insert(workspace["id"], "scheduled", due="2 hours")
    # When the duty runs
    assert backlog.measure(force=True)
    # Then the gauges hold the deployment's backlog, zero where nothing waits
    assert gauge("postroom_messages_waiting", stage="processing", lane="urgent") == 2
    assert 44 <= (gauge("postroom_oldest_waiting_seconds", stage="processing", lane="urgent") or 0) < 100
    assert gauge("postroom_messages_waiting", stage="http", lane="bulk") == 1
    assert gauge("postroom_messages_waiting", stage="routing", lane="urgent") == 0
    assert gauge("postroom_oldest_waiting_seconds", stage="routing", lane="urgent") == 0
    assert gauge("postroom_scheduled_due_next_hour") == 2
    # And it waits a few seconds before measuring again
    assert not backlog.measure()


def test_a_scheduled_message_handed_on_late_is_observed_as_schedule_lag(workspace, broker):
    # Given a scheduled message that fell due 3 seconds ago and was not handed on yet
    insert(workspace["id"], "scheduled", priority="bulk", due="-3 seconds", waited="1 minute")
    with transaction():
        fetch("UPDATE message SET status_changed_at = updated_at WHERE status = 'scheduled'")
    count = gauge("postroom_schedule_lag_seconds_count", lane="bulk") or 0
    total = gauge("postroom_schedule_lag_seconds_sum", lane="bulk") or 0
    # When the scheduler hands it on
    assert reconciler.promote_scheduled(30) == 1
    # Then its lag is observed once
    assert gauge("postroom_schedule_lag_seconds_count", lane="bulk") == count + 1
    assert 3 <= (gauge("postroom_schedule_lag_seconds_sum", lane="bulk") or 0) - total < 10
    # And a second pass (nothing due) observes nothing more
    assert reconciler.promote_scheduled(30) == 0
    assert gauge("postroom_schedule_lag_seconds_count", lane="bulk") == count + 1
