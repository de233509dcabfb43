"""The email channel end to end: pooled SMTP sessions to the sandbox's real SMTP server (aiosmtpd),
the exact MIME it received, the relay's signed events and inbound mail at ingest, the SMTP
error table (4yz retried, 5.1.x suppressed, 421 reconnected, a lost answer after DATA), the
send's deadline (a slow relay, a busy pool, a slow attachment), pools closed when replaced or
idle, accounts and receipts kept apart per workspace, and the RFC 8058 one-click unsubscribe link."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from common import apikeys, dispatch, intake, signing
from common.config import settings
from common.db.connection import fetch, fetch_dicts, transaction
from common.errors import TransientError
from common.providers import config as channel_config
from common.providers import smtp_email
from common.providers.smtp_email import (
    EMAIL,
    Deadline,
    default_account,
    email_account,
    unsubscribe_token,
)
from services.senders import loop
from tests.support import history, message, running_workers, status_of, wait_for

FAULTS = "/sandbox/faults?channel=email"


@pytest.fixture
def relay(sandbox) -> Iterator[Any]:
    """The sandbox with the email fault plan cleared before and after the test."""
    requests.delete(f"{sandbox.url}{FAULTS}", timeout=5).raise_for_status()
    yield sandbox
    requests.delete(f"{sandbox.url}{FAULTS}", timeout=5).raise_for_status()


def fault(relay, **spec: Any) -> None:
    requests.post(f"{relay.url}{FAULTS}", json=spec, timeout=5).raise_for_status()


def emails(relay) -> list[dict[str, Any]]:
    return requests.get(f"{relay.url}/sandbox/messages", params={"channel": "email"}, timeout=5).json()["messages"]


def accept(workspace, to: str, body: str = "Hello in text", priority: str = "urgent", **content: Any) -> int:
    """Accept an email and hand it to processing, as POST /v1/messages does."""
    with transaction():
        row = intake.insert(workspace["id"], {"channel": "email", "to": to, "body": body, "priority": priority,
                                              "content": content}, None)
    assert row is not None
    dispatch.to_stage("processing", priority, [row["id"]])
    return row["id"]


def routed(workspace_id: int, to: str, **content: Any) -> int:
    """A routed email row, for tests that drive the sender loop themselves."""
    with transaction():
        return fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, content)"
                     " VALUES (%s, 'email', %s, 'x', 'routed', %s::jsonb) RETURNING id",
                     (workspace_id, to, json.dumps(content)))[0][0]


def suppressed(workspace_id: int, address: str) -> list[dict[str, Any]]:
    with transaction():
        return fetch_dicts("SELECT reason, source FROM suppression WHERE workspace_id = %s AND channel = 'email'"
                           " AND address = %s", (workspace_id, address))


def signed_post(url: str, payload: dict[str, Any], secret: str | None = None,
                timestamp: str | None = None) -> requests.Response:
    """POST as the relay does, signed by the standardwebhooks library (not our own signer)."""
    body = json.dumps(payload)
    msg_id, now = f"msg_{time.time_ns()}", time.time()
    signature = Webhook(secret or settings.email_webhook_secret).sign(msg_id, datetime.fromtimestamp(now, UTC), body)
    headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp or str(int(now)), "webhook-signature": signature,
               "content-type": "application/json"}
    return requests.post(url, data=body, headers=headers, timeout=5)


def sent(workspace_id: int, to: str) -> tuple[int, str]:
    """A message sent through the default account with the relay's events dropped (the test
    posts them): its id and Message-ID."""
    message_id = routed(workspace_id, to)
    loop.deliver(EMAIL, [message_id])
    row = message(message_id)
    assert row["status"] == "sent"
    return message_id, row["provider_message_id"]


def test_bulk_email_is_the_exact_mime_message_and_is_delivered(workspace, relay, broker, ingest_url):
    to = "ana@example.org"
    with running_workers(broker):
        message_id = accept(workspace, to, priority="bulk", subject="Spring sale ✓", html="<p>Hello in <b>HTML</b></p>",
                            reply_to="help@example.com",
                            attachments=[{"url": f"{relay.url}/healthz", "filename": "health.json"}])
        wait_for(lambda: status_of(message_id) == "delivered", what="the relay's delivered event")
    assert history(message_id) == ["accepted", "queued", "routed", "sending", "sent", "delivered"]
    [got] = emails(relay)
    row = message(message_id)
    assert row["provider"] == "smtp" and row["provider_message_id"] == got["headers"]["Message-ID"] == got["sid"]
    assert row["provider_account"] == default_account().key
    assert got["structure"] == ["multipart/mixed", "multipart/alternative", "text/plain", "text/html", "application/json"]
    assert (got["to"], got["from"], got["subject"]) == (to, settings.email_from, "Spring sale ✓")
    assert got["body"].strip() == "Hello in text" and got["html"].strip() == "<p>Hello in <b>HTML</b></p>"
    assert got["headers"]["Reply-To"] == "help@example.com"
    assert got["attachments"] == [{"filename": "health.json", "content_type": "application/json",
                                   "size": len(requests.get(f"{relay.url}/healthz", timeout=5).content)}]
    assert got["headers"]["List-Unsubscribe"] == f"<{ingest_url}/u/{unsubscribe_token(workspace['id'], to)}>"
    assert got["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert got["size"] > 0 and got["status"] == "delivered"


def test_urgent_email_without_html_is_plain_text_and_has_no_unsubscribe_headers(workspace, relay, broker):
    with running_workers(broker):
        message_id = accept(workspace, "bo@example.org", subject="Your code")
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered")
    [got] = emails(relay)
    assert got["structure"] == ["text/plain"] and got["html"] is None
    assert "List-Unsubscribe" not in got["headers"] and "List-Unsubscribe-Post" not in got["headers"]


def test_transient_4yz_is_retried_then_sent(workspace, relay, broker):
    fault(relay, error_code=451, count=2)
    with running_workers(broker):
        message_id = accept(workspace, "cy@example.org")
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered after two 451s")
    row = message(message_id)
    assert row["attempts"] == 3 and row["error_code"] == "451 4.3.0"
    assert history(message_id).count("sending") == 3
    assert len(emails(relay)) == 1 and relay.stats()["rejected_by_fault"] == 2


def test_550_user_unknown_fails_without_retry_and_suppresses_the_address(workspace, relay, broker):
    fault(relay, error_code=550)
    with running_workers(broker):
        first = accept(workspace, "gone@example.org")
        wait_for(lambda: status_of(first) == "failed", what="failed")
        second = accept(workspace, "gone@example.org")
        wait_for(lambda: status_of(second) == "suppressed", what="the next message suppressed at routing")
    row = message(first)
    assert (row["attempts"], row["error_code"]) == (1, "550 5.1.1")
    assert history(first) == ["accepted", "queued", "routed", "sending", "failed"]
    assert suppressed(workspace["id"], "gone@example.org") == [{"reason": "bounce", "source": "smtp 550 5.1.1"}]
    assert "sending" not in history(second)
    assert emails(relay) == []


def test_421_closes_the_session_and_the_sender_reconnects_within_the_attempt(workspace, relay, broker):
    with running_workers(broker):
        warm = accept(workspace, "di@example.org")  # leaves an open session in the pool
        wait_for(lambda: status_of(warm) == "delivered", what="delivered")
        fault(relay, error_code=421)
        message_id = accept(workspace, "di@example.org", body="after a 421")
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered on a fresh session")
    assert message(message_id)["attempts"] == 1
    assert history(message_id) == ["accepted", "queued", "routed", "sending", "sent", "delivered"]
    assert [m["body"].strip() for m in emails(relay)] == ["Hello in text", "after a 421"]
    assert relay.stats()["rejected_by_fault"] == 1  # the 421 was given, and the same attempt went on


def test_421_that_persists_is_transient(workspace, relay):
    fault(relay, error_code=421, count=2)
    message_id = routed(workspace["id"], "ed@example.org")
    followups = loop.deliver(EMAIL, [message_id])
    row = message(message_id)
    assert (row["status"], row["error_code"]) == ("routed", "421") and followups.retries
    assert emails(relay) == []


def test_answer_lost_after_data_is_an_unknown_outcome(workspace, relay):
    fault(relay, drop_after_receive=True)
    message_id = routed(workspace["id"], "fay@example.org")
    loop.deliver(EMAIL, [message_id])
    row = message(message_id)
    assert (row["status"], row["error_code"]) == ("sending", "outcome_unknown")
    assert len(emails(relay)) == 1  # the relay has it: sending again blindly would send it twice


def test_bounce_dsn_fails_the_message_and_suppresses_the_address(workspace, relay, broker):
    with running_workers(broker):
        message_id = accept(workspace, "bounce-gil@example.org")
        wait_for(lambda: status_of(message_id) == "failed", what="the bounce applied")
        complained = accept(workspace, "complain-hal@example.org")
        wait_for(lambda: suppressed(workspace["id"], "complain-hal@example.org"), what="the complaint")
    assert history(message_id) == ["accepted", "queued", "routed", "sending", "sent", "failed"]
    assert message(message_id)["error_code"] == "5.1.1"
    assert suppressed(workspace["id"], "bounce-gil@example.org") == [{"reason": "bounce", "source": "smtp bounced 5.1.1"}]
    assert status_of(complained) == "delivered"
    assert suppressed(workspace["id"], "complain-hal@example.org")[0]["reason"] == "complaint"


def test_one_click_post_unsubscribes_get_does_not_and_a_forged_token_is_404(workspace, ingest_url):
    address = "ivy@example.org"
    url = f"{ingest_url}/u/{unsubscribe_token(workspace['id'], address)}"
    page = requests.get(url, timeout=5, allow_redirects=False)
    assert page.status_code == 200 and 'method="post"' in page.text
    assert suppressed(workspace["id"], address) == []
    done = requests.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=5, allow_redirects=False)
    assert done.status_code == 200
    assert suppressed(workspace["id"], address) == [{"reason": "opt_out", "source": "list-unsubscribe"}]
    forged = unsubscribe_token(workspace["id"], "ivy@example.org").split(".")[0] + "." + "A" * 22
    other = unsubscribe_token(workspace["id"], "x@example.org").split(".")[1]  # a real signature of another address
    for token in (forged, unsubscribe_token(workspace["id"], address).split(".")[0] + "." + other, "nonsense"):
        assert requests.post(f"{ingest_url}/u/{token}", timeout=5, allow_redirects=False).status_code == 404
        assert requests.get(f"{ingest_url}/u/{token}", timeout=5, allow_redirects=False).status_code == 404


def test_inbound_email_is_stored_once_when_posted_twice(workspace, relay):
    answer = requests.post(f"{relay.url}/sandbox/email/inbound", timeout=10, json={
        "from": "Jo Doe <jo@example.org>", "to": "support@example.com", "subject": "Help", "text": "My order?",
        "html": "<p>My order?</p>", "times": 2}).json()
    assert answer["statuses"] == [200, 200]
    with transaction():
        rows = fetch_dicts("SELECT direction, status, from_addr, to_addr, body, content, provider_message_id, conversation_id"
                           " FROM message WHERE channel = 'email'")
    assert len(rows) == 1
    row = rows[0]
    assert (row["direction"], row["status"], row["from_addr"], row["to_addr"], row["body"]) == \
        ("inbound", "received", "jo@example.org", "support@example.com", "My order?")
    assert row["provider_message_id"] == answer["email"]["message_id"]
    assert row["content"]["subject"] == "Help" and row["content"]["html"] == "<p>My order?</p>"
    assert row["content"]["sender_name"] == "Jo Doe" and row["conversation_id"] is not None


def test_bad_or_missing_signature_is_403_and_changes_nothing(workspace, relay, ingest_url):
    fault(relay, drop_callbacks=True)  # the relay stays silent: the message waits at sent
    message_id = routed(workspace["id"], "kim@example.org")
    loop.deliver(EMAIL, [message_id])
    pid = message(message_id)["provider_message_id"]
    delivered = {"type": "delivered", "message_id": pid, "recipient": "kim@example.org"}
    bounced = {"type": "bounced", "message_id": pid, "recipient": "kim@example.org", "status": "5.1.1"}
    wrong_secret = "whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="
    refused = [
        signed_post(f"{ingest_url}/webhooks/email/events", delivered, wrong_secret),
        signed_post(f"{ingest_url}/webhooks/email/events", bounced, wrong_secret),
        requests.post(f"{ingest_url}/webhooks/email/events", json=delivered, timeout=5),  # no signature at all
        signed_post(f"{ingest_url}/webhooks/email/inbound", {"from": "kim@example.org", "message_id": "<in@x>",
                                                             "text": "forged"}, wrong_secret),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403, 403]
    assert status_of(message_id) == "sent" and suppressed(workspace["id"], "kim@example.org") == []
    with transaction():
        kept = fetch("SELECT kind, signature_valid FROM provider_event WHERE provider = 'smtp' ORDER BY id")
        inbound = fetch("SELECT count(*) FROM message WHERE direction = 'inbound'")[0][0]
    assert kept == [("status", False), ("status", False), ("status", False), ("inbound", False)] and inbound == 0
    assert signed_post(f"{ingest_url}/webhooks/email/events", delivered).status_code == 200
    assert status_of(message_id) == "delivered"


def budget_seconds() -> float:
    """What each send has before DATA (and again for DATA and its answer)."""
    return min(smtp_email.settings.postroom_sending_timeout_seconds / 3, smtp_email.settings.postroom_provider_timeout_seconds)


def test_a_relay_slow_before_data_is_cut_short_by_the_send_deadline(workspace, relay):
    """Each reply comes within the per-operation timeout, but the transaction would outlast the
    send's deadline: the send gives up before DATA (nothing delivered) and the message is retried,
    long before the reconciler could take it for abandoned while it is still being sent."""
    latency = budget_seconds() + 0.8
    assert latency < settings.postroom_provider_timeout_seconds
    fault(relay, latency_ms=int(latency * 1000))  # the sandbox answers a slow- recipient's RCPT this late
    message_id = routed(workspace["id"], "slow-lu@example.org")
    started = time.monotonic()
    followups = loop.deliver(EMAIL, [message_id])
    assert time.monotonic() - started < latency
    row = message(message_id)
    assert (row["status"], row["error_code"]) == ("routed", "deadline") and followups.retries
    assert emails(relay) == []


def test_no_answer_to_the_final_dot_by_the_deadline_is_an_unknown_outcome(workspace, relay, monkeypatch):
    """DATA and its answer get one more budget: an answer later than that (though within the
    per-operation timeout) is not waited for."""
    monkeypatch.setattr(smtp_email, "settings", replace(settings, postroom_sending_timeout_seconds=3.0))
    assert budget_seconds() == 1.0
    fault(relay, timeout_after_receive=True, hang_seconds=2.6)
    message_id = routed(workspace["id"], "hal@example.org")
    started = time.monotonic()
    loop.deliver(EMAIL, [message_id])
    assert time.monotonic() - started < 2.5
    row = message(message_id)
    assert (row["status"], row["error_code"]) == ("sending", "outcome_unknown")
    assert len(emails(relay)) == 1


def test_a_send_waits_only_briefly_for_a_free_session(workspace, relay, monkeypatch):
    monkeypatch.setattr(smtp_email, "settings", replace(settings, smtp_pool_size=1, postroom_sender_concurrency=1))
    monkeypatch.setattr(smtp_email, "SESSION_WAIT_SECONDS", 0.3)
    account = replace(default_account(), sender="busy@example.com")  # a pool of its own
    pool = smtp_email.pool_for(account)
    assert pool.size == 3  # one session for each lane's call in flight, whatever SMTP_POOL_SIZE says
    row = {"id": 0, "workspace_id": workspace["id"], "to_addr": "mo@example.org", "body": "x", "content": {},
           "priority": "urgent"}
    calls = ThreadPoolExecutor(1)
    try:
        with ExitStack() as held:
            for _ in range(pool.size):
                held.enter_context(pool.session(Deadline.starting_now()))
            with pytest.raises(TransientError) as refused:
                calls.submit(smtp_email.send, account, row).result(timeout=5)
    finally:
        calls.shutdown(wait=False)
        smtp_email.close_pools()
    assert refused.value.code == "sessions_busy"
    assert emails(relay) == []


@pytest.fixture
def broken_server() -> Iterator[str]:
    """A real HTTP server that answers 200 with a Content-Length of 1000 and sends only 10 bytes:
    then ``/cut`` closes the connection and ``/stall`` holds it open."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    done = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            request = conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\nContent-Length: 1000\r\n\r\n" + b"%" * 10)
            if b" /stall " in request:
                done.wait(10)

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    done.set()
    server.join(5)
    listener.close()


