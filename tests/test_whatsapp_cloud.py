"""WhatsApp Cloud end to end: the API, the sender loop, the sandbox's Graph API, signed webhooks to ingest.

Messages are accepted by ``POST /v1/messages`` over HTTP and delivered by in-process workers to
the sandbox (a real gunicorn process), which answers as the Graph API does and posts signed
status and inbound webhooks back to the ingest server of the test session.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest
import requests

from common.config import settings
from common.db.connection import fetch, fetch_dicts, transaction
from common.errors import PermanentError, Throttled
from common.providers import config as channel_config
from common.providers.whatsapp_cloud import classify
from common.ratelimit import _redis
from tests.support import history, message, running_workers, status_of, wait_for

NUMBER = settings.whatsapp_phone_number_id
SMS_TO = "+15005550006"


@pytest.fixture
def graph(sandbox, workspace):
    """The sandbox's Graph API with no numbers added, nobody marked unreachable and no faults."""
    requests.delete(f"{sandbox.url}/sandbox/whatsapp_cloud", timeout=5).raise_for_status()
    yield sandbox
    requests.delete(f"{sandbox.url}/sandbox/whatsapp_cloud", timeout=5).raise_for_status()


def fault(graph, **spec: Any) -> None:
    requests.post(f"{graph.url}/sandbox/faults", params={"channel": "whatsapp_cloud"}, json=spec, timeout=5).raise_for_status()


def sent(graph) -> list[dict[str, Any]]:
    """What the Graph API accepted, each with the exact JSON body it was sent."""
    return requests.get(f"{graph.url}/sandbox/whatsapp_cloud/sent", timeout=5).json()["messages"]


def inbound(graph, **spec: Any) -> dict[str, Any]:
    answer = requests.post(f"{graph.url}/sandbox/whatsapp_cloud/inbound", json=spec, timeout=10)
    answer.raise_for_status()
    return answer.json()


def post(ingest_url: str, workspace, **fields: Any) -> int:
    route = {} if "channels" in fields else {"channel": "whatsapp_cloud"}
    response = requests.post(f"{ingest_url}/v1/messages", json={**route, **fields},
                             headers=workspace["auth"], timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def sign(raw: bytes, secret: str = settings.whatsapp_app_secret) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def envelope(value: dict[str, Any], number: str = NUMBER) -> bytes:
    return json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000000", "phone_number_id": number},
        **value}}]}]}).encode()


def webhook(ingest_url: str, raw: bytes, signature: str | None) -> requests.Response:
    headers = {"Content-Type": "application/json", **({"X-Hub-Signature-256": signature} if signature is not None else {})}
    return requests.post(f"{ingest_url}/webhooks/whatsapp_cloud", data=raw, headers=headers, timeout=10)


def events(message_id: int) -> list[dict[str, Any]]:
    with transaction():
        return fetch_dicts("SELECT status, at, detail FROM message_event WHERE message_id = %s ORDER BY id", (message_id,))


TEMPLATE = {"name": "order_update", "language": "en_US", "body_parameters": ["Ada", "42"],
            "header_media": {"url": "https://example.com/receipt.pdf", "type": "document", "filename": "receipt.pdf"}}


def test_text_reply_goes_out_as_graph_json_and_receipts_take_it_to_read(ingest_url, workspace, graph, broker):
    # Given a contact who wrote to us (their 24-hour window is open)
    inbound(graph, **{"from": "+16502530001", "text": "where is my order?", "id": "wamid.CUSTOMER1"})
    with running_workers(broker):
        # When we answer them in reply to their message
        message_id = post(ingest_url, workspace, to="+16502530001", body="on its way", context_message_id="wamid.CUSTOMER1")
        wait_for(lambda: status_of(message_id) == "read", what="read")
    # Then the Graph API got exactly this body, and the signed statuses moved the message to read
    [received] = sent(graph)
    assert received["payload"] == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "16502530001", "type": "text",
        "text": {"preview_url": False, "body": "on its way"}, "context": {"message_id": "wamid.CUSTOMER1"},
        "biz_opaque_callback_data": str(message_id)}
    assert message(message_id)["provider_message_id"] == received["sid"]
    assert history(message_id)[-4:] == ["sending", "sent", "delivered", "read"]


