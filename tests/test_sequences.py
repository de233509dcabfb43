"""Sequences with seed document S3's event messages as the fixture: step times (controlled clock,
across DST in two hemispheres), enrolment, an anchor move shifting only the pending steps, a
passed step skipped by its rule, and unenrolment cancelling the rest."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from common.db.connection import fetch, transaction
from common.sequences import StepTime, due, plan

NIGHT_BEFORE = StepTime("event_start", days=-1, at=time(20, 0))
S3_STEPS = [
    {"name": "registration_confirmation", "body": "Hi {first_name}, you are registered.", "priority": "urgent"},
    {"name": "check_in_reminder_night_before", "anchor": "event_start", "days": -1, "at": "20:00", "body": "See you tomorrow"},
    {"name": "check_in_reminder_1_hour", "anchor": "event_start", "offset_seconds": -3600, "body": "One hour to go"},
    {"name": "check_in_reminder_event_start", "anchor": "event_start", "body": "We are starting"},
    {"name": "speaker_alert", "anchor": "session_start", "offset_seconds": -900, "body": "{session_title} in 15 minutes",
     "priority": "urgent"},
    {"name": "pcr_request", "anchor": "session_end", "offset_seconds": 420, "if_past": "skip", "body": "Rate the session"},
    {"name": "post_event_wrap_up", "anchor": "event_end", "offset_seconds": 7200, "body": "Thanks for coming"},
]


def test_step_times_follow_the_recipients_local_clock_across_dst():
    enrolled = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    # The event is the morning after New York springs forward (8 March): 20:00 the night before is EDT.
    start = datetime(2026, 3, 9, 9, 0, tzinfo=UTC) + timedelta(hours=4)  # 09:00 EDT
    assert due(NIGHT_BEFORE, {"event_start": start}, enrolled, "America/New_York") == datetime(2026, 3, 9, 0, 0, tzinfo=UTC)
    # Sydney falls back on 5 April: the evening before a 6 April event is AEST (+10), not AEDT (+11).
    sydney = datetime(2026, 4, 5, 23, 0, tzinfo=UTC)  # 09:00 AEST on 6 April
    assert due(NIGHT_BEFORE, {"event_start": sydney}, enrolled, "Australia/Sydney") == datetime(2026, 4, 5, 10, 0, tzinfo=UTC)
    hour_before = StepTime("event_start", offset_seconds=-3600)
    assert due(hour_before, {"event_start": start}, enrolled, "America/New_York") == start - timedelta(hours=1)
    assert due(StepTime(), {}, enrolled, "UTC") == enrolled  # at enrolment
    late = StepTime("session_end", offset_seconds=420, if_past="skip")
    assert plan(late, {"session_end": enrolled - timedelta(hours=1)}, enrolled, "UTC", enrolled) is None
    assert plan(StepTime("session_end", 420), {"session_end": enrolled - timedelta(hours=1)}, enrolled, "UTC", enrolled) == enrolled


def iso(moment: datetime) -> str:
    return moment.isoformat()


def statuses(enrolment: dict) -> dict[str, str]:
    return {s["step"]: s["status"] for s in enrolment["steps"]}


def send_ats(enrolment: dict) -> dict[str, datetime]:
    return {s["step"]: datetime.fromisoformat(s["send_at"]) for s in enrolment["steps"] if s["send_at"]}


def test_enrol_move_an_anchor_and_unenrol(api, workspace):
    auth = workspace["auth"]
    made = api.post("/v1/sequences", json={"name": "event 41", "steps": S3_STEPS}, headers=auth)
    assert made.status_code == 201, made.get_json()
    sequence_id = made.get_json()["id"]
    assert api.post("/v1/sequences", json={"name": "event 41", "steps": S3_STEPS}, headers=auth).status_code == 409
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    anchors = {"event_start": start, "session_start": start + timedelta(hours=2),
               "session_end": start + timedelta(hours=3), "event_end": start + timedelta(hours=8)}
    enrol = {"to": "+15005550006", "timezone": "America/New_York", "anchors": {k: iso(v) for k, v in anchors.items()},
             "variables": {"first_name": "Ada", "session_title": "AI in Business"}}
    enrolled = api.post(f"/v1/sequences/{sequence_id}/enrolments", json=enrol, headers=auth)
    assert enrolled.status_code == 201, enrolled.get_json()
    view = enrolled.get_json()
    assert set(statuses(view).values()) == {"scheduled"} and len(view["steps"]) == 7
    times = send_ats(view)
    assert times["check_in_reminder_1_hour"] == start - timedelta(hours=1)
    assert times["speaker_alert"] == anchors["session_start"] - timedelta(minutes=15)
    with transaction():
        body, tags = fetch("SELECT body, tags FROM message WHERE id = %s",
                           (next(s["message_id"] for s in view["steps"] if s["step"] == "speaker_alert"),))[0]
    assert body == "AI in Business in 15 minutes" and tags["step"] == "speaker_alert"

    # The confirmation went out; then the event moves a day later
    confirmation = next(s["message_id"] for s in view["steps"] if s["step"] == "registration_confirmation")
    with transaction():
        fetch("UPDATE message SET status = 'sent' WHERE id = %s", (confirmation,))
    moved = api.patch(f"/v1/enrolments/{view['id']}", json={"anchors": {"event_start": iso(start + timedelta(days=1))}},
                      headers=auth).get_json()
    after = send_ats(moved)
    for step in ("check_in_reminder_night_before", "check_in_reminder_1_hour", "check_in_reminder_event_start"):
        assert after[step] - times[step] == timedelta(days=1), step  # hangs on event_start: moved
    for step in ("speaker_alert", "pcr_request", "post_event_wrap_up", "registration_confirmation"):
        assert after[step] == times[step], step  # other anchors, or already sent: untouched
    assert statuses(moved)["registration_confirmation"] == "sent"

    # The session ended already (moved into the past): its PCR request is skipped by its rule
    past = api.patch(f"/v1/enrolments/{view['id']}", json={"anchors": {"session_end": iso(datetime.now(UTC) - timedelta(hours=1))}},
                     headers=auth).get_json()
    assert statuses(past)["pcr_request"] == "cancelled"

    # Unenrolled: every step not yet sent is cancelled, the sent one stays sent
    gone = api.delete(f"/v1/enrolments/{view['id']}", headers=auth).get_json()
    assert gone["status"] == "unenrolled"
    assert statuses(gone) == {**{s["name"]: "cancelled" for s in S3_STEPS}, "registration_confirmation": "sent"}


def test_enrolment_refuses_what_the_steps_cannot_use(api, workspace):
    auth = workspace["auth"]
    sequence_id = api.post("/v1/sequences", json={"name": "s3", "steps": S3_STEPS}, headers=auth).get_json()["id"]
    start = iso(datetime.now(UTC) + timedelta(days=2))
    for body, field in [({"to": "+15005550006", "anchors": {"event_start": start}}, "anchors"),
                        ({"to": "+15005550006", "anchors": dict.fromkeys(("event_start", "session_start", "session_end", "event_end"), start)},
                         "variables"),
                        ({"to": "12345", "anchors": {"event_start": start}}, "to"),
                        ({"to": "+15005550006", "anchors": {"event_start": "next tuesday"}}, "anchors")]:
        refused = api.post(f"/v1/sequences/{sequence_id}/enrolments", json=body, headers=auth)
        assert refused.status_code == 422 and refused.get_json()["error"]["field"] == field, (body, refused.get_json())
    duplicate_steps = api.post("/v1/sequences", json={"name": "twice", "steps": [S3_STEPS[0], S3_STEPS[0]]}, headers=auth)
    assert duplicate_steps.status_code == 422 and duplicate_steps.get_json()["error"]["field"] == "steps"
    assert api.post("/v1/sequences/999/enrolments", json={"to": "+15005550006"}, headers=auth).status_code == 404


def test_local_step_times_use_the_contacts_zone_when_the_enrolment_gives_none(api, workspace):
    auth = workspace["auth"]
    assert api.post("/v1/contacts", json={"addresses": {"sms": "+15005550006"}, "timezone": "Europe/London"},
                    headers=auth).status_code == 201
    sequence_id = api.post("/v1/sequences", json={"name": "zone", "steps": [S3_STEPS[1]]}, headers=auth).get_json()["id"]
    start = (datetime.now(UTC) + timedelta(days=10)).replace(hour=12, minute=0, second=0, microsecond=0)
    view = api.post(f"/v1/sequences/{sequence_id}/enrolments", json={"to": "+15005550006", "anchors": {"event_start": iso(start)}},
                    headers=auth).get_json()
    night_before = send_ats(view)["check_in_reminder_night_before"]
    assert night_before.astimezone(ZoneInfo("Europe/London")).hour == 20  # the contact's zone, not the number's


def test_the_campaign_id_tag_is_postrooms_own_not_a_steps(api, workspace):
    # A step's own campaign_id tag is dropped: only a campaign's fan-out names a campaign on a step (its pause holds it)
    auth = workspace["auth"]
    step = {"name": "hello", "body": "Hi", "tags": {"campaign_id": "1", "kind": "welcome"}}
    sequence_id = api.post("/v1/sequences", json={"name": "tagged", "steps": [step]}, headers=auth).get_json()["id"]
    view = api.post(f"/v1/sequences/{sequence_id}/enrolments", json={"to": "+15005550006"}, headers=auth).get_json()
    with transaction():
        tags = fetch("SELECT tags FROM message WHERE id = %s", (view["steps"][0]["message_id"],))[0][0]
    assert tags == {"kind": "welcome", "sequence_id": str(sequence_id), "enrolment_id": str(view["id"]), "step": "hello"}
