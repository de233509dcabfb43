"""The sandbox's inbox page shows a person what the sandbox received, newest first and escaped.

SMS are sent on Twilio's wire format and webhooks POSTed to receivers over real HTTP to the
session's sandbox process (the ``sandbox_url`` fixture of ``conftest``), then the page is read as a
browser would. The sandbox is reset (messages, faults, receivers) before every test.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from common.config import settings
from tests.support import Sandbox


@pytest.fixture(autouse=True)
def empty_sandbox(sandbox_url: str) -> None:
    Sandbox(sandbox_url).reset()


def send_sms(base: str, body: str, to: str = "+15551230001") -> dict[str, Any]:
    response = requests.post(
        f"{base}/2010-04-01/Accounts/{settings.twilio_account_sid}/Messages.json",
        data={"To": to, "From": "+15005550006", "Body": body},
        auth=(settings.twilio_account_sid, settings.twilio_auth_token),
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def post_webhook(base: str, name: str, payload: Any, webhook_id: str = "msg_1") -> None:
    headers = {"webhook-id": webhook_id, "X-Webhook-Event": "message.delivered", "X-Webhook-Attempt": "2"}
    requests.post(f"{base}/receiver/{name}", json=payload, headers=headers, timeout=10).raise_for_status()


def inbox(base: str, **query: str) -> requests.Response:
    return requests.get(f"{base}/sandbox/inbox", params=query, timeout=10)


def test_inbox_shows_received_sms_and_each_receivers_requests(sandbox_url: str) -> None:
    # Given an SMS the sandbox accepted and a webhook a receiver got
    sms = send_sms(sandbox_url, "Your code is 4821")
    post_webhook(sandbox_url, "acme-hooks", {"type": "message.delivered"}, webhook_id="msg_2f9c")

    # When the inbox is opened
    page = inbox(sandbox_url)

    # Then it is an HTML page with the SMS and the receiver's request and where to point a webhook
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<script" not in page.text.lower()  # no JavaScript needed
    assert "Your code is 4821" in page.text and sms["sid"] in page.text and "+15551230001" in page.text
    assert "acme-hooks" in page.text and "msg_2f9c" in page.text
    assert "message.delivered" in page.text and "X-Webhook-Attempt: 2" in page.text
    assert f"{sandbox_url}/receiver/acme-hooks" in page.text
    assert f"{sandbox_url}/receiver/&lt;name&gt;" in page.text


def test_the_sandbox_page_has_a_section_per_channel(sandbox_url: str) -> None:
    send_sms(sandbox_url, "on the SMS channel")
    page = requests.get(f"{sandbox_url}/sandbox", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    for heading in ("SMS received", "Email received", "WhatsApp Cloud received", "WhatsApp QR (WAHA) received"):
        assert heading in page.text
    sms_section = page.text.split("SMS received", 1)[1].split("Email received", 1)[0]
    assert "on the SMS channel" in sms_section  # each message under its own channel
    assert "No Email message received yet." in page.text


def test_recorded_values_are_escaped(sandbox_url: str) -> None:
    # Given an SMS and a webhook whose bodies and headers carry markup
    send_sms(sandbox_url, "<script>alert('sms')</script>")
    post_webhook(sandbox_url, "xss", {"note": "<script>alert('hook')</script>"}, webhook_id="<img src=x>")

    page = inbox(sandbox_url).text

    # Then the markup is shown as text, never as elements
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;alert(&#39;sms&#39;)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(&#39;hook&#39;)&lt;/script&gt;" in page
    assert "&lt;img src=x&gt;" in page


def test_sms_are_listed_newest_first(sandbox_url: str) -> None:
    send_sms(sandbox_url, "first of two")
    send_sms(sandbox_url, "second of two")

    page = inbox(sandbox_url).text

    assert page.index("second of two") < page.index("first of two")


def test_each_receiver_shows_its_newest_twenty_requests_first(sandbox_url: str) -> None:
    # Given 25 webhooks to one receiver
    for n in range(25):
        post_webhook(sandbox_url, "busy", {"n": n}, webhook_id=f"msg_{n:02d}")

    page = inbox(sandbox_url).text

    # Then the newest 20 are shown, newest first, and all 25 are counted
    shown = [f"msg_{n:02d}" for n in range(24, 4, -1)]
    positions = [page.index(webhook_id) for webhook_id in shown]
    assert positions == sorted(positions)
    assert all(f"msg_{n:02d}" not in page for n in range(5))
    assert "25 requests" in page


def test_a_long_body_is_cut_to_its_first_300_characters(sandbox_url: str) -> None:
    # Given a body whose first 300 characters are '{"text": "' and 290 a's
    post_webhook(sandbox_url, "long", {"text": "a" * 290 + "b" * 100})

    page = inbox(sandbox_url).text

    assert "a" * 290 + "…" in page and "b" * 10 not in page
    assert "first 300 of 402 characters" in page


def test_a_receiver_can_be_shown_alone(sandbox_url: str) -> None:
    # Given two receivers and an SMS
    send_sms(sandbox_url, "not on the receiver's page")
    post_webhook(sandbox_url, "shown", {"x": 1}, webhook_id="msg_shown")
    post_webhook(sandbox_url, "hidden", {"x": 2}, webhook_id="msg_hidden")

    # When the inbox is asked for one of them
    page = inbox(sandbox_url, receiver="shown")

    # Then only that receiver is on the page
    assert page.status_code == 200
    assert "msg_shown" in page.text
    assert "msg_hidden" not in page.text and "/receiver/hidden" not in page.text
    assert "not on the receiver" not in page.text


def test_a_receiver_never_used_is_shown_empty_and_a_bad_name_is_not_found(sandbox_url: str) -> None:
    unused = inbox(sandbox_url, receiver="not-yet")
    bad = inbox(sandbox_url, receiver="<b>bad</b>")

    assert unused.status_code == 200 and f"{sandbox_url}/receiver/not-yet" in unused.text
    assert "No request received yet" in unused.text
    assert bad.status_code == 404 and bad.headers["Content-Type"].startswith("text/html")
    assert "<b>" not in bad.text
