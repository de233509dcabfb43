"""WhatsApp through a QR session (WAHA) end to end: the sender loop, the sandbox gateway, signed webhooks.

Against the real sandbox process (its WAHA imitation), PostgreSQL, Redis, ingest over HTTP and
in-process workers. The workspace configures its own sessions on the sandbox gateway, unpaced
unless a test paces them, so the tests run in seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from common import apikeys, dispatch, intake, ratelimit
from common.config import settings
from common.db.connection import fetch, fetch_dicts, transaction
from common.providers import config as channel_config
from common.providers import waha, waha_sessions
from common.providers.waha import HELD_SECONDS
from common.ratelimit import _redis
from tests.support import history, message, running_workers, status_of, wait_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def configure(workspace: dict, gateway: str, *, pace: float = 0.0, jitter: float = 0.0) -> None:
    """The workspace's WhatsApp QR channel: sessions ``default`` and ``sales`` on the sandbox."""
    with transaction():
        channel_config.save(workspace["id"], "whatsapp_qr", "waha", gateway,
                            {"api_key": settings.waha_api_key, "webhook_secret": settings.waha_webhook_secret},
                            "default", 1 / pace if pace else 0.0,
                            {"api_base": gateway, "sessions": ["default", "sales"], "pace_seconds": pace,
                             "jitter_seconds": jitter})


@pytest.fixture
def gateway(sandbox, workspace):
    """The sandbox's WAHA gateway with ``default`` and ``sales`` WORKING, no marks and no faults."""
    requests.delete(f"{sandbox.url}/sandbox/waha", timeout=5).raise_for_status()
    configure(workspace, sandbox.url)
    for name in ("default", "sales"):
        set_session(sandbox, name, "WORKING")
    yield sandbox
    requests.delete(f"{sandbox.url}/sandbox/waha", timeout=5).raise_for_status()


def set_session(sandbox, name: str, status: str) -> None:
    answer = requests.post(f"{sandbox.url}/sandbox/waha/sessions/{name}", json={"status": status}, timeout=10)
    answer.raise_for_status()
    assert answer.json()["ingest_status"] == 200  # the signed session.status webhook was applied


def send(workspace: dict, to: str, body: str = "hello", **fields: Any) -> int:
    """Accept one urgent WhatsApp QR message and hand it to processing."""
    with transaction():
        row = intake.insert(workspace["id"], {"channel": "whatsapp_qr", "to": to, "body": body, "priority": "urgent",
                                              **fields}, None)
    assert row is not None
    dispatch.to_stage("processing", "urgent", [row["id"]])
    return row["id"]


def reaches(message_id: int, *statuses: str) -> None:
    wait_for(lambda: status_of(message_id) in statuses, what=f"message {message_id} {' or '.join(statuses)}")


def sent(sandbox) -> list[dict[str, Any]]:
    return requests.get(f"{sandbox.url}/sandbox/waha/sent", timeout=5).json()["messages"]


def signed(body: dict[str, Any], key: str = settings.waha_webhook_secret) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    return raw, {"Content-Type": "application/json", "X-Webhook-Hmac-Algorithm": "sha512",
                 "X-Webhook-Hmac": hmac.new(key.encode(), raw, hashlib.sha512).hexdigest()}