@pytest.mark.parametrize(("fields", "expected"), [
    ({"template": TEMPLATE}, {"type": "template", "template": {
        "name": "order_update", "language": {"code": "en_US"}, "components": [
            {"type": "header", "parameters": [{"type": "document", "document": {"link": "https://example.com/receipt.pdf",
                                                                                  "filename": "receipt.pdf"}}]},
            {"type": "body", "parameters": [{"type": "text", "text": "Ada"}, {"type": "text", "text": "42"}]}]}}),
    ({"body": "Your invoice", "media": [{"url": "https://example.com/inv.pdf", "type": "document", "filename": "invoice.pdf"}]},
     {"type": "document", "document": {"link": "https://example.com/inv.pdf", "caption": "Your invoice", "filename": "invoice.pdf"}}),
    ({"media": [{"url": "https://example.com/a.jpg", "type": "image", "caption": "the view"}]},
     {"type": "image", "image": {"link": "https://example.com/a.jpg", "caption": "the view"}}),
    ({"media": [{"url": "https://example.com/a.ogg", "type": "audio"}]}, {"type": "audio", "audio": {"link": "https://example.com/a.ogg"}}),
], ids=["template_with_media_header", "document_with_filename", "image_with_caption", "audio"])
def test_each_kind_of_message_has_the_graph_wire_format(ingest_url, workspace, graph, broker, fields, expected):
    # Given an open window (a template would not need one)
    inbound(graph, **{"from": "+16502530002", "text": "hi"})
    with running_workers(broker):
        # When the message is sent
        message_id = post(ingest_url, workspace, to="+16502530002", **fields)
        wait_for(lambda: status_of(message_id) in ("sent", "delivered", "read"), what="sent")
    # Then the body is exactly Meta's shape for it, with our id for the status webhooks
    [received] = sent(graph)
    assert received["payload"] == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "16502530002",
                                   **expected, "biz_opaque_callback_data": str(message_id)}


def test_inbound_message_is_stored_once_when_the_webhook_comes_twice(ingest_url, workspace, graph):
    # When Meta delivers the same customer message twice, then one with a picture
    for _ in range(2):
        answer = inbound(graph, **{"from": "+16502530003", "text": "hello?", "name": "Ada Lovelace", "id": "wamid.TWICE"})
        assert answer["ingest_status"] == 200
    inbound(graph, **{"from": "+16502530003", "name": "Ada Lovelace", "id": "wamid.PICTURE",
                      "media": {"type": "image", "id": "7001", "mime_type": "image/jpeg", "caption": "this one"}})
    # Then the conversation holds each once, with the sender's name, media and the provider ids
    with transaction():
        [conversation] = fetch_dicts("SELECT * FROM conversation WHERE workspace_id = %s", (workspace["id"],))
        rows = fetch_dicts("SELECT * FROM message WHERE conversation_id = %s ORDER BY id", (conversation["id"],))
    assert (conversation["channel"], conversation["address"], conversation["name"]) == ("whatsapp_cloud", "+16502530003", "Ada Lovelace")
    assert conversation["last_inbound_at"] is not None  # the 24-hour window is open
    assert [(r["direction"], r["status"], r["from_addr"], r["to_addr"], r["body"], r["provider_message_id"]) for r in rows] == [
        ("inbound", "received", "+16502530003", NUMBER, "hello?", "wamid.TWICE"),
        ("inbound", "received", "+16502530003", NUMBER, "this one", "wamid.PICTURE")]
    assert rows[0]["content"]["sender_name"] == "Ada Lovelace"
    assert rows[1]["content"]["media"] == [{"id": "7001", "mime_type": "image/jpeg", "caption": "this one"}]


