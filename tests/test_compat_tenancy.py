"""Tenancy of the compatibility routes (issue 12): a caller with its own key and no identity field
never reaches another workspace's jobs, event messages, broadcasts, contacts or campaigns, even by
their real ids. Each is answered as if the id named nothing (404, or a count of 0 for S3's calls
that act on whatever matches), and the other workspace's rows stay as they were. Each test also
shows the ids are real: the owner's own key reaches them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from common.db.connection import fetch, transaction

NUMBER = "+15005550006"


@pytest.fixture
def tenants(workspace: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """My key's headers, and another workspace ("other") with its id and key headers."""
    from common import apikeys

    with transaction():
        other = apikeys.create_workspace("other")
        key = apikeys.issue(other)
    return workspace["auth"], {"id": other, "auth": {"Authorization": f"Bearer {key}"}}


def later(seconds: int = 3600) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="seconds").replace("+00:00", "Z")


def message_row(message_id: int) -> tuple[Any, ...]:
    """What an action on the message would change: its workspace, status and due time."""
    with transaction():
        return tuple(fetch("SELECT workspace_id, status, due_at FROM message WHERE id = %s", (message_id,))[0])


def messages_of(workspace_id: int) -> int:
    with transaction():
        return int(fetch("SELECT count(*) FROM message WHERE workspace_id = %s", (workspace_id,))[0][0])


def assert_not_found(response: Any, field: str) -> None:
    body = response.get_json()
    assert response.status_code == 404, body
    assert body["success"] is False and body["code"] == "not_found" and body["field"] == field, body


def test_s2_another_workspaces_job_is_404_to_job_status_and_cancel_and_stays_scheduled(api, tenants):
    mine, other = tenants
    # Given a job of the other workspace, due in an hour
    made = api.post("/api/trigger/schedule-delay", json={"to": NUMBER, "body": "theirs", "delayMinutes": 60},
                    headers=other["auth"])
    assert made.status_code == 200, made.get_json()
    job = made.get_json()["data"]["jobId"]
    before = message_row(int(job.removeprefix("job_")))
    assert before[:2] == (other["id"], "scheduled")
    # When my key reads and cancels it by its real jobId
    status = api.get("/api/trigger/job-status", query_string={"jobId": job}, headers=mine)
    cancel = api.post("/api/trigger/cancel-job", json={"jobId": job}, headers=mine)
    # Then both are 404, as for a job that does not exist, and the job is as it was
    assert_not_found(status, "jobId")
    assert_not_found(cancel, "jobId")
    assert message_row(int(job.removeprefix("job_"))) == before
    # While its own workspace reads it
    own = api.get("/api/trigger/job-status", query_string={"jobId": job}, headers=other["auth"])
    assert own.status_code == 200 and own.get_json()["data"]["status"] == "scheduled"


def test_s3_cancel_clear_and_reschedule_by_another_workspaces_ids_count_0_and_leave_theirs(api, tenants):
    mine, other = tenants
    # Given an event message of the other workspace: id 7, event 70, contractor 700
    theirs = {"id": 7, "event_id": 70, "contractor_id": 700, "message_type": "speaker_alert", "scheduled_time": later(),
              "message_content": "theirs", "phone": NUMBER}
    made = api.post("/api/event-messages", json=theirs, headers=other["auth"])
    assert made.status_code == 200, made.get_json()
    queued = made.get_json()["queueMessageId"]
    before = message_row(queued)
    assert before[:2] == (other["id"], "scheduled")
    # When my key cancels, clears and reschedules by those ids
    calls: list[tuple[str, dict[str, Any] | None]] = [
        ("/api/event-messages/7/cancel", None),
        ("/api/event-messages/7/reschedule", {"new_time": later(7200)}),
        ("/api/events/70/messages/clear", None),
        ("/api/events/70/contractors/700/messages/clear", None),
        ("/api/events/70/messages/reschedule", {"shift_seconds": 600}),
        ("/api/events/70/messages/reschedule", {"new_time": later(7200), "contractor_id": 700}),
    ]
    for path, body in calls:
        answer = api.post(path, json=body, headers=mine) if body is not None else api.post(path, headers=mine)
        # Then none of them finds anything
        assert answer.status_code == 200 and answer.get_json() == {"success": True, "count": 0}, (path, answer.get_json())
    # And their message is as it was; my upcoming list does not show it
    assert message_row(queued) == before
    upcoming = api.get("/api/event-messages/upcoming", headers=mine).get_json()
    assert upcoming["count"] == 0 and upcoming["messages"] == [], upcoming
    assert messages_of(other["id"]) == 1
    # While the same call with their own key cancels it
    assert api.post("/api/event-messages/7/cancel", headers=other["auth"]).get_json() == {"success": True, "count": 1}