def test_an_attachment_cut_short_or_stalled_is_transient_within_the_deadline(workspace, relay, broken_server):
    """Errors of the body (urllib3's, not requests') are transient, not unknown outcomes: nothing
    was sent yet. A stalled body is given up at the send's deadline, not a read timeout later."""
    for path in ("cut", "stall"):
        message_id = routed(workspace["id"], f"{path}@example.org", attachments=[{"url": f"{broken_server}/{path}"}])
        started = time.monotonic()
        followups = loop.deliver(EMAIL, [message_id])
        assert time.monotonic() - started < budget_seconds() + 1.0
        row = message(message_id)
        assert (row["status"], row["error_code"]) == ("routed", "attachment") and followups.retries, path
    assert emails(relay) == []


def test_a_replaced_idle_or_surplus_pool_closes_its_sessions(relay, monkeypatch):
    smtp_email.close_pools()

    def used(account: smtp_email.EmailAccount) -> Any:
        with smtp_email.pool_for(account).session(Deadline.starting_now()) as smtp:
            assert smtp.noop()[0] == 250
        return smtp  # back in its pool, open and idle

    first = replace(default_account(), sender="pool-a@example.com")
    session = used(first)
    rotated = replace(first, password="rotated")  # same key, new credentials
    assert smtp_email.pool_for(rotated).account == rotated
    assert session.sock is None  # the replaced pool closed its idle session

    session = used(rotated)
    monkeypatch.setattr(smtp_email, "POOL_IDLE_SECONDS", 0.0)
    monkeypatch.setattr(smtp_email, "_next_sweep", 0.0)
    smtp_email.pool_for(replace(first, sender="pool-b@example.com"))
    assert session.sock is None and rotated.key not in smtp_email._pools  # idle too long: closed, dropped

    monkeypatch.setattr(smtp_email, "POOL_IDLE_SECONDS", 600.0)
    monkeypatch.setattr(smtp_email, "MAX_POOLS", 2)
    oldest = used(replace(first, sender="pool-c@example.com"))
    used(replace(first, sender="pool-d@example.com"))
    smtp_email.pool_for(replace(first, sender="pool-e@example.com"))
    assert len(smtp_email._pools) == 2 and oldest.sock is None
    smtp_email.close_pools()