def test_verification_handshake_answers_the_challenge_only_for_a_right_token(ingest_url, workspace):
    # Given a workspace with its own verify token besides the deployment's
    with transaction():
        channel_config.save(workspace["id"], "whatsapp_cloud", "meta", "200000000000002",
                            {"access_token": "t", "app_secret": "s", "verify_token": "tenant-token"}, "200000000000002", 80.0)

    def handshake(**params: str) -> requests.Response:
        return requests.get(f"{ingest_url}/webhooks/whatsapp_cloud", params=params, timeout=5)

    # Then the right tokens get the challenge back as plain text, anything else 403
    for token in (settings.whatsapp_verify_token, "tenant-token"):
        answer = handshake(**{"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "1158201444"})
        assert (answer.status_code, answer.text, answer.headers["Content-Type"].split(";")[0]) == (200, "1158201444", "text/plain")
    assert handshake(**{"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"}).status_code == 403
    assert handshake(**{"hub.mode": "unsubscribe", "hub.verify_token": "tenant-token", "hub.challenge": "1"}).status_code == 403
    assert handshake(**{"hub.challenge": "1"}).status_code == 403


def test_webhook_with_a_bad_or_missing_signature_gets_403_and_changes_nothing(ingest_url, workspace, graph):
    # Given a sent message
    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, provider, provider_message_id,"
                           " provider_account) VALUES (%s, 'whatsapp_cloud', '+16502530004', 'x', 'sent', 'whatsapp_cloud',"
                           " 'wamid.SIGNED', %s) RETURNING id", (workspace["id"], NUMBER))[0][0]
    read = envelope({"statuses": [{"id": "wamid.SIGNED", "status": "read", "timestamp": "1", "recipient_id": "16502530004"}]})
    hello = envelope({"contacts": [{"profile": {"name": "Eve"}, "wa_id": "16502530004"}],
                      "messages": [{"from": "16502530004", "id": "wamid.FORGED", "timestamp": "1", "type": "text", "text": {"body": "x"}}]})
    # When statuses and messages arrive signed with another secret, or not signed
    answers = [webhook(ingest_url, raw, signature) for raw in (read, hello)
               for signature in (sign(raw, "not-the-secret"), None, sign(raw)[:-2] + "00")]
    # Then each gets 403, is kept as unverified, and nothing moves
    assert [a.status_code for a in answers] == [403] * 6
    assert status_of(message_id) == "sent"
    with transaction():
        assert fetch("SELECT count(*) FROM conversation")[0][0] == 0
        assert fetch("SELECT count(*) FILTER (WHERE NOT signature_valid), count(*) FROM provider_event")[0] == (6, 6)
    # And the same status correctly signed is applied
    assert webhook(ingest_url, read, sign(read)).status_code == 200
    assert status_of(message_id) == "read"


def test_closed_window_sends_the_fallback_template_and_an_open_one_the_text(ingest_url, workspace, graph, broker):
    reengage = {"name": "reengage", "language": "en_GB", "body_parameters": ["Ada"]}
    with running_workers(broker):
        # Given a contact who never wrote: a free-form message goes out as its fallback template
        first = post(ingest_url, workspace, to="+16502530005", body="are you there?", fallback_template=reengage)
        wait_for(lambda: status_of(first) == "read", what="first read")
        # When the contact answers, the next free-form message goes out as itself
        inbound(graph, **{"from": "+16502530005", "text": "yes"})
        second = post(ingest_url, workspace, to="+16502530005", body="great", fallback_template=reengage)
        wait_for(lambda: status_of(second) == "read", what="second read")
    payloads = [m["payload"] for m in sent(graph)]
    assert [p["type"] for p in payloads] == ["template", "text"]
    assert payloads[0]["template"] == {"name": "reengage", "language": {"code": "en_GB"},
                                       "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ada"}]}]}
    assert payloads[1]["text"] == {"preview_url": False, "body": "great"}


def test_closed_window_without_template_or_next_channel_fails_131047_without_a_call(ingest_url, workspace, graph, broker):
    with running_workers(broker):
        message_id = post(ingest_url, workspace, to="+16502530006", body="hello")
        wait_for(lambda: status_of(message_id) == "failed", what="failed")
    assert message(message_id)["error_code"] == "131047"
    assert history(message_id) == ["accepted", "queued", "routed", "sending", "failed"]
    stats = graph.stats()
    assert (stats["received"], stats["invalid"], stats["rejected_by_fault"]) == (0, 0, 0)  # the Graph API was never called


def test_closed_window_without_template_falls_back_to_sms(ingest_url, workspace, graph, broker):
    with running_workers(broker):
        message_id = post(ingest_url, workspace, channels=["whatsapp_cloud", "sms"],
                          to={"whatsapp_cloud": "+16502530007", "sms": SMS_TO}, body="hello")
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered by SMS")
    assert sent(graph) == []
    assert [(m["channel"], m["to"]) for m in graph.messages()] == [("sms", SMS_TO)]
    assert [e["detail"].get("error_code") for e in events(message_id) if e["detail"].get("fallback")] == ["131047"]
    assert message(message_id)["channel"] == "sms"


