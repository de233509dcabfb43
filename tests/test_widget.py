"""The web chat widget against real PostgreSQL and Redis: its inbox, page, visitors, messages,
event streams, acknowledgements and sender, driven in this process (the browser test,
tests/test_widget_e2e.py, runs it under gunicorn with the whole pipeline)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from common.config import settings
from common.db.connection import fetch, fetch_dicts, transaction
from tests.support import wait_for

ORIGIN = "https://www.example.com"


@pytest.fixture
def widget(broker) -> Any:
    from services.widget import visitors
    from services.widget.app import create_app

    visitors.forget_inboxes()
    app = create_app()
    app.testing = True
    return app.test_client()


@pytest.fixture
def inbox(workspace, api) -> dict[str, Any]:
    response = api.put("/v1/channels/widget", headers=workspace["auth"], json={
        "sender": "Acme support", "settings": {"title": "Acme help", "greeting": "Hi! Ask us anything.",
                                               "allowed_origins": [ORIGIN]}})
    assert response.status_code == 200, response.get_json()
    return {**response.get_json(), "workspace": workspace}


def new_visitor(widget, inbox, address: str = "192.0.2.1") -> str:
    response = widget.post(f"/widget/{inbox['account']}/visitors", environ_base={"REMOTE_ADDR": address})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["token"]


def post(widget, inbox, token: str, body: Any, *, client_id: str | None = None, address: str = "192.0.2.1") -> Any:
    payload = body if isinstance(body, dict) else {"client_id": client_id or str(uuid.uuid4()), "body": body}
    return widget.post(f"/widget/{inbox['account']}/messages", json=payload, headers={"Authorization": f"Bearer {token}"},
                       environ_base={"REMOTE_ADDR": address})


def conversation_of(token: str) -> int:
    with transaction():
        return fetch("SELECT conversation_id FROM widget_visitor WHERE token_hash = %s",
                     (hashlib.sha256(token.encode()).digest(),))[0][0]


def reply(conversation_id: int, body: str, status: str = "sent") -> int:
    """An agent's reply in the conversation, as the pipeline leaves it in ``status``."""
    with transaction():
        return fetch("INSERT INTO message (workspace_id, direction, channel, to_addr, body, status, conversation_id, author)"
                     " SELECT workspace_id, 'outbound', 'widget', address, %s, %s, id, 'agent' FROM conversation WHERE id = %s"
                     " RETURNING id", (body, status, conversation_id))[0][0]


def status_of(message_id: int) -> str:
    with transaction():
        return fetch("SELECT status FROM message WHERE id = %s", (message_id,))[0][0]


def streamed(conversation_id: int, after: int, seconds: float = 0.3) -> list[dict[str, Any]]:
    """What a stream sends before its time is up: its events' ids and data."""
    from services.widget import stream

    events = []
    for chunk in stream.events(conversation_id, after, seconds=seconds):
        for block in chunk.split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
            if "data" in lines:
                assert lines["event"] == "message"
                events.append({"id": int(lines["id"]), **json.loads(lines["data"])})
    return events


# -- the inbox ------------------------------------------------------------------------------------
def test_an_inbox_keeps_its_key_across_puts_and_shows_the_snippet_to_embed(inbox, api):
    key = inbox["account"]
    assert len(key) >= 22 and inbox["provider"] == "widget" and inbox["sender"] == "Acme support"
    assert f'src="http://{settings.postroom_widget_host}:{settings.postroom_widget_port}/widget/{key}"' in inbox["embed_html"]
    again = api.put("/v1/channels/widget", headers=inbox["workspace"]["auth"], json={"sender": "Acme", "settings": {"title": "New"}})
    assert again.status_code == 200 and again.get_json()["account"] == key, "pages already embed the key"
    listed = api.get("/v1/channels", headers=inbox["workspace"]["auth"]).get_json()["channels"]
    assert [c["account"] for c in listed if c["channel"] == "widget"] == [key]