def test_s0_another_workspaces_broadcast_and_contact_are_not_found_by_id_or_external_id(api, tenants):
    mine, other = tenants
    # Given a draft broadcast and a contact of the other workspace, each with an external id
    made = api.post("/v1/campaigns", json={"name": "theirs", "channel": "sms", "body": "theirs", "recipients": [{"to": NUMBER}],
                                           "external_id": "b-theirs"}, headers=other["auth"])
    assert made.status_code == 201, made.get_json()
    campaign = made.get_json()["id"]
    contact = api.post("/v1/contacts", json={"addresses": {"sms": NUMBER}, "external_id": "crm-9"}, headers=other["auth"])
    assert contact.status_code in (200, 201), contact.get_json()
    # When my key asks for the broadcast's status or queues it, by its postroom id or its external id
    for ref in (str(campaign), "b-theirs"):
        assert_not_found(api.get(f"/api/broadcasts/{ref}/status", headers=mine), "id")
        assert_not_found(api.post(f"/api/broadcasts/{ref}/queue", headers=mine), "id")
    # Then theirs is still a draft, and their own key finds it
    assert api.get(f"/v1/campaigns/{campaign}", headers=other["auth"]).get_json()["status"] == "draft"
    assert api.get("/api/broadcasts/b-theirs/status", headers=other["auth"]).get_json()["campaignId"] == campaign
    # And a message of mine to their contact (by external id or id) names no contact of mine
    for ref in ("crm-9", str(contact.get_json()["id"])):
        refused = api.post("/api/schedule-sms", json={"contactId": ref, "messageId": f"m-{ref}", "content": "x"}, headers=mine)
        body = refused.get_json()
        assert refused.status_code == 422 and body["field"] == "contactId", body
    assert messages_of(other["id"]) == 0


def test_s1_another_workspaces_campaign_id_is_404_to_queue_status_and_a_send_makes_my_own(api, tenants, workspace):
    mine, other = tenants
    # Given the other workspace's campaign 9
    send = {"campaignId": 9, "recipients": [NUMBER], "messageType": "text", "payload": {"text": {"body": "theirs"}}}
    made = api.post("/api/campaigns/send", json=send, headers=other["auth"])
    assert made.status_code == 200, made.get_json()
    theirs = made.get_json()["postroomCampaignId"]
    # When my key asks for its status, by their campaignId or its postroom id
    for ref in ("9", str(theirs)):
        # Then it is 404
        assert_not_found(api.get("/api/queue/status", query_string={"campaignId": ref}, headers=mine), "campaignId")
    # And a send of mine under the same campaignId and content is a campaign of my own; theirs keeps its one recipient
    own = api.post("/api/campaigns/send", json=send, headers=mine).get_json()
    assert own["success"] is True and own["postroomCampaignId"] != theirs and own["total"] == 1, own
    with transaction():
        rows = fetch("SELECT id, workspace_id, total FROM campaign ORDER BY id")
    assert rows == [(theirs, other["id"], 1), (own["postroomCampaignId"], workspace["id"], 1)]
    assert api.get("/api/queue/status", query_string={"campaignId": "9"}, headers=other["auth"]).get_json()[
        "campaign"]["total"] == 1