def test_a_bounce_not_about_the_address_fails_the_message_without_suppressing(workspace, relay, ingest_url):
    fault(relay, drop_callbacks=True)
    for status in ("5.2.2", "5.7.1", "4.4.7", "5.1.8"):  # mailbox full, policy, expired, our sender
        to = f"full-{status.replace('.', '')}@example.org"
        message_id, pid = sent(workspace["id"], to)
        bounced = {"type": "bounced", "message_id": pid, "recipient": to, "status": status}
        assert signed_post(f"{ingest_url}/webhooks/email/events", bounced).status_code == 200
        assert (status_of(message_id), message(message_id)["error_code"]) == ("failed", status)
        assert suppressed(workspace["id"], to) == [], status


def test_a_timestamp_of_non_ascii_digits_is_refused_not_an_error(workspace, ingest_url):
    delivered = {"type": "delivered", "message_id": "<sup@example.org>"}
    answer = signed_post(f"{ingest_url}/webhooks/email/events", delivered, timestamp="²")  # "²".isdigit() is True
    assert answer.status_code == 403
    assert not signing.verify([settings.email_webhook_secret], "msg_1", "²", b"{}", "v1,AAAA")


def test_text_postgresql_cannot_store_is_replaced_not_an_error(workspace, relay, ingest_url):
    fault(relay, drop_callbacks=True)
    message_id, pid = sent(workspace["id"], "nul@example.org")
    bounced = {"type": "bounced", "message_id": pid, "recipient": "nul@example.org", "status": "5.2.2",
               "diagnostic": "mailbox full\u0000\ud800", "account": "no\u0000such"}
    assert signed_post(f"{ingest_url}/webhooks/email/events", bounced).status_code == 200
    row = message(message_id)
    assert (row["status"], row["last_error"]) == ("failed", "mailbox full\ufffd\ufffd")
    inbound = {"message_id": "<nul\u0000@example.org>", "from": "Nul \ud800 <nul@example.org>", "subject": "a\u0000b",
               "text": "hi\u0000", "html": "<p>\udfff</p>"}
    assert signed_post(f"{ingest_url}/webhooks/email/inbound", inbound).status_code == 200
    with transaction():
        [stored] = fetch_dicts("SELECT body, content, provider_message_id FROM message WHERE direction = 'inbound'")
    assert (stored["body"], stored["content"]["subject"]) == ("hi\ufffd", "a\ufffdb")
    assert stored["provider_message_id"] == "<nul\ufffd@example.org>"