@pytest.mark.parametrize("settings_, field", [
    ({"allowed_origins": ["https://ok.example.com; script-src *"]}, "settings"),
    ({"allowed_origins": ["javascript:alert(1)"]}, "settings"),
    ({"greeting": 5}, "settings"),
    ({"api_base": "https://x.example.com"}, "settings"),
])
def test_an_inbox_refuses_settings_a_csp_could_misread(workspace, api, settings_, field):
    response = api.put("/v1/channels/widget", headers=workspace["auth"], json={"sender": "Acme", "settings": settings_})
    assert response.status_code == 422 and response.get_json()["error"]["field"] == field


# -- the page ---------------------------------------------------------------------------------------
def test_the_page_carries_its_csp_and_loads_only_its_own_script_and_style(widget, inbox):
    response = widget.get(f"/widget/{inbox['account']}")
    assert response.status_code == 200
    assert response.headers["Content-Security-Policy"] == (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        f"base-uri 'none'; form-action 'none'; frame-ancestors {ORIGIN}")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    page = response.get_data(as_text=True)
    assert '<script src="/widget/static/widget.js"></script>' in page and page.count("<script") == 1, "no inline script"
    assert "Acme help" in page and "Hi! Ask us anything." in page
    assert widget.get("/widget/static/widget.js").status_code == 200
    assert widget.get("/widget/static/widget.css").status_code == 200


def test_an_unknown_inbox_is_not_found(widget, inbox):
    for path in ("/widget/AAAAAAAAAAAAAAAAAAAAAA", "/widget/x'%3E"):
        response = widget.get(path)
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


# -- visitors and their messages ------------------------------------------------------------------
def test_a_visitor_gets_an_unguessable_token_stored_only_as_its_hash(widget, inbox):
    token = new_visitor(widget, inbox)
    assert len(token) >= 43  # 32 random bytes
    with transaction():
        (row,) = fetch_dicts("SELECT v.*, c.channel, c.address, c.workspace_id AS conversation_workspace FROM widget_visitor v"
                             " JOIN conversation c ON c.id = v.conversation_id")
    assert bytes(row["token_hash"]) == hashlib.sha256(token.encode()).digest()
    assert token not in json.dumps({k: str(v) for k, v in row.items()})
    assert (row["channel"], row["address"]) == ("widget", f"v:{row['id']}")
    assert row["workspace_id"] == row["conversation_workspace"] == inbox["workspace"]["id"]
    assert new_visitor(widget, inbox) != token


def test_a_visitor_message_is_stored_once_per_client_id(widget, inbox):
    token = new_visitor(widget, inbox)
    client_id = str(uuid.uuid4())
    first = post(widget, inbox, token, "Where is my parcel?", client_id=client_id)
    second = post(widget, inbox, token, "Where is my parcel?", client_id=client_id)
    assert first.status_code == second.status_code == 202
    assert first.get_json()["id"] == second.get_json()["id"]
    with transaction():
        rows = fetch_dicts("SELECT direction, channel, body, status, conversation_id FROM message")
    assert rows == [{"direction": "inbound", "channel": "widget", "body": "Where is my parcel?", "status": "received",
                     "conversation_id": conversation_of(token)}]


@pytest.mark.parametrize("body, status, field", [
    ({"client_id": "not-a-uuid", "body": "hi"}, 422, "client_id"),
    ({"client_id": str(uuid.uuid4()), "body": ""}, 422, "body"),
    ({"client_id": str(uuid.uuid4()), "body": "   "}, 422, "body"),
    ({"client_id": str(uuid.uuid4()), "body": "bell \x07"}, 422, "body"),
    ({"client_id": str(uuid.uuid4()), "body": "x" * (settings.postroom_widget_max_chars + 1)}, 422, "body"),
    ({"client_id": str(uuid.uuid4()), "body": "hi", "to": "+15005550006"}, 422, "to"),
    ({"client_id": str(uuid.uuid4()), "body": "x" * 9000}, 413, None),
])
def test_visitor_input_is_bounded(widget, inbox, body, status, field):
    token = new_visitor(widget, inbox)
    response = post(widget, inbox, token, body)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["error"].get("field") == field
    with transaction():
        assert fetch("SELECT count(*) FROM message")[0][0] == 0


