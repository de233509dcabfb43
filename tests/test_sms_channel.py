"""The SMS channel's additions: MMS, Messaging Services, Twilio's test numbers, error codes, inbound SMS.

Against the real sandbox process, PostgreSQL, Redis, ingest over HTTP and in-process workers.
"""

from __future__ import annotations

import base64

import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from common import dispatch, intake
from common.config import settings
from common.db.connection import fetch, fetch_dicts, transaction
from services.sandbox.twilio_api import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN
from tests.support import message, running_workers, status_of, wait_for

SERVICE_SID = "MG" + "0123456789abcdef" * 2
MEDIA = ["https://cdn.example.com/a.jpg", "https://cdn.example.com/b.png", "https://cdn.example.com/c.pdf"]
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def send(workspace: dict, to: str, body: str = "hello", **content: object) -> int:
    """Accept one urgent SMS with ``content`` and hand it to processing."""
    with transaction():
        row = intake.insert(workspace["id"], {"channel": "sms", "to": to, "body": body, "priority": "urgent",
                                              "content": content}, None)
    assert row is not None
    dispatch.to_stage("processing", "urgent", [row["id"]])
    return row["id"]


def sent_form(sandbox, sid: str) -> list[tuple[str, str]]:
    answer = requests.get(f"{sandbox.url}/sandbox/twilio/messages/{sid}/form", timeout=5)
    answer.raise_for_status()
    return [(name, value) for name, value in answer.json()["form"]]


def events(message_id: int) -> list[dict]:
    with transaction():
        return fetch_dicts("SELECT status, detail FROM message_event WHERE message_id = %s ORDER BY id", (message_id,))


# --- MMS and Messaging Services ---------------------------------------------------------------


def test_mms_puts_each_media_url_on_the_wire_in_order_and_gets_an_mm_sid(workspace, sandbox, broker):
    with running_workers(broker):
        message_id = send(workspace, "+15551230101", "look", media=[{"url": url} for url in MEDIA])
        wait_for(lambda: status_of(message_id) == "delivered", what="MMS delivered")
    [received] = sandbox.messages()
    assert received["sid"].startswith("MM") and received["num_media"] == 3
    assert message(message_id)["provider_message_id"] == received["sid"]
    form = sent_form(sandbox, received["sid"])
    assert [value for name, value in form if name == "MediaUrl"] == MEDIA
    assert dict(form)["From"] == settings.twilio_from and "MessagingServiceSid" not in dict(form)
    assert dict(form)["Body"] == "look" and dict(form)["To"] == "+15551230101"


def test_messaging_service_send_names_the_service_instead_of_from(workspace, sandbox, broker):
    with running_workers(broker):
        message_id = send(workspace, "+15551230102", "via service", messaging_service_sid=SERVICE_SID)
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered")
    [received] = sandbox.messages()
    assert received["messaging_service_sid"] == SERVICE_SID and received["from"] is None
    form = dict(sent_form(sandbox, received["sid"]))
    assert form["MessagingServiceSid"] == SERVICE_SID and "From" not in form and "MediaUrl" not in form


def test_a_messaging_service_send_is_found_by_to_and_body_when_its_answer_is_lost(sandbox):
    from datetime import UTC, datetime, timedelta

    from common.providers.accounts import default_sms_account
    from common.providers.channels import SMS

    since = datetime.now(UTC) - timedelta(minutes=1)
    auth = (settings.twilio_account_sid, settings.twilio_auth_token)
    url = f"{sandbox.url}/2010-04-01/Accounts/{settings.twilio_account_sid}/Messages.json"
    taken = [requests.post(url, data={"To": "+15551230103", "MessagingServiceSid": SERVICE_SID, "Body": body},
                           auth=auth, timeout=5).json()["sid"] for body in ("lost answer", "another text")]
    row = {"id": 1, "to_addr": "+15551230103", "from_addr": None, "body": "lost answer",
           "content": {"messaging_service_sid": SERVICE_SID}}
    found = SMS.find_sent(default_sms_account(), row, since)
    assert [a.provider_message_id for a in found] == [taken[0]]