def test_text_image_and_file_go_out_in_wahas_wire_format_and_acks_move_them_to_read(workspace, gateway, broker):
    # Given a text replying to a customer's message, an image from the "sales" session and a document
    with running_workers(broker):
        text = send(workspace, "+14155550101", "Hello", content={"context_message_id": "false_14155550101@c.us_AAAA"})
        image = send(workspace, "+14155550102", "ignored for the caption", **{"from": "sales"},
                     content={"media": [{"url": "https://cdn.example.com/p/cat.jpg", "type": "image", "caption": "A cat"}]})
        document = send(workspace, "+14155550103", "Your invoice",
                        content={"media": [{"url": "https://cdn.example.com/f/9", "type": "document",
                                            "filename": "invoice-42.pdf"}]})
        # When they are sent and the gateway's acks come back signed
        for message_id in (text, image, document):
            reaches(message_id, "read")
    # Then the gateway received exactly WAHA's calls (the sandbox refuses any other X-Api-Key)
    calls = {m["to"]: (m["path"], m["payload"], m["sid"]) for m in sent(gateway)}
    assert calls["+14155550101"][:2] == ("/api/sendText", {
        "session": "default", "chatId": "14155550101@c.us", "text": "Hello", "reply_to": "false_14155550101@c.us_AAAA"})
    assert calls["+14155550102"][:2] == ("/api/sendImage", {
        "session": "sales", "chatId": "14155550102@c.us", "caption": "A cat",
        "file": {"url": "https://cdn.example.com/p/cat.jpg", "mimetype": "image/jpeg", "filename": "cat.jpg"}})
    assert calls["+14155550103"][:2] == ("/api/sendFile", {
        "session": "default", "chatId": "14155550103@c.us", "caption": "Your invoice",
        "file": {"url": "https://cdn.example.com/f/9", "mimetype": "application/pdf", "filename": "invoice-42.pdf"}})
    # And each message carries the engine's id, its session as account, and went sent -> delivered -> read
    for message_id, to, session in ((text, "+14155550101", "default"), (image, "+14155550102", "sales"),
                                    (document, "+14155550103", "default")):
        row = message(message_id)
        assert row["provider"] == "waha" and row["provider_message_id"] == calls[to][2]
        assert row["provider_account"] == f"ws{workspace['id']}|{gateway.url}|{session}" and row["attempts"] == 1
        assert history(message_id)[-3:] == ["sent", "delivered", "read"]


def test_inbound_message_is_stored_once_in_its_conversation_when_the_webhook_comes_twice(workspace, gateway):
    # Given a customer's message delivered by the gateway twice (the same message id)
    spec = {"from": "+14155550111", "text": "Is my order on its way?", "id": "false_14155550111@c.us_3EB0XYZ",
            "name": "Ada"}
    answers = [requests.post(f"{gateway.url}/sandbox/waha/inbound", json=spec, timeout=10).json() for _ in range(2)]
    # Then both were accepted, and one message is stored in the customer's conversation
    assert [a["ingest_status"] for a in answers] == [200, 200]
    with transaction():
        rows = fetch_dicts("SELECT m.direction, m.status, m.from_addr, m.to_addr, m.body, m.provider_message_id,"
                           " m.content ->> 'sender_name' AS name, c.address, c.channel FROM message m"
                           " JOIN conversation c ON c.id = m.conversation_id WHERE m.workspace_id = %s", (workspace["id"],))
        kept = fetch("SELECT count(*) FROM provider_event WHERE provider = 'waha' AND kind = 'message' AND signature_valid")
    assert rows == [{"direction": "inbound", "status": "received", "from_addr": "+14155550111", "to_addr": "default",
                     "body": "Is my order on its way?", "provider_message_id": spec["id"], "name": "Ada",
                     "address": "+14155550111", "channel": "whatsapp_qr"}]
    assert kept == [(2,)]  # every webhook is kept, the second one stored nothing


def test_webhooks_with_a_bad_or_missing_hmac_get_403_and_change_nothing(workspace, gateway, broker, ingest_url):
    # Given a sent message whose acks the gateway does not post
    requests.post(f"{gateway.url}/sandbox/faults", params={"channel": "whatsapp_qr"}, json={"drop_callbacks": True},
                  timeout=5).raise_for_status()
    with running_workers(broker):
        message_id = send(workspace, "+14155550121")
        wait_for(lambda: status_of(message_id) == "sent", what="sent")
    pid = message(message_id)["provider_message_id"]
    read = {"id": "evt_1", "timestamp": int(time.time() * 1000), "event": "message.ack", "session": "default",
            "payload": {"id": pid, "from": "15550001000@c.us", "fromMe": True, "ack": 3, "ackName": "READ"}}
    working = {"id": "evt_2", "timestamp": int(time.time() * 1000), "event": "session.status", "session": "default",
               "payload": {"status": "FAILED"}}
    # When a read ack and a session change arrive signed with another key, or not signed at all
    for body in (read, working):
        raw, headers = signed(body, key="not-the-key")
        assert requests.post(f"{ingest_url}/webhooks/waha", data=raw, headers=headers, timeout=5).status_code == 403
        del headers["X-Webhook-Hmac"]
        assert requests.post(f"{ingest_url}/webhooks/waha", data=raw, headers=headers, timeout=5).status_code == 403
    # Then the message and the session are unchanged, and the four forgeries are kept as such
    assert status_of(message_id) == "sent"
    with transaction():
        session = fetch("SELECT status FROM channel_session WHERE provider = 'waha' AND name = %s", (f"ws{workspace['id']}|{gateway.url}|default",))
        forged = fetch("SELECT count(*) FROM provider_event WHERE provider = 'waha' AND NOT signature_valid")
    assert session == [("WORKING",)] and forged == [(4,)]
    # And the same ack correctly signed does apply (the refusal was the signature's)
    raw, headers = signed(read)
    assert requests.post(f"{ingest_url}/webhooks/waha", data=raw, headers=headers, timeout=5).status_code == 200
    assert status_of(message_id) == "read"


