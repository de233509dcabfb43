"""S0, the broadcast queue service's routes (``/api/schedule-*``, ``/api/broadcasts/*``), through
real processes: gunicorn ingest, the workers, the scheduler and the sandbox.

A QueueMessage reaches its contact, found by postroom id or by ``external_id``, or the address in
its metadata; its ``messageId`` is its idempotency key. A broadcast is a campaign found by id or
``external_id``: queueing it starts it (again: its current state), and its status is said in the
document's ``queue_status`` words. Contacts' ``external_id`` is set and read on /v1/contacts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests

from services.local.stack import Stack, private_env
from tests.support import wait_for

NUMBER = "+15005550006"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    env = private_env(tmp_path_factory.mktemp("compat_s0"), 16500 + (os.getpid() + 1500) % 3000, POSTROOM_API_WORKERS="1")
    with Stack(env=env) as running:
        running.key = running.start()  # type: ignore[attr-defined]
        made = call(running, "PATCH", "/v1/workspace/settings", json={"compat_identities": ["queue-ws"]})
        assert made.status_code == 200, made.text
        yield running


def call(stack: Stack, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, f"http://127.0.0.1:{stack.cfg.postroom_api_port}{path}",
                            headers={"Authorization": f"Bearer {stack.key}", **kwargs.pop("headers", {})}, timeout=10, **kwargs)  # type: ignore[attr-defined]


def received(stack: Stack, body: str) -> list[dict]:
    messages = requests.get(f"{stack.cfg.sandbox_url}/sandbox/messages", timeout=10).json()["messages"]
    return [m for m in messages if body in str(m.get("body") or m.get("text") or "")]


def message(stack: Stack, queue_message_id: str) -> dict:
    return call(stack, "GET", f"/v1/messages/{queue_message_id}").json()


def contact(stack: Stack, number: str, external_id: str) -> dict:
    made = call(stack, "POST", "/v1/contacts", json={"addresses": {"sms": number}, "external_id": external_id})
    assert made.status_code in (200, 201), made.text
    return made.json()


def test_a_contacts_external_id_is_set_found_unique_and_cleared(stack):
    made = contact(stack, "+15005550101", "crm-ext-1")
    assert made["external_id"] == "crm-ext-1"
    found = call(stack, "GET", "/v1/contacts", params={"external_id": "crm-ext-1"}).json()["data"]
    assert [c["id"] for c in found] == [made["id"]]
    taken = call(stack, "POST", "/v1/contacts", json={"addresses": {"sms": "+15005550102"}, "external_id": "crm-ext-1"})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "external_id_taken"
    assert call(stack, "GET", "/v1/contacts", params={"channel": "sms", "address": "+15005550102"}).json()["data"] == []
    cleared = call(stack, "PATCH", f"/v1/contacts/{made['id']}", json={"external_id": None})
    assert cleared.status_code == 200 and cleared.json()["external_id"] is None
    assert call(stack, "GET", "/v1/contacts", params={"external_id": "crm-ext-1"}).json()["data"] == []
    imported = call(stack, "POST", "/v1/contacts/import", json={"contacts": [
        {"addresses": {"sms": "+15005550103"}, "external_id": "crm-ext-2"}, {"addresses": {"sms": "+15005550104"}}]})
    assert imported.json()["created"] == 1 and imported.json()["errors"][0]["error"]["field"] == "external_id"


def test_schedule_sms_reaches_the_contact_named_by_external_id_and_message_id_is_the_key(stack):
    person = contact(stack, "+15005550111", "crm-111")
    body = f"s0 by external id {time.time()}"
    queued = {"contactId": "crm-111", "messageId": f"m-{time.time()}", "scheduledTime": "", "content": body,
              "metadata": {"broadcast_id": "b-7", "workspaceId": "queue-ws", "attempt": 1}}
    made = call(stack, "POST", "/api/schedule-sms", json=queued)
    assert made.status_code == 200, made.text
    answer = made.json()
    assert answer["success"] is True and answer["messageId"] == queued["messageId"]
    assert answer["status"] == "queued" and answer["scheduledTime"] is None
    view = message(stack, answer["queueMessageId"])
    assert view["to"] == person["addresses"]["sms"] and view["tags"] == {"compat": "s0", "broadcast_id": "b-7"}
    wait_for(lambda: received(stack, body), timeout=20, what="the SMS at the sandbox")

    again = call(stack, "POST", "/api/schedule-sms", json=queued)
    assert again.status_code == 200 and again.json()["queueMessageId"] == answer["queueMessageId"]
    wait_for(lambda: call(stack, "POST", "/api/schedule-sms", json=queued).json()["status"] == "completed", timeout=20,
             what="completed")
    assert len(received(stack, body)) == 1  # the repeats made no second message
    other = call(stack, "POST", "/api/schedule-sms", json={**queued, "content": "something else"})
    assert other.status_code == 409 and other.json()["success"] is False and other.json()["field"] == "messageId"


def test_a_later_scheduled_time_is_pending_and_a_postroom_contact_id_is_taken_too(stack):
    person = contact(stack, "+15005550112", "crm-112")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    made = call(stack, "POST", "/api/schedule-sms", json={
        "contactId": str(person["id"]), "messageId": f"later-{time.time()}", "scheduledTime": later, "content": "later",
        "metadata": {}})
    assert made.status_code == 200, made.text
    assert made.json()["status"] == "pending" and made.json()["scheduledTime"] is not None
    view = message(stack, made.json()["queueMessageId"])
    assert view["status"] == "scheduled" and view["to"] == "+15005550112"
    assert call(stack, "POST", f"/v1/messages/{view['id']}/cancel").status_code == 200
    status = call(stack, "POST", "/api/schedule-sms", json={
        "contactId": str(person["id"]), "messageId": "x", "scheduledTime": later, "content": "later", "metadata": {}})
    assert status.json()["status"] == "pending"  # another messageId: another message


def test_without_such_a_contact_the_metadata_address_is_used(stack):
    body = f"s0 email {time.time()}"
    made = call(stack, "POST", "/api/schedule-email", json={
        "contactId": "no-such-contact", "messageId": f"e-{time.time()}", "scheduledTime": "", "content": body,
        "metadata": {"email": "ada@example.com", "subject": "Hello from the queue"}},
        headers={"x-workspace-id": "queue-ws"})
    assert made.status_code == 200, made.text
    view = message(stack, made.json()["queueMessageId"])
    assert view["channel"] == "email" and view["to"] == "ada@example.com"
    assert view["content"]["subject"] == "Hello from the queue"
    wait_for(lambda: received(stack, body), timeout=20, what="the email at the sandbox")


@pytest.mark.parametrize(("path", "body", "headers", "status", "field"), [
    ("/api/schedule-sms", {"contactId": "nobody", "messageId": "a", "content": "x", "metadata": {}}, {}, 422, "contactId"),
    ("/api/schedule-sms", {"contactId": "nobody", "messageId": "a", "content": "x", "metadata": {"phone": "12"}}, {}, 422,
     "metadata.phone"),
    ("/api/schedule-sms", {"contactId": "nobody", "messageId": "a", "content": "x", "scheduledTime": "tomorrow",
                           "metadata": {"phone": NUMBER}}, {}, 422, "scheduledTime"),
    ("/api/schedule-sms", {"contactId": "nobody", "content": "x"}, {}, 422, "messageId"),
    ("/api/schedule-email", {"contactId": "nobody", "messageId": "a", "content": "x", "metadata": {"email": "nope"}}, {},
     422, "metadata.email"),
    ("/api/schedule-sms", {"contactId": "nobody", "messageId": "a", "content": "x", "metadata": {"phone": NUMBER}},
     {"x-workspace-id": "someone-else"}, 403, "workspaceId"),
    ("/api/schedule-sms", {"contactId": "nobody", "messageId": "a", "content": "x", "workspaceId": "someone-else",
                           "metadata": {"phone": NUMBER}}, {}, 403, "workspaceId"),
    ("/api/broadcasts/no-such-broadcast/queue", {}, {}, 404, "id"),
])
def test_bad_input_is_refused_in_the_compat_shape_naming_the_field(stack, path, body, headers, status, field):
    answer = call(stack, "POST", path, json=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.json()["success"] is False and answer.json()["field"] == field and answer.json()["code"]


def campaign(stack: Stack, external_id: str, body: str) -> dict:
    made = call(stack, "POST", "/v1/campaigns", json={"name": f"broadcast {external_id}", "channel": "sms", "body": body,
                                                      "recipients": [{"to": NUMBER}], "external_id": external_id})
    assert made.status_code == 201, made.text
    return made.json()


def test_queueing_a_broadcast_sends_it_and_its_status_reads_in_queue_status_words(stack):
    body = f"broadcast now {time.time()}"
    draft = campaign(stack, "bcast-now", body)
    status = call(stack, "GET", "/api/broadcasts/bcast-now/status").json()
    assert status["queue_status"] == "pending" and status["campaignId"] == draft["id"] and status["total"] == 1
    queued = requests.post(f"http://127.0.0.1:{stack.cfg.postroom_api_port}/api/broadcasts/bcast-now/queue",
                           headers={"x-api-key": stack.key}, timeout=10)  # no body at all, as the document allows
    assert queued.status_code == 200, queued.text
    assert queued.json()["queue_status"] in ("processing", "completed") and queued.json()["queued_at"] is not None
    done = wait_for(lambda: (s := call(stack, "GET", f"/api/broadcasts/{draft['id']}/status").json())["queue_status"]
                    == "completed" and s, timeout=30, what="the broadcast completed")
    assert done["counts"] == {"pending": 0, "processing": 0, "completed": 1, "failed": 0, "cancelled": 0}
    assert len(received(stack, body)) == 1
    again = call(stack, "POST", "/api/broadcasts/bcast-now/queue", json={})
    assert again.status_code == 409 and again.json()["success"] is False  # completed: not queued again


def test_a_broadcast_queued_for_later_waits_and_queueing_again_answers_its_state(stack):
    body = f"broadcast later {time.time()}"
    campaign(stack, "bcast-later", body)
    later = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    queued = call(stack, "POST", "/api/broadcasts/bcast-later/queue",
                  json={"scheduleTime": later.isoformat(), "workspaceId": "queue-ws"})
    assert queued.status_code == 200, queued.text
    assert queued.json()["queue_status"] == "queued" and queued.json()["queued_at"] is None
    assert datetime.fromisoformat(queued.json()["scheduled_time"]) == later
    again = call(stack, "POST", "/api/broadcasts/bcast-later/queue", json={})
    assert again.status_code == 200 and again.json()["queue_status"] == "queued"
    assert again.json()["counts"]["pending"] == 1
    cancelled = call(stack, "POST", f"/v1/campaigns/{queued.json()['campaignId']}/cancel")
    assert cancelled.status_code == 200
    status = call(stack, "GET", "/api/broadcasts/bcast-later/status").json()
    assert status["queue_status"] == "cancelled" and status["counts"]["cancelled"] == 1
    assert received(stack, body) == []


def test_a_bad_schedule_time_is_refused_naming_it(stack):
    campaign(stack, "bcast-bad-time", "never")
    bad = call(stack, "POST", "/api/broadcasts/bcast-bad-time/queue", json={"scheduleTime": "soon"})
    assert bad.status_code == 422 and bad.json()["field"] == "scheduleTime"
    other = call(stack, "GET", "/api/broadcasts/bcast-bad-time/status", headers={"x-workspace-id": "someone-else"})
    assert other.status_code == 403 and other.json()["code"] == "identity_mismatch"
