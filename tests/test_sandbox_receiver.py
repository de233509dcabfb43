"""The sandbox's webhook receiver answers and records like a customer endpoint, as configured.

Requests go over real HTTP to the session's sandbox process (gunicorn with one gevent worker, the
``sandbox_url`` fixture of ``conftest``), so delays are served the way benchmarks see them.
Receivers are forgotten before every test through the control API.
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from services.sandbox import receivers as receivers_module
from services.sandbox.receivers import Receivers

RECEIVER_ID = re.compile(r"^rcv_[0-9a-f]{32}$")


@pytest.fixture(autouse=True)
def no_receivers(sandbox_url: str) -> None:
    requests.delete(f"{sandbox_url}/sandbox/receivers", timeout=5).raise_for_status()


def configure(base: str, name: str, **behaviour: Any) -> dict[str, Any]:
    response = requests.put(f"{base}/sandbox/receivers/{name}", json=behaviour, timeout=5)
    response.raise_for_status()
    return response.json()


def post(base: str, name: str, payload: Any = None, **kwargs: Any) -> requests.Response:
    body: Any = {"type": "message.delivered", "data": {"id": 7}} if payload is None else payload
    return requests.post(f"{base}/receiver/{name}", json=body, timeout=10, **kwargs)


def received(base: str, name: str) -> list[dict[str, Any]]:
    response = requests.get(f"{base}/sandbox/receivers/{name}/requests", timeout=5)
    response.raise_for_status()
    return response.json()["requests"]


def test_default_answer_is_200_with_a_fresh_id_and_the_request_is_recorded(sandbox_url: str) -> None:
    # Given a receiver never configured, and a signed webhook
    payload = {"type": "message.delivered", "data": {"message_id": 42}}
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,abc"}

    # When it is POSTed twice
    before = time.time()
    first = post(sandbox_url, "acme", payload, headers=headers)
    second = post(sandbox_url, "acme", payload, headers=headers)
    after = time.time()

    # Then each answer is 200 with its own id, and both requests are kept in arrival order
    assert first.status_code == second.status_code == 200
    assert first.json()["received"] is True and RECEIVER_ID.match(first.json()["id"])
    assert first.json()["id"] != second.json()["id"]
    kept = received(sandbox_url, "acme")
    assert [r["id"] for r in kept] == [first.json()["id"], second.json()["id"]]
    request = kept[0]
    assert before <= request["at"] <= kept[1]["at"] <= after
    assert request["name"] == "acme"
    assert request["headers"]["Webhook-Id"] == "msg_1"
    assert request["headers"]["Webhook-Signature"] == "v1,abc"
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == payload
    assert request["json"] == payload
    assert request["status"] == 200
    assert request["truncated"] is False


def test_a_body_that_is_not_json_is_kept_as_text_only(sandbox_url: str) -> None:
    response = requests.post(f"{sandbox_url}/receiver/plain", data="to=%2B1555&x=1", timeout=5)

    assert response.status_code == 200
    [request] = received(sandbox_url, "plain")
    assert request["body"] == "to=%2B1555&x=1"
    assert request["json"] is None


def test_a_body_over_64_kib_is_cut_and_not_parsed(sandbox_url: str) -> None:
    payload = {"text": "x" * (70 * 1024)}

    response = post(sandbox_url, "big", payload)

    assert response.status_code == 200
    [request] = received(sandbox_url, "big")
    assert len(request["body"]) == 64 * 1024
    assert request["body"] == json.dumps(payload)[: 64 * 1024]
    assert request["truncated"] is True and request["json"] is None


def test_codes_are_answered_one_per_request_then_status_for_every_later_one(sandbox_url: str) -> None:
    configure(sandbox_url, "flaky", codes=[500, 502], status=410)

    statuses = [post(sandbox_url, "flaky").status_code for _ in range(4)]

    assert statuses == [500, 502, 410, 410]
    kept = received(sandbox_url, "flaky")
    assert [r["status"] for r in kept] == [500, 502, 410, 410]
    assert [r["id"] for r in kept] == [None, None, None, None]  # no id goes with a failure


def test_retry_after_is_sent_on_failed_answers_only(sandbox_url: str) -> None:
    configure(sandbox_url, "busy", codes=[429, 503], retry_after=7)

    throttled, unavailable, accepted = (post(sandbox_url, "busy") for _ in range(3))

    assert (throttled.status_code, throttled.headers.get("Retry-After")) == (429, "7")
    assert (unavailable.status_code, unavailable.headers.get("Retry-After")) == (503, "7")
    assert accepted.status_code == 200 and "Retry-After" not in accepted.headers
    assert RECEIVER_ID.match(accepted.json()["id"])


def test_a_slow_receiver_does_not_hold_up_another_receivers_answer(sandbox_url: str) -> None:
    # Given a receiver that answers after a second, with a request waiting on it
    configure(sandbox_url, "slow", delay_ms=1000)
    slow_answer: list[tuple[int, float]] = []

    def post_slowly() -> None:
        started = time.monotonic()
        status = post(sandbox_url, "slow").status_code
        slow_answer.append((status, time.monotonic() - started))

    waiting = threading.Thread(target=post_slowly)
    waiting.start()
    deadline = time.monotonic() + 5
    while not received(sandbox_url, "slow"):  # recorded on arrival, before the delay
        assert time.monotonic() < deadline, "the slow request never arrived"
        time.sleep(0.01)

    # When another receiver is posted to meanwhile
    started = time.monotonic()
    fast = post(sandbox_url, "fast")
    fast_seconds = time.monotonic() - started
    waiting.join(timeout=10)

    # Then it answers at once, and the slow one only after its delay
    assert fast.status_code == 200 and fast_seconds < 0.5
    [(slow_status, slow_seconds)] = slow_answer
    assert slow_status == 200 and slow_seconds >= 1.0


def test_delayed_answers_to_one_receiver_are_served_concurrently(sandbox_url: str) -> None:
    configure(sandbox_url, "bench", delay_ms=500)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=40) as pool:
        statuses = list(pool.map(lambda _: post(sandbox_url, "bench").status_code, range(40)))
    elapsed = time.monotonic() - started

    assert statuses == [200] * 40
    assert 0.5 <= elapsed < 3.0  # one after another would take 20 s
    assert len(received(sandbox_url, "bench")) == 40


def test_a_configured_body_replaces_the_answer(sandbox_url: str) -> None:
    configure(sandbox_url, "custom", codes=[422], body={"message_id": "ext-9"})

    refused, accepted = post(sandbox_url, "custom"), post(sandbox_url, "custom")

    assert (refused.status_code, refused.json()) == (422, {"message_id": "ext-9"})
    assert (accepted.status_code, accepted.json()) == (200, {"message_id": "ext-9"})
    assert [r["id"] for r in received(sandbox_url, "custom")] == [None, None]


def test_configuring_answers_with_the_behaviour_and_keeps_what_was_received(sandbox_url: str) -> None:
    post(sandbox_url, "keep")

    shown = configure(sandbox_url, "keep", codes=[500])

    assert shown == {"codes": [500], "status": 200, "delay_ms": 0, "retry_after": None, "body": None}
    nulls = {"codes": None, "status": None, "delay_ms": None, "retry_after": None, "body": None}
    assert configure(sandbox_url, "keep", **nulls) == {
        "codes": [], "status": 200, "delay_ms": 0, "retry_after": None, "body": None
    }
    assert len(received(sandbox_url, "keep")) == 1


def test_deleting_a_receiver_forgets_its_behaviour_and_requests_only(sandbox_url: str) -> None:
    # Given two receivers with requests, one of them failing
    configure(sandbox_url, "gone", status=500)
    post(sandbox_url, "gone")
    post(sandbox_url, "stays")

    # When one is deleted
    requests.delete(f"{sandbox_url}/sandbox/receivers/gone", timeout=5).raise_for_status()

    # Then it answers by default again with nothing kept before, and the other is untouched
    assert received(sandbox_url, "gone") == []
    assert post(sandbox_url, "gone").status_code == 200
    assert [r["status"] for r in received(sandbox_url, "gone")] == [200]
    assert len(received(sandbox_url, "stays")) == 1


def test_listing_shows_every_receiver_with_its_request_count(sandbox_url: str) -> None:
    for _ in range(3):
        post(sandbox_url, "b.receiver")
    post(sandbox_url, "a_receiver")
    configure(sandbox_url, "configured-only", delay_ms=5)

    listing = requests.get(f"{sandbox_url}/sandbox/receivers", timeout=5).json()["receivers"]

    assert [(r["name"], r["requests"], r["kept"]) for r in listing] == [
        ("a_receiver", 1, 1),
        ("b.receiver", 3, 3),
        ("configured-only", 0, 0),
    ]
    assert listing[2]["behaviour"]["delay_ms"] == 5


def test_clearing_all_receivers_empties_the_listing(sandbox_url: str) -> None:
    post(sandbox_url, "one")

    requests.delete(f"{sandbox_url}/sandbox/receivers", timeout=5).raise_for_status()

    assert requests.get(f"{sandbox_url}/sandbox/receivers", timeout=5).json() == {"receivers": []}


@pytest.mark.parametrize(
    "behaviour",
    [{"codes": [99]}, {"codes": "500"}, {"codes": ""}, {"status": 700}, {"delay_ms": -1}, {"retry_after": "7"},
     {"status": True}, {"colour": "red"}],
)
def test_a_behaviour_that_cannot_be_understood_is_refused(sandbox_url: str, behaviour: dict[str, Any]) -> None:
    response = requests.put(f"{sandbox_url}/sandbox/receivers/strict", json=behaviour, timeout=5)

    assert response.status_code == 400 and response.json()["error"]
    assert post(sandbox_url, "strict").status_code == 200  # the default behaviour is unchanged


def test_a_name_outside_the_allowed_characters_is_not_a_receiver(sandbox_url: str) -> None:
    for name in ("has%20space", "x" * 65):
        response = post(sandbox_url, name)
        assert response.status_code == 404 and "receiver name" in response.json()["error"]
    assert requests.get(f"{sandbox_url}/sandbox/receivers", timeout=5).json() == {"receivers": []}


def test_only_the_newest_requests_are_kept_while_all_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a receiver that keeps three requests
    monkeypatch.setattr(receivers_module, "MAX_KEPT_REQUESTS", 3)
    receivers = Receivers()

    # When five arrive
    for at in range(5):
        receivers.receive("capped", float(at), {}, "", False, None)

    # Then the newest three are kept, and five are counted
    assert [r.at for r in receivers.requests("capped")] == [2.0, 3.0, 4.0]
    assert [(s["requests"], s["kept"]) for s in receivers.summary()] == [(5, 3)]
