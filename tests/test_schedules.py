"""Recurring schedules: the API in this process against the session's database, the scheduler's
materialising with a controlled clock, exactly-once under racing replicas, and an occurrence that
reaches the sandbox once through real workers."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from common import apikeys
from common.db.connection import fetch, fetch_dicts, release_connection, transaction
from common.occurrences import Plan, occurrence_keys_like
from common.recurrence import occurrence_key, parse
from services.scheduler import main as scheduler
from services.scheduler import reconciler, recurring
from tests.support import running_workers, status_of, wait_for

T = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)  # a Monday
HORIZON = timedelta(seconds=5)
SOON = datetime.now(UTC).replace(microsecond=0) + timedelta(days=10)
MESSAGE = {"channel": "sms", "to": "+15005550006", "body": "Stand-up in 5 minutes", "tags": {"team": "core"}}


def create(api, workspace, **fields):
    return api.post("/v1/schedules", json={"cron": "* * * * *", "message": MESSAGE, **fields}, headers=workspace["auth"])


def due_at(schedule_id: int, at: datetime) -> None:
    """Make the schedule's next occurrence ``at``, as if the scheduler had arrived there."""
    with transaction():
        fetch("UPDATE schedule SET next_run_at = %s WHERE id = %s", (at, schedule_id))


def schedule_row(schedule_id: int) -> dict:
    with transaction():
        return fetch_dicts("SELECT * FROM schedule WHERE id = %s", (schedule_id,))[0]


def occurrences() -> list[dict]:
    with transaction():
        return fetch_dicts("SELECT id, status, due_at, idempotency_key, body, to_addr, tags FROM message ORDER BY due_at, id")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- which occurrences a pass materialises (no database) --------------------------------------

def every_minute(**bounds) -> Plan:
    return Plan(parse("* * * * *", "UTC"), **bounds)


def test_a_pass_materialises_the_occurrence_due_within_the_horizon_and_moves_on():
    firing = recurring.fire(every_minute(), T, now=T - timedelta(seconds=3), horizon=HORIZON)
    assert firing.due == [T] and firing.following == T + timedelta(minutes=1) and firing.skipped == 0
    early = recurring.fire(every_minute(), T, now=T - timedelta(seconds=30), horizon=HORIZON)
    assert early.due == [] and early.following == T  # not yet: nothing changes


def test_after_an_outage_only_the_latest_missed_occurrence_is_sent_and_only_within_the_late_limit():
    # Given an every-minute schedule whose scheduler was down from 12:00 to 12:30:30
    firing = recurring.fire(every_minute(), T, now=T + timedelta(minutes=30, seconds=30), horizon=HORIZON)
    # Then the 12:30 occurrence goes now, the 30 before it are skipped, and 12:31 comes next
    assert firing.due == [T + timedelta(minutes=30)] and firing.skipped == 30
    assert firing.following == T + timedelta(minutes=31)
    # A daily 09:00 reminder ten minutes late is still sent; three hours late it waits for tomorrow
    daily = Plan(parse("0 9 * * *", "UTC"))
    nine = T.replace(hour=9)
    assert recurring.fire(daily, nine, now=nine + timedelta(minutes=10), horizon=HORIZON).due == [nine]
    late = recurring.fire(daily, nine, now=nine + timedelta(hours=3), horizon=HORIZON)
    assert late.due == [] and late.skipped == 1 and late.following == nine + timedelta(days=1)


def test_a_pass_stops_at_max_count_and_before_the_end():
    # Given two of three occurrences already sent, and the scheduler a few minutes behind
    firing = recurring.fire(every_minute(max_count=3, sent_count=2), T, now=T + timedelta(seconds=2), horizon=timedelta(minutes=3))
    assert firing.due == [T] and firing.following == T + timedelta(minutes=1)
    ended = recurring.fire(every_minute(end=T + timedelta(minutes=1)), T, now=T, horizon=timedelta(minutes=5))
    assert ended.due == [T] and ended.following is None  # none at or after the end


def test_occurrences_keep_their_local_time_across_dst():
    # 09:00 on weekdays in New York: 14:00 UTC in winter, 13:00 UTC once DST starts (8 March 2026)
    plan = Plan(parse("0 9 * * 1-5", "America/New_York"))
    first = plan.first_after(datetime(2026, 3, 5, 15, 0, tzinfo=UTC))  # Thursday afternoon
    assert plan.upcoming(first, 5) == [
        datetime(2026, 3, 6, 14, 0, tzinfo=UTC), datetime(2026, 3, 9, 13, 0, tzinfo=UTC),
        datetime(2026, 3, 10, 13, 0, tzinfo=UTC), datetime(2026, 3, 11, 13, 0, tzinfo=UTC),
        datetime(2026, 3, 12, 13, 0, tzinfo=UTC)]
    assert Plan(plan.recurrence, max_count=3, sent_count=1).upcoming(first, 5) == plan.upcoming(first, 2)


