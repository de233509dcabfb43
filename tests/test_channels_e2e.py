"""Every channel end to end through real processes: gunicorn ingest, one `postroom worker` per
stage and channel, the scheduler, and the sandbox imitating Twilio, the Graph API, WAHA and an SMTP
relay. Receipts come back signed over HTTP and the API shows the final status; inbound messages
land once in their conversation even when the provider sends the webhook twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests

from services.local.stack import Stack, private_env
from tests.support import wait_for


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    env = private_env(tmp_path_factory.mktemp("channels"), 14500 + (os.getpid() + 2000) % 4000,
                      POSTROOM_API_WORKERS="1", POSTROOM_SENDER_CONCURRENCY="16",
                      WAHA_PACE_SECONDS="0.2", WAHA_PACE_JITTER_SECONDS="0")
    with Stack(env=env) as running:
        running.key = running.start()
        yield running


def api(stack: Stack, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, f"http://127.0.0.1:{stack.cfg.postroom_api_port}{path}",
                            headers={"Authorization": f"Bearer {stack.key}"}, timeout=10, **kwargs)


def send(stack: Stack, **message) -> int:
    response = api(stack, "POST", "/v1/messages", json=message)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def status(stack: Stack, message_id: int) -> str:
    return api(stack, "GET", f"/v1/messages/{message_id}").json()["status"]


def sandbox(stack: Stack, method: str, path: str, **kwargs) -> requests.Response:
    response = requests.request(method, f"{stack.cfg.sandbox_url}{path}", timeout=10, **kwargs)
    assert response.status_code < 300, response.text
    return response


def conversation_bodies(stack: Stack, channel: str) -> list[str]:
    conversations = api(stack, "GET", "/v1/conversations", params={"channel": channel}).json()["conversations"]
    return [m["body"] for c in conversations
            for m in api(stack, "GET", f"/v1/conversations/{c['id']}/messages").json()["messages"]]


@pytest.mark.parametrize(("message", "final"), [
    ({"channel": "sms", "to": "+15005550006", "body": "sms end to end"}, "delivered"),
    ({"channel": "email", "to": "ada@example.com", "subject": "Hello", "body": "email end to end",
      "html": "<p>email end to end</p>", "priority": "bulk"}, "delivered"),
    ({"channel": "whatsapp_cloud", "to": "+15005550006", "body": "cloud end to end"}, "read"),
    ({"channel": "whatsapp_qr", "to": "+15005550006", "body": "qr end to end"}, "read"),
])
def test_each_channel_sends_on_its_wire_format_and_receipts_bring_the_final_status(stack, message, final):
    if message["channel"] == "whatsapp_cloud":  # the customer wrote first: a free-form answer is inside the 24-hour window
        sandbox(stack, "POST", "/sandbox/whatsapp_cloud/inbound", json={"from": message["to"], "text": "opens the window"})
        wait_for(lambda: "opens the window" in conversation_bodies(stack, "whatsapp_cloud"), what="the inbound message")
    message_id = send(stack, **message)
    wait_for(lambda: status(stack, message_id) == final, timeout=30, what=f"{message['channel']} {final}")
    view = api(stack, "GET", f"/v1/messages/{message_id}").json()
    assert [e["status"] for e in view["events"]][:5] == ["accepted", "queued", "routed", "sending", "sent"]
    received = sandbox(stack, "GET", "/sandbox/messages", params={"channel": message["channel"]}).json()["messages"]
    mine = [m for m in received if message["body"] in (m.get("body") or "") or message["body"] in str(m.get("text", ""))]
    assert len(mine) == 1, received  # the provider got it once
    if message["channel"] == "email":  # the MIME message as the relay saw it
        assert mine[0]["subject"] == "Hello" and "List-Unsubscribe-Post" in str(mine[0])


def test_inbound_on_each_channel_is_stored_once_though_the_webhook_comes_twice(stack):
    sandbox(stack, "POST", "/sandbox/twilio/inbound", json={"from": "+15005550006", "body": "sms inbound", "sid": "SM" + "1" * 32})
    sandbox(stack, "POST", "/sandbox/twilio/inbound", json={"from": "+15005550006", "body": "sms inbound", "sid": "SM" + "1" * 32})
    for _ in range(2):
        sandbox(stack, "POST", "/sandbox/whatsapp_cloud/inbound", json={"from": "+15005550006", "text": "cloud inbound",
                                                                         "id": "wamid.TWICE", "name": "Ada"})
        sandbox(stack, "POST", "/sandbox/waha/inbound", json={"from": "+15005550006", "text": "qr inbound", "id": "true_TWICE"})
    sandbox(stack, "POST", "/sandbox/email/inbound", json={"from": "ada@example.com", "subject": "Hi", "text": "email inbound",
                                                           "message_id": "<twice@mail.example.test>", "times": 2})
    for channel, body in (("sms", "sms inbound"), ("whatsapp_cloud", "cloud inbound"), ("whatsapp_qr", "qr inbound"),
                          ("email", "email inbound")):
        assert conversation_bodies(stack, channel).count(body) == 1, channel
    cloud = api(stack, "GET", "/v1/conversations", params={"channel": "whatsapp_cloud"}).json()["conversations"]
    assert cloud[0]["name"] == "Ada" and cloud[0]["last_inbound_at"] is not None


def test_a_whatsapp_message_to_a_number_not_on_whatsapp_is_delivered_by_sms_with_both_attempts_in_its_history(stack):
    sandbox(stack, "POST", "/sandbox/whatsapp_cloud/inbound", json={"from": "+15005550404", "text": "window"})
    message_id = send(stack, channels=["whatsapp_cloud", "sms"], to="+15005550404", body="falls back to sms")
    wait_for(lambda: status(stack, message_id) == "delivered", timeout=30, what="delivered by sms")
    view = api(stack, "GET", f"/v1/messages/{message_id}").json()
    assert view["channel"] == "sms" and view["route_step"] == 1 and view["channels"] == ["whatsapp_cloud", "sms"]
    moved = [e for e in view["events"] if e["detail"].get("fallback")]
    assert len(moved) == 1 and moved[0]["detail"]["from_channel"] == "whatsapp_cloud"
    assert moved[0]["detail"]["error_code"] == "131026"
    sent = [e for e in view["events"] if e["status"] == "sent"]
    assert [e["detail"]["provider"] for e in sent] == ["whatsapp_cloud", "twilio"]  # one attempt on each channel