def test_recipient_not_on_whatsapp_is_reported_failed_131026_and_reached_by_sms(ingest_url, workspace, graph, broker):
    # Given a number the sandbox says is not on WhatsApp (it ends in 0404): accepted, then failed
    with running_workers(broker):
        message_id = post(ingest_url, workspace, channels=["whatsapp_cloud", "sms"],
                          to={"whatsapp_cloud": "+16505550404", "sms": SMS_TO}, body="hello",
                          template={"name": "hello_world"})
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered by SMS")
    # Then both attempts are in its history and on the providers' side
    [attempt] = sent(graph)
    assert (attempt["to"], attempt["status"], attempt["error_code"]) == ("+16505550404", "failed", 131026)
    assert [m["to"] for m in graph.messages() if m["channel"] == "sms"] == [SMS_TO]
    steps = history(message_id)  # "sent" on WhatsApp first, unless the failure outran the recording of the send
    assert steps[:4] == ["accepted", "queued", "routed", "sending"] and steps.count("queued") == 2
    assert steps[-4:] == ["routed", "sending", "sent", "delivered"]
    [moved] = [e for e in events(message_id) if e["detail"].get("fallback")]
    assert (moved["detail"]["from_channel"], moved["detail"]["channel"], moved["detail"]["error_code"]) == (
        "whatsapp_cloud", "sms", "131026")


def test_pair_limit_131056_delays_only_that_recipient_without_spending_a_retry(ingest_url, workspace, graph, broker):
    fault(graph, error_code=131056, count=1)
    with running_workers(broker):
        # When the first message hits the pair limit
        limited = post(ingest_url, workspace, to="+16502530008", template={"name": "hello_world"})
        wait_for(lambda: any(e["detail"].get("error_code") == "131056" for e in events(limited)), what="pair limit")
        # Then the number is not paused: a message to someone else goes at once
        other = post(ingest_url, workspace, to="+16502530009", template={"name": "hello_world"})
        wait_for(lambda: status_of(other) in ("sent", "delivered", "read"), timeout=3, what="other recipient sent")
        assert status_of(limited) == "routed"
        assert _redis().exists(f"postroom:pause:whatsapp_cloud:{NUMBER}") == 0
        # And the limited one goes about 6 s later, its retry budget untouched
        wait_for(lambda: status_of(limited) in ("sent", "delivered", "read"), timeout=12, what="limited one sent")
    row = message(limited)
    assert (row["attempts"], row["throttles"]) == (2, 1)
    [limit] = [e for e in events(limited) if e["detail"].get("error_code") == "131056"]
    assert limit["detail"]["retry_in_seconds"] == 6.0


def test_rate_limit_130429_with_retry_after_pauses_the_number_for_every_sender(ingest_url, workspace, graph, broker):
    fault(graph, error_code=130429, retry_after=2, count=1)
    with running_workers(broker):
        first = post(ingest_url, workspace, to="+16502530010", template={"name": "hello_world"})
        wait_for(lambda: any(e["detail"].get("error_code") == "130429" for e in events(first)), what="throttled")
        refused_at = time.monotonic()
        pause = _redis().pttl(f"postroom:pause:whatsapp_cloud:{NUMBER}")
        second = post(ingest_url, workspace, to="+16502530011", template={"name": "hello_world"})
        wait_for(lambda: all(status_of(i) in ("sent", "delivered", "read") for i in (first, second)), timeout=10, what="both sent")
        waited = time.monotonic() - refused_at
    assert 0 < pause <= 2000
    assert waited >= 1.5  # neither went before the pause ended
    assert [(message(i)["attempts"], message(i)["throttles"]) for i in (first, second)] == [(2, 1), (1, 0)]


@pytest.mark.parametrize("code", [190, 100, 131026, 131047, 131050, 368])  # 0 (the sandbox cannot inject it): below
def test_each_permanent_code_fails_without_a_retry(ingest_url, workspace, graph, broker, code):
    fault(graph, error_code=code)
    with running_workers(broker):
        message_id = post(ingest_url, workspace, to="+16502530012", template={"name": "hello_world"})
        wait_for(lambda: status_of(message_id) == "failed", what="failed")
    row = message(message_id)
    assert (row["error_code"], row["attempts"]) == (str(code), 1)
    assert history(message_id).count("sending") == 1
    assert graph.stats()["rejected_by_fault"] == 1
    with transaction():
        suppressed = fetch("SELECT reason FROM suppression WHERE address = '+16502530012'")
    assert suppressed == ([("opt_out",)] if code == 131050 else [])