@pytest.mark.parametrize(("fields", "code"), [
    ({"MediaUrl": [f"https://cdn.example.com/{n}.jpg" for n in range(11)]}, 21623),  # more than 10 media
    ({"MessagingServiceSid": "MG123"}, 21705),  # not MG + 32 hex digits
    ({"MessagingServiceSid": "MG" + "A" * 32}, 21705),  # upper-case hex is not Twilio's
])
def test_sandbox_refuses_what_twilio_refuses_for_media_and_services(sandbox, fields, code):
    form = {"To": "+15551230104", "Body": "x", **fields}
    if "MessagingServiceSid" not in fields:
        form["From"] = settings.twilio_from
    answer = requests.post(f"{sandbox.url}/2010-04-01/Accounts/{settings.twilio_account_sid}/Messages.json",
                           data=form, auth=(settings.twilio_account_sid, settings.twilio_auth_token), timeout=5)
    assert (answer.status_code, answer.json()["code"]) == (400, code)
    assert sandbox.messages() == []


# --- Twilio's test credentials and magic numbers ---------------------------------------------


@pytest.mark.parametrize(("from_", "to", "code"), [
    ("+15005550001", "+15005550006", 21212),
    ("+15005550007", "+15005550006", 21606),
    ("+15005550008", "+15005550006", 21611),
    ("+15551230105", "+15005550006", 21606),  # any From but the magic one: not ours to send from
    ("+15005550006", "+15005550001", 21211),
    ("+15005550006", "+15005550002", 21612),
    ("+15005550006", "+15005550003", 21408),
    ("+15005550006", "+15005550004", 21610),
    ("+15005550006", "+15005550009", 21614),
])
def test_test_credentials_answer_each_magic_number_with_its_code(sandbox, from_, to, code):
    client = Client(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
    client.api.base_url = sandbox.url
    with pytest.raises(TwilioRestException) as refused:
        client.messages.create(to=to, from_=from_, body="magic")
    assert (refused.value.status, refused.value.code) == (400, code)


def test_test_credentials_accept_the_passing_number_but_send_nothing(sandbox):
    client = Client(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
    client.api.base_url = sandbox.url
    created = client.messages.create(to="+15551230106", from_="+15005550006", body="magic")
    assert created.sid.startswith("SM") and created.status == "queued"
    assert sandbox.messages() == [] and sandbox.stats()["deliveries_in_flight"] == 0  # no callback follows


def test_live_accounts_send_from_and_to_magic_numbers_normally(sandbox):
    client = Client(settings.twilio_account_sid, settings.twilio_auth_token)
    client.api.base_url = sandbox.url
    client.messages.create(to="+15005550004", from_="+15005550007", body="live")
    assert [(m["to"], m["from"]) for m in sandbox.messages()] == [("+15005550004", "+15005550007")]


# --- error codes through the sender ----------------------------------------------------------

PERMANENT = [20003, 21211, 21212, 21408, 21606, 21612, 21610, 21614, 30004, 30005, 30006, 30007, 63016]
TRANSIENT = [  # (fault, the code the retry records)
    ({"error_code": 20429, "retry_after": 1}, "20429"),
    ({"http_status": 503}, "20503"),
    ({"error_code": 21611}, "21611"),
    ({"error_code": 30001}, "30001"),
]


def test_each_permanent_code_fails_at_once_and_21610_suppresses_the_address(workspace, sandbox, broker):
    with running_workers(broker):
        for n, code in enumerate(PERMANENT):
            sandbox.fault(error_code=code, count=1)
            message_id = send(workspace, f"+1555123{n:04d}")
            wait_for(lambda m=message_id: status_of(m) == "failed", what=f"{code} failed")
            row = message(message_id)
            assert (row["attempts"], row["error_code"]) == (1, str(code)), code
        # the opted-out address: the next message ends suppressed at routing, never sent
        opted_out = f"+1555123{PERMANENT.index(21610):04d}"
        again = send(workspace, opted_out, "after STOP")
        wait_for(lambda: status_of(again) == "suppressed", what="suppressed")
    assert sandbox.messages() == []
    assert sandbox.stats()["rejected_by_fault"] == len(PERMANENT)  # one call each: nothing retried
    with transaction():
        suppressed = fetch("SELECT channel, address, reason FROM suppression WHERE workspace_id = %s", (workspace["id"],))
    assert suppressed == [("sms", opted_out, "provider_21610")]
    assert "sending" not in [e["status"] for e in events(again)]


def test_each_transient_code_is_retried_then_sent(workspace, sandbox, broker):
    with running_workers(broker):
        for n, (fault, code) in enumerate(TRANSIENT):
            sandbox.fault(**fault, count=1)
            message_id = send(workspace, f"+1555124{n:04d}", f"transient {code}")
            wait_for(lambda m=message_id: status_of(m) == "delivered", timeout=20, what=f"delivered after {code}")
            assert message(message_id)["attempts"] == 2, code
            retried = [e["detail"].get("error_code") for e in events(message_id) if e["detail"].get("error")]
            assert retried == [code]
    assert sorted(m["body"] for m in sandbox.messages()) == sorted(f"transient {code}" for _, code in TRANSIENT)


def test_an_undelivered_receipt_ends_the_message_without_a_second_send(workspace, sandbox, broker):
    sandbox.fault(callback_outcome={"status": "undelivered", "error_code": 30003}, count=1)
    with running_workers(broker):
        message_id = send(workspace, "+15551230107")
        wait_for(lambda: status_of(message_id) == "undelivered", what="undelivered")
    assert len(sandbox.messages()) == 1 and message(message_id)["attempts"] == 1


# --- inbound SMS -----------------------------------------------------------------------------


def inbound(sandbox, **payload: object) -> dict:
    answer = requests.post(f"{sandbox.url}/sandbox/twilio/inbound", json=payload, timeout=15)
    answer.raise_for_status()
    return answer.json()


def stored_inbound() -> list[dict]:
    with transaction():
        return fetch_dicts("SELECT m.workspace_id, m.direction, m.status, m.from_addr, m.to_addr, m.body, m.content,"
                           " m.provider_message_id, c.channel AS conv_channel, c.address AS conv_address"
                           " FROM message m JOIN conversation c ON c.id = m.conversation_id ORDER BY m.id")


def test_inbound_mms_delivered_twice_is_stored_once_with_its_media(workspace, sandbox):
    media = [{"url": "https://media.example.com/cat.jpg", "content_type": "image/jpeg"}, "https://media.example.com/v.mp4"]
    sid = "MM" + "5" * 32
    answers = [inbound(sandbox, sid=sid, body="hi there 👋", media=media, **{"from": "+15551230108"}) for _ in range(2)]
    assert [(a["status"], a["content_type"].split(";")[0], a["body"]) for a in answers] == [(200, "application/xml", TWIML)] * 2
    [row] = stored_inbound()
    assert row["workspace_id"] == workspace["id"] and (row["direction"], row["status"]) == ("inbound", "received")
    assert (row["from_addr"], row["to_addr"], row["body"]) == ("+15551230108", settings.twilio_from, "hi there 👋")
    assert (row["conv_channel"], row["conv_address"], row["provider_message_id"]) == ("sms", "+15551230108", sid)
    assert row["content"]["media"] == [{"url": "https://media.example.com/cat.jpg", "content_type": "image/jpeg"},
                                       {"url": "https://media.example.com/v.mp4", "content_type": "video/mp4"}]
    assert row["content"]["num_segments"] == "1"
    with transaction():
        kept = fetch("SELECT kind, signature_valid, detail->>'verdict' FROM provider_event ORDER BY id")
    assert kept == [("inbound", True, "stored"), ("inbound", True, "duplicate")]


def test_inbound_to_a_workspaces_own_twilio_account_lands_in_that_workspace(workspace, sandbox):
    from common.crypto import seal

    sid, token = "AC" + "6" * 32, "own-account-token"
    requests.post(f"{sandbox.url}/sandbox/accounts", json={"account_sid": sid, "auth_token": token}, timeout=5).raise_for_status()
    with transaction():
        other = fetch("INSERT INTO workspace (name) VALUES ('other') RETURNING id")[0][0]
        fetch("INSERT INTO channel_config (workspace_id, channel, provider, account_ref, credentials, sender_identity)"
              " VALUES (%s, 'sms', 'twilio', %s, %s, '+15551239999')", (other, sid, seal({"account_sid": sid, "auth_token": token})))
    answer = inbound(sandbox, account_sid=sid, to="+15551239999", body="to the other", **{"from": "+15551230109"})
    assert answer["status"] == 200
    assert [(r["workspace_id"], r["body"]) for r in stored_inbound()] == [(other, "to the other")]


@pytest.mark.parametrize("signature", [None, "bad", "token-of-another-url"])
def test_inbound_with_a_bad_or_missing_signature_is_refused_and_stores_nothing(workspace, ingest_url, signature):
    url = f"{ingest_url}/webhooks/twilio/inbound"
    params = {"MessageSid": "SM" + "7" * 32, "AccountSid": settings.twilio_account_sid, "From": "+15551230110",
              "To": settings.twilio_from, "Body": "forged", "NumMedia": "0", "NumSegments": "1"}
    headers = {}
    if signature == "bad":
        headers["X-Twilio-Signature"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
    elif signature:  # a genuine signature, but for another URL
        headers["X-Twilio-Signature"] = RequestValidator(settings.twilio_auth_token).compute_signature(url + "?x=1", params)
    answer = requests.post(url, data=params, headers=headers, timeout=5)
    assert answer.status_code == 403
    assert stored_inbound() == []
    with transaction():
        assert fetch("SELECT count(*) FROM conversation")[0][0] == 0
        kept = fetch("SELECT kind, signature_valid, applied_at FROM provider_event")
    assert kept == [("inbound", False, None)]


def test_inbound_lands_only_in_a_workspace_whose_token_signed_it(workspace, sandbox, ingest_url):
    from common.crypto import seal

    # Given a workspace that configured the deployment's account with a token of its own, and one of its numbers
    with transaction():
        other = fetch("INSERT INTO workspace (name) VALUES ('other') RETURNING id")[0][0]
        fetch("INSERT INTO channel_config (workspace_id, channel, provider, account_ref, credentials, sender_identity)"
              " VALUES (%s, 'sms', 'twilio', %s, %s, '+15551239998')",
              (other, settings.twilio_account_sid, seal({"account_sid": settings.twilio_account_sid, "auth_token": "tenant-token"})))
    # When Twilio (the environment's token) delivers a message to that number
    assert inbound(sandbox, to="+15551239998", body="to the deployment", **{"from": "+15551230111"})["status"] == 200
    # Then it is the deployment's: it lands in the default inbound workspace, not the one whose token did not sign it
    assert [(r["workspace_id"], r["body"]) for r in stored_inbound()] == [(workspace["id"], "to the deployment")]
    # And the other workspace's token cannot sign for the deployment's account at all
    url = f"{ingest_url}/webhooks/twilio/inbound"
    params = {"MessageSid": "SM" + "8" * 32, "AccountSid": settings.twilio_account_sid, "From": "+15551230112",
              "To": "+15551239998", "Body": "forged", "NumMedia": "0", "NumSegments": "1"}
    signature = RequestValidator("tenant-token").compute_signature(url, params)
    assert requests.post(url, data=params, headers={"X-Twilio-Signature": signature}, timeout=5).status_code == 403
    assert len(stored_inbound()) == 1


def test_sandbox_answers_malformed_control_requests_and_odd_credentials_without_a_500(sandbox):
    malformed = [{"account_sid": ["AC1"], "from": "+15551230113", "body": "x"},
                 {"from": "+15551230113", "body": "x", "media": [{"url": "https://m.example.com/a.jpg", "content_type": 5}]}]
    answers = [requests.post(f"{sandbox.url}/sandbox/twilio/inbound", json=payload, timeout=5) for payload in malformed]
    assert [a.status_code for a in answers] == [400, 400]
    credentials = base64.b64encode(f"{TEST_ACCOUNT_SID}:p\u00e4ssw\u00f6rd".encode()).decode()
    answer = requests.post(f"{sandbox.url}/2010-04-01/Accounts/{TEST_ACCOUNT_SID}/Messages.json",
                           data={"To": "+15551230113", "From": "+15005550006", "Body": "x"},
                           headers={"Authorization": f"Basic {credentials}"}, timeout=5)
    assert (answer.status_code, answer.json()["code"]) == (401, 20003)
    assert sandbox.messages() == []
