"""S3 (the BullMQ event message queue, seed 003) through real processes: gunicorn ingest, the
workers, the scheduler and the provider sandbox. Each test has a workspace of its own, so the
S3 queue stats it reads are its messages only.

Done when 4: a contractor's five event messages are scheduled, the event is rescheduled (every
pending step moves), the contractor is cleared (none is sent), and upcoming is empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from services.local.stack import Stack, private_env
from tests.support import wait_for

FIVE = ["check_in_reminder_night_before", "check_in_reminder_1_hour", "check_in_reminder_event_start", "speaker_alert",
        "pcr_request"]
LANE_OF = {"check_in_reminder_night_before": "bulk", "check_in_reminder_1_hour": "normal",
           "check_in_reminder_event_start": "urgent", "speaker_alert": "urgent", "pcr_request": "normal"}
PHONE = "+15005550006"  # the sandbox delivers to it
_names = count(1)
WORKSPACE_OF: dict[str, str] = {}  # API key -> workspace name


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    env = private_env(tmp_path_factory.mktemp("compat_s3"), 11500 + os.getpid() % 4000, POSTROOM_API_WORKERS="1",
                      POSTROOM_SENDER_CONCURRENCY="16", POSTROOM_RECONCILE_INTERVAL_SECONDS="0.5")
    with Stack(env=env) as running:
        running.key = running.start()  # type: ignore[attr-defined]
        yield running


def postroom(stack: Stack, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "services.cli", *args], env={**os.environ, **stack.env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def key(stack: Stack) -> str:
    """The API key of a workspace of the test's own (its name in ``WORKSPACE_OF``)."""
    name = f"s3-{os.getpid()}-{next(_names)}"
    made = postroom(stack, "workspace", "create", name).splitlines()[-1].strip()
    WORKSPACE_OF[made] = name
    return made


def call(stack: Stack, key: str, method: str, path: str, *, header: str = "Authorization", **kwargs: Any) -> requests.Response:
    auth = {"Authorization": f"Bearer {key}"} if header == "Authorization" else {header: key}
    return requests.request(method, f"http://127.0.0.1:{stack.cfg.postroom_api_port}{path}", headers=auth, timeout=30, **kwargs)


def ok(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True, body
    return body  # type: ignore[no-any-return]


def at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="seconds").replace("+00:00", "Z")


def event_message(s3_id: int, message_type: str, when: str, *, event: int = 41, contractor: int = 56, **more: Any) -> dict[str, Any]:
    """A row as the old ``scheduleEventMessage`` took it (seed 003, lines 137-149)."""
    return {"id": s3_id, "event_id": event, "contractor_id": contractor, "message_type": message_type,
            "message_category": "event_day", "scheduled_time": when, "message_content": f"s3 {s3_id} {message_type}",
            "personalization_data": {"speaker_name": "John Doe", "session_title": "AI in Business"}, "phone": PHONE,
            "ghl_contact_id": "abc123", "ghl_location_id": "loc456", **more}