def test_a_workspace_number_sends_with_its_own_token_and_a_wrong_token_fails_190(ingest_url, workspace, graph, broker):
    # Given a workspace with its own number, known to the Graph API, and a second workspace's wrong token
    requests.post(f"{graph.url}/sandbox/whatsapp_cloud/numbers", json={
        "phone_number_id": "200000000000002", "access_token": "tenant-token", "app_secret": "tenant-secret"}, timeout=5).raise_for_status()
    with transaction():
        channel_config.save(workspace["id"], "whatsapp_cloud", "meta", "200000000000002",
                            {"access_token": "tenant-token", "app_secret": "tenant-secret", "verify_token": "v"}, "200000000000002", 80.0)
    with running_workers(broker):
        good = post(ingest_url, workspace, to="+16502530015", template={"name": "hello_world"})
        # Then it is sent from that number and its receipts, signed with that number's secret, apply
        wait_for(lambda: status_of(good) == "read", what="read")
        with transaction():
            channel_config.save(workspace["id"], "whatsapp_cloud", "meta", "200000000000002",
                                {"access_token": "expired", "app_secret": "tenant-secret", "verify_token": "v"}, "200000000000002", 80.0)
        # And with a wrong token the message fails at once with 190
        bad = post(ingest_url, workspace, to="+16502530015", template={"name": "hello_world"})
        wait_for(lambda: status_of(bad) == "failed", what="failed")
    assert [m["from"] for m in sent(graph)] == ["200000000000002"]
    assert message(good)["provider_account"] == "200000000000002"
    assert (message(bad)["error_code"], message(bad)["attempts"]) == ("190", 1)


def test_error_table_keys_on_the_graph_error_code():
    # Code 0 (AuthException) cannot be injected through the sandbox's fault plan (codes start at 1)
    assert isinstance(classify(401, 0, "auth", None), PermanentError)
    assert isinstance(classify(429, 130429, "", 3.0), Throttled) and classify(429, 130429, "", 3.0).retry_after == 3.0
    pair = classify(400, 131056, "", None)
    assert isinstance(pair, Throttled) and not pair.pause_account and pair.retry_after == 6.0
    unreachable = classify(400, 131026, "", None)
    assert isinstance(unreachable, PermanentError) and unreachable.fallback


@pytest.mark.parametrize("code", [131000, 2])
def test_each_transient_code_is_retried_then_sent(ingest_url, workspace, graph, broker, code):
    fault(graph, error_code=code)
    with running_workers(broker):
        message_id = post(ingest_url, workspace, to="+16502530013", template={"name": "hello_world"})
        wait_for(lambda: status_of(message_id) == "read", what="read")
    row = message(message_id)
    assert (row["attempts"], row["throttles"]) == (2, 0)
    assert [e["detail"].get("error_code") for e in events(message_id) if e["status"] == "routed"][-1] == str(code)
    assert len(sent(graph)) == 1


@pytest.mark.parametrize(("code", "at_least"), [(131048, 15 * 60), (131049, 24 * 3600)])
def test_spam_and_engagement_limits_retry_much_later(ingest_url, workspace, graph, broker, code, at_least):
    fault(graph, error_code=code)
    with running_workers(broker):
        message_id = post(ingest_url, workspace, to="+16502530014", template={"name": "hello_world"})
        wait_for(lambda: message(message_id)["error_code"] == str(code), what="retry planned")
    with transaction():
        [(status, wait)] = fetch("SELECT status, extract(epoch FROM due_at - now()) FROM message WHERE id = %s", (message_id,))
    assert status == "routed"
    assert at_least - 60 < wait <= at_least


# --- tenancy: whose secret vouches for what ---------------------------------------------------


def other_workspace() -> int:
    with transaction():
        return fetch("INSERT INTO workspace (name) VALUES ('other') RETURNING id")[0][0]