def test_a_message_needs_a_token_of_this_inbox(widget, inbox, api, workspace):
    assert post(widget, inbox, "", "hi").status_code == 401
    assert post(widget, inbox, "x" * 43, "hi").status_code == 401
    # A visitor of another workspace's inbox cannot write into this one.
    from common import apikeys

    with transaction():
        other_ws = apikeys.create_workspace("other")
        other_key = apikeys.issue(other_ws)
    other = api.put("/v1/channels/widget", headers={"Authorization": f"Bearer {other_key}"}, json={"sender": "Other"}).get_json()
    stranger = new_visitor(widget, other)
    response = post(widget, inbox, stranger, "hi")
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"


def test_a_visitor_writing_too_fast_is_told_to_wait(widget, inbox):
    token = new_visitor(widget, inbox)
    answers = [post(widget, inbox, token, f"message {n}") for n in range(8)]
    codes = [a.status_code for a in answers]
    assert codes[:5] == [202] * 5 and 429 in codes[5:], codes  # a burst of 5 at 1/s
    limited = next(a for a in answers if a.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1 and limited.get_json()["error"]["code"] == "rate_limited"
    with transaction():
        assert fetch("SELECT count(*) FROM message")[0][0] == codes.count(202)


def test_one_address_may_create_only_so_many_visitors(widget, inbox):
    codes = [widget.post(f"/widget/{inbox['account']}/visitors", environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code
             for _ in range(32)]
    assert codes[:30] == [201] * 30 and codes[30:] == [429, 429]
    assert widget.post(f"/widget/{inbox['account']}/visitors", environ_base={"REMOTE_ADDR": "198.51.100.8"}).status_code == 201


# -- the event stream ------------------------------------------------------------------------------
def test_a_stream_replays_after_the_last_event_id_and_again_every_unacknowledged_reply(widget, inbox):
    token = new_visitor(widget, inbox)
    conversation = conversation_of(token)
    asked = post(widget, inbox, token, "Do you ship to Norway?").get_json()["id"]
    acked = reply(conversation, "Yes, in 3 days.", "delivered")
    unacked = reply(conversation, "And it is free.", "sent")
    queued = reply(conversation, "Not published yet.", "routed")  # the bot may still lose it to a person

    everything = streamed(conversation, 0)
    assert [e["id"] for e in everything] == [asked, acked, unacked]
    assert everything[0] == {"id": asked, "direction": "inbound", "author": None, "body": "Do you ship to Norway?",
                             "at": everything[0]["at"]}
    assert everything[1]["author"] == "agent" and everything[1]["direction"] == "outbound"

    after_all = streamed(conversation, unacked)
    assert [e["id"] for e in after_all] == [unacked], "an unacknowledged reply is sent again whatever the cursor"
    assert streamed(conversation, acked) == [e for e in everything if e["id"] == unacked]
    assert queued not in [e["id"] for e in streamed(conversation, 0)]


def test_a_reply_published_elsewhere_wakes_the_stream_that_waits_for_it(widget, inbox):
    """The cross-replica path: a PUBLISH on postroom:widget (what sender-widget or another widget
    replica sends) reaches this process's listener, which wakes the conversation's stream."""
    from common.providers import widget as channel
    from services.widget import stream

    token = new_visitor(widget, inbox)
    conversation = conversation_of(token)
    stopping = threading.Event()
    stream.start_listener(stopping)
    try:
        wait_for(stream.hub.subscribed.is_set, what="the listener to subscribe")
        got: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: got.extend(streamed(conversation, 0, seconds=3)))
        reader.start()
        wait_for(lambda: conversation in stream.hub._streams, what="the stream to register")
        late = reply(conversation, "Published from another process.")
        channel.wake(conversation, late)
        reader.join()
    finally:
        stopping.set()
    assert [e["id"] for e in got] == [late]


# -- acknowledgements and the sender ------------------------------------------------------------
def test_an_ack_delivers_only_the_visitors_own_replies(widget, inbox):
    mine, theirs = new_visitor(widget, inbox), new_visitor(widget, inbox)
    my_reply = reply(conversation_of(mine), "for you")
    their_reply = reply(conversation_of(theirs), "for someone else")
    response = widget.post(f"/widget/{inbox['account']}/ack", json={"ids": [my_reply, their_reply]},
                           headers={"Authorization": f"Bearer {mine}"})
    assert response.status_code == 204
    assert (status_of(my_reply), status_of(their_reply)) == ("delivered", "sent")
    bad = widget.post(f"/widget/{inbox['account']}/ack", json={"ids": []}, headers={"Authorization": f"Bearer {mine}"})
    assert bad.status_code == 422


def test_the_widget_sender_publishes_the_reply_and_records_it_sent_then_an_early_ack_delivers_it(widget, inbox):
    from common.providers.widget import WIDGET
    from services.senders import loop

    token = new_visitor(widget, inbox)
    conversation = conversation_of(token)
    message_id = reply(conversation, "Your parcel left today.", "routed")
    pubsub = redis.Redis.from_url(settings.redis_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("postroom:widget")
    pubsub.get_message(timeout=1)  # the subscription's confirmation
    loop.deliver(WIDGET, [message_id], "urgent")
    message = pubsub.get_message(timeout=5)
    assert message is not None and json.loads(message["data"]) == {"c": conversation, "m": message_id}
    with transaction():
        (row,) = fetch_dicts("SELECT status, provider, provider_message_id FROM message WHERE id = %s", (message_id,))
    assert row == {"status": "sent", "provider": "widget", "provider_message_id": f"widget-{message_id}"}

    # A browser may acknowledge a reply before its send is recorded (it shows it the moment it is
    # published): the receipt is kept, and the sender applies it right after recording the send.
    early = reply(conversation, "Anything else?", "routed")

    def publish_then_ack(account: Any, row: dict[str, Any]) -> Any:
        accepted = WIDGET.send(account, row)
        acked = widget.post(f"/widget/{inbox['account']}/ack", json={"ids": [row["id"]]},
                            headers={"Authorization": f"Bearer {token}"})
        assert acked.status_code == 204 and status_of(row["id"]) == "sending"
        return accepted

    loop.deliver(dataclasses.replace(WIDGET, send=publish_then_ack), [early], "urgent")
    with transaction():
        assert fetch("SELECT status, provider_message_id FROM message WHERE id = %s", (early,))[0] == ("delivered", f"widget-{early}")


def test_a_widget_message_outside_a_conversation_fails_without_retrying(workspace):
    from common.providers.widget import WIDGET
    from services.senders import loop

    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status) VALUES (%s, 'widget', 'v:1',"
                           " 'orphan', 'routed') RETURNING id", (workspace["id"],))[0][0]
    loop.deliver(WIDGET, [message_id], "urgent")
    with transaction():
        assert fetch("SELECT status, error_code FROM message WHERE id = %s", (message_id,))[0] == ("failed", "no_conversation")


@pytest.mark.parametrize("hops", [0, 1])
def test_the_address_limit_counts_the_forwarded_client_only_behind_trusted_proxies(broker, inbox, monkeypatch, hops):
    """Behind an ingress every request's peer is the ingress: with POSTROOM_WIDGET_TRUSTED_PROXIES=1
    each visitor gets its own bucket (the address the ingress appends); with 0 the header is ignored."""
    from services.widget import app as widget_app
    from services.widget import visitors

    monkeypatch.setattr(widget_app, "settings", dataclasses.replace(settings, postroom_widget_trusted_proxies=hops))
    visitors.forget_inboxes()
    client = widget_app.create_app().test_client()

    def create(forwarded: str) -> int:
        return client.post(f"/widget/{inbox['account']}/visitors", headers={"X-Forwarded-For": forwarded},
                           environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code

    codes = [create("203.0.113.1") for _ in range(31)]
    assert codes[:30] == [201] * 30 and codes[30] == 429
    assert create("203.0.113.2") == (201 if hops else 429), "another visitor behind the same ingress"
    assert create("198.51.100.99, 203.0.113.1") == 429, "what a client prepends to the header is not trusted"


# -- stream tickets ---------------------------------------------------------------------------------
def stream_ticket(widget, inbox, token: str) -> Any:
    return widget.post(f"/widget/{inbox['account']}/stream-ticket", headers={"Authorization": f"Bearer {token}"})


def open_stream(widget, inbox, **params: str) -> tuple[int, Any]:
    """The status of opening a stream, and its refusal (or its media type): the stream itself,
    which would run for minutes, is closed unread."""
    response = widget.get(f"/widget/{inbox['account']}/events", query_string=params, buffered=False)
    try:
        return response.status_code, response.get_json() if response.is_json else response.mimetype
    finally:
        response.close()


def other_inbox(api) -> dict[str, Any]:
    from common import apikeys

    with transaction():
        other_ws = apikeys.create_workspace("other")
        other_key = apikeys.issue(other_ws)
    return api.put("/v1/channels/widget", headers={"Authorization": f"Bearer {other_key}"}, json={"sender": "Other"}).get_json()


def test_a_stream_opens_with_a_short_lived_ticket_and_never_with_the_visitor_token(widget, inbox):
    from services.widget import tickets

    token = new_visitor(widget, inbox)
    answer = stream_ticket(widget, inbox, token)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    ticket = answer.get_json()["ticket"]
    assert answer.get_json()["expires_in"] == tickets.TTL_SECONDS and token not in ticket
    assert open_stream(widget, inbox, ticket=ticket, after="5") == (200, "text/event-stream")
    # The token in a URL (where access logs keep it) is refused, even next to a ticket.
    for params in ({"token": token}, {"token": token, "ticket": ticket}):
        status, refused = open_stream(widget, inbox, **params)
        assert (status, refused["error"]["field"]) == (400, "token")
    # A ticket is good for the stream only: it does not write, acknowledge or get more tickets.
    assert post(widget, inbox, ticket, "hi").status_code == 401
    assert stream_ticket(widget, inbox, ticket).status_code == 401
    assert stream_ticket(widget, inbox, "x" * 43).status_code == 401


def test_a_stream_ticket_expired_altered_or_of_another_inbox_opens_nothing(widget, inbox, api):
    from services.widget import tickets, visitors

    token = new_visitor(widget, inbox)
    with transaction():
        visitor = visitors.visitor(visitors.inbox(inbox["account"]), token)
    assert visitor is not None
    good = tickets.issue(visitor)
    visitor_id, conversation, expires, signature = good.split(".")
    refused = {
        "expired": tickets.issue(visitor, now=time.time() - tickets.TTL_SECONDS - 1),
        "another conversation": f"{visitor_id}.{int(conversation) + 1}.{expires}.{signature}",
        "a later expiry": f"{visitor_id}.{conversation}.{int(expires) + 3600}.{signature}",
        "a trailing newline": good + "\n",
        "nothing": "",
        "too long": good + "x" * 200,
    }
    for why, ticket in refused.items():
        status, body = open_stream(widget, inbox, ticket=ticket)
        assert (status, body["error"]["code"]) == (401, "unauthorized"), why
    status, _ = open_stream(widget, other_inbox(api), ticket=good)
    assert status == 401, "a ticket of this inbox"
    assert open_stream(widget, inbox, ticket=good)[0] == 200


def test_a_visitor_is_found_by_its_conversation_through_an_index():
    """Deleting a conversation cascades to its visitor: without the index every delete scans the table."""
    with transaction():
        found = fetch("SELECT indexdef FROM pg_indexes WHERE tablename = 'widget_visitor'")
    assert any(definition.endswith("(conversation_id)") for definition, in found), found