def view(stack: Stack, key: str, message_id: int) -> dict[str, Any]:
    response = call(stack, key, "GET", f"/v1/messages/{message_id}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def refuse_next_sms(stack: Stack) -> None:
    """The sandbox answers the next SMS send with Twilio's permanent 21211 (invalid To)."""
    requests.post(f"{stack.cfg.sandbox_url}/sandbox/faults", json={"error_code": 21211, "count": 1}, timeout=5).raise_for_status()


def sandbox_bodies(stack: Stack) -> list[str]:
    messages = requests.get(f"{stack.cfg.sandbox_url}/sandbox/messages", timeout=10).json()["messages"]
    return [m.get("body") or "" for m in messages]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_contractors_five_messages_move_with_the_event_and_clearing_the_contractor_sends_none(stack, key):
    rows = [event_message(9000 + n, kind, at(120 + 120 * n), event=41, contractor=56) for n, kind in enumerate(FIVE)]
    bulk = ok(call(stack, key, "POST", "/api/event-messages/bulk", json={"messages": rows}))
    assert (bulk["scheduled"], bulk["duplicates"], bulk["failed"]) == (5, 0, [])
    ids = {r["id"]: r["queueMessageId"] for r in bulk["messages"]}
    assert all(r["status"] == "scheduled" for r in bulk["messages"])
    for row in rows:  # the old priorities 1-10 land on the lanes; the row's fields are its tags
        stored = view(stack, key, ids[row["id"]])
        assert stored["priority"] == LANE_OF[row["message_type"]]
        assert stored["tags"] == {"compat": "s3", "s3_id": str(row["id"]), "event_id": "41", "contractor_id": "56",
                                  "message_type": row["message_type"], "message_category": "event_day",
                                  "ghl_contact_id": "abc123", "ghl_location_id": "loc456"}

    again = ok(call(stack, key, "POST", "/api/event-messages", json={**rows[3], "id": 9999}))  # same event, contractor, type
    assert again["duplicate"] is True and again["queueMessageId"] == ids[rows[3]["id"]]
    upcoming = ok(call(stack, key, "GET", "/api/event-messages/upcoming", params={"event_id": "41"}))
    assert upcoming["count"] == 5 and len(upcoming["messages"]) == 5
    before = {m["queueMessageId"]: when(m["scheduled_time"]) for m in upcoming["messages"]}

    moved = ok(call(stack, key, "POST", "/api/events/41/messages/reschedule", json={"shift_seconds": 3600}))
    assert moved["count"] == 5
    upcoming = ok(call(stack, key, "GET", "/api/event-messages/upcoming"))
    assert {m["queueMessageId"]: when(m["scheduled_time"]) for m in upcoming["messages"]} == {
        message_id: due + timedelta(hours=1) for message_id, due in before.items()}
    first = min(upcoming["messages"], key=lambda m: m["scheduled_time"])
    assert {k: first[k] for k in ("id", "event_id", "contractor_id", "message_type", "phone", "status")} == {
        "id": 9000, "event_id": 41, "contractor_id": 56, "message_type": FIVE[0], "phone": PHONE, "status": "scheduled"}

    cleared = ok(call(stack, key, "POST", "/api/events/41/contractors/56/messages/clear"))
    assert cleared["count"] == 5
    upcoming = ok(call(stack, key, "GET", "/api/event-messages/upcoming"))
    assert (upcoming["count"], upcoming["messages"]) == (0, [])
    assert {view(stack, key, message_id)["status"] for message_id in ids.values()} == {"cancelled"}
    stats = ok(call(stack, key, "GET", "/api/event-messages/stats"))
    assert {k: stats[k] for k in ("waiting", "active", "delayed", "total")} == {"waiting": 0, "active": 0, "delayed": 0, "total": 0}
    assert not [b for b in sandbox_bodies(stack) if b.startswith("s3 90")]


def test_the_natural_key_holds_while_pending_and_a_sent_message_can_be_scheduled_again(stack, key):
    first = ok(call(stack, key, "POST", "/api/event-messages", json=event_message(1, "speaker_alert", at(-60), event=7)))
    assert (first["status"], first["duplicate"], first["id"]) == ("scheduled", False, 1)  # past: sent now
    wait_for(lambda: view(stack, key, first["queueMessageId"])["status"] == "delivered", timeout=30, what="sent")
    assert "s3 1 speaker_alert" in sandbox_bodies(stack)

    later = ok(call(stack, key, "POST", "/api/event-messages", json=event_message(1, "speaker_alert", at(600), event=7)))
    assert later["duplicate"] is False and later["queueMessageId"] != first["queueMessageId"]  # the first is no longer pending
    twin = ok(call(stack, key, "POST", "/api/event-messages", json=event_message(2, "speaker_alert", at(900), event=7)))
    assert twin["duplicate"] is True and twin["queueMessageId"] == later["queueMessageId"]
    other = ok(call(stack, key, "POST", "/api/event-messages", json=event_message(3, "speaker_alert", at(900), event=7, contractor=57)))
    assert other["duplicate"] is False  # another contractor: another key


def test_one_message_is_cancelled_or_moved_by_its_id_and_a_failed_one_is_scheduled_anew_with_its_data(stack, key):
    postroom(stack, "workspace", "set", WORKSPACE_OF[key], "--timezone", "America/New_York")
    local = (datetime.now(ZoneInfo("America/New_York")) + timedelta(days=1)).replace(microsecond=0, tzinfo=None)
    made = ok(call(stack, key, "POST", "/api/event-messages", header="x-api-key",
                   json=event_message(21, "pcr_request", local.isoformat(), event=8)))
    assert when(made["scheduled_time"]) == local.replace(tzinfo=ZoneInfo("America/New_York"))  # a local time is the workspace's

    new_time = at(7200)
    assert ok(call(stack, key, "POST", "/api/event-messages/21/reschedule", json={"new_time": new_time}))["count"] == 1
    assert when(view(stack, key, made["queueMessageId"])["send_at"]) == when(new_time)
    assert ok(call(stack, key, "POST", "/api/event-messages/21/cancel"))["count"] == 1
    assert ok(call(stack, key, "POST", "/api/event-messages/21/cancel"))["count"] == 0  # nothing pending any more
    assert view(stack, key, made["queueMessageId"])["status"] == "cancelled"

    refuse_next_sms(stack)
    failed = ok(call(stack, key, "POST", "/api/event-messages", json=event_message(22, "speaker_alert", at(-1), event=8)))
    wait_for(lambda: view(stack, key, failed["queueMessageId"])["status"] == "failed", timeout=30, what="failed")
    row = event_message(22, "speaker_alert", at(-1), event=8, status="failed", error_message="refused")  # the old row, as read back
    anew = ok(call(stack, key, "POST", "/api/event-messages/22/reschedule", json={"new_time": at(3600), "data": row}))
    assert anew["count"] == 1 and anew["queueMessageId"] != failed["queueMessageId"]
    assert view(stack, key, anew["queueMessageId"])["status"] == "scheduled"


def test_bulk_answers_each_message_and_stores_the_valid_ones(stack, key):
    rows: list[Any] = [
        event_message(31, "speaker_alert", at(600), event=9),
        {**event_message(32, "sponsor_recommendation", at(600), event=9), "phone": None},
        event_message(33, "pcr_request", at(600), event=9, phone="+1234"),
        "not an object",
        event_message(34, "speaker_alert", at(700), event=9),  # the first one's key again, in the same request
        {**event_message(35, "speaker_alert", at(600), event=9), "scheduled_time": "next tuesday"},
        event_message(36, "post_event_wrap_up", at(600), event=9, channel="email",
                      personalization_data={"email": "contractor@example.com"}),
    ]
    bulk = ok(call(stack, key, "POST", "/api/event-messages/bulk", json={"messages": rows}))
    assert (bulk["scheduled"], bulk["duplicates"]) == (2, 1)
    assert [(f["index"], f.get("field"), f["code"]) for f in bulk["failed"]] == [
        (1, "messages[1].phone", "invalid_request"), (2, "messages[2].phone", "invalid_request"),
        (3, "messages[3]", "invalid_request"), (5, "messages[5].scheduled_time", "invalid_request")]
    outcome = {r["index"]: r for r in bulk["messages"]}
    assert outcome[4]["duplicate"] is True and outcome[4]["queueMessageId"] == outcome[0]["queueMessageId"]
    email = view(stack, key, outcome[6]["queueMessageId"])
    assert (email["channel"], email["to"], email["priority"]) == ("email", "contractor@example.com", "bulk")  # default 10
    assert ok(call(stack, key, "GET", "/api/event-messages/upcoming", params={"event_id": "9"}))["count"] == 2
    cleared = ok(call(stack, key, "POST", "/api/events/9/messages/clear"))
    assert cleared["count"] == 2


def test_stats_count_the_s3_messages_only(stack, key):
    refuse_next_sms(stack)
    failed = ok(call(stack, key, "POST", "/api/event-messages", json=event_message(43, "refused", at(-5), event=10)))
    wait_for(lambda: view(stack, key, failed["queueMessageId"])["status"] == "failed", timeout=30, what="failed")
    sent = ok(call(stack, key, "POST", "/api/event-messages", json=event_message(42, "now", at(-5), event=10)))
    for n in range(2):
        ok(call(stack, key, "POST", "/api/event-messages", json=event_message(40 + n, f"later_{n}", at(3600), event=10)))
    plain = call(stack, key, "POST", "/v1/messages", json={"channel": "sms", "to": PHONE, "body": "not s3",
                                                          "send_at": at(3600)})
    assert plain.status_code == 202, plain.text  # a /v1 message: not in the S3 figures
    wait_for(lambda: view(stack, key, sent["queueMessageId"])["status"] in ("sent", "delivered"), timeout=30, what="sent")
    stats = wait_for(lambda: (s := ok(call(stack, key, "GET", "/api/event-messages/stats")))["completed"] == 1 and s,
                     timeout=30, what="the stats")
    assert {k: stats[k] for k in ("waiting", "active", "completed", "failed", "delayed", "total")} == {
        "waiting": 0, "active": 0, "completed": 1, "failed": 1, "delayed": 2, "total": 2}


def test_refusals_are_in_the_compat_shape_and_name_the_old_field(stack, key):
    unauthenticated = requests.post(f"http://127.0.0.1:{stack.cfg.postroom_api_port}/api/event-messages", json={}, timeout=10)
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["success"] is False and unauthenticated.json()["code"] == "unauthorized"
    bad_phone = call(stack, key, "POST", "/api/event-messages", json=event_message(51, "speaker_alert", at(60), phone="12"))
    assert bad_phone.status_code == 422 and bad_phone.json()["field"] == "phone", bad_phone.text
    bad_time = call(stack, key, "POST", "/api/event-messages", json=event_message(52, "speaker_alert", "soon"))
    assert bad_time.status_code == 422 and bad_time.json()["field"] == "scheduled_time", bad_time.text
    missing = call(stack, key, "POST", "/api/event-messages", json={"id": 53, "event_id": 1})
    assert missing.status_code == 422 and missing.json() == {**missing.json(), "success": False, "code": "invalid_request"}
    both = call(stack, key, "POST", "/api/events/1/messages/reschedule", json={})
    assert both.status_code == 422 and both.json()["field"] == "shift_seconds"


def test_an_sms_event_message_goes_through_the_http_channel_when_the_workspace_has_one(stack, key):
    name = WORKSPACE_OF[key]
    postroom(stack, "channel", "http", "--workspace", name, "--url", f"{stack.cfg.sandbox_url}/receiver/n8n-{name}")
    made = ok(call(stack, key, "POST", "/api/event-messages", json=event_message(61, "speaker_alert", at(-1), event=11)))
    assert made["channel"] == "http"
    wait_for(lambda: view(stack, key, made["queueMessageId"])["status"] == "sent", timeout=30, what="delivered to n8n")
    requests_seen = requests.get(f"{stack.cfg.sandbox_url}/sandbox/receivers/n8n-{name}/requests", timeout=10).json()["requests"]
    data = requests_seen[0]["json"]["data"]
    assert (data["to"], data["body"], data["tags"]["event_id"], data["tags"]["message_type"]) == (
        PHONE, "s3 61 speaker_alert", "11", "speaker_alert")


# --- The core additions S3 stands on, through /v1 (in-process app, the session's PostgreSQL) ---

def test_a_messages_own_unique_tags_are_its_natural_key_beside_the_workspaces(api, workspace):
    auth, send_at = workspace["auth"], at(3600)
    mine: dict[str, Any] = {"channel": "sms", "to": PHONE, "body": "a", "send_at": send_at, "unique_tags": ["event_id", "kind"],
            "tags": {"event_id": "1", "kind": "x", "n": "1"}}
    first = api.post("/v1/messages", json=mine, headers=auth)
    assert first.status_code == 202, first.get_json()
    again = api.post("/v1/messages", json={**mine, "tags": {**mine["tags"], "n": "2"}}, headers=auth)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "duplicate"
    returned = api.post("/v1/messages", json={**mine, "on_conflict": "return"}, headers=auth)
    assert returned.status_code == 200 and returned.get_json()["id"] == first.get_json()["id"]
    other_event = api.post("/v1/messages", json={**mine, "tags": {**mine["tags"], "event_id": "2"}}, headers=auth)
    assert other_event.status_code == 202
    unkeyed = {k: v for k, v in mine.items() if k != "unique_tags"}
    assert api.post("/v1/messages", json=unkeyed, headers=auth).status_code == 202  # the workspace declares none
    missing = api.post("/v1/messages", json={**mine, "unique_tags": ["event_id", "absent"]}, headers=auth)
    assert missing.status_code == 422 and missing.get_json()["error"]["field"] == "unique_tags"

    # The workspace's own unique tags still hold for messages that give none
    from common.db.connection import fetch, transaction

    with transaction():
        fetch("UPDATE workspace SET unique_tags = '{kind}' WHERE id = %s", (workspace["id"],))
    plain = {"channel": "sms", "to": PHONE, "body": "b", "send_at": send_at, "tags": {"kind": "y"}}
    assert api.post("/v1/messages", json=plain, headers=auth).status_code == 202
    assert api.post("/v1/messages", json=plain, headers=auth).status_code == 409
    assert api.post("/v1/messages", json={**plain, "unique_tags": ["kind", "n"], "tags": {"kind": "y", "n": "1"}},
                    headers=auth).status_code == 202  # its own names: another key

    batch = api.post("/v1/messages/batch", headers=auth, json={"messages": [
        {**mine, "tags": {"event_id": "3", "kind": "x"}}, {**mine, "tags": {"event_id": "3", "kind": "x"}, "on_conflict": "return"},
        {**mine, "tags": {"event_id": "3", "kind": "x"}}]})
    results = batch.get_json()["results"]
    assert results[1]["replayed"] is True and results[1]["id"] == results[0]["id"]
    assert results[2]["error"]["code"] == "duplicate"


def test_backlog_figures_for_a_window_and_tags(api, workspace):
    from common import backlog
    from common.db.connection import transaction

    for tags in ({"compat": "s3", "event_id": "1"}, {"compat": "s3", "event_id": "2"}, {"other": "1"}):
        made = api.post("/v1/messages", json={"channel": "sms", "to": PHONE, "body": "x", "send_at": at(3600), "tags": tags},
                        headers=workspace["auth"])
        assert made.status_code == 202
    with transaction():
        everything = backlog.measure(workspace["id"])
        tagged = backlog.measure(workspace["id"], window_seconds=60, tags={"compat": "s3"})
        one = backlog.measure(workspace["id"], tags={"compat": "s3", "event_id": "2"})
    assert sum(f.scheduled for f in everything.values()) == 3
    assert sum(f.scheduled for f in tagged.values()) == 2
    assert sum(f.scheduled for f in one.values()) == 1
    for wrong in (0, 3601):
        with pytest.raises(ValueError):
            backlog.measure(workspace["id"], window_seconds=wrong)