def test_a_session_waiting_for_its_qr_scan_holds_its_messages_until_it_works(workspace, gateway, broker, ingest_url):
    # Given the default session waiting for its QR code to be scanned
    set_session(gateway, "default", "SCAN_QR_CODE")
    with running_workers(broker):
        ids = [send(workspace, f"+1415555013{n}", f"held {n}") for n in range(2)]
        # When its messages are sent: the gateway answers 422 (the session is not WORKING)
        wait_for(lambda: all(message(i)["error_code"] == "session_not_working" for i in ids), what="the 422s")
        time.sleep(1.0)
        # Then they wait as routed, no retry spent, nothing reached the gateway, nothing failed
        for message_id in ids:
            row = message(message_id)
            assert row["status"] == "routed" and row["attempts"] == row["throttles"] >= 1
            assert "failed" not in history(message_id)
        assert sent(gateway) == []
        # And the API shows the session's state, and passes its QR code through as a PNG
        url = f"{ingest_url}/v1/channels/whatsapp_qr/sessions"
        state = requests.get(f"{url}/default", headers=workspace["auth"], timeout=10).json()
        assert state["status"] == "SCAN_QR_CODE" and state["source"] == "gateway" and state["me"] is None
        qr = requests.get(f"{url}/default/qr", headers=workspace["auth"], timeout=10)
        assert qr.status_code == 200 and qr.headers["Content-Type"] == "image/png" and qr.content.startswith(PNG_MAGIC)
        assert requests.get(f"{url}/nope", headers=workspace["auth"], timeout=10).status_code == 404
        assert requests.get(f"{url}/bad%20name", headers=workspace["auth"], timeout=10).status_code == 404
        # When the phone scans it and the gateway reports the session WORKING
        switched = time.monotonic()
        set_session(gateway, "default", "WORKING")
        # Then the held messages go at once (long before the session would have been asked again)
        wait_for(lambda: len(sent(gateway)) == 2, timeout=HELD_SECONDS, what="the released messages")
        released_in = time.monotonic() - switched
        for message_id in ids:
            reaches(message_id, "read")
    assert released_in < HELD_SECONDS / 2
    state = requests.get(f"{url}/default", headers=workspace["auth"], timeout=10).json()
    assert state["status"] == "WORKING" and state["me"]["id"].endswith("@c.us")
    qr = requests.get(f"{url}/default/qr", headers=workspace["auth"], timeout=10)
    assert qr.status_code == 409  # paired: nothing to scan


def test_each_session_is_paced_so_its_messages_never_go_closer_than_the_pace(workspace, gateway, broker):
    # Given the sessions paced at one message every 0.5 s, without jitter
    configure(workspace, gateway.url, pace=0.5)
    with running_workers(broker):
        # When five messages are sent at once through one session
        ids = [send(workspace, f"+1415555014{n}", f"paced {n}") for n in range(5)]
        for message_id in ids:
            reaches(message_id, "sent", "delivered", "read")
    # Then the gateway received them at least ~the pace apart, and none was retried for it
    times = sorted(datetime.fromisoformat(m["received_at"]) for m in sent(gateway))
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert len(times) == 5 and min(gaps) >= 0.4, gaps
    assert all(message(i)["attempts"] - message(i)["throttles"] == 1 for i in ids)


