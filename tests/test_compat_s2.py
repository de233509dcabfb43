"""S2, the Trigger.dev SMS scheduler's routes (``/api/trigger/*``), through real processes: gunicorn
ingest, the workers, the scheduler and the sandbox as Twilio.

A delayed job is sent when its delay is up and job-status follows it to delivered; a cancelled one
is never sent. The document's example numbers (+1234567890 from +1987654321), which /v1 refuses,
are accepted and then failed by processing without reaching the provider, as the old scheduler's
Twilio call failed them. Refusals come back as ``{"success": false, "error", "code", "field"}``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests

from services.local.stack import Stack, private_env
from tests.support import wait_for

NUMBER = "+15005550006"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    env = private_env(tmp_path_factory.mktemp("compat_s2"), 16500 + os.getpid() % 3000, POSTROOM_API_WORKERS="1")
    with Stack(env=env) as running:
        running.key = running.start()  # type: ignore[attr-defined]
        made = call(running, "PATCH", "/v1/workspace/settings", json={"compat_identities": ["ws_123"]})
        assert made.status_code == 200, made.text
        yield running


def call(stack: Stack, method: str, path: str, **kwargs) -> requests.Response:
    key = {"Authorization": f"Bearer {stack.key}"} if path.startswith("/v1/") else {"x-api-key": stack.key}  # type: ignore[attr-defined]
    return requests.request(method, f"http://127.0.0.1:{stack.cfg.postroom_api_port}{path}", headers=key, timeout=10, **kwargs)


def received(stack: Stack, body: str) -> list[dict]:
    messages = requests.get(f"{stack.cfg.sandbox_url}/sandbox/messages", timeout=10).json()["messages"]
    return [m for m in messages if m.get("body") == body]


def job(stack: Stack, job_id: str) -> dict:
    answer = call(stack, "GET", "/api/trigger/job-status", params={"jobId": job_id, "workspaceId": "ws_123"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["success"] is True
    return answer.json()["data"]


def test_a_delayed_job_is_sent_when_its_delay_is_up_and_job_status_follows_it(stack):
    body = f"delayed {time.time()}"
    asked = datetime.now(UTC)
    made = call(stack, "POST", "/api/trigger/schedule-delay",
                json={"to": NUMBER, "body": body, "workspaceId": "ws_123", "delayMinutes": 0.05})
    assert made.status_code == 200, made.text
    data = made.json()["data"]
    assert made.json()["success"] is True and data["status"] == "scheduled" and data["jobId"].startswith("job_")
    due = datetime.fromisoformat(data["scheduledTime"])
    assert timedelta(seconds=2) <= due - asked <= timedelta(seconds=4)
    assert job(stack, data["jobId"])["status"] == "scheduled"

    sent = wait_for(lambda: received(stack, body), timeout=20, what="the delayed SMS at the sandbox")
    at = datetime.fromisoformat(sent[0]["received_at"])
    assert timedelta(seconds=2) <= at - asked <= timedelta(seconds=8), (asked, at)  # about 3 s later
    final = wait_for(lambda: (j := job(stack, data["jobId"]))["messageStatus"] == "delivered" and j, timeout=20,
                     what="job-status delivered")
    assert final["status"] == "completed" and final["completedTime"] is not None
    assert datetime.fromisoformat(final["scheduledTime"]) == due
    assert len(received(stack, body)) == 1


def test_a_job_cancelled_before_its_time_is_never_sent(stack):
    body = f"cancelled {time.time()}"
    made = call(stack, "POST", "/api/trigger/schedule-delay",
                json={"to": NUMBER, "body": body, "workspaceId": "ws_123", "delayMinutes": 0.05})
    job_id = made.json()["data"]["jobId"]
    cancelled = call(stack, "POST", "/api/trigger/cancel-job", json={"jobId": job_id, "workspaceId": "ws_123"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"success": True, "data": {"jobId": job_id, "status": "cancelled"}}
    time.sleep(6)  # well past its time (3 s)
    assert received(stack, body) == []
    data = job(stack, job_id)
    assert data["status"] == "cancelled" and data["messageStatus"] == "cancelled" and data["completedTime"] is not None
    again = call(stack, "POST", "/api/trigger/cancel-job", json={"jobId": job_id})
    assert again.status_code == 200  # cancelled before: the same answer


def test_a_sent_job_cannot_be_cancelled(stack):
    body = f"sent at once {time.time()}"
    made = call(stack, "POST", "/api/trigger/send-sms", json={"to": NUMBER, "body": body, "workspaceId": "ws_123"})
    assert made.status_code == 200 and made.json()["data"]["status"] == "processing", made.text
    job_id = made.json()["data"]["jobId"]
    assert made.json()["data"]["messageId"] == "msg_" + job_id.removeprefix("job_")
    wait_for(lambda: job(stack, job_id)["status"] == "completed", timeout=20, what="sent")
    refused = call(stack, "POST", "/api/trigger/cancel-job", json={"jobId": job_id, "workspaceId": "ws_123"})
    assert refused.status_code == 409
    assert refused.json()["success"] is False and refused.json()["code"] == "not_cancellable"


def test_the_documents_example_numbers_are_accepted_then_failed_before_any_provider(stack):
    body = f"example numbers {time.time()}"
    example = {"to": "+1234567890", "body": body, "workspaceId": "ws_123", "fromNumber": "+1987654321"}
    refused = call(stack, "POST", "/v1/messages", json={"channel": "sms", "to": example["to"], "body": body})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "to"  # /v1 keeps refusing it

    made = call(stack, "POST", "/api/trigger/send-sms", json=example)
    assert made.status_code == 200, made.text
    data = made.json()["data"]
    assert data["status"] == "processing" and data["fromNumber"] == "+1987654321"
    failed = wait_for(lambda: (j := job(stack, data["jobId"]))["status"] == "failed" and j, timeout=20, what="failed")
    assert failed["errorCode"] == "invalid_number" and failed["messageStatus"] == "failed"
    view = call(stack, "GET", f"/v1/messages/{data['jobId'].removeprefix('job_')}").json()
    assert [e["status"] for e in view["events"]] == ["accepted", "failed"]  # never routed, never sending
    assert "sending" not in [e["status"] for e in view["events"]]
    assert received(stack, body) == []


def test_a_sender_that_is_not_the_workspaces_fails_the_job_with_bad_sender(stack):
    body = f"foreign sender {time.time()}"
    made = call(stack, "POST", "/api/trigger/send-sms", json={"to": NUMBER, "body": body, "fromNumber": "+14155550100"})
    assert made.status_code == 200, made.text
    failed = wait_for(lambda: (j := job(stack, made.json()["data"]["jobId"]))["status"] == "failed" and j, timeout=20,
                      what="failed")
    assert failed["errorCode"] == "bad_sender"
    assert received(stack, body) == []


def test_a_job_until_a_time_answers_in_the_callers_offset(stack):
    asked = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    written = asked.astimezone(timezone(timedelta(hours=10))).isoformat()
    assert written.endswith("+10:00")
    made = call(stack, "POST", "/api/trigger/schedule-until",
                json={"to": NUMBER, "body": "later", "workspaceId": "ws_123", "scheduledTime": written})
    assert made.status_code == 200, made.text
    data = made.json()["data"]
    assert data["status"] == "scheduled" and data["scheduledTime"] == written
    status = job(stack, data["jobId"])
    assert status["scheduledTime"] == written and status["messageStatus"] == "queued" and status["completedTime"] is None
    assert call(stack, "POST", "/api/trigger/cancel-job", json={"jobId": data["jobId"]}).status_code == 200


@pytest.mark.parametrize(("path", "body", "status", "field"), [
    ("/api/trigger/schedule-delay", {"to": NUMBER, "body": "x"}, 422, "delayMinutes"),
    ("/api/trigger/schedule-delay", {"to": NUMBER, "body": "x", "delayMinutes": -1}, 422, "delayMinutes"),
    ("/api/trigger/schedule-delay", {"to": NUMBER, "body": "x", "delayMinutes": 5_000_000}, 422, "delayMinutes"),
    ("/api/trigger/schedule-until", {"to": NUMBER, "body": "x", "scheduledTime": "2030-05-11T16:00:00"}, 422,
     "scheduledTime"),
    ("/api/trigger/send-sms", {"body": "x"}, 422, "to"),
    ("/api/trigger/send-sms", {"to": NUMBER, "body": "x", "mediaUrl": "not a url"}, 422, "mediaUrl"),
    ("/api/trigger/send-sms", {"to": NUMBER, "body": "x", "workspaceId": "ws_other"}, 403, "workspaceId"),
    ("/api/trigger/cancel-job", {"jobId": "job_xyz"}, 404, "jobId"),
    ("/api/trigger/cancel-job", {"jobId": "job_999999999"}, 404, "jobId"),
])
def test_bad_input_is_refused_in_the_compat_shape_naming_the_field(stack, path, body, status, field):
    answer = call(stack, "POST", path, json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["success"] is False and answer.json()["field"] == field
    assert isinstance(answer.json()["error"], str) and answer.json()["code"]


def test_job_status_refuses_unknown_jobs_and_other_workspaces(stack):
    assert call(stack, "GET", "/api/trigger/job-status", params={"jobId": "job_999999999"}).status_code == 404
    assert call(stack, "GET", "/api/trigger/job-status").json()["field"] == "jobId"
    other = call(stack, "GET", "/api/trigger/job-status", params={"jobId": "job_1", "workspaceId": "ws_other"})
    assert other.status_code == 403 and other.json()["code"] == "identity_mismatch"
    keyless = requests.get(f"http://127.0.0.1:{stack.cfg.postroom_api_port}/api/trigger/job-status",
                           params={"jobId": "job_1"}, timeout=10)
    assert keyless.status_code == 401 and keyless.json()["success"] is False
