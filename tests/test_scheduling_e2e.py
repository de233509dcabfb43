"""Scheduled sends through real processes when things break: two scheduler replicas with one
killed mid-run (messages and a recurring occurrence), and a Redis FLUSHALL with every worker restarted. Every due message (and
recurring occurrence) reaches the provider exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg2
import pytest
import redis
import requests

from services.local.stack import BIN, Stack, private_env, services_for
from tests.support import wait_for


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    env = private_env(tmp_path_factory.mktemp("sched"), 12500 + os.getpid() % 4000, POSTROOM_API_WORKERS="1",
                      POSTROOM_SENDER_CONCURRENCY="16", POSTROOM_STAGE_DEADLINE_SECONDS="2",
                      POSTROOM_RECONCILE_INTERVAL_SECONDS="0.5")
    with Stack(env=env) as running:
        running.key = running.start()
        yield running


def call(stack: Stack, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, f"http://127.0.0.1:{stack.cfg.postroom_api_port}{path}",
                            headers={"Authorization": f"Bearer {stack.key}"}, timeout=30, **kwargs)


def schedule_many(stack: Stack, prefix: str, count: int, due: float) -> None:
    send_at = datetime.fromtimestamp(due, UTC).isoformat()
    for n in range(count):
        made = call(stack, "POST", "/v1/messages", json={"channel": "sms", "to": "+15005550006", "body": f"{prefix} {n}",
                                                          "send_at": send_at, "priority": "bulk"})
        assert made.status_code == 202 and made.json()["status"] == "scheduled", made.text


def received(stack: Stack, prefix: str) -> Counter[str]:
    messages = requests.get(f"{stack.cfg.sandbox_url}/sandbox/messages", timeout=10).json()["messages"]
    return Counter(m["body"] for m in messages if m["body"].startswith(prefix + " "))


def test_two_schedulers_one_killed_mid_run_send_each_due_message_once(stack):
    second = subprocess.Popen([str(BIN / "postroom"), "scheduler"], env={**os.environ, **stack.env,
                              "POSTROOM_METRICS_PORT_BASE": str(stack.cfg.postroom_metrics_port_base + 20)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        due = time.time() + 8.0
        # A recurring schedule whose next occurrence falls at the same time as the batch below
        made = call(stack, "POST", "/v1/schedules", json={
            "cron": "* * * * *", "max_count": 1,
            "message": {"channel": "sms", "to": "+15005550006", "body": "two schedulers recurring 0"}})
        assert made.status_code == 201, made.text
        with psycopg2.connect(stack.cfg.database_url) as conn, conn.cursor() as cur:
            cur.execute("UPDATE schedule SET next_run_at = to_timestamp(%s) WHERE id = %s", (due, made.json()["id"]))
        schedule_many(stack, "two schedulers", 200, due)
        wait_for(lambda: time.time() >= due + 0.05, timeout=15, what="the due time")
        second.send_signal(signal.SIGKILL)  # one replica dies while the batch is being handed on
        got = wait_for(lambda: (lambda c: c if len(c) == 201 else None)(received(stack, "two schedulers")),
                       timeout=60, what="every due message and the recurring occurrence")
        time.sleep(3.0)  # a second hand-off would show now
        got = received(stack, "two schedulers")
        assert len(got) == 201 and set(got.values()) == {1}
        assert got["two schedulers recurring 0"] == 1
    finally:
        second.kill()
        second.wait(10)


def test_scheduled_messages_survive_a_flush_and_a_restart_of_every_worker(stack):
    due = time.time() + 8.0
    schedule_many(stack, "outlived", 100, due)
    redis.Redis.from_url(stack.cfg.redis_url).flushall()
    restarted = [s for s in services_for(stack.cfg) if s.name not in ("sandbox", "ingest")]
    for service in restarted:
        stack.stop_service(service.name)
    for service in restarted:
        stack.start_service(service)
    got = wait_for(lambda: (lambda c: c if len(c) == 100 else None)(received(stack, "outlived")), timeout=60,
                   what="every scheduled message")
    time.sleep(3.0)
    got = received(stack, "outlived")
    assert len(got) == 100 and set(got.values()) == {1}
    arrivals = [datetime.fromisoformat(m["received_at"]).timestamp()
                for m in requests.get(f"{stack.cfg.sandbox_url}/sandbox/messages", timeout=10).json()["messages"]
                if m["body"].startswith("outlived ")]
    assert min(arrivals) >= due  # none early
    assert max(arrivals) <= due + 5.0, f"the last arrived {max(arrivals) - due:.2f}s after its time"
