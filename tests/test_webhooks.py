"""Outbound webhooks and the http channel end to end, through real processes: gunicorn ingest, the
webhooks and sender workers, the scheduler, and the sandbox's receivers as customer endpoints.

Signatures are checked with the reference ``standardwebhooks`` library, not with our own code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
import requests
from standardwebhooks import Webhook

from services.local.stack import Stack, private_env, services_for
from tests.support import wait_for

RETRY_SCHEDULE = "0,2,1,1,2"  # seconds before each attempt: the first retry waits 2 s, then 1 s


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    env = private_env(tmp_path_factory.mktemp("webhooks"), 16500 + os.getpid() % 4000,
                      POSTROOM_API_WORKERS="1", POSTROOM_SENDER_CONCURRENCY="16", POSTROOM_STAGE_DEADLINE_SECONDS="2",
                      POSTROOM_WEBHOOK_RETRY_SCHEDULE=RETRY_SCHEDULE, POSTROOM_RECONCILE_INTERVAL_SECONDS="0.5",
                      POSTROOM_WEBHOOK_TIMEOUT_SECONDS="3", POSTROOM_RETRY_BASE_SECONDS="0.3")
    with Stack(env=env) as running:
        running.key = running.start()
        yield running


@pytest.fixture(autouse=True)
def clean_receivers(stack: Stack) -> Iterator[None]:
    requests.delete(f"{stack.cfg.sandbox_url}/sandbox/receivers", timeout=5).raise_for_status()
    yield
    for endpoint in call(stack, "GET", "/v1/webhook-endpoints").json()["endpoints"]:
        call(stack, "DELETE", f"/v1/webhook-endpoints/{endpoint['id']}")


def call(stack: Stack, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"http://127.0.0.1:{stack.cfg.postroom_api_port}{path}",
                            headers={"Authorization": f"Bearer {stack.key}"}, timeout=10, **kwargs)


def receiver_url(stack: Stack, name: str) -> str:
    return f"{stack.cfg.sandbox_url}/receiver/{name}"


def behave(stack: Stack, name: str, **behaviour: Any) -> None:
    requests.put(f"{stack.cfg.sandbox_url}/sandbox/receivers/{name}", json=behaviour, timeout=5).raise_for_status()


def received(stack: Stack, name: str) -> list[dict[str, Any]]:
    return requests.get(f"{stack.cfg.sandbox_url}/sandbox/receivers/{name}/requests", timeout=5).json()["requests"]


def subscribe(stack: Stack, name: str, event_types: list[str]) -> dict[str, Any]:
    response = call(stack, "POST", "/v1/webhook-endpoints", json={"url": receiver_url(stack, name), "event_types": event_types})
    assert response.status_code == 201, response.text
    return response.json()


def send(stack: Stack, body: str, channel: str = "sms", to: str = "+15005550006") -> int:
    response = call(stack, "POST", "/v1/messages", json={"channel": channel, "to": to, "body": body})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def events_for(stack: Stack, name: str, message_id: int) -> list[dict[str, Any]]:
    return [r for r in received(stack, name) if (r["json"] or {}).get("data", {}).get("id") == message_id]


def verify(secret: str, request: dict[str, Any]) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in request["headers"].items()}
    return Webhook(secret).verify(request["body"], headers)


def test_sent_and_delivered_events_reach_a_subscriber_within_a_second_signed(stack):
    everything = subscribe(stack, "everything", ["*"])
    failures_only = subscribe(stack, "failures", ["message.failed"])
    assert everything["secret"].startswith("whsec_") and failures_only["secret"] != everything["secret"]

    message_id = send(stack, "tell the customer")
    got = wait_for(lambda: (lambda e: e if {"message.sent", "message.delivered"} <= {x["json"]["type"] for x in e} else None)(
        events_for(stack, "everything", message_id)), timeout=20, what="sent and delivered events")
    view = call(stack, "GET", f"/v1/messages/{message_id}").json()
    happened = {e["status"]: datetime.fromisoformat(e["at"]).timestamp() for e in view["events"]}
    for request in got:
        payload = verify(everything["secret"], request)  # raises on a bad signature
        assert set(payload) == {"type", "timestamp", "data"}
        status = payload["type"].removeprefix("message.")
        assert payload["data"]["status"] == status and payload["data"]["channel"] == "sms"
        assert request["headers"]["X-Webhook-Event"] == payload["type"]
        assert request["headers"]["X-Webhook-Id"] == request["headers"]["Webhook-Id"]
        assert request["headers"]["X-Webhook-Attempt"] == "1"
        assert request["at"] - happened[status] < 1.0, f"{payload['type']} took {request['at'] - happened[status]:.3f}s"
    # Accepted and sent/delivered each once, in the order they happened.
    types = [r["json"]["type"] for r in got]
    assert types == ["message.accepted", "message.sent", "message.delivered"]
    time.sleep(1.0)
    assert received(stack, "failures") == []  # subscribed only to message.failed


def test_a_failing_endpoint_gets_the_same_event_again_until_it_answers_2xx(stack):
    behave(stack, "flaky", codes=[500, 500, 500])
    endpoint = subscribe(stack, "flaky", ["message.delivered"])
    message_id = send(stack, "retry me")
    attempts = wait_for(lambda: (lambda e: e if len(e) >= 4 else None)(events_for(stack, "flaky", message_id)),
                        timeout=30, what="four attempts")
    assert [a["status"] for a in attempts] == [500, 500, 500, 200]
    assert len({a["headers"]["Webhook-Id"] for a in attempts}) == 1
    assert [a["headers"]["X-Webhook-Attempt"] for a in attempts] == ["1", "2", "3", "4"]
    assert attempts[1]["at"] - attempts[0]["at"] >= 1.9  # the schedule's first retry waits 2 s
    for attempt in attempts:
        verify(endpoint["secret"], attempt)
    log = wait_for(lambda: (lambda a: a if len(a) >= 4 else None)(
        call(stack, "GET", f"/v1/webhook-endpoints/{endpoint['id']}/deliveries").json()["attempts"]), what="attempt log")
    assert [a["status_code"] for a in log] == [200, 500, 500, 500]  # newest first
    assert log[0]["delivery_status"] == "succeeded" and log[1]["next_attempt_at"] is not None
    time.sleep(1.5)
    assert len(events_for(stack, "flaky", message_id)) == 4  # nothing after the success


def test_410_disables_the_endpoint_and_says_so(stack):
    watcher = subscribe(stack, "watcher", ["webhook_endpoint.disabled"])
    behave(stack, "gone", status=410)
    gone = subscribe(stack, "gone", ["message.sent"])
    send(stack, "to a gone endpoint")
    wait_for(lambda: not call(stack, "GET", f"/v1/webhook-endpoints/{gone['id']}").json()["enabled"], timeout=20,
             what="the endpoint disabled")
    notice = wait_for(lambda: received(stack, "watcher"), timeout=10, what="the disabled event")
    payload = verify(watcher["secret"], notice[0])
    assert payload["type"] == "webhook_endpoint.disabled" and payload["data"]["endpoint_id"] == gone["id"]
    assert "410" in call(stack, "GET", f"/v1/webhook-endpoints/{gone['id']}").json()["disabled_reason"]
    send(stack, "after it was disabled")
    time.sleep(2)
    assert len(received(stack, "gone")) == 1


def test_retry_after_is_honoured(stack):
    behave(stack, "busy", codes=[429], retry_after=3)
    subscribe(stack, "busy", ["message.sent"])
    message_id = send(stack, "throttled endpoint")
    attempts = wait_for(lambda: (lambda e: e if len(e) >= 2 else None)(events_for(stack, "busy", message_id)),
                        timeout=20, what="the retry after Retry-After")
    assert attempts[0]["status"] == 429 and attempts[1]["status"] == 200
    assert attempts[1]["at"] - attempts[0]["at"] >= 2.9


def test_retries_survive_a_broker_flush_and_a_webhooks_restart(stack):
    behave(stack, "outage", codes=[500])
    subscribe(stack, "outage", ["message.sent"])
    message_id = send(stack, "outlive the outage")
    wait_for(lambda: events_for(stack, "outage", message_id), timeout=20, what="the first attempt")
    # The retry is due in 2 s: lose everything the broker and the webhooks process hold meanwhile.
    stack.stop_service("webhooks")
    redis.Redis.from_url(stack.cfg.redis_url).flushall()
    stack.start_service(next(s for s in services_for(stack.cfg) if s.name == "webhooks"))
    attempts = wait_for(lambda: (lambda e: e if len(e) >= 2 else None)(events_for(stack, "outage", message_id)),
                        timeout=30, what="the retry after the flush and restart")
    assert [a["status"] for a in attempts] == [500, 200]
    time.sleep(1.5)
    assert len(events_for(stack, "outage", message_id)) == 2


def test_test_event_rotation_and_replay(stack):
    endpoint = subscribe(stack, "ops", ["message.sent"])
    queued = call(stack, "POST", f"/v1/webhook-endpoints/{endpoint['id']}/test")
    assert queued.status_code == 202
    test_event = wait_for(lambda: received(stack, "ops"), what="the test event")[0]
    assert verify(endpoint["secret"], test_event)["type"] == "webhook.test"
    rotated = call(stack, "POST", f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret").json()
    message_id = send(stack, "signed twice")
    event = wait_for(lambda: events_for(stack, "ops", message_id), timeout=20, what="the sent event")[0]
    verify(rotated["secret"], event)
    verify(endpoint["secret"], event)  # the old secret still signs for 24 hours
    assert len(event["headers"]["Webhook-Signature"].split(" ")) == 2
    # Replays send the same event again with the same webhook-id
    deliveries = call(stack, "GET", f"/v1/webhook-endpoints/{endpoint['id']}/deliveries").json()["attempts"]
    original = next(d for d in deliveries if d["event_type"] == "message.sent")
    again = call(stack, "POST", f"/v1/webhook-deliveries/{original['delivery_id']}/replay")
    assert again.status_code == 202 and again.json()["webhook_id"] == original["webhook_id"]
    wait_for(lambda: len(events_for(stack, "ops", message_id)) == 2, what="the replay")
    since = call(stack, "POST", f"/v1/webhook-endpoints/{endpoint['id']}/replay", json={"since": "2000-01-01T00:00:00Z"})
    assert since.status_code == 202 and since.json()["count"] == 2  # the test event and the sent event, once each
    wait_for(lambda: len(events_for(stack, "ops", message_id)) == 3, what="the replay since")


def configure_http_channel(stack: Stack, receiver: str) -> str:
    made = subprocess.run([sys.executable, "-m", "services.cli", "channel", "http", "--workspace", "dev", "--url",
                           receiver_url(stack, receiver)], env={**os.environ, **stack.env}, capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_the_http_channel_posts_signed_messages_and_classifies_answers(stack):
    secret = configure_http_channel(stack, "crm")
    message_id = send(stack, "to the crm", channel="http", to="contact-42")
    wait_for(lambda: call(stack, "GET", f"/v1/messages/{message_id}").json()["status"] == "sent", timeout=40, what="sent")
    request = received(stack, "crm")[0]
    payload = verify(secret, request)
    assert payload["type"] == "message.send"
    assert payload["data"] == {**payload["data"], "id": message_id, "to": "contact-42", "body": "to the crm"}
    view = call(stack, "GET", f"/v1/messages/{message_id}").json()
    assert view["provider"] == "http" and view["provider_message_id"] == request["id"]  # the receiver's answered id

    behave(stack, "crm", codes=[422])
    refused = send(stack, "refused by the crm", channel="http", to="contact-43")
    wait_for(lambda: call(stack, "GET", f"/v1/messages/{refused}").json()["status"] == "failed", timeout=40, what="failed")
    assert call(stack, "GET", f"/v1/messages/{refused}").json()["error_code"] == "422"

    behave(stack, "crm", codes=[503])
    retried = send(stack, "the crm was down", channel="http", to="contact-44")
    wait_for(lambda: call(stack, "GET", f"/v1/messages/{retried}").json()["status"] == "sent", timeout=40, what="sent after a 503")
    tries = [r for r in received(stack, "crm") if (r["json"] or {}).get("data", {}).get("id") == retried]
    assert [t["status"] for t in tries] == [503, 200]
    assert tries[0]["headers"]["Webhook-Id"] == tries[1]["headers"]["Webhook-Id"] == f"msg_{retried}"
