"""The campaign core the compatibility routes stand on, through /v1: a campaign's `external_id`,
starting a draft at a `send_at` given with the start, and a campaign's `sequence_id` enrolling
every recipient of its fan-out in that sequence (set-wise), whose steps its pause holds and its
cancel stops."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from common.db.connection import fetch, fetch_dicts, transaction
from services.ingest import campaigns_api
from services.scheduler import reconciler
from tests.support import running_workers, wait_for


def numbers(n: int, start: int = 0) -> list[str]:
    """Distinct valid numbers in a range NANPA keeps for fiction (555-0100 to 555-0199)."""
    return [f"+1{201 + (start + i) // 100}55501{(start + i) % 100:02d}" for i in range(n)]


def create(api, workspace: dict, **fields: Any) -> Any:
    return api.post("/v1/campaigns", json={"name": "December", "channel": "sms", "body": "Hi", **fields},
                    headers=workspace["auth"])


def sequence(api, workspace: dict, steps: list[dict[str, Any]], name: str = "follow-up") -> int:
    made = api.post("/v1/sequences", json={"name": name, "steps": steps}, headers=workspace["auth"])
    assert made.status_code == 201, made.get_json()
    return int(made.get_json()["id"])


def step_messages(campaign_id: int) -> list[dict[str, Any]]:
    with transaction():
        return fetch_dicts("SELECT m.id, m.to_addr, m.body, m.status, m.due_at, m.step, m.tags, e.anchors, e.created_at"
                           " FROM message m JOIN enrolment e ON e.id = m.enrolment_id"
                           " WHERE m.tags @> jsonb_build_object('campaign_id', %s::text) ORDER BY m.to_addr, m.step",
                           (campaign_id,))


def test_external_id_is_kept_shown_and_found_and_a_bad_one_is_422(api, workspace):
    made = create(api, workspace, external_id="summer-2026", recipients=[{"to": n} for n in numbers(2)])
    assert made.status_code == 201, made.get_json()
    view = made.get_json()
    assert view["external_id"] == "summer-2026" and view["sequence_id"] is None
    assert api.get(f"/v1/campaigns/{view['id']}", headers=workspace["auth"]).get_json()["external_id"] == "summer-2026"
    listed = api.get("/v1/campaigns", headers=workspace["auth"]).get_json()["campaigns"]
    assert [c["external_id"] for c in listed] == ["summer-2026"]
    again = create(api, workspace, external_id="summer-2026").get_json()  # several campaigns may share one
    with transaction():
        assert [c["id"] for c in campaigns_api.by_external_id(workspace["id"], "summer-2026")] == [again["id"], view["id"]]
        newest, by_id = campaigns_api.find(workspace["id"], "summer-2026"), campaigns_api.find(workspace["id"], str(view["id"]))
        assert newest is not None and newest["id"] == again["id"]  # the newest with that external id
        assert by_id is not None and by_id["id"] == view["id"]  # else the postroom id
        assert campaigns_api.find(workspace["id"], "no-such") is None
    refused = create(api, workspace, external_id="has space")
    assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "external_id"


def test_start_takes_a_send_at_and_a_started_campaign_is_409(api, workspace):
    draft = create(api, workspace, recipients=[{"to": n} for n in numbers(3)]).get_json()
    later = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    started = api.post(f"/v1/campaigns/{draft['id']}/start", json={"send_at": later.isoformat()}, headers=workspace["auth"])
    assert started.status_code == 200, started.get_json()
    view = started.get_json()
    assert view["status"] == "scheduled" and datetime.fromisoformat(view["send_at"]) == later
    with transaction():
        rows = fetch("SELECT status, due_at FROM message WHERE campaign_id = %s", (draft["id"],))
    assert Counter(r[0] for r in rows) == Counter({"scheduled": 3}) and {r[1] for r in rows} == {later}
    again = api.post(f"/v1/campaigns/{draft['id']}/start", headers=workspace["auth"])
    assert again.status_code == 409 and again.get_json()["error"]["field"] == "status"
    # The public call may answer a started campaign's view instead (an old client's repeated queue request)
    assert campaigns_api.start(workspace["id"], draft["id"], again_ok=True)["status"] == "scheduled"

    # No body: now. A local send_at needs its timezone; a past one starts now.
    other = create(api, workspace, recipients=[{"to": n} for n in numbers(1)]).get_json()
    bad = api.post(f"/v1/campaigns/{other['id']}/start", json={"send_at": "2026-01-01T09:00:00"}, headers=workspace["auth"])
    assert bad.status_code == 422 and bad.get_json()["error"]["field"] == "send_at"
    past = api.post(f"/v1/campaigns/{other['id']}/start", json={"send_at": "2020-01-01T09:00:00Z"}, headers=workspace["auth"])
    assert past.status_code == 200 and past.get_json()["status"] == "running"
    bare = create(api, workspace, recipients=[{"to": n} for n in numbers(1, 5)]).get_json()
    now = api.post(f"/v1/campaigns/{bare['id']}/start", headers=workspace["auth"])
    assert now.status_code == 200 and now.get_json()["status"] == "running"
    assert api.post("/v1/campaigns/999999/start", headers=workspace["auth"]).status_code == 404


FOLLOW_UP = [
    {"name": "thanks", "offset_seconds": 3600, "body": "Thanks {first_name}"},
    {"name": "survey", "anchor": "campaign_start", "offset_seconds": 86400, "body": "How was it?"},
    {"name": "too_late", "offset_seconds": -60, "if_past": "skip", "body": "never made"},
]


def test_a_campaigns_sequence_enrols_every_recipient_at_fan_out_and_its_cancel_stops_the_steps(api, workspace):
    sequence_id = sequence(api, workspace, FOLLOW_UP)
    to = numbers(3)
    made = create(api, workspace, sequence_id=sequence_id, start=True,
                  recipients=[{"to": n, "variables": {"first_name": f"P{i}"}} for i, n in enumerate(to)])
    assert made.status_code == 201, made.get_json()
    view = made.get_json()
    assert view["sequence_id"] == sequence_id and view["progress"]["total"] == 3  # steps are not campaign messages
    steps = step_messages(view["id"])
    assert Counter(m["to_addr"] for m in steps) == Counter({n: 2 for n in to})  # "too_late" skipped by its rule
    assert {m["step"] for m in steps} == {"thanks", "survey"} and {m["status"] for m in steps} == {"scheduled"}
    thanks = {m["to_addr"]: m for m in steps if m["step"] == "thanks"}
    assert [thanks[n]["body"] for n in to] == ["Thanks P0", "Thanks P1", "Thanks P2"]
    started = datetime.fromisoformat(view["started_at"])
    for m in steps:
        anchor = m["created_at"] if m["step"] == "thanks" else started
        assert m["due_at"] == anchor + timedelta(seconds=3600 if m["step"] == "thanks" else 86400)
        assert m["tags"]["sequence_id"] == str(sequence_id) and m["tags"]["campaign_id"] == str(view["id"])
        assert datetime.fromisoformat(m["anchors"]["campaign_start"]) == started
    enrolment = api.get(f"/v1/enrolments/{steps[0]['tags']['enrolment_id']}", headers=workspace["auth"]).get_json()
    assert {s["step"]: s["status"] for s in enrolment["steps"]} == {"thanks": "scheduled", "survey": "scheduled",
                                                                    "too_late": "skipped"}

    # A page added to the running campaign is enrolled too
    added = api.post(f"/v1/campaigns/{view['id']}/recipients", json={"recipients": [{"to": numbers(1, 9)[0],
                     "variables": {"first_name": "Late"}}]}, headers=workspace["auth"])
    assert added.status_code == 200, added.get_json()
    assert len(step_messages(view["id"])) == 8

    cancelled = api.post(f"/v1/campaigns/{view['id']}/cancel", headers=workspace["auth"])
    assert cancelled.status_code == 200
    assert {m["status"] for m in step_messages(view["id"])} == {"cancelled"}
    with transaction():
        assert {r[0] for r in fetch("SELECT DISTINCT status FROM enrolment WHERE sequence_id = %s", (sequence_id,))} == {"unenrolled"}


def test_a_scheduled_drafts_staged_recipients_are_enrolled_at_its_send_time(api, workspace):
    sequence_id = sequence(api, workspace, [{"name": "next_day", "offset_seconds": 86400, "body": "Day two"}])
    draft = create(api, workspace, sequence_id=sequence_id, recipients=[{"to": n} for n in numbers(4)]).get_json()
    assert step_messages(draft["id"]) == []  # a draft enrols nobody yet
    later = (datetime.now(UTC) + timedelta(hours=5)).replace(microsecond=0)
    started = api.post(f"/v1/campaigns/{draft['id']}/start", json={"send_at": later.isoformat()}, headers=workspace["auth"])
    assert started.status_code == 200, started.get_json()
    steps = step_messages(draft["id"])
    assert len(steps) == 4 and {m["due_at"] for m in steps} == {later + timedelta(days=1)}
    assert {m["created_at"] for m in steps} == {later}  # the enrolment is made at the campaign's send time


def test_a_sequence_the_campaign_cannot_feed_is_refused_naming_the_field(api, workspace):
    foreign = sequence(api, workspace, [{"name": "at_event", "anchor": "event_start", "body": "Now"}], name="event")
    refused = create(api, workspace, sequence_id=foreign)
    assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "sequence_id"
    assert create(api, workspace, sequence_id=987654).get_json()["error"]["field"] == "sequence_id"
    sms = sequence(api, workspace, FOLLOW_UP[:1], name="sms")
    email = api.post("/v1/campaigns", json={"name": "Mail", "channel": "email", "subject": "S", "body": "B",
                                            "sequence_id": sms}, headers=workspace["auth"])
    assert email.status_code == 422 and email.get_json()["error"]["field"] == "sequence_id"
    missing = create(api, workspace, sequence_id=sms, recipients=[{"to": numbers(1)[0]}])
    assert missing.status_code == 422 and missing.get_json()["error"]["field"] == "recipients[0].variables"
    assert "first_name" in missing.get_json()["error"]["message"]


def test_a_paused_campaign_holds_its_sequences_steps_and_resume_sends_each_once(api, workspace, sandbox, broker):
    # Given a campaign whose sequence has a step due at once, paused before any worker ran
    sequence_id = sequence(api, workspace, [{"name": "now", "body": "Step for {first_name}"}])
    to = numbers(5)
    made = create(api, workspace, body="Campaign text", sequence_id=sequence_id, start=True,
                  recipients=[{"to": n, "variables": {"first_name": f"P{i}"}} for i, n in enumerate(to)]).get_json()
    assert api.post(f"/v1/campaigns/{made['id']}/pause", headers=workspace["auth"]).status_code == 200
    steps = {m["id"] for m in step_messages(made["id"])}
    assert len(steps) == 5

    def routed_steps() -> bool:
        with transaction():
            return fetch("SELECT count(*) FROM message WHERE id = ANY(%s) AND status = 'routed'", (sorted(steps),))[0][0] == 5

    with running_workers(broker):
        # When the steps fall due and reach the sender while it is paused
        assert reconciler.promote_scheduled(30.0) == 5
        wait_for(routed_steps, what="every step routed and held")
        # Then none is sent, and the reconciler does not re-drive the held steps
        assert sandbox.messages() == []
        with transaction():
            fetch("UPDATE message SET status_changed_at = now() - interval '1 hour' WHERE id = ANY(%s)", (sorted(steps),))
        assert reconciler.redrive_stuck(1.0, 3) == {}
        # And once resumed, every recipient gets the campaign's message and its step, once each
        assert api.post(f"/v1/campaigns/{made['id']}/resume", headers=workspace["auth"]).status_code == 200
        wait_for(lambda: len(sandbox.messages()) == 10, what="campaign and steps sent")
    assert Counter((m["to"], m["body"]) for m in sandbox.messages()) == Counter(
        [(n, "Campaign text") for n in to] + [(n, f"Step for P{i}") for i, n in enumerate(to)])
    progress = api.get(f"/v1/campaigns/{made['id']}", headers=workspace["auth"]).get_json()["progress"]
    assert progress["total"] == 5 and progress["pending"] + progress["processing"] + progress["sent"] + progress["delivered"] == 5