def whatsapp_message(workspace_id: int, number: str, status: str, wamid: str | None) -> int:
    """A message of ``workspace_id`` sent (or being sent) from ``number``, with SMS next on its route."""
    routes = json.dumps([{"channel": "whatsapp_cloud", "to": "+16502530020"}, {"channel": "sms", "to": SMS_TO}])
    with transaction():
        return fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, provider, provider_message_id,"
                     " provider_account, routes, route_step) VALUES (%s, 'whatsapp_cloud', '+16502530020', 'x', %s,"
                     " 'whatsapp_cloud', %s, %s, %s::jsonb, 0) RETURNING id",
                     (workspace_id, status, wamid, number, routes))[0][0]


def failed_131026(wamid: str, opaque: int) -> dict[str, Any]:
    return {"id": wamid, "status": "failed", "timestamp": "1", "recipient_id": "16502530020",
            "biz_opaque_callback_data": str(opaque), "errors": [{"code": 131026, "title": "Message undeliverable"}]}


def read_status(wamid: str) -> dict[str, Any]:
    return {"id": wamid, "status": "read", "timestamp": "1", "recipient_id": "16502530020"}


def test_a_tenants_secret_moves_only_that_tenants_messages_from_its_number(ingest_url, workspace):
    # Given a number another workspace configured, and messages sent from it by acme (before the
    # number changed hands) and by the other workspace
    number = "200000000000003"
    other = other_workspace()
    with transaction():
        channel_config.save(other, "whatsapp_cloud", "meta", number,
                            {"access_token": "t", "app_secret": "other-secret", "verify_token": "v"}, number, 80.0)
    acme_sending = whatsapp_message(workspace["id"], number, "sending", None)
    acme_sent = whatsapp_message(workspace["id"], number, "sent", "wamid.ACME")
    own = whatsapp_message(other, number, "sent", "wamid.OWN")
    # When the other workspace's secret signs a 131026 failure sprayed with acme's id, and read statuses
    raw = envelope({"statuses": [failed_131026("wamid.SPRAYED", acme_sending), read_status("wamid.ACME"),
                                 read_status("wamid.OWN")]}, number)
    assert webhook(ingest_url, raw, sign(raw, "other-secret")).status_code == 200
    # Then only the other workspace's own message moved; acme's stayed where they were, on WhatsApp
    assert [status_of(i) for i in (acme_sending, acme_sent, own)] == ["sending", "sent", "read"]
    assert message(acme_sending)["channel"] == "whatsapp_cloud" and history(acme_sending) == []


def test_a_tenant_configuring_the_deployments_number_cannot_sign_for_it(ingest_url, workspace):
    # Given acme's messages from the deployment's number, and a workspace that configured that
    # number with a secret of its own
    other = other_workspace()
    with transaction():
        channel_config.save(other, "whatsapp_cloud", "meta", NUMBER,
                            {"access_token": "t", "app_secret": "tenant-secret", "verify_token": "v"}, NUMBER, 80.0)
    sending = whatsapp_message(workspace["id"], NUMBER, "sending", None)
    sent_one = whatsapp_message(workspace["id"], NUMBER, "sent", "wamid.DEPLOYMENT")
    hello = {"contacts": [{"profile": {"name": "Eve"}, "wa_id": "16502530021"}],
             "messages": [{"from": "16502530021", "id": "wamid.EVE", "timestamp": "1", "type": "text", "text": {"body": "x"}}]}
    # When that workspace's secret signs statuses and a customer message for the deployment's number
    forged = [envelope({"statuses": [failed_131026("wamid.SPRAYED", sending), read_status("wamid.DEPLOYMENT")]}), envelope(hello)]
    # Then they are refused: only the environment's secret speaks for that number
    assert [webhook(ingest_url, raw, sign(raw, "tenant-secret")).status_code for raw in forged] == [403, 403]
    assert [status_of(i) for i in (sending, sent_one)] == ["sending", "sent"]
    with transaction():
        assert fetch("SELECT count(*) FROM conversation")[0][0] == 0
    # While the environment's secret still moves any workspace's message from it
    raw = envelope({"statuses": [read_status("wamid.DEPLOYMENT")]})
    assert webhook(ingest_url, raw, sign(raw)).status_code == 200
    assert status_of(sent_one) == "read"


