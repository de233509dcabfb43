"""A 10,000-recipient campaign end to end through real processes (gunicorn ingest, `postroom worker`
processes, the scheduler, the sandbox as Twilio): each recipient receives it exactly once while the
campaign is paused and resumed twice and the SMS sender is killed with SIGKILL mid-run."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from services.local.stack import Stack, private_env
from tests.bench.load import api_url as api
from tests.support import wait_for

COUNT = 10_000
COUNTS = ("pending", "processing", "sent", "delivered", "read", "failed", "suppressed", "cancelled")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    # A send that dies with the killed sender is looked up at the sandbox 5 s later, not 45 s.
    env = private_env(tmp_path_factory.mktemp("stack"), 10500 + os.getpid() % 4000, POSTROOM_API_WORKERS="1",
                      POSTROOM_SENDING_TIMEOUT_SECONDS="5", POSTROOM_STAGE_DEADLINE_SECONDS="5")
    with Stack(env=env) as running:
        running.key = running.start()  # type: ignore[attr-defined]
        running.start_supervisor(interval=0.1)
        yield running


def auth(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.key}"}  # type: ignore[attr-defined]


def received(stack: Stack) -> int:
    return int(requests.get(f"{stack.cfg.sandbox_url}/sandbox/stats", timeout=10).json()["received"])


def campaign(stack: Stack, campaign_id: int) -> dict[str, Any]:
    view = requests.get(f"{api(stack)}/v1/campaigns/{campaign_id}", headers=auth(stack), timeout=10).json()
    progress = view["progress"]
    assert sum(progress[name] for name in COUNTS) == progress["total"] == COUNT, progress  # at every poll
    return view


def act(stack: Stack, campaign_id: int, verb: str) -> dict[str, Any]:
    response = requests.post(f"{api(stack)}/v1/campaigns/{campaign_id}/{verb}", headers=auth(stack), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_campaign_reaches_each_recipient_once_through_two_pauses_and_a_killed_sender(stack):
    sandbox = stack.cfg.sandbox_url
    requests.post(f"{sandbox}/sandbox/faults", json={"drop_callbacks": True}, timeout=10).raise_for_status()
    to = [f"+1{201 + i // 100}55501{i % 100:02d}" for i in range(COUNT)]
    # Given a campaign of 10,000 with a rate limit of its own, so that it runs long enough to act on
    response = requests.post(f"{api(stack)}/v1/campaigns", headers=auth(stack), timeout=120, json={
        "name": "e2e", "channel": "sms", "body": "Winter sale", "rate_limit_per_second": 1000, "start": True,
        "recipients": [{"to": n} for n in to]})
    assert response.status_code == 201, response.text
    campaign_id = response.json()["id"]

    # When it is paused and resumed twice mid-way
    for at in (1500, 4000):
        wait_for(lambda at=at: received(stack) >= at, timeout=60, what=f"{at} received")
        assert act(stack, campaign_id, "pause")["status"] == "paused"
        stopped = received(stack)
        wait_for(lambda: campaign(stack, campaign_id)["progress"]["processing"] == 0, timeout=30, what="calls in flight done")
        settled = received(stack)
        assert settled - stopped <= 200  # only the calls already in flight when it was paused
        assert received(stack) == settled  # nothing more is claimed while paused
        assert act(stack, campaign_id, "resume")["status"] == "running"
    # And the SMS sender is killed with SIGKILL in the middle of its calls
    wait_for(lambda: received(stack) >= 6500, timeout=60, what="6500 received")
    killed = stack.processes["sender-sms"].pid
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: stack.processes["sender-sms"].pid != killed, timeout=15, what="the sender restarted")

    # Then the campaign completes and every recipient got it exactly once
    def completed() -> bool:
        return campaign(stack, campaign_id)["status"] == "completed"
    wait_for(completed, timeout=180, interval=0.5, what="the campaign completed")
    listed = requests.get(f"{sandbox}/sandbox/messages", timeout=120).json()["messages"]
    by_number = Counter(m["to"] for m in listed if m["body"] == "Winter sale")
    assert set(by_number) == set(to), f"{len(set(to) - set(by_number))} recipients missing"
    assert [n for n, times in by_number.items() if times > 1] == []
    final = campaign(stack, campaign_id)["progress"]
    assert final["sent"] + final["delivered"] == COUNT and final["failed"] == 0 and final["pending"] == 0
    assert stack.crashed is None
