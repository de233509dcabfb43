"""End to end through real processes: gunicorn ingest, `postroom worker` processes, scheduler, sandbox.

The stack gets its own private PostgreSQL and Redis, exactly as `make run` starts them, so the
broker flush below touches nothing else in the session.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

import pytest
import redis
import requests

from services.local import infra as localinfra
from services.local.stack import Stack, private_env
from tests.support import wait_for


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    env = private_env(tmp_path_factory.mktemp("stack"), 14500 + os.getpid() % 4000,
                      POSTROOM_STAGE_DEADLINE_SECONDS="2", POSTROOM_API_WORKERS="1", POSTROOM_SENDER_CONCURRENCY="16")
    with Stack(env=env) as running:
        running.key = running.start()
        yield running


def api(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.cfg.postroom_api_port}"


def send(stack: Stack, body: str, priority: str = "urgent") -> int:
    response = requests.post(f"{api(stack)}/v1/messages",
                             json={"channel": "sms", "to": "+15005550006", "body": body, "priority": priority},
                             headers={"Authorization": f"Bearer {stack.key}"}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def view(stack: Stack, message_id: int) -> dict:
    return requests.get(f"{api(stack)}/v1/messages/{message_id}", headers={"Authorization": f"Bearer {stack.key}"}, timeout=10).json()


def sandbox_bodies(stack: Stack) -> list[str]:
    return [m["body"] for m in requests.get(f"{stack.cfg.sandbox_url}/sandbox/messages", timeout=10).json()["messages"]]


def test_quick_start_sms_is_delivered_with_its_full_history(stack):
    assert (stack.var / "dev-api-key").read_text().strip() == stack.key
    message_id = send(stack, "hello from the quick start")
    wait_for(lambda: view(stack, message_id)["status"] == "delivered", timeout=20, what="delivered")
    assert "hello from the quick start" in sandbox_bodies(stack)
    assert [e["status"] for e in view(stack, message_id)["events"]] == ["accepted", "queued", "routed", "sending", "sent", "delivered"]


def test_broker_flush_after_accept_still_delivers_once(stack):
    stack.stop_service("processing")  # hold the message in the broker ...
    message_id = send(stack, "flushed but not lost")
    redis.Redis.from_url(stack.cfg.redis_url).flushall()  # ... and lose it
    stack.start_service(next(s for s in __import__("services.local.stack", fromlist=["x"]).services_for(stack.cfg) if s.name == "processing"))
    wait_for(lambda: view(stack, message_id)["status"] == "delivered", timeout=30, what="delivered after the flush")
    time.sleep(1)
    assert sandbox_bodies(stack).count("flushed but not lost") == 1


def test_redis_restart_after_accept_still_delivers_once(stack):
    stack.stop_service("processing")
    message_id = send(stack, "redis restarted")
    redis_server = next(s for s in stack.infra if s.name == "redis")
    redis_server.stop()
    restarted = localinfra.start_redis(stack.var / "redis", redis_server.port)
    stack.infra[stack.infra.index(redis_server)] = restarted
    processing = next(s for s in __import__("services.local.stack", fromlist=["x"]).services_for(stack.cfg) if s.name == "processing")
    stack.start_service(processing)
    wait_for(lambda: view(stack, message_id)["status"] == "delivered", timeout=40, what="delivered after the restart")
    time.sleep(1)
    assert sandbox_bodies(stack).count("redis restarted") == 1


LABEL = re.compile(r'(\w+)="([^"]*)"')


def sample(text: str, series: str) -> float:
    """The value of one exposed series (0 if it is not there)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def scrape(url: str) -> str:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    return response.text


