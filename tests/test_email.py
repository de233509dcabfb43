"""The email channel end to end: pooled SMTP sessions to the sandbox's real SMTP server (aiosmtpd),
the exact MIME it received, the relay's signed events and inbound mail at ingest, the SMTP
error table (4yz retried, 5.1.x suppressed, 421 reconnected, a lost answer after DATA), and the
RFC 8058 one-click unsubscribe link."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from common import dispatch, intake
from common.config import settings
from common.db.connection import fetch, fetch_dicts, transaction
from common.providers.smtp_email import EMAIL, default_account, unsubscribe_token
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


def suppressed(workspace_id: int, address: str) -> list[dict[str, Any]]:
    with transaction():
        return fetch_dicts("SELECT reason, source FROM suppression WHERE workspace_id = %s AND channel = 'email'"
                           " AND address = %s", (workspace_id, address))


def signed_post(url: str, payload: dict[str, Any], secret: str | None = None) -> requests.Response:
    """POST as the relay does, signed by the standardwebhooks library (not our own signer)."""
    body = json.dumps(payload)
    msg_id, now = f"msg_{time.time_ns()}", time.time()
    signature = Webhook(secret or settings.email_webhook_secret).sign(msg_id, datetime.fromtimestamp(now, UTC), body)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now)), "webhook-signature": signature,
               "content-type": "application/json"}
    return requests.post(url, data=body, headers=headers, timeout=5)


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
    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status) VALUES (%s, 'email',"
                           " 'ed@example.org', 'x', 'routed') RETURNING id", (workspace["id"],))[0][0]
    followups = loop.deliver(EMAIL, [message_id])
    row = message(message_id)
    assert (row["status"], row["error_code"]) == ("routed", "421") and followups.retries
    assert emails(relay) == []


def test_answer_lost_after_data_is_an_unknown_outcome(workspace, relay):
    fault(relay, drop_after_receive=True)
    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status) VALUES (%s, 'email',"
                           " 'fay@example.org', 'x', 'routed') RETURNING id", (workspace["id"],))[0][0]
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
    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status) VALUES (%s, 'email',"
                           " 'kim@example.org', 'x', 'routed') RETURNING id", (workspace["id"],))[0][0]
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