def test_a_number_not_on_whatsapp_falls_back_to_sms_without_a_send_call(workspace, gateway, broker):
    # Given a message routed WhatsApp QR then SMS, and one with no further channel, to numbers not on WhatsApp
    requests.post(f"{gateway.url}/sandbox/waha/unreachable", json={"number": "+14155550151"}, timeout=5).raise_for_status()
    with running_workers(broker):
        with transaction():
            row = intake.insert(workspace["id"], {
                "channel": "whatsapp_qr", "to": "+14155550404", "body": "Your code is 1234", "priority": "urgent",
                "routes": [{"channel": "whatsapp_qr", "to": "+14155550404"}, {"channel": "sms", "to": "+14155550404"}]}, None)
        assert row is not None
        dispatch.to_stage("processing", "urgent", [row["id"]])
        alone = send(workspace, "+14155550151", "nowhere to go")
        # When the sender checks the numbers
        wait_for(lambda: status_of(row["id"]) == "delivered", what="delivered by SMS")
        wait_for(lambda: status_of(alone) == "failed", what="failed")
    # Then the first was delivered by SMS and its history shows both attempts
    fell_back = message(row["id"])
    assert fell_back["channel"] == "sms" and fell_back["route_step"] == 1
    assert [m["to"] for m in gateway.messages() if m["channel"] == "sms"] == ["+14155550404"]
    with transaction():
        moved = fetch_dicts("SELECT detail FROM message_event WHERE message_id = %s AND detail ->> 'fallback' = 'true'",
                            (row["id"],))
    assert [(d["detail"]["from_channel"], d["detail"]["channel"], d["detail"]["error_code"]) for d in moved] == [
        ("whatsapp_qr", "sms", "not_on_whatsapp")]
    # And the second failed at once as not on WhatsApp; no send call reached the gateway for either
    failed = message(alone)
    assert failed["error_code"] == "not_on_whatsapp" and failed["attempts"] == 1
    assert sent(gateway) == []


def test_a_refused_api_key_fails_at_once_and_a_gateway_5xx_is_retried_then_sent(workspace, gateway, broker):
    # Given a gateway that answers the next send call with 500
    requests.post(f"{gateway.url}/sandbox/faults", params={"channel": "whatsapp_qr"}, json={"http_status": 500},
                  timeout=5).raise_for_status()
    with running_workers(broker):
        retried = send(workspace, "+14155550161", "try again")
        reaches(retried, "read")
        # And a workspace whose key the gateway refuses
        with transaction():
            channel_config.save(workspace["id"], "whatsapp_qr", "waha", gateway.url, {"api_key": "not-our-key"},
                                "default", 0.0, {"api_base": gateway.url, "sessions": ["default"], "pace_seconds": 0})
        refused = send(workspace, "+14155550162", "never")
        reaches(refused, "failed")
    # Then the 5xx cost one retry; the 401 failed without one
    assert message(retried)["attempts"] == 2 and len(sent(gateway)) == 1
    row = message(refused)
    assert row["error_code"] == "401" and row["attempts"] == 1


