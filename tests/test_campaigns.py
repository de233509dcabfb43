"""Campaigns: created with recipients checked one by one, fanned out set-wise, sent once per
recipient through pause, resume and cancel, with live counters that always add up."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from common import campaigns
from common.db.connection import fetch, fetch_dicts, transaction
from services.scheduler import reconciler
from tests.support import running_workers, wait_for

COUNTS = ("pending", "processing", "sent", "delivered", "read", "failed", "suppressed", "cancelled")


def numbers(n: int, start: int = 0) -> list[str]:
    """Distinct valid numbers in a range NANPA keeps for fiction (555-0100 to 555-0199 per area code)."""
    return [f"+1{201 + (start + i) // 100}55501{(start + i) % 100:02d}" for i in range(n)]


def create(api, workspace: dict, **fields: Any) -> Any:
    return api.post("/v1/campaigns", json={"name": "December", "channel": "sms", **fields}, headers=workspace["auth"])


def progress(api, workspace: dict, campaign_id: int) -> dict[str, Any]:
    response = api.get(f"/v1/campaigns/{campaign_id}", headers=workspace["auth"])
    assert response.status_code == 200, response.get_json()
    view = response.get_json()
    p = view["progress"]
    assert all(p[name] >= 0 for name in COUNTS), p
    assert sum(p[name] for name in COUNTS) == p["total"], p  # the counts add up at every read
    return view


def statuses(campaign_id: int) -> Counter[str]:
    with transaction():
        return Counter(dict(fetch("SELECT status, count(*) FROM message WHERE campaign_id = %s GROUP BY status", (campaign_id,))))


def tick_until(api, workspace: dict, campaign_id: int, status: str, timeout: float = 30.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        campaigns.tick()
        view = progress(api, workspace, campaign_id)
        return view if view["status"] == status else None
    return wait_for(done, timeout=timeout, interval=0.2, what=f"campaign {campaign_id} {status}")


def template(api, workspace: dict, text: str) -> int:
    response = api.post("/v1/templates", json={"name": "offer", "channel": "sms", "text": text}, headers=workspace["auth"])
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def test_a_campaign_sends_each_recipient_its_rendered_message_once_and_completes(api, workspace, sandbox, broker):
    # Given a template and 60 recipients with their variables
    template_id = template(api, workspace, "Hi {{ first_name }}, {{ offer }} today")
    to = numbers(60)
    recipients = [{"to": n, "variables": {"first_name": f"P{i}", "offer": "20% off"}} for i, n in enumerate(to)]
    # When the campaign is created and started in one request, and the workers run
    response = create(api, workspace, template_id=template_id, recipients=recipients, start=True)
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert created["status"] == "running" and created["priority"] == "bulk" and created["progress"]["total"] == 60
    with running_workers(broker):
        view = tick_until(api, workspace, created["id"], "completed")
    # Then every recipient got its own text exactly once, and the counters say so
    received = Counter(m["to"] for m in sandbox.messages())
    assert received == Counter(to)
    assert {m["body"] for m in sandbox.messages(to=to[7])} == {"Hi P7, 20% off today"}
    assert view["progress"]["pending"] == 0 and view["progress"]["percent_done"] == 100.0
    assert view["progress"]["sent"] + view["progress"]["delivered"] == 60
    with transaction():
        lanes = {r[0] for r in fetch("SELECT DISTINCT priority FROM message WHERE campaign_id = %s", (created["id"],))}
    assert lanes == {"bulk"}


def test_a_missing_variable_is_refused_at_creation_naming_the_recipient(api, workspace):
    template_id = template(api, workspace, "Hi {{ first_name }}, code {{ code }}")
    recipients = [{"to": numbers(1)[0], "variables": {"first_name": "A", "code": "1"}},
                  {"to": numbers(2)[1], "variables": {"first_name": "B"}}]
    response = create(api, workspace, template_id=template_id, recipients=recipients)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["field"] == "recipients[1].variables"
    assert "code" in error["message"] and numbers(2)[1] in error["message"]
    with transaction():
        assert fetch("SELECT count(*) FROM campaign")[0][0] == 0  # nothing was stored


def test_a_bad_address_and_a_missing_body_are_422_naming_the_field(api, workspace):
    bad = create(api, workspace, body="Hi", recipients=[{"to": numbers(1)[0]}, {"to": "not a number"}])
    assert bad.status_code == 422 and bad.get_json()["error"]["field"] == "recipients[1].to"
    both = create(api, workspace, body="Hi", recipients=[{"to": numbers(1)[0], "contact_id": 3}])
    assert both.status_code == 422 and both.get_json()["error"]["field"] == "recipients[0].to"
    empty = create(api, workspace, recipients=[{"to": numbers(1)[0]}])
    assert empty.status_code == 422 and empty.get_json()["error"]["field"] == "body"


def test_pause_stops_claims_at_once_and_resume_sends_the_rest_exactly_once(api, workspace, sandbox, broker):
    # Given a started campaign of 300, paused before any worker ran
    to = numbers(300)
    created = create(api, workspace, body="Winter sale", recipients=[{"to": n} for n in to], start=True).get_json()
    paused = api.post(f"/v1/campaigns/{created['id']}/pause", headers=workspace["auth"])
    assert paused.status_code == 200 and paused.get_json()["status"] == "paused"
    # When the workers run while it is paused
    with running_workers(broker):
        wait_for(lambda: statuses(created["id"]).get("routed") == 300, what="every message routed and held")
        # Then nothing reaches the provider, and the reconciler does not re-drive the held messages
        assert sandbox.messages() == []
        with transaction():
            fetch("UPDATE message SET status_changed_at = now() - interval '1 hour' WHERE campaign_id = %s", (created["id"],))
        assert reconciler.redrive_stuck(1.0, 3) == {}
        # And when it is resumed, paused again mid-way and resumed again
        assert api.post(f"/v1/campaigns/{created['id']}/resume", headers=workspace["auth"]).get_json()["status"] == "running"
        wait_for(lambda: len(sandbox.messages()) >= 1, what="sending resumed")
        assert api.post(f"/v1/campaigns/{created['id']}/pause", headers=workspace["auth"]).status_code == 200
        progress(api, workspace, created["id"])
        assert api.post(f"/v1/campaigns/{created['id']}/resume", headers=workspace["auth"]).status_code == 200
        view = tick_until(api, workspace, created["id"], "completed")
    # Then every recipient got it exactly once
    assert Counter(m["to"] for m in sandbox.messages()) == Counter(to)
    assert view["progress"]["sent"] + view["progress"]["delivered"] == 300


def test_cancel_stops_a_paused_campaign_and_counts_what_was_never_sent(api, workspace, sandbox, broker):
    created = create(api, workspace, body="Hi", recipients=[{"to": n} for n in numbers(40)], start=True).get_json()
    assert api.post(f"/v1/campaigns/{created['id']}/pause", headers=workspace["auth"]).status_code == 200
    cancelled = api.post(f"/v1/campaigns/{created['id']}/cancel", headers=workspace["auth"])
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    assert cancelled.get_json()["progress"]["cancelled"] == 40
    with running_workers(broker):
        resumed = api.post(f"/v1/campaigns/{created['id']}/resume", headers=workspace["auth"])
        assert resumed.status_code == 409 and resumed.get_json()["error"]["field"] == "status"
    assert sandbox.messages() == [] and statuses(created["id"]) == Counter({"cancelled": 40})
    # A draft's staged recipients are cancelled too, and counted
    draft = create(api, workspace, body="Hi", recipients=[{"to": n} for n in numbers(5)]).get_json()
    assert draft["status"] == "draft" and draft["progress"]["pending"] == 5
    gone = api.post(f"/v1/campaigns/{draft['id']}/cancel", headers=workspace["auth"]).get_json()
    assert gone["progress"]["cancelled"] == 5 and gone["progress"]["pending"] == 0


def test_recipients_come_in_json_and_csv_pages_and_a_bad_line_is_named(api, workspace, sandbox, broker):
    template_id = template(api, workspace, "Hello {{ name }}")
    created = create(api, workspace, template_id=template_id).get_json()
    to = numbers(6)
    page = api.post(f"/v1/campaigns/{created['id']}/recipients",
                    json={"recipients": [{"to": n, "variables": {"name": f"J{i}"}} for i, n in enumerate(to[:3])]},
                    headers=workspace["auth"])
    assert page.status_code == 200 and page.get_json() == {"added": 3, "total": 3, "status": "draft"}
    csv_page = "to,name\n" + "".join(f"{n},C{i}\n" for i, n in enumerate(to[3:]))
    added = api.post(f"/v1/campaigns/{created['id']}/recipients/csv", data=csv_page.encode(),
                     headers={**workspace["auth"], "Content-Type": "text/csv"})
    assert added.status_code == 200 and added.get_json()["total"] == 6
    bad = api.post(f"/v1/campaigns/{created['id']}/recipients/csv", data=b"to,name\n+15005550006\n",
                   headers={**workspace["auth"], "Content-Type": "text/csv"})
    assert bad.status_code == 422 and "line 2" in bad.get_json()["error"]["message"]
    missing = api.post(f"/v1/campaigns/{created['id']}/recipients/csv", data=f"to\n{numbers(7)[6]}\n".encode(),
                       headers={**workspace["auth"], "Content-Type": "text/csv"})
    assert missing.status_code == 422 and "name" in missing.get_json()["error"]["message"]
    started = api.post(f"/v1/campaigns/{created['id']}/start", headers=workspace["auth"])
    assert started.status_code == 200 and started.get_json()["status"] == "running"
    again = api.post(f"/v1/campaigns/{created['id']}/start", headers=workspace["auth"])
    assert again.status_code == 409
    with running_workers(broker):
        tick_until(api, workspace, created["id"], "completed")
    assert {m["body"] for m in sandbox.messages()} == {"Hello J0", "Hello J1", "Hello J2", "Hello C0", "Hello C1", "Hello C2"}


def test_counts_add_up_at_every_poll_while_the_campaign_runs(api, workspace, broker):
    created = create(api, workspace, body="Hi", recipients=[{"to": n} for n in numbers(500)], start=True).get_json()
    seen = []
    with running_workers(broker):
        def finished() -> bool:
            campaigns.tick()
            view = progress(api, workspace, created["id"])  # asserts the counts add up
            seen.append(view["progress"])
            return view["status"] == "completed"
        wait_for(finished, timeout=60, interval=0.01, what="campaign completed")
        assert len(seen) > 3 and seen[-1]["pending"] == 0
        # once the receipts are in, the counters agree with a scan of the messages
        wait_for(lambda: statuses(created["id"]) == Counter({"delivered": 500}), what="every receipt applied")
    final = progress(api, workspace, created["id"])["progress"]
    assert (final["delivered"], final["sent"], final["processing"]) == (500, 0, 0)


def test_a_scheduled_campaign_waits_for_its_time_and_the_counters_outlive_its_messages(api, workspace):
    created = create(api, workspace, body="Hi", recipients=[{"to": n} for n in numbers(10)],
                     send_at="2099-01-01T09:00:00Z", start=True)
    assert created.status_code == 422  # beyond the scheduling horizon
    created = create(api, workspace, body="Hi", recipients=[{"to": n} for n in numbers(10)], delay_seconds=60, start=True)
    assert created.status_code == 422 and created.get_json()["error"]["field"] == "delay_seconds"
    later = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    response = create(api, workspace, body="Hi", recipients=[{"to": n} for n in numbers(10)],
                      send_at=later.isoformat(), start=True)
    assert response.status_code == 201, response.get_json()
    view = response.get_json()
    assert view["status"] == "scheduled" and statuses(view["id"]) == Counter({"scheduled": 10})
    with transaction():
        due = {r["due_at"].isoformat() for r in fetch_dicts("SELECT due_at FROM message WHERE campaign_id = %s", (view["id"],))}
        assert due == {later.isoformat()}
        fetch("DELETE FROM message WHERE campaign_id = %s", (view["id"],))  # what retention does, years later
    assert progress(api, workspace, view["id"])["progress"]["pending"] == 10


def test_single_sends_default_to_the_normal_lane_and_numbers_map_onto_lanes(api, workspace):
    def lane(**fields: Any) -> str:
        response = api.post("/v1/messages", json={"channel": "sms", "to": numbers(1)[0], "body": "x", **fields},
                            headers=workspace["auth"])
        assert response.status_code == 202, response.get_json()
        return response.get_json()["priority"]
    assert lane() == "normal"
    assert [lane(priority=p) for p in (1, 2, 3, 7, 8, 10)] == ["urgent", "urgent", "normal", "normal", "bulk", "bulk"]
    refused = api.post("/v1/messages", json={"channel": "sms", "to": numbers(1)[0], "body": "x", "priority": 11},
                       headers=workspace["auth"])
    assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "priority"


def test_a_campaign_of_another_workspace_is_not_found(api, workspace):
    from common import apikeys

    created = create(api, workspace, body="Hi", recipients=[{"to": numbers(1)[0]}]).get_json()
    with transaction():
        other = apikeys.issue(apikeys.create_workspace("other"))
    auth = {"Authorization": f"Bearer {other}"}
    assert api.get(f"/v1/campaigns/{created['id']}", headers=auth).status_code == 404
    assert api.post(f"/v1/campaigns/{created['id']}/start", headers=auth).status_code == 404
    assert api.get("/v1/campaigns", headers=auth).get_json()["campaigns"] == []


def test_contacts_as_recipients_give_their_address_and_attributes(api, workspace, sandbox, broker):
    contact = api.post("/v1/contacts", json={"name": "Ada", "addresses": {"sms": numbers(1)[0]},
                                             "attributes": {"tier": "gold"}}, headers=workspace["auth"])
    assert contact.status_code == 201, contact.get_json()
    template_id = template(api, workspace, "Hi {{ name }}, your {{ tier }} offer")
    unknown = create(api, workspace, template_id=template_id, recipients=[{"contact_id": 999}])
    assert unknown.status_code == 422 and unknown.get_json()["error"]["field"] == "recipients[0].contact_id"
    created = create(api, workspace, template_id=template_id, start=True,
                     recipients=[{"contact_id": contact.get_json()["id"]}]).get_json()
    with running_workers(broker):
        tick_until(api, workspace, created["id"], "completed")
    assert [m["body"] for m in sandbox.messages(to=numbers(1)[0])] == ["Hi Ada, your gold offer"]


def test_postroom_campaign_send_starts_a_campaign_from_csv_and_watches_it_finish(workspace, ingest_url, sandbox, broker,
                                                                                 tmp_path, capsys):
    import threading

    from services import cli

    to = numbers(20)
    path = tmp_path / "winter.csv"
    path.write_text("to,first_name\n" + "".join(f"{n},P{i}\n" for i, n in enumerate(to)))
    with transaction():
        template_id = fetch("INSERT INTO template (workspace_id, name, channel, text, variables) VALUES"
                            " (%s, 'cli', 'sms', 'Hi {{ first_name }}', ARRAY['first_name']) RETURNING id", (workspace["id"],))[0][0]
    stop = threading.Event()

    def scheduler() -> None:  # completes the campaign once nothing waits, as the scheduler does
        while not stop.wait(0.2):
            campaigns.tick()
    ticking = threading.Thread(target=scheduler, daemon=True)
    with running_workers(broker):
        ticking.start()
        try:
            cli.main(["campaign", "send", str(path), "--template", str(template_id), "--api", ingest_url,
                      "--key", workspace["key"], "--every", "0.2"])
        finally:
            stop.set()
            ticking.join()
    out, err = capsys.readouterr()
    assert "20 recipients" in err and "completed" in out
    assert Counter(m["to"] for m in sandbox.messages()) == Counter(to)
    # watching a finished campaign prints its final counts and returns
    campaign_id = int(out.split()[1])
    cli.main(["campaign", "watch", str(campaign_id), "--api", ingest_url, "--key", workspace["key"]])
    assert "completed" in capsys.readouterr().out


def test_a_page_added_to_a_running_campaign_is_sent_at_once_and_counted(api, workspace, sandbox, broker):
    to = numbers(8)
    created = create(api, workspace, body="Hi", recipients=[{"to": n} for n in to[:5]], start=True).get_json()
    page = api.post(f"/v1/campaigns/{created['id']}/recipients", json={"recipients": [{"to": n} for n in to[5:]]},
                    headers=workspace["auth"])
    assert page.status_code == 200 and page.get_json() == {"added": 3, "total": 8, "status": "running"}
    with transaction():
        assert fetch("SELECT count(*) FROM campaign_recipient")[0][0] == 0  # a started campaign stages nothing
    with running_workers(broker):
        view = tick_until(api, workspace, created["id"], "completed")
    assert Counter(m["to"] for m in sandbox.messages()) == Counter(to) and view["progress"]["total"] == 8


def test_a_campaign_messages_history_shows_every_step_though_internal_ones_write_no_row(api, workspace, sandbox, broker):
    created = create(api, workspace, body="Hi", recipients=[{"to": numbers(1)[0]}], start=True).get_json()
    with running_workers(broker):
        tick_until(api, workspace, created["id"], "completed")
        with transaction():
            message_id = fetch("SELECT id FROM message WHERE campaign_id = %s", (created["id"],))[0][0]
        wait_for(lambda: api.get(f"/v1/messages/{message_id}", headers=workspace["auth"]).get_json()["status"] == "delivered",
                 what="delivered")
    shown = api.get(f"/v1/messages/{message_id}", headers=workspace["auth"]).get_json()["events"]
    assert [e["status"] for e in shown] == ["accepted", "queued", "routed", "sending", "sent", "delivered"]
    assert all(e["at"] for e in shown) and [e["at"] for e in shown] == sorted(e["at"] for e in shown)
    with transaction():
        written = [r[0] for r in fetch("SELECT status FROM message_event WHERE message_id = %s ORDER BY id", (message_id,))]
    assert written == ["sent", "delivered"]  # the plain internal steps live on the row