def test_every_service_exposes_dramatiq_and_postroom_metrics_with_bounded_labels(stack):
    message_ids = [send(stack, "metrics"), send(stack, "metrics, normal lane", priority="normal"),
                   send(stack, "metrics, bulk lane", priority="bulk")]
    wait_for(lambda: all(view(stack, i)["status"] == "delivered" for i in message_ids), timeout=20, what="delivered")
    base = stack.cfg.postroom_metrics_port_base
    ingest = scrape(f"{api(stack)}/metrics")
    assert 'postroom_messages_total{channel="sms",status="accepted"}' in ingest
    assert "postroom_api_request_seconds_bucket" in ingest
    assert 'postroom_provider_webhooks_total{kind="status",provider="twilio",verdict="applied"}' in ingest
    workers = {name: scrape(f"http://127.0.0.1:{base + offset}/metrics") for name, offset in
               (("processing", 0), ("routing", 1), ("sender-sms", 2), ("sender-http", 3), ("webhooks", 4),
                                   ("sender-sms-urgent", 10))}
    for name in ("processing", "routing", "sender-sms", "sender-sms-urgent"):  # the stages these messages went through
        assert "dramatiq_messages_total" in workers[name], name
    assert 'postroom_messages_total{channel="sms",status="queued"}' in workers["processing"]
    assert 'postroom_messages_total{channel="sms",status="routed"}' in workers["routing"]
    sender = workers["sender-sms"]  # one process serves the normal and bulk lanes, each through its own worker
    assert sample(sender, 'postroom_provider_request_seconds_count{outcome="ok",provider="twilio"}') >= 2
    for lane in ("normal", "bulk"):
        assert sample(sender, f'dramatiq_messages_total{{actor_name="send_sms_{lane}",queue_name="sms_{lane}"}}') >= 1
    urgent = workers["sender-sms-urgent"]  # and the urgent lane has a process of its own
    assert sample(urgent, 'dramatiq_messages_total{actor_name="send_sms_urgent",queue_name="sms_urgent"}') >= 1
    scheduler = scrape(f"http://127.0.0.1:{base + 9}/metrics")
    assert "postroom_reconciler_redriven_total" in scheduler
    assert "postroom_webhook_outbox_lag_seconds" in scheduler
    assert 'postroom_webhook_delivery_seconds_count{outcome="succeeded"}' in workers["webhooks"]  # created at zero
    allowed = {"channel", "status", "provider", "outcome", "kind", "verdict", "endpoint", "code", "lane", "le",
               "queue_name", "actor_name", "quantile", "reason", "stage"}
    for text in [ingest, scheduler, *workers.values()]:
        for line in text.splitlines():
            if line.startswith("postroom_") or line.startswith("dramatiq_"):
                for label, value in LABEL.findall(line):
                    assert label in allowed, line
                    assert "+1500" not in value and not value.isdigit(), line


def sandbox_received_at(stack: Stack, body: str) -> list[float]:
    from datetime import datetime

    return [datetime.fromisoformat(m["received_at"]).timestamp()
            for m in requests.get(f"{stack.cfg.sandbox_url}/sandbox/messages", timeout=10).json()["messages"] if m["body"] == body]


def schedule(stack: Stack, body: str, due: float) -> int:
    from datetime import UTC, datetime

    send_at = datetime.fromtimestamp(due, UTC).isoformat().replace("+00:00", "Z")
    response = requests.post(f"{api(stack)}/v1/messages", json={"channel": "sms", "to": "+15005550006", "body": body,
                                                               "send_at": send_at},
                             headers={"Authorization": f"Bearer {stack.key}"}, timeout=10)
    assert response.status_code == 202 and response.json()["status"] == "scheduled", response.text
    return response.json()["id"]


def test_a_scheduled_message_leaves_on_time_and_a_cancelled_one_never(stack):
    due = time.time() + 3.0
    on_time = schedule(stack, "due in three seconds", due)
    cancelled = schedule(stack, "cancelled a second before", due)
    wait_for(lambda: time.time() >= due - 1.0, timeout=5, what="a second before the due time")
    cancel = requests.post(f"{api(stack)}/v1/messages/{cancelled}/cancel", headers={"Authorization": f"Bearer {stack.key}"}, timeout=10)
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    arrived = wait_for(lambda: sandbox_received_at(stack, "due in three seconds"), timeout=10, what="the scheduled message")
    assert due <= arrived[0] <= due + 1.0, f"arrived {arrived[0] - due:+.3f}s from its due time"
    wait_for(lambda: view(stack, on_time)["status"] == "delivered", timeout=10, what="delivered")
    time.sleep(1.0)
    assert sandbox_received_at(stack, "cancelled a second before") == []
    assert view(stack, cancelled)["status"] == "cancelled"


def test_a_tag_cancel_of_a_thousand_pending_messages_cancels_them_all_and_none_is_sent(stack):
    from concurrent.futures import ThreadPoolExecutor

    headers = {"Authorization": f"Bearer {stack.key}"}
    due = time.time() + 12.0

    def one(n: int) -> int:
        response = requests.post(f"{api(stack)}/v1/messages", headers=headers, timeout=30, json={
            "channel": "sms", "to": "+15005550006", "body": f"event 1000 reminder {n}", "delay_seconds": int(due - time.time()),
            "tags": {"event_id": "1000", "contractor_id": str(n)}})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(one, range(1000)))
    cancelled = requests.post(f"{api(stack)}/v1/messages/cancel", json={"tags": {"event_id": "1000"}}, headers=headers, timeout=30)
    assert cancelled.status_code == 200 and cancelled.json() == {"count": 1000}
    wait_for(lambda: time.time() > due + 2.0, timeout=30, what="past the due time")
    assert not [b for b in sandbox_bodies(stack) if b.startswith("event 1000 reminder")]
    assert {view(stack, i)["status"] for i in ids[:20]} == {"cancelled"}