# --- the API ------------------------------------------------------------------------------------

def test_a_new_schedule_shows_its_next_five_occurrences_in_utc(api, workspace):
    response = create(api, workspace, cron="0 9 * * 1-5", timezone="America/New_York",
                      message={**MESSAGE, "to": "+1 (500) 555-0006"})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["status"] == "active" and body["sent_count"] == 0 and body["max_count"] is None
    assert body["message"]["to"] == "+15005550006" and body["message"]["tags"] == {"team": "core"}
    times = [utc(t) for t in body["next_occurrences"]]
    assert len(times) == 5 and times == sorted(times) and body["next_run_at"] == body["next_occurrences"][0]
    assert all(t.endswith("Z") for t in body["next_occurrences"])
    for at in times:  # 09:00 on a weekday in New York, whatever the UTC offset of the day
        local = at.astimezone(parse("0 9 * * *", "America/New_York").zone)
        assert (local.hour, local.minute) == (9, 0) and local.weekday() < 5
    assert api.get(f"/v1/schedules/{body['id']}", headers=workspace["auth"]).get_json() == body


@pytest.mark.parametrize(("fields", "field"), [
    ({"cron": "0 9 * *"}, "cron"),
    ({"cron": "0 25 * * *"}, "cron"),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"message": {**MESSAGE, "send_at": "2030-01-01T09:00:00Z"}}, "message.send_at"),
    ({"message": {**MESSAGE, "delay_seconds": 60}}, "message.delay_seconds"),
    ({"message": {**MESSAGE, "to": "12345"}}, "message.to"),
    ({"message": {**MESSAGE, "subject": "hi"}}, "message.subject"),
    ({"message": {"channel": "sms", "to": "+15005550006"}}, "message.body"),
    ({"message": {**MESSAGE, "channel": "http"}}, "message.channel"),  # no http channel configured
    ({"start": SOON.isoformat(), "end": (SOON - timedelta(days=1)).isoformat()}, "end"),
    ({"start": "2099-01-01T00:00:00Z"}, "start"),  # beyond the scheduling horizon
    ({"end": "2020-01-01T00:00:00Z"}, "end"),  # it would never send
    ({"start": "2030-01-01T00:00:00"}, "start"),
    ({"start": "next week"}, "start"),
    ({"max_count": 0}, "max_count"),
])
def test_an_invalid_schedule_is_refused_naming_the_field_and_nothing_is_stored(api, workspace, fields, field):
    response = create(api, workspace, **fields)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == field, error
    assert field.split(".")[-1] in error["message"]
    assert api.get("/v1/schedules", headers=workspace["auth"]).get_json()["schedules"] == []


def test_list_read_change_pause_resume_and_delete(api, workspace):
    auth = workspace["auth"]
    first = create(api, workspace).get_json()
    second = create(api, workspace, cron="30 8 * * *", timezone="Europe/Paris", max_count=10).get_json()
    # Listing pages through them, oldest first, without computing occurrences
    page = api.get("/v1/schedules?limit=1", headers=auth).get_json()
    assert [s["id"] for s in page["schedules"]] == [first["id"]] and page["schedules"][0]["next_occurrences"] is None
    rest = api.get(f"/v1/schedules?limit=1&after={page['next_after']}", headers=auth).get_json()
    assert [s["id"] for s in rest["schedules"]] == [second["id"]]
    assert api.get("/v1/schedules?limit=0", headers=auth).status_code == 422

    # Changing the timing computes the next run again; a new message replaces the old one
    changed = api.patch(f"/v1/schedules/{second['id']}", json={"cron": "0 7 * * *", "timezone": "Asia/Tokyo", "max_count": 2,
                                                               "message": {**MESSAGE, "body": "Ohayo"}}, headers=auth)
    assert changed.status_code == 200, changed.get_json()
    view = changed.get_json()
    assert view["message"]["body"] == "Ohayo" and len(view["next_occurrences"]) == 2
    assert all(utc(t).hour == 22 for t in view["next_occurrences"])  # 07:00 in Tokyo
    cleared = api.patch(f"/v1/schedules/{second['id']}", json={"max_count": None}, headers=auth).get_json()
    assert cleared["max_count"] is None and len(cleared["next_occurrences"]) == 5
    refused = api.patch(f"/v1/schedules/{second['id']}", json={"cron": None}, headers=auth)
    assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "cron"

    # Paused: no occurrences to come; resumed: from the next one after now
    paused = api.post(f"/v1/schedules/{first['id']}/pause", headers=auth).get_json()
    assert paused["status"] == "paused" and paused["next_occurrences"] == []
    resumed = api.post(f"/v1/schedules/{first['id']}/resume", headers=auth).get_json()
    assert resumed["status"] == "active" and utc(resumed["next_run_at"]) > datetime.now(UTC)

    # Deleted: gone
    assert api.delete(f"/v1/schedules/{first['id']}", headers=auth).status_code == 200
    gone = f"/v1/schedules/{first['id']}"
    assert [api.get(gone, headers=auth).status_code, api.delete(gone, headers=auth).status_code,
            api.patch(gone, json={}, headers=auth).status_code, api.post(f"{gone}/resume", headers=auth).status_code] == [404] * 4


