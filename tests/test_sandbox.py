"""The provider sandbox behaves like Twilio on the wire: the official SDK, signed callbacks, faults.

The sandbox runs as a real process (``python -m services.sandbox``, i.e. gunicorn with one gevent
worker) on a free port, and a threaded ``http.server`` stands in for ingest's status-callback
endpoint. State is reset between tests through the sandbox's own control API.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from common.segments import count_segments

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_SID = "AC" + "5a" * 16
AUTH_TOKEN = "sandbox-test-token-7f3c"
SENDER = "+15005550006"
RECIPIENT = "+15551230001"
TWILIO_FIELDS = {
    "account_sid",
    "api_version",
    "body",
    "date_created",
    "date_sent",
    "date_updated",
    "direction",
    "error_code",
    "error_message",
    "from",
    "messaging_service_sid",
    "num_media",
    "num_segments",
    "price",
    "price_unit",
    "sid",
    "status",
    "subresource_uris",
    "to",
    "uri",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


@dataclass(frozen=True)
class CallbackPost:
    """One status callback as the receiver got it: the path with its query, headers, form fields."""

    path: str
    headers: dict[str, str]
    form: dict[str, str]


class CallbackReceiver:
    """Records the status callbacks POSTed to it, as ingest's webhook endpoint would receive them."""

    def __init__(self) -> None:
        self.received: list[CallbackPost] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = dict(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
                with receiver.lock:
                    receiver.received.append(CallbackPost(self.path, dict(self.headers), form))
                self.send_response(200)
                self.send_header("Content-Type", "text/xml")
                self.end_headers()
                self.wfile.write(b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>')

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posts(self) -> list[CallbackPost]:
        with self.lock:
            return list(self.received)

    def statuses(self) -> list[str]:
        return [p.form["MessageStatus"] for p in self.posts()]

    def clear(self) -> None:
        with self.lock:
            self.received.clear()


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    port = free_port()
    env = dict(
        os.environ,
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_FROM=SENDER,
        POSTROOM_SANDBOX_HOST="127.0.0.1",
        POSTROOM_SANDBOX_PORT=str(port),
        POSTROOM_SANDBOX_SMTP_PORT=str(free_port()),  # its own SMTP server, beside the session sandbox's
        POSTROOM_SANDBOX_LATENCY_MS="0",
    )
    process = subprocess.Popen([sys.executable, "-m", "services.sandbox"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, "sandbox exited during start-up"
        try:
            return requests.get(f"{url}/healthz", timeout=1).json() == {"ok": True}
        except requests.ConnectionError:
            return False

    try:
        wait_for(healthy, timeout=15)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def receiver() -> Iterator[CallbackReceiver]:
    callback_receiver = CallbackReceiver()
    yield callback_receiver
    callback_receiver.server.shutdown()
    callback_receiver.server.server_close()


@pytest.fixture(autouse=True)
def clean_sandbox(request: pytest.FixtureRequest) -> None:
    if "sandbox_url" not in request.fixturenames:
        return
    url = request.getfixturevalue("sandbox_url")
    # Callbacks of the previous test must not land in this one.
    wait_for(
        lambda: requests.get(f"{url}/sandbox/stats").json()["deliveries_in_flight"] == 0, timeout=10
    )
    requests.delete(f"{url}/sandbox/faults").raise_for_status()
    requests.delete(f"{url}/sandbox/messages").raise_for_status()
    request.getfixturevalue("receiver").clear()


@pytest.fixture()
def twilio(sandbox_url: str) -> Client:
    client = Client(ACCOUNT_SID, AUTH_TOKEN, environment={})
    client.api.base_url = sandbox_url
    return client


def messages_url(base: str) -> str:
    return f"{base}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


def send_raw(
    base: str, auth: tuple[str, str] = (ACCOUNT_SID, AUTH_TOKEN), **form: str
) -> requests.Response:
    fields = {"To": RECIPIENT, "From": SENDER, "Body": "hello"} | form
    return requests.post(messages_url(base), data=fields, auth=auth, timeout=10)


def inject(base: str, **fault: Any) -> dict[str, Any]:
    response = requests.post(f"{base}/sandbox/faults", json=fault, timeout=5)
    response.raise_for_status()
    return dict(response.json())


def recorded(base: str, **query: str) -> list[dict[str, Any]]:
    return list(
        requests.get(f"{base}/sandbox/messages", params=query, timeout=5).json()["messages"]
    )


def stats(base: str) -> dict[str, int]:
    return dict(requests.get(f"{base}/sandbox/stats", timeout=5).json())


# --- the Messages API -------------------------------------------------------------------------


def test_sdk_create_returns_a_queued_message_that_the_sandbox_records(
    twilio: Client, sandbox_url: str
) -> None:
    callback = "http://127.0.0.1:9/twilio/status"

    message = twilio.messages.create(
        to=RECIPIENT, from_=SENDER, body="Your code is 1234", status_callback=callback
    )

    assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
    assert (message.status, message.to, message.from_, message.num_segments) == (
        "queued",
        RECIPIENT,
        SENDER,
        "1",
    )
    [record] = recorded(sandbox_url)
    assert record["channel"] == "sms"
    assert (record["sid"], record["to"], record["from"]) == (message.sid, RECIPIENT, SENDER)
    assert (record["body"], record["status_callback"]) == ("Your code is 1234", callback)
    received_at = datetime.fromisoformat(str(record["received_at"]))
    assert received_at.utcoffset() == UTC.utcoffset(None)
    assert re.search(r"\.\d{6}", str(record["received_at"]))
    assert abs((datetime.now(UTC) - received_at).total_seconds()) < 5


def test_send_answers_201_with_every_field_twilio_returns(sandbox_url: str) -> None:
    response = send_raw(sandbox_url, Body="é" * 71)  # GSM-7 has é, so still 71 septets: 1 segment

    assert response.status_code == 201
    resource = response.json()
    assert set(resource) == TWILIO_FIELDS
    assert resource["account_sid"] == ACCOUNT_SID and resource["api_version"] == "2010-04-01"
    assert (resource["direction"], resource["num_media"], resource["num_segments"]) == (
        "outbound-api",
        "0",
        "1",
    )
    assert (
        resource["date_sent"]
        is resource["price"]
        is resource["error_code"]
        is resource["error_message"]
        is None
    )
    assert parsedate_to_datetime(resource["date_created"]).tzinfo is not None
    assert resource["uri"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{resource['sid']}.json"
    assert resource["subresource_uris"]["media"].endswith(f"/Messages/{resource['sid']}/Media.json")


def test_invalid_to_number_raises_21211_through_the_sdk_and_is_not_recorded(
    twilio: Client, sandbox_url: str
) -> None:
    with pytest.raises(TwilioRestException) as raised:
        twilio.messages.create(to="555-0100", from_=SENDER, body="hi")

    assert (raised.value.code, raised.value.status) == (21211, 400)
    assert "555-0100" in raised.value.msg
    assert recorded(sandbox_url) == []


def test_missing_body_is_refused_with_21602(sandbox_url: str) -> None:
    response = send_raw(sandbox_url, Body="")

    assert response.status_code == 400
    assert response.json() == {
        "code": 21602,
        "message": "Message body is required.",
        "more_info": "https://www.twilio.com/docs/errors/21602",
        "status": 400,
    }


def test_wrong_auth_token_is_refused_with_401_and_20003(sandbox_url: str) -> None:
    response = send_raw(sandbox_url, auth=(ACCOUNT_SID, "not-the-token"))

    assert response.status_code == 401
    assert response.json()["code"] == 20003
    assert stats(sandbox_url)["invalid"] == 1
    assert recorded(sandbox_url) == []


def test_sdk_fetch_returns_the_status_the_message_has_reached(
    twilio: Client, sandbox_url: str
) -> None:
    sid = twilio.messages.create(to=RECIPIENT, from_=SENDER, body="hi").sid

    wait_for(lambda: twilio.messages(sid).fetch().status == "delivered")

    assert twilio.messages(sid).fetch().date_sent is not None


def test_recorded_messages_can_be_filtered_by_recipient_and_cleared(sandbox_url: str) -> None:
    send_raw(sandbox_url, To="+15551230001", Body="first")
    send_raw(sandbox_url, To="+15551230002", Body="second")
    send_raw(sandbox_url, To="+15551230001", Body="third")

    assert [m["body"] for m in recorded(sandbox_url)] == ["first", "second", "third"]
    assert [m["body"] for m in recorded(sandbox_url, to="+15551230001")] == ["first", "third"]
    assert (
        requests.get(f"{sandbox_url}/sandbox/messages?to=+15551230002").json()["messages"][0][
            "body"
        ]
        == "second"
    )
    requests.delete(f"{sandbox_url}/sandbox/messages").raise_for_status()
    assert recorded(sandbox_url) == [] and stats(sandbox_url)["received"] == 0


# --- injected faults --------------------------------------------------------------------------


def test_injected_429_carries_retry_after_and_the_next_call_succeeds(
    sandbox_url: str, twilio: Client
) -> None:
    inject(sandbox_url, error_code=20429, retry_after=3, count=1)

    throttled = send_raw(sandbox_url)
    accepted = send_raw(sandbox_url)

    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "3"
    assert (throttled.json()["code"], throttled.json()["status"]) == (20429, 429)
    assert accepted.status_code == 201
    assert [m["sid"] for m in recorded(sandbox_url)] == [accepted.json()["sid"]]
    assert stats(sandbox_url)["rejected_by_fault"] == 1


def test_injected_500_fails_exactly_count_calls(sandbox_url: str) -> None:
    inject(sandbox_url, http_status=500, count=2)

    codes = [send_raw(sandbox_url).status_code for _ in range(3)]

    assert codes == [500, 500, 201]
    assert requests.get(f"{sandbox_url}/sandbox/faults").json()["send_errors"] == []


def test_injected_errors_are_consumed_in_the_order_requested(
    twilio: Client, sandbox_url: str
) -> None:
    inject(sandbox_url, error_code=21610)
    inject(sandbox_url, error_code=20003)

    outcomes = []
    for _ in range(3):
        try:
            outcomes.append(twilio.messages.create(to=RECIPIENT, from_=SENDER, body="hi").status)
        except TwilioRestException as exc:
            outcomes.append((exc.code, exc.status))

    assert outcomes == [(21610, 400), (20003, 401), "queued"]


def test_fault_requests_with_unknown_keys_are_refused(sandbox_url: str) -> None:
    response = requests.post(f"{sandbox_url}/sandbox/faults", json={"latency": 150})

    assert response.status_code == 400
    assert requests.get(f"{sandbox_url}/sandbox/faults").json()["latency_ms"] == 0


def test_latency_delays_each_call_yet_calls_are_served_concurrently(sandbox_url: str) -> None:
    inject(sandbox_url, latency_ms=150)
    started = time.monotonic()
    assert send_raw(sandbox_url).status_code == 201
    assert time.monotonic() - started >= 0.15

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(lambda _: send_raw(sandbox_url).status_code, range(20)))
    elapsed = time.monotonic() - started

    assert codes == [201] * 20
    assert 0.15 <= elapsed < 1.5  # one after another would take 20 x 150 ms = 3 s


# --- status callbacks -------------------------------------------------------------------------


def signed_by_twilio(receiver: CallbackReceiver, post: CallbackPost) -> bool:
    url = receiver.base_url + post.path
    return bool(
        RequestValidator(AUTH_TOKEN).validate(url, post.form, post.headers["X-Twilio-Signature"])
    )


def test_callbacks_arrive_queued_sent_delivered_signed_over_the_exact_url(
    twilio: Client, sandbox_url: str, receiver: CallbackReceiver
) -> None:
    callback = f"{receiver.base_url}/twilio/status?workspace=7&k=a%20b"

    sid = twilio.messages.create(
        to=RECIPIENT, from_=SENDER, body="hi", status_callback=callback
    ).sid
    wait_for(lambda: len(receiver.posts()) == 3)

    assert receiver.statuses() == ["queued", "sent", "delivered"]
    for post in receiver.posts():
        assert post.path == "/twilio/status?workspace=7&k=a%20b"
        expected = {
            "MessageSid": sid,
            "SmsSid": sid,
            "AccountSid": ACCOUNT_SID,
            "From": SENDER,
            "To": RECIPIENT,
        }
        assert expected.items() <= post.form.items()
        assert (post.form["ApiVersion"], post.form["SmsStatus"]) == (
            "2010-04-01",
            post.form["MessageStatus"],
        )
        assert signed_by_twilio(receiver, post)
    forged = CallbackPost(
        receiver.posts()[0].path, {"X-Twilio-Signature": "forged"}, receiver.posts()[0].form
    )
    assert not signed_by_twilio(receiver, forged)
    wait_for(lambda: stats(sandbox_url)["callbacks_sent"] == 3)
    assert recorded(sandbox_url)[0]["status"] == "delivered"


def test_callback_outcome_fault_ends_the_message_undelivered_with_its_error_code(
    sandbox_url: str, receiver: CallbackReceiver
) -> None:
    inject(sandbox_url, callback_outcome={"status": "undelivered", "error_code": 30003}, count=1)

    send_raw(sandbox_url, StatusCallback=f"{receiver.base_url}/status")
    send_raw(sandbox_url, StatusCallback=f"{receiver.base_url}/status")
    wait_for(lambda: len(receiver.posts()) == 6)

    first, second = recorded(sandbox_url)
    by_sid = {
        m["sid"]: [p.form for p in receiver.posts() if p.form["MessageSid"] == m["sid"]]
        for m in (first, second)
    }
    assert [f["MessageStatus"] for f in by_sid[first["sid"]]] == ["queued", "sent", "undelivered"]
    assert by_sid[first["sid"]][-1]["ErrorCode"] == "30003"
    assert "ErrorCode" not in by_sid[second["sid"]][-1]
    assert (first["status"], first["error_code"], second["status"]) == (
        "undelivered",
        30003,
        "delivered",
    )


def test_shuffled_callbacks_send_delivered_before_sent_and_duplicates_send_each_twice(
    sandbox_url: str, receiver: CallbackReceiver
) -> None:
    inject(sandbox_url, shuffle_callbacks=True, duplicate_callbacks=True, callback_delay_ms=10)

    send_raw(sandbox_url, StatusCallback=f"{receiver.base_url}/status")
    wait_for(lambda: len(receiver.posts()) == 6)

    assert receiver.statuses() == ["delivered", "delivered", "sent", "sent", "queued", "queued"]
    assert all(signed_by_twilio(receiver, post) for post in receiver.posts())
    assert (
        recorded(sandbox_url)[0]["status"] == "delivered"
    )  # the true progression still ends delivered


def test_dropped_callbacks_post_nothing_while_the_status_still_advances(
    sandbox_url: str, receiver: CallbackReceiver
) -> None:
    inject(sandbox_url, drop_callbacks=True, callback_delay_ms=10)

    send_raw(sandbox_url, StatusCallback=f"{receiver.base_url}/status")
    wait_for(lambda: stats(sandbox_url)["deliveries_in_flight"] == 0)

    assert receiver.posts() == []
    assert recorded(sandbox_url)[0]["status"] == "delivered"


def test_unreachable_callback_receiver_is_retried_then_counted_failed(sandbox_url: str) -> None:
    inject(sandbox_url, callback_outcome={"status": "failed"}, callback_delay_ms=0)
    dead_url = f"http://127.0.0.1:{free_port()}/status"

    accepted = send_raw(sandbox_url, StatusCallback=dead_url)
    wait_for(lambda: stats(sandbox_url)["deliveries_in_flight"] == 0, timeout=10)

    assert accepted.status_code == 201
    counts = stats(sandbox_url)
    assert (counts["callbacks_failed"], counts["callback_retries"], counts["callbacks_sent"]) == (
        2,
        4,
        0,
    )
    assert recorded(sandbox_url)[0]["status"] == "failed"


# --- the message list (how a client looks up a send whose answer it lost) ---------------------


def list_raw(base: str, auth: tuple[str, str] = (ACCOUNT_SID, AUTH_TOKEN), account: str = ACCOUNT_SID,
             **query: str) -> requests.Response:
    return requests.get(f"{base}/2010-04-01/Accounts/{account}/Messages.json", params=query,
                        auth=auth, timeout=10)


def test_sdk_list_finds_the_accounts_messages_by_to_from_and_day_newest_first(
    twilio: Client, sandbox_url: str
) -> None:
    other_sender = "+15005550007"
    first = twilio.messages.create(to=RECIPIENT, from_=SENDER, body="first").sid
    twilio.messages.create(to="+15551230002", from_=SENDER, body="elsewhere")
    twilio.messages.create(to=RECIPIENT, from_=other_sender, body="other sender")
    third = twilio.messages.create(to=RECIPIENT, from_=SENDER, body="third").sid
    since = datetime.now(UTC) - timedelta(minutes=5)

    found = twilio.messages.list(to=RECIPIENT, from_=SENDER, date_sent_after=since, limit=20)

    assert [(m.sid, m.body) for m in found] == [(third, "third"), (first, "first")]
    assert all(m.to == RECIPIENT and m.from_ == SENDER and m.account_sid == ACCOUNT_SID for m in found)
    assert len(twilio.messages.list(limit=20)) == 4
    assert stats(sandbox_url)["lookups"] == 2


def test_day_filters_match_whole_days_and_a_message_not_yet_sent_on_its_creation_day(
    twilio: Client, sandbox_url: str
) -> None:
    inject(sandbox_url, callback_delay_ms=2_000)  # not sent for 4 s: longer than this test takes
    sid = twilio.messages.create(to=RECIPIENT, from_=SENDER, body="still queued").sid
    today = datetime.now(UTC)
    day = timedelta(days=1)

    def sids(**filters: Any) -> list[str]:
        return [m.sid for m in twilio.messages.list(to=RECIPIENT, limit=10, **filters)]

    # A timestamp later today still matches: Twilio filters by day, not by instant.
    assert sids(date_sent_after=today + timedelta(seconds=1)) == [sid]
    assert sids(date_sent=today) == sids(date_sent_before=today) == [sid]
    assert sids(date_sent_after=today + day) == [] and sids(date_sent_before=today - day) == []
    raw = list_raw(sandbox_url, To=RECIPIENT, **{"DateSent>": today.strftime("%Y-%m-%d")})
    assert [m["sid"] for m in raw.json()["messages"]] == [sid]
    assert raw.json()["messages"][0]["date_sent"] is None
    refused = list_raw(sandbox_url, **{"DateSent>": "yesterday"})
    assert (refused.status_code, refused.json()["code"]) == (400, 20001)
    assert recorded(sandbox_url)[0]["sent_at"] is None


def test_list_pages_like_twilio_and_new_messages_do_not_shift_the_pages(
    twilio: Client, sandbox_url: str
) -> None:
    sent = [twilio.messages.create(to=RECIPIENT, from_=SENDER, body=f"m{n}").sid for n in range(5)]

    first = list_raw(sandbox_url, To=RECIPIENT, PageSize="2")
    page = first.json()
    assert first.status_code == 200
    assert set(page) == {"messages", "start", "end", "page", "page_size", "uri", "first_page_uri",
                         "next_page_uri", "previous_page_uri"}
    assert [m["sid"] for m in page["messages"]] == [sent[4], sent[3]]
    assert set(page["messages"][0]) == TWILIO_FIELDS
    assert (page["page"], page["page_size"], page["start"], page["end"], page["previous_page_uri"]) == (0, 2, 0, 1, None)
    assert page["uri"].startswith(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json?")
    assert "PageToken=PA" + sent[3] in page["next_page_uri"] and "Page=1" in page["next_page_uri"]
    twilio.messages.create(to=RECIPIENT, from_=SENDER, body="arrived meanwhile")

    second = requests.get(sandbox_url + page["next_page_uri"], auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=5).json()

    assert [m["sid"] for m in second["messages"]] == [sent[2], sent[1]]
    assert (second["page"], second["start"]) == (1, 2) and second["previous_page_uri"] is not None
    assert [m.body for m in twilio.messages.list(to=RECIPIENT, page_size=2)] == [
        "arrived meanwhile", "m4", "m3", "m2", "m1", "m0"]
    last = list_raw(sandbox_url, To=RECIPIENT, PageSize="4", Page="1")
    assert [m["body"] for m in last.json()["messages"]] == ["m1", "m0"]
    assert last.json()["next_page_uri"] is None


def test_list_needs_the_accounts_own_credentials(sandbox_url: str) -> None:
    send_raw(sandbox_url)

    assert list_raw(sandbox_url, auth=(ACCOUNT_SID, "wrong")).status_code == 401
    assert list_raw(sandbox_url, PageSize="0").status_code == 400


# --- several Twilio accounts ------------------------------------------------------------------

TENANT_SID = "AC" + "7b" * 16
TENANT_TOKEN = "tenant-token-91d2"


def add_account(base: str, sid: str = TENANT_SID, token: str = TENANT_TOKEN) -> requests.Response:
    return requests.post(f"{base}/sandbox/accounts", json={"account_sid": sid, "auth_token": token}, timeout=5)


def test_an_added_account_sends_signs_its_callbacks_and_lists_only_its_own_messages(
    twilio: Client, sandbox_url: str, receiver: CallbackReceiver
) -> None:
    assert add_account(sandbox_url).status_code == 201
    tenant = Client(TENANT_SID, TENANT_TOKEN, environment={})
    tenant.api.base_url = sandbox_url
    callback = f"{receiver.base_url}/twilio/status"

    theirs = tenant.messages.create(to=RECIPIENT, from_=SENDER, body="tenant's", status_callback=callback)
    ours = twilio.messages.create(to=RECIPIENT, from_=SENDER, body="ours").sid
    wait_for(lambda: len(receiver.posts()) == 3)

    assert theirs.account_sid == TENANT_SID
    assert [m.sid for m in tenant.messages.list(to=RECIPIENT)] == [theirs.sid]
    assert [m.sid for m in twilio.messages.list(to=RECIPIENT)] == [ours]
    assert {m["account_sid"] for m in recorded(sandbox_url)} == {ACCOUNT_SID, TENANT_SID}
    for post in receiver.posts():
        assert post.form["AccountSid"] == TENANT_SID
        signature = post.headers["X-Twilio-Signature"]
        assert RequestValidator(TENANT_TOKEN).validate(receiver.base_url + post.path, post.form, signature)
        assert not RequestValidator(AUTH_TOKEN).validate(receiver.base_url + post.path, post.form, signature)
    with pytest.raises(TwilioRestException) as raised:
        twilio.messages(theirs.sid).fetch()
    assert raised.value.status == 404
    # One account's credentials never open another's path.
    assert send_raw(sandbox_url, auth=(ACCOUNT_SID, TENANT_TOKEN)).status_code == 401
    assert list_raw(sandbox_url, auth=(TENANT_SID, TENANT_TOKEN)).status_code == 401


def test_resetting_faults_or_accounts_removes_added_accounts_but_never_the_default(sandbox_url: str) -> None:
    tenant_url = f"{sandbox_url}/2010-04-01/Accounts/{TENANT_SID}/Messages.json"
    form = {"To": RECIPIENT, "From": SENDER, "Body": "hi"}
    for reset in ("faults", "accounts"):
        add_account(sandbox_url)
        assert requests.post(tenant_url, data=form, auth=(TENANT_SID, TENANT_TOKEN), timeout=5).status_code == 201

        requests.delete(f"{sandbox_url}/sandbox/{reset}", timeout=5).raise_for_status()

        assert requests.post(tenant_url, data=form, auth=(TENANT_SID, TENANT_TOKEN), timeout=5).status_code == 401
        assert requests.get(f"{sandbox_url}/sandbox/accounts", timeout=5).json() == {"accounts": [ACCOUNT_SID]}
        assert send_raw(sandbox_url).status_code == 201
    assert add_account(sandbox_url, sid="not-a-sid").status_code == 400
    assert add_account(sandbox_url, token="").status_code == 400


# --- rates, bursts and lost answers -----------------------------------------------------------


def test_error_rate_fails_about_that_share_of_sends_until_reset(sandbox_url: str) -> None:
    inject(sandbox_url, error_rate=0.2, http_status=500)

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: send_raw(sandbox_url), range(300)))

    failed = [a for a in answers if a.status_code != 201]
    assert 30 <= len(failed) <= 90  # 60 expected; this band fails by chance about once in 10^5 runs
    assert {(a.status_code, a.json()["code"]) for a in failed} == {(500, 20500)}
    assert len(recorded(sandbox_url)) == 300 - len(failed) == stats(sandbox_url)["received"]
    assert stats(sandbox_url)["rejected_by_fault"] == len(failed)
    inject(sandbox_url, error_rate=1, error_code=20503)
    assert send_raw(sandbox_url).status_code == 503
    requests.delete(f"{sandbox_url}/sandbox/faults").raise_for_status()
    assert send_raw(sandbox_url).status_code == 201


def test_throttle_burst_answers_429_with_retry_after_for_exactly_that_many_sends(
    twilio: Client, sandbox_url: str
) -> None:
    inject(sandbox_url, throttle_burst=3, retry_after=2)

    answers = [send_raw(sandbox_url) for _ in range(4)]

    assert [a.status_code for a in answers] == [429, 429, 429, 201]
    assert all(a.headers["Retry-After"] == "2" and a.json()["code"] == 20429 for a in answers[:3])
    inject(sandbox_url, throttle_burst=1)
    with pytest.raises(TwilioRestException) as raised:
        twilio.messages.create(to=RECIPIENT, from_=SENDER, body="hi")
    assert (raised.value.status, raised.value.code) == (429, 20429)


@pytest.mark.parametrize(
    "fault",
    [{"error_rate": 1.5}, {"error_rate": 0.5, "count": 2}, {"drop_rate": -0.1},
     {"throttle_burst": 2, "error_code": 21211}, {"timeout_after_receive": "yes"}, {"hang_seconds": "long"}],
)
def test_malformed_rate_and_lost_answer_faults_are_refused(sandbox_url: str, fault: dict[str, Any]) -> None:
    response = requests.post(f"{sandbox_url}/sandbox/faults", json=fault, timeout=5)

    assert response.status_code == 400
    assert requests.get(f"{sandbox_url}/sandbox/faults", timeout=5).json()["error_rate"] is None


def test_dropped_answer_records_the_message_but_the_client_sees_a_connection_abort(
    sandbox_url: str, receiver: CallbackReceiver
) -> None:
    inject(sandbox_url, drop_after_receive=True, count=2)
    session = requests.Session()  # one kept-alive connection, as a pooled client would use
    form = {"To": RECIPIENT, "From": SENDER, "StatusCallback": f"{receiver.base_url}/status"}

    for n in range(2):
        with pytest.raises(requests.ConnectionError, match="Connection aborted"):
            session.post(messages_url(sandbox_url), data=form | {"Body": f"dropped {n}"},
                         auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=5)
    answered = session.post(messages_url(sandbox_url), data=form | {"Body": "answered"},
                            auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=5)
    wait_for(lambda: len(receiver.posts()) == 9)

    assert answered.status_code == 201
    assert [m["body"] for m in recorded(sandbox_url)] == ["dropped 0", "dropped 1", "answered"]
    assert stats(sandbox_url)["answers_dropped"] == 2
    assert receiver.statuses().count("delivered") == 3  # the provider took them: they are delivered


def test_delayed_answer_outlasts_the_client_timeout_yet_the_message_is_sent_and_listed(
    twilio: Client, sandbox_url: str
) -> None:
    inject(sandbox_url, timeout_after_receive=True, hang_seconds=3)
    started = time.monotonic()

    with pytest.raises(requests.ReadTimeout):
        send_raw_with_timeout(sandbox_url, 0.5, Body="did it go?")

    assert time.monotonic() - started < 2
    assert stats(sandbox_url)["answers_delayed"] == 1
    wait_for(lambda: [m.status for m in twilio.messages.list(to=RECIPIENT)] == ["delivered"])
    assert [m.body for m in twilio.messages.list(to=RECIPIENT, date_sent_after=datetime.now(UTC))] == ["did it go?"]
    inject(sandbox_url, timeout_rate=1, hang_seconds=0.2)  # rates hold the answer the same way
    started = time.monotonic()
    assert send_raw(sandbox_url).status_code == 201 and time.monotonic() - started >= 0.2


def test_drop_rate_cuts_the_answer_of_recorded_sends_until_reset(sandbox_url: str) -> None:
    inject(sandbox_url, drop_rate=1)

    for _ in range(3):
        with pytest.raises(requests.ConnectionError):
            send_raw(sandbox_url)
    requests.delete(f"{sandbox_url}/sandbox/faults").raise_for_status()

    assert send_raw(sandbox_url).status_code == 201
    assert len(recorded(sandbox_url)) == 4 and stats(sandbox_url)["answers_dropped"] == 3


def send_raw_with_timeout(base: str, timeout: float, **form: str) -> requests.Response:
    fields = {"To": RECIPIENT, "From": SENDER, "Body": "hello"} | form
    return requests.post(messages_url(base), data=fields, auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=timeout)


# --- segment counting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension characters cost two septets
        ("€" * 81, 2),
        ("a" * 152 + "€" * 77, 3),  # 306 septets, but no escape pair is split across parts
        ("ж" * 70, 1),
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("😀" * 35, 1),  # emoji cost two UTF-16 units
        ("😀" * 36, 2),
        ("", 1),
    ],
)
def test_segments_follow_gsm7_and_ucs2_limits(body: str, segments: int) -> None:
    assert count_segments(body) == segments