def test_another_workspaces_key_moves_nothing_of_this_workspaces_session(workspace, gateway, broker, ingest_url):
    # Given a second workspace that names the same gateway and session, with its own webhook key
    with transaction():
        globex = apikeys.create_workspace("globex")
        channel_config.save(globex, "whatsapp_qr", "waha", f"{gateway.url}|default",
                            {"api_key": settings.waha_api_key, "webhook_secret": "globex-waha-key"}, "default", 0.0,
                            {"api_base": gateway.url, "sessions": ["default"], "pace_seconds": 0})
    own_key = f"ws{workspace['id']}|{gateway.url}|default"
    # And this workspace's message sent (its acks not posted), and one held by its session waiting for a scan
    requests.post(f"{gateway.url}/sandbox/faults", params={"channel": "whatsapp_qr"}, json={"drop_callbacks": True},
                  timeout=5).raise_for_status()
    with running_workers(broker):
        delivered = send(workspace, "+14155550171")
        reaches(delivered, "sent")
        set_session(gateway, "default", "SCAN_QR_CODE")
        held = send(workspace, "+14155550172")
        wait_for(lambda: message(held)["error_code"] == "session_not_working", what="the 422")
    due_at = message(held)["due_at"]
    ratelimit.pause(waha.PROVIDER, own_key, 60)  # as its 422 did, long enough for what follows
    # When the other workspace's gateway signs a read ack for the sent message and says the session works
    pid = message(delivered)["provider_message_id"]
    for event, payload in (("message.ack", {"id": pid, "fromMe": True, "ack": 3, "ackName": "READ"}),
                           ("session.status", {"status": "WORKING"})):
        raw, headers = signed({"event": event, "session": "default", "payload": payload}, key="globex-waha-key")
        assert requests.post(f"{ingest_url}/webhooks/waha", data=raw, headers=headers, timeout=5).status_code == 200
    # Then they were its own to record, and this workspace's message, session state and pause are untouched
    assert status_of(delivered) == "sent"
    row = message(held)
    assert row["status"] == "routed" and row["due_at"] == due_at and row["provider_account"] == own_key
    assert _redis().exists(f"postroom:pause:waha:{own_key}") == 1
    with transaction():
        states = dict(fetch("SELECT name, status FROM channel_session WHERE provider = 'waha'"))
    assert states[own_key] == "SCAN_QR_CODE" and states[f"ws{globex}|{gateway.url}|default"] == "WORKING"
    # And when this workspace's own gateway says WORKING, its pause ends and the held message goes at once
    with running_workers(broker):
        set_session(gateway, "default", "WORKING")
        reaches(held, "sent")


def test_a_workspaces_gateway_is_called_through_the_ssrf_guard_and_only_a_png_qr_passes(workspace, gateway, broker,
                                                                                       ingest_url, monkeypatch):
    # Given a workspace whose gateway is the cloud metadata address (saved before vetting, or rebound by DNS)
    qr_url = f"{ingest_url}/v1/channels/whatsapp_qr/sessions/default/qr"
    configure(workspace, "http://169.254.169.254")
    # When its QR code is asked for and a message is sent
    refused = requests.get(qr_url, headers=workspace["auth"], timeout=10)
    with running_workers(broker):
        message_id = send(workspace, "+14155550181")
        reaches(message_id, "failed")
    # Then nothing was passed on and the message failed at once, refused by the guard
    assert refused.status_code == 502 and "link-local" in refused.json()["error"]["message"]
    assert message(message_id)["error_code"] == "blocked_address" and message(message_id)["attempts"] == 1
    # And a gateway (allowed in tests: loopback) whose QR answer is not a PNG is not passed on either
    with fake_gateway() as answers:
        configure(workspace, answers.url)
        for content_type, body in (("text/plain", b"aws_secret_access_key=..."), ("image/png", b"<html>not png"),
                                   ("application/json", PNG_MAGIC + b"...")):
            answers.qr = (content_type, body)
            answer = requests.get(qr_url, headers=workspace["auth"], timeout=10)
            assert answer.status_code == 502 and body not in answer.content, content_type
        answers.qr = ("image/png", PNG_MAGIC + b"a real image")
        passed = requests.get(qr_url, headers=workspace["auth"], timeout=10)
        assert passed.status_code == 200 and passed.content == PNG_MAGIC + b"a real image"
        assert answers.accept == ["image/png"] * 4
        # And where only public addresses are allowed (production), it is refused; the operator's gateway is not
        monkeypatch.setattr(waha, "settings", replace(settings, postroom_webhook_allowed_networks=""))
        assert requests.get(qr_url, headers=workspace["auth"], timeout=10).status_code == 502
    with transaction():
        channel_config.delete(workspace["id"], "whatsapp_qr")  # the environment's sessions on the sandbox
    set_session(gateway, "default", "SCAN_QR_CODE")
    operator = requests.get(qr_url, headers=workspace["auth"], timeout=10)
    assert operator.status_code == 200 and operator.content.startswith(PNG_MAGIC)


class FakeGateway(ThreadingHTTPServer):
    """A gateway on loopback answering the QR path with ``qr`` (content type, body)."""

    url = ""
    qr: tuple[str, bytes] = ("image/png", PNG_MAGIC)
    accept: list[str]