def test_sandbox_inbound_times_must_be_from_1_to_5(workspace, relay):
    for times in ("x", 0, 6, True, 2.5, 10**9):
        answer = requests.post(f"{relay.url}/sandbox/email/inbound", timeout=10,
                               json={"from": "jo@example.org", "times": times})
        assert answer.status_code == 400, times
    with transaction():
        assert fetch("SELECT count(*) FROM message WHERE direction = 'inbound'")[0][0] == 0


def test_a_workspace_account_is_its_own_and_only_its_secret_moves_its_mail(workspace, relay, ingest_url):
    """Relays give customers the same login name (SendGrid's ``apikey``): a workspace's account is
    keyed by the workspace, so pacing, pauses and receipts are never shared, and an event moves or
    suppresses only messages of a workspace whose secret signed it."""
    relay_settings = {"host": settings.smtp_host, "port": settings.smtp_port, "security": "none"}
    shared_login = [smtp_email.account_of(channel_config.ChannelConfig(
        ws, "email", "smtp", f"news@{ws}.example", f"news@{ws}.example", 1.0, relay_settings,
        {"username": "apikey", "password": "p"})) for ws in (7, 8)]
    assert shared_login[0].key == f"ws7:apikey@{settings.smtp_host}:{settings.smtp_port}" != shared_login[1].key
    assert default_account().key == f"{settings.email_from}@{settings.smtp_host}:{settings.smtp_port}"

    own, others = signing.new_secret(), signing.new_secret()
    with transaction():
        other = apikeys.create_workspace("globex")
        channel_config.save(workspace["id"], "email", "smtp", "news@acme.example", {"webhook_secret": own},
                            "news@acme.example", 0.0, relay_settings)
        channel_config.save(other, "email", "smtp", "news@globex.example", {"webhook_secret": others},
                            "news@globex.example", 0.0, relay_settings)
        assert email_account(workspace["id"]).key != email_account(other).key
    fault(relay, drop_callbacks=True)
    message_id = routed(workspace["id"], "pat@example.org")
    loop.deliver(EMAIL, [message_id])
    row = message(message_id)
    assert row["provider_account"] == f"ws{workspace['id']}:news@acme.example@{settings.smtp_host}:{settings.smtp_port}"
    assert row["status"] == "sent" and emails(relay)[0]["from"] == "news@acme.example"

    events = f"{ingest_url}/webhooks/email/events"
    bounce = {"type": "bounced", "message_id": row["provider_message_id"], "recipient": "pat@example.org", "status": "5.1.1"}
    assert signed_post(events, {**bounce, "type": "delivered"}).status_code == 200  # the environment's secret
    assert signed_post(events, bounce).status_code == 200
    assert signed_post(events, {**bounce, "account": "news@globex.example"}, others).status_code == 200
    assert signed_post(events, {**bounce, "account": "news@acme.example"}, others).status_code == 403
    assert status_of(message_id) == "sent"
    assert suppressed(workspace["id"], "pat@example.org") == suppressed(other, "pat@example.org") == []

    assert signed_post(events, {**bounce, "account": "news@acme.example"}, own).status_code == 200
    assert status_of(message_id) == "failed"
    assert suppressed(workspace["id"], "pat@example.org") == [{"reason": "bounce", "source": "smtp bounced 5.1.1"}]
    assert suppressed(other, "pat@example.org") == []
