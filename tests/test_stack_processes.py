"""The local stack's processes: services restarted after a crash, a crash loop stopping the stack,
and one sender process serving the normal and bulk lanes without normal work waiting behind bulk (the
urgent lane has a process of its own).

Everything runs as real processes on a private stack, as `make run` starts it, with the stack's
supervisor in a background thread as the chaos harness runs it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from services.local.stack import Service, Stack, private_env
from tests.support import wait_for


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    # A small sender, so a few bulk messages make a backlog: 2 batches and 2 calls per lane.
    env = private_env(tmp_path_factory.mktemp("stack"), 10000 + os.getpid() % 4000, POSTROOM_API_WORKERS="1",
                      POSTROOM_SENDER_GREENLETS="2", POSTROOM_SENDER_URGENT_GREENLETS="2", POSTROOM_SENDER_CONCURRENCY="2")
    with Stack(env=env) as running:
        running.key = running.start()  # type: ignore[attr-defined]
        running.start_supervisor(interval=0.1)
        yield running


def api(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.cfg.postroom_api_port}"


def send(stack: Stack, body: str, priority: str = "urgent") -> int:
    response = requests.post(f"{api(stack)}/v1/messages", json={"channel": "sms", "to": "+15005550006", "body": body, "priority": priority},
                             headers={"Authorization": f"Bearer {stack.key}"}, timeout=10)  # type: ignore[attr-defined]
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def status(stack: Stack, message_id: int) -> str:
    response = requests.get(f"{api(stack)}/v1/messages/{message_id}", headers={"Authorization": f"Bearer {stack.key}"},  # type: ignore[attr-defined]
                            timeout=10)
    return str(response.json()["status"])


def sandbox_bodies(stack: Stack) -> list[str]:
    return [m["body"] for m in requests.get(f"{stack.cfg.sandbox_url}/sandbox/messages", timeout=10).json()["messages"]]


def ready(stack: Stack) -> bool:
    try:
        return requests.get(f"{api(stack)}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def pids(stack: Stack) -> dict[str, int]:
    return {name: proc.pid for name, proc in stack.processes.items()}


def test_a_killed_sender_is_restarted_the_restart_is_logged_and_the_stack_still_delivers(stack):
    before = pids(stack)

    os.kill(before["sender-sms"], signal.SIGKILL)

    wait_for(lambda: stack.restarts["sender-sms"] == 1 and pids(stack)["sender-sms"] != before["sender-sms"], timeout=15,
             what="the sender to be restarted")
    assert {n: p for n, p in pids(stack).items() if n != "sender-sms"} == {n: p for n, p in before.items() if n != "sender-sms"}
    assert "service sender-sms exited with -9; restarting in 0.5s (restart 1)" in (stack.log_dir / "supervisor.log").read_text()
    message_id = send(stack, "after the sender was killed")
    wait_for(lambda: status(stack, message_id) == "delivered", timeout=30, what="delivered by the restarted sender")
    assert sandbox_bodies(stack).count("after the sender was killed") == 1
    assert stack.crashed is None


def test_a_killed_ingest_leaves_no_worker_behind_and_serves_again(stack):
    arbiter = psutil.Process(stack.processes["ingest"].pid)
    workers = arbiter.children()
    assert workers

    arbiter.kill()

    wait_for(lambda: stack.restarts["ingest"] == 1, timeout=15, what="ingest to be restarted")
    wait_for(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), timeout=10,
             what="the killed arbiter's workers to be gone")
    wait_for(lambda: ready(stack), timeout=30, what="ingest ready again")
    message_id = send(stack, "after ingest was killed")
    wait_for(lambda: status(stack, message_id) == "delivered", timeout=30, what="delivered")


def test_one_sender_process_serves_normal_and_bulk_and_normal_work_never_waits_for_bulk(stack):
    assert [name for name in stack.processes if name.startswith("sender-sms")] == ["sender-sms-urgent", "sender-sms"]
    faults = f"{stack.cfg.sandbox_url}/sandbox/faults"
    requests.post(faults, json={"latency_ms": 4000}, timeout=10).raise_for_status()
    try:
        # Given a bulk backlog whose calls hold every bulk greenlet (2) for 4 s
        bulk = []
        for n in range(8):
            bulk.append(send(stack, f"campaign #{n}", priority="bulk"))
            time.sleep(0.03)  # separate batches
        wait_for(lambda: sum(status(stack, i) == "sending" for i in bulk) >= 2, timeout=20, what="bulk calls in flight")

        # When a single (normal) send arrives (and the provider now answers at once)
        requests.post(faults, json={"latency_ms": 0}, timeout=10).raise_for_status()
        urgent = send(stack, "one-time code", priority="normal")
        wait_for(lambda: status(stack, urgent) in ("sent", "delivered"), timeout=20, what="the urgent message sent")

        # Then the same process sent it while bulk's calls were still out: it reached the provider first.
        received = requests.get(f"{stack.cfg.sandbox_url}/sandbox/messages", timeout=10).json()["messages"]
        order = [m["body"] for m in sorted(received, key=lambda m: m["received_at"]) if m["body"] in {"one-time code"} or m["body"].startswith("campaign")]
        assert order[0] == "one-time code", order
        wait_for(lambda: all(status(stack, i) == "delivered" for i in bulk), timeout=60, what="the backlog delivered")
        assert sorted(b for b in sandbox_bodies(stack) if b.startswith("campaign")) == sorted(f"campaign #{n}" for n in range(8))
    finally:
        requests.delete(faults, timeout=10)


def test_a_crash_looping_service_stops_the_stack_with_its_log(tmp_path: Path, capsys):
    stack = Stack(env={"POSTROOM_VAR_DIR": str(tmp_path)}, restart_backoff=(0.05, 0.2), crash_loop_restarts=3)
    stack.log_dir.mkdir(parents=True)
    stack.start_service(Service("steady", [sys.executable, "-c", "import time; time.sleep(120)"]))
    stack.start_service(Service("flaky", [sys.executable, "-c", "import sys; print('cannot start: no config'); sys.exit(3)"]))
    steady = psutil.Process(stack.processes["steady"].pid)

    code = stack.supervise(lambda: False, interval=0.02)

    out = capsys.readouterr().out
    assert code == 1
    assert stack.restarts["flaky"] == 3 and stack.restarts["steady"] == 0
    assert "service flaky exited with 3; restarting in 0.05s (restart 1)" in out
    assert "service flaky exited with 3; restarting in 0.1s (restart 2)" in out
    assert "service flaky exited with 3 4 times within 60s; giving up" in out
    assert "cannot start: no config" in out  # the service's log tail says why
    assert "stopped." in out and stack.processes == {}
    assert not steady.is_running() or steady.status() == psutil.STATUS_ZOMBIE