@contextmanager
def fake_gateway() -> Iterator[FakeGateway]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server = self.server
            assert isinstance(server, FakeGateway)
            server.accept.append(self.headers.get("Accept", ""))
            content_type, body = server.qr
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = FakeGateway(("127.0.0.1", 0), Handler)
    server.url, server.accept = f"http://127.0.0.1:{server.server_address[1]}", []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_an_event_name_or_id_the_database_cannot_hold_is_kept_as_unknown_not_a_500(workspace, gateway, ingest_url):
    # Given webhooks whose event name or message id carries a NUL or a lone surrogate, signed or not
    bodies = [{"event": "message.ack\u0000", "session": "default", "payload": {"id": "x\u0000y", "ack": 3}},
              {"event": "\ud800", "session": "default", "payload": {"id": "\udfff", "body": "\u0000"}}]
    answers = []
    for body in bodies:
        raw, headers = signed(body)  # json.dumps writes them as \u escapes, as a gateway may
        answers.append(requests.post(f"{ingest_url}/webhooks/waha", data=raw, headers=headers, timeout=5).status_code)
        headers["X-Webhook-Hmac"] = "0" * 128
        answers.append(requests.post(f"{ingest_url}/webhooks/waha", data=raw, headers=headers, timeout=5).status_code)
    # Then each is answered on its signature, and kept as kind "unknown" with the text made storable
    assert answers == [200, 403, 200, 403]
    with transaction():
        kept = fetch("SELECT kind, signature_valid, provider_message_id, payload ->> 'event' FROM provider_event"
                     " WHERE provider = 'waha' AND kind <> 'session.status' ORDER BY id")
    assert kept == [("unknown", True, "x\ufffdy", "message.ack\ufffd"), ("unknown", False, "x\ufffdy", "message.ack\ufffd"),
                    ("unknown", True, "\ufffd", "\ufffd"), ("unknown", False, "\ufffd", "\ufffd")]


def test_number_checks_are_cached_for_the_most_recent_numbers_only(gateway, monkeypatch):
    # Given a cache of two numbers per process
    monkeypatch.setattr(waha, "NUMBER_CACHE_SIZE", 2)
    monkeypatch.setattr(waha, "_numbers", OrderedDict())
    account = waha.environment_accounts()[0]

    def lookups() -> int:
        return int(gateway.stats()["lookups"])

    # When three numbers are checked, then the newest two again, then the first again
    before = lookups()
    for number in ("+14155550191", "+14155550192", "+14155550193"):
        assert waha.reachable_chat(account, number) == number[1:] + "@c.us"
    after_three = lookups()
    waha.reachable_chat(account, "+14155550192")
    waha.reachable_chat(account, "+14155550193")
    cached = lookups()
    waha.reachable_chat(account, "+14155550191")
    # Then the gateway was asked once for each of the three, not for the two kept, and again for the evicted one
    assert (after_three - before, cached - after_three, lookups() - cached) == (3, 0, 1)
    assert len(waha._numbers) == 2