def test_a_workspaces_api_base_is_called_through_the_ssrf_guard(ingest_url, workspace, graph, broker):
    # Given a workspace whose configured Graph API base is the cloud metadata address
    with transaction():
        channel_config.save(workspace["id"], "whatsapp_cloud", "meta", "200000000000004",
                            {"access_token": "t", "app_secret": "s", "verify_token": "v"}, "200000000000004", 80.0,
                            {"api_base": "http://169.254.169.254"})
    with running_workers(broker):
        message_id = post(ingest_url, workspace, to="+16502530022", template={"name": "hello_world"})
        wait_for(lambda: status_of(message_id) == "failed", what="failed")
    # Then nothing was called: the message failed at once as a refused address
    row = message(message_id)
    assert (row["error_code"], row["attempts"]) == ("blocked_address", 1)
    assert "169.254.169.254" in row["last_error"] and "link-local" in row["last_error"]


def test_status_text_postgresql_cannot_store_is_kept_cleaned(ingest_url, workspace):
    # Given a sent message, and a signed failure whose title holds a NUL and a lone surrogate
    message_id = whatsapp_message(workspace["id"], NUMBER, "sent", "wamid.ODD")
    raw = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "metadata": {"phone_number_id": NUMBER}, "statuses": [{"id": "wamid.ODD", "status": "failed", "timestamp": "1",
                                                               "errors": [{"code": 131000, "title": "bad\x00title\ud800"}]}]}}]}]}).encode()
    # Then it is applied, with those characters replaced, and kept
    assert webhook(ingest_url, raw, sign(raw)).status_code == 200
    row = message(message_id)
    assert (row["status"], row["last_error"]) == ("failed", "131000: bad\ufffdtitle\ufffd")
    with transaction():
        [(title,)] = fetch("SELECT payload->'errors'->0->>'title' FROM provider_event WHERE provider_message_id = 'wamid.ODD'")
    assert title == "bad\ufffdtitle\ufffd"
    # And a number id PostgreSQL could not even look up is refused like any unsigned webhook
    odd = envelope({"statuses": [read_status("wamid.ODD")]}, "1000\x00")
    assert webhook(ingest_url, odd, sign(odd)).status_code == 403


def test_verify_tokens_are_unsealed_once_per_configuration_change(ingest_url, workspace, monkeypatch):
    # Given a workspace's verify token, and a count of how often configurations are unsealed for it
    with transaction():
        channel_config.save(workspace["id"], "whatsapp_cloud", "meta", "200000000000005",
                            {"access_token": "t", "app_secret": "s", "verify_token": "first-token"}, "200000000000005", 80.0)
    unsealed: list[int] = []
    matching = channel_config.matching
    monkeypatch.setattr(channel_config, "matching", lambda *args: unsealed.append(1) or matching(*args))

    def handshake(token: str) -> int:
        params = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "42"}
        return requests.get(f"{ingest_url}/webhooks/whatsapp_cloud", params=params, timeout=5).status_code

    # When unauthenticated callers guess many times
    assert [handshake(f"guess-{n}") for n in range(5)] + [handshake("first-token")] == [403] * 5 + [200]
    assert len(unsealed) <= 1
    # Then a new configuration's token is known at once, at the cost of one more unsealing
    other = other_workspace()
    with transaction():
        channel_config.save(other, "whatsapp_cloud", "meta", "200000000000006",
                            {"access_token": "t", "app_secret": "s", "verify_token": "second-token"}, "200000000000006", 80.0)
    assert [handshake("second-token"), handshake("first-token"), handshake("guess")] == [200, 200, 403]
    assert len(unsealed) <= 2


def test_sandbox_graph_api_answers_malformed_calls_with_metas_errors(graph):
    url = f"{graph.url}/v21.0/{NUMBER}/messages"
    good = {"Authorization": f"Bearer {settings.whatsapp_access_token}"}
    odd_type = requests.post(url, json={"messaging_product": "whatsapp", "to": "16502530023", "type": ["text"]},
                             headers=good, timeout=5)
    odd_token = requests.post(url, json={"messaging_product": "whatsapp", "to": "16502530023", "type": "text",
                                         "text": {"body": "x"}}, headers={"Authorization": "Bearer t\u00f6k\u00e9n"}, timeout=5)
    assert [(a.status_code, a.json()["error"]["code"]) for a in (odd_type, odd_token)] == [(400, 100), (401, 190)]