def test_another_workspace_and_a_read_only_key_cannot_touch_a_schedule(api, workspace):
    schedule = create(api, workspace).get_json()
    with transaction():
        other = apikeys.issue(apikeys.create_workspace("globex"))
        reader = apikeys.issue(workspace["id"], scopes=("messages:read",))
    stranger = {"Authorization": f"Bearer {other}"}
    assert api.get(f"/v1/schedules/{schedule['id']}", headers=stranger).status_code == 404
    assert api.post(f"/v1/schedules/{schedule['id']}/pause", headers=stranger).status_code == 404
    assert api.get("/v1/schedules", headers=stranger).get_json()["schedules"] == []
    read_only = {"Authorization": f"Bearer {reader}"}
    assert api.get(f"/v1/schedules/{schedule['id']}", headers=read_only).status_code == 200
    assert api.post("/v1/schedules", json={"cron": "* * * * *", "message": MESSAGE}, headers=read_only).status_code == 403
    assert api.delete(f"/v1/schedules/{schedule['id']}", headers=read_only).status_code == 403


# --- materialising ------------------------------------------------------------------------------

def test_a_due_occurrence_becomes_one_scheduled_message_with_its_dedupe_key(api, workspace):
    schedule_id = create(api, workspace).get_json()["id"]
    due_at(schedule_id, T)
    # When the scheduler passes a few seconds before T
    assert recurring.materialise(5, now=T - timedelta(seconds=3)) == 1
    # Then the occurrence is a scheduled message due at T, keyed by the occurrence
    [made] = occurrences()
    assert made["status"] == "scheduled" and made["due_at"] == T and made["body"] == MESSAGE["body"]
    assert made["idempotency_key"] == occurrence_key(schedule_id, T) and made["tags"] == {"team": "core"}
    row = schedule_row(schedule_id)
    assert row["next_run_at"] == T + timedelta(minutes=1) and row["sent_count"] == 1
    # A second pass at the same moment (a restart) finds nothing to do
    assert recurring.materialise(5, now=T - timedelta(seconds=3)) == 0
    # And a replica that still saw the old next run inserts nothing and counts nothing
    due_at(schedule_id, T)
    assert recurring.materialise(5, now=T - timedelta(seconds=3)) == 0
    assert len(occurrences()) == 1 and schedule_row(schedule_id)["sent_count"] == 1
    assert schedule_row(schedule_id)["next_run_at"] == T + timedelta(minutes=1)


def test_a_late_occurrence_is_handed_to_processing_at_once(api, workspace, broker):
    # Given a scheduler that reaches an occurrence ten seconds after its time (of a yearly
    # schedule: no other occurrence near)
    schedule_id = create(api, workspace, cron="0 0 1 1 *").get_json()["id"]
    with transaction():
        late = fetch("UPDATE schedule SET next_run_at = date_trunc('second', now()) - interval '10 seconds'"
                     " WHERE id = %s RETURNING next_run_at", (schedule_id,))[0][0]
    assert recurring.materialise(5) == 1
    # Then the message keeps its time and is handed on in the same pass, not a stage deadline later
    [made] = occurrences()
    assert made["due_at"] == late
    assert reconciler.promote_scheduled(30.0) == 1
    assert broker.client.llen("dramatiq:processing_normal") == 1


def test_racing_scheduler_replicas_materialise_each_occurrence_once(api, workspace):
    ids = [create(api, workspace, message={**MESSAGE, "body": f"race {n}"}).get_json()["id"] for n in range(20)]
    with transaction():
        fetch("UPDATE schedule SET next_run_at = %s", (T,))
    start = threading.Barrier(4)
    made: list[int] = []

    def replica() -> None:
        start.wait()
        try:
            for _ in range(3):
                made.append(recurring.materialise(5, now=T - timedelta(seconds=3)))
        finally:
            release_connection()

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(made) == 20
    keys = [m["idempotency_key"] for m in occurrences()]
    assert sorted(keys) == sorted(occurrence_key(i, T) for i in ids)
    with transaction():
        assert fetch("SELECT count(*), min(sent_count), max(sent_count) FROM schedule")[0] == (20, 1, 1)