def test_a_release_moves_only_its_sessions_held_messages_and_reads_them_by_index(workspace):
    # Given a workspace's session holding messages it tried (its key) and messages waiting out its pause,
    # with a paced campaign behind them; another workspace's, and the environment's session's, in both
    with transaction():
        globex = apikeys.create_workspace("globex")
    own, env = f"ws{workspace['id']}|http://gw|default", "http://gw|default"
    rows = {(workspace["id"], own, 4.0): 3, (workspace["id"], None, 3.0): 2, (workspace["id"], None, 3600.0): 10_000,
            (globex, f"ws{globex}|http://gw|default", 3.0): 2, (globex, None, 3.0): 2,
            (workspace["id"], env, 3.0): 2, (globex, env, 3.0): 2}
    ids: dict[tuple[int, str | None, float], list[int]] = {}
    with transaction():
        for (ws, account, due_in), count in rows.items():
            ids[(ws, account, due_in)] = [r[0] for r in fetch(
                "INSERT INTO message (workspace_id, channel, to_addr, body, status, provider_account, due_at)"
                " SELECT %s, 'whatsapp_qr', '+14155550199', 'x', 'routed', %s, now() + make_interval(secs => %s)"
                " FROM generate_series(1, %s) RETURNING id", (ws, account, due_in, count))]
        fetch("ANALYZE message")
        # When the planner is asked how it would release each session's messages
        plans = ["\n".join(r[0] for r in fetch("EXPLAIN " + statement, params)) for statement, params in (
            (waha_sessions._RELEASE_SENT_THROUGH, {"channel": "whatsapp_qr", "key": env}),
            (waha_sessions._RELEASE_WORKSPACE, {"channel": "whatsapp_qr", "key": own, "ws": workspace["id"],
                                                "within": HELD_SECONDS}))]
        # And the sessions are released
        released_own = waha_sessions.release_held(own, workspace["id"], HELD_SECONDS)
        released_env = waha_sessions.release_held(env, None, HELD_SECONDS)
    # Then the workspace's session released what it tried and what waits for its pause, not the campaign
    held, waiting = ids[(workspace["id"], own, 4.0)], ids[(workspace["id"], None, 3.0)]
    assert sorted(r["id"] for r in released_own) == sorted(held + waiting)
    # And the environment's session only what was sent through it, in every workspace
    assert sorted(r["id"] for r in released_env) == sorted(ids[(workspace["id"], env, 3.0)] + ids[(globex, env, 3.0)])
    # And both found them through the index's account column, reading nothing else
    for plan in plans:
        assert "Seq Scan" not in plan and "message_routed_account" in plan, plan
        assert re.search(r"Index Cond: \(+provider_account", plan), plan


def test_the_sandbox_gateway_answers_malformed_input_with_4xx(gateway):
    # Given send calls with a key of non-ASCII characters, JSON nested too deep, fields of the wrong type
    url, key = f"{gateway.url}/api/sendText", {"X-Api-Key": settings.waha_api_key}
    answers = [
        requests.post(url, headers={"X-Api-Key": "clé-ünicode"}, json={"chatId": "14155550101@c.us", "text": "x"}, timeout=5),
        requests.post(url, headers={**key, "Content-Type": "application/json"}, data="[" * 100_000 + "]" * 100_000,
                      timeout=5),
        requests.post(f"{gateway.url}/api/sendImage", headers=key, timeout=5,
                      json={"chatId": "14155550101@c.us\n", "text": {"not": "text"}, "file": {"url": "https://e.com/a"}}),
        requests.get(f"{gateway.url}/api/contacts/check-exists", headers=key, params={"phone": "²³⁴"}, timeout=5),
        requests.post(f"{gateway.url}/sandbox/waha/inbound", data="{" * 100_000, timeout=5),
    ]
    # Then each is refused as the gateway would refuse it, not with a 500
    assert [a.status_code for a in answers] == [401, 400, 400, 400, 400]
    assert sent(gateway) == []


def test_a_send_whose_answer_was_lost_is_found_in_the_chat_and_recorded_once(workspace, gateway, broker):
    from services.scheduler import reconciler

    # Given a gateway that takes the next message and cuts the connection before answering
    requests.post(f"{gateway.url}/sandbox/faults", params={"channel": "whatsapp_qr"},
                  json={"drop_after_receive": True, "count": 1}, timeout=5).raise_for_status()
    with running_workers(broker):
        lost = send(workspace, "+14155550171", "did it go?")
        wait_for(lambda: message(lost)["error_code"] == "outcome_unknown", what="the unknown outcome")
        assert status_of(lost) == "sending" and len(sent(gateway)) == 1
        # When the reconciler looks it up (it waits POSTROOM_UNKNOWN_LOOKUP_DELAY_SECONDS first)
        with transaction():
            fetch("UPDATE message SET lookup_at = now() WHERE id = %s", (lost,))
        outcome = reconciler.resolve_unknown(settings.postroom_sending_timeout_seconds)
        # Then it is found in the chat's messages, recorded as sent with the gateway's id, and never sent again
        assert outcome == {"unknown_found": 1}
        reaches(lost, "sent", "delivered", "read")
    assert message(lost)["provider_message_id"] == sent(gateway)[0]["sid"] and len(sent(gateway)) == 1