def test_a_paused_schedule_produces_nothing_and_its_materialised_occurrence_is_cancelled(api, workspace):
    auth = workspace["auth"]
    # 20-40 s ahead, so within the window that pausing cancels in, and at least 10 s from a cron
    # minute, so the 5 s window read below holds one occurrence, never two
    soon = (datetime.now(UTC) + timedelta(seconds=30)).replace(microsecond=0)
    soon = soon.replace(second=min(max(soon.second, 10), 50))
    made = create(api, workspace).get_json()["id"]
    idle = create(api, workspace).get_json()["id"]
    due_at(made, soon)
    due_at(idle, soon)
    api.post(f"/v1/schedules/{idle}/pause", headers=auth)
    # Given one schedule whose occurrence is already a message, and one paused before its turn
    assert recurring.materialise(5, now=soon - timedelta(seconds=3)) == 1
    [message] = occurrences()
    assert message["idempotency_key"] == occurrence_key(made, soon)
    # When the first is paused too
    assert api.post(f"/v1/schedules/{made}/pause", headers=auth).get_json()["status"] == "paused"
    # Then its waiting occurrence is cancelled, and later passes make nothing for either
    assert status_of(message["id"]) == "cancelled"
    for minutes in range(1, 4):
        assert recurring.materialise(5, now=soon + timedelta(minutes=minutes)) == 0
    assert len(occurrences()) == 1


def test_max_count_stops_the_schedule(api, workspace):
    schedule_id = create(api, workspace, max_count=2).get_json()["id"]
    due_at(schedule_id, T)
    for minute in range(4):
        recurring.materialise(5, now=T + timedelta(minutes=minute, seconds=-3))
    assert [m["due_at"] for m in occurrences()] == [T, T + timedelta(minutes=1)]
    view = api.get(f"/v1/schedules/{schedule_id}", headers=workspace["auth"]).get_json()
    assert view["status"] == "finished" and view["sent_count"] == 2
    assert view["next_run_at"] is None and view["next_occurrences"] == []
    # Raising max_count brings it back from now on
    more = api.patch(f"/v1/schedules/{schedule_id}", json={"max_count": 3}, headers=workspace["auth"]).get_json()
    assert more["status"] == "active" and len(more["next_occurrences"]) == 1


def test_pausing_matches_only_its_own_schedules_occurrences():
    at = datetime(2030, 1, 1, tzinfo=UTC)
    with transaction():
        matches = fetch("SELECT %s LIKE %s, %s LIKE %s", (occurrence_key(5, at), occurrence_keys_like(5),
                                                         occurrence_key(55, at), occurrence_keys_like(5)))[0]
    assert matches == (True, False)


def test_the_scheduler_wakes_a_horizon_before_a_schedules_next_run(api, workspace):
    schedule_id = create(api, workspace).get_json()["id"]
    with transaction():
        fetch("UPDATE schedule SET next_run_at = now() + interval '20 seconds' WHERE id = %s", (schedule_id,))
    assert 13 < reconciler.next_scheduled_in(5.0) <= 15
    api.post(f"/v1/schedules/{schedule_id}/pause", headers=workspace["auth"])
    assert reconciler.next_scheduled_in(5.0) is None


def test_an_every_minute_schedules_occurrence_reaches_the_sandbox_once(api, workspace, sandbox, broker):
    # Given an every-minute schedule, and time enough before the next minute that only the
    # occurrence placed two seconds from now is due during the test
    if datetime.now(UTC).second > 40:
        time.sleep(61 - datetime.now(UTC).second)
    schedule_id = create(api, workspace, message={**MESSAGE, "body": "every minute"}).get_json()["id"]
    with transaction():
        at = fetch("UPDATE schedule SET next_run_at = date_trunc('second', now()) + interval '2 seconds'"
                   " WHERE id = %s RETURNING next_run_at", (schedule_id,))[0][0]
    # When the scheduler runs its passes (and a second replica materialises alongside) with workers
    with running_workers(broker):
        def delivered() -> bool:
            scheduler.run_once()
            recurring.materialise(recurring.HORIZON_SECONDS)
            return [m["body"] for m in sandbox.messages()] == ["every minute"] and all(
                status_of(m["id"]) == "delivered" for m in occurrences())
        wait_for(delivered, timeout=20, interval=0.2, what="the occurrence to be delivered")
        for _ in range(5):
            scheduler.run_once()
            time.sleep(0.1)
    # Then it was sent once, not before its time, and the schedule counted it
    sent = sandbox.messages()
    assert [m["body"] for m in sent] == ["every minute"]
    assert datetime.fromisoformat(sent[0]["received_at"]) >= at
    [made] = occurrences()
    assert made["idempotency_key"] == occurrence_key(schedule_id, at)
    assert schedule_row(schedule_id)["sent_count"] == 1
