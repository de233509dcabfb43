"""Conversations between the bot and people: the moves (handoff, resolve, reopen) with their
history and events, an agent's reply, and what a newly stored customer message starts.

Each move is one compare-and-set statement; a move the status does not allow is a 409 and
records nothing, and a conversation already in the target status answers 200 without an event.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from common import conversations, inbound
from common.db.connection import fetch, fetch_dicts, transaction
from common.inbound import Inbound

CUSTOMER = "+15005550101"
OUR_NUMBER = "+15005550006"


@pytest.fixture(autouse=True)
def _empty_usage(clean_db):
    """usage_log and ai_reservation have no foreign key to workspace: emptied here."""
    with transaction():
        fetch("TRUNCATE usage_log, ai_reservation RESTART IDENTITY")


def post(api, workspace, path: str, payload: dict | None = None, headers: dict | None = None):
    return api.post(path, data=json.dumps(payload) if payload is not None else None, content_type="application/json",
                    headers={**workspace["auth"], **(headers or {})})


def received(workspace_id: int, body: str = "Where is my order?", channel: str = "sms", sender: str = CUSTOMER,
             n: int = 1, **extra: Any) -> tuple[int, conversations.Followups]:
    """Store a customer message as a provider webhook does, and act on it; its id and followups."""
    message = Inbound(workspace_id=workspace_id, channel=channel, provider="twilio" if channel == "sms" else channel,
                      provider_message_id=f"SM{channel}{n}-{body[:10]}", from_addr=sender, to_addr=OUR_NUMBER, body=body,
                      **extra)
    with transaction():
        message_id = inbound.store(message)
        assert message_id is not None
        return message_id, conversations.after_store(message, message_id)


def conversation_of(message_id: int) -> dict[str, Any]:
    with transaction():
        return fetch_dicts("SELECT c.* FROM conversation c JOIN message m ON m.conversation_id = c.id WHERE m.id = %s",
                           (message_id,))[0]


def outbox(event_type: str) -> list[dict[str, Any]]:
    with transaction():
        return [r["payload"] for r in fetch_dicts("SELECT payload FROM outbox WHERE event_type = %s ORDER BY id", (event_type,))]


def subscribe(api, workspace) -> None:
    response = post(api, workspace, "/v1/webhook-endpoints", {
        "url": "http://127.0.0.1:9/hook", "event_types": ["conversation.bot", "conversation.open", "conversation.resolved"]})
    assert response.status_code == 201, response.get_json()


def chatbot(workspace_id: int, channel: str = "sms", enabled: bool = True) -> None:
    with transaction():
        fetch("INSERT INTO chatbot (workspace_id, channel, provider, handoff_message, fallback_message, enabled)"
              " VALUES (%s, %s, 'extractive', 'A person will answer.', 'Sorry.', %s)", (workspace_id, channel, enabled))


def test_handoff_resolve_and_reopen_move_the_conversation_with_history_and_events(api, workspace):
    subscribe(api, workspace)
    message_id, _ = received(workspace["id"])
    conversation = conversation_of(message_id)
    assert conversation["status"] == "bot"
    cid = conversation["id"]

    handed = post(api, workspace, f"/v1/conversations/{cid}/handoff", {"note": "VIP customer"})
    assert handed.status_code == 200 and handed.get_json()["status"] == "open"
    assert handed.get_json()["status_reason"] == "api"
    resolved = post(api, workspace, f"/v1/conversations/{cid}/resolve")
    assert resolved.status_code == 200 and resolved.get_json()["status"] == "resolved"
    reopened = post(api, workspace, f"/v1/conversations/{cid}/reopen")
    assert reopened.status_code == 200 and reopened.get_json()["status"] == "bot"

    events = api.get(f"/v1/conversations/{cid}/events", headers=workspace["auth"]).get_json()["events"]
    assert [(e["previous"], e["status"], e["by"]) for e in events] == [("bot", "open", "api"), ("open", "resolved", "api"),
                                                                      ("resolved", "bot", "api")]
    assert events[0]["note"] == "VIP customer"
    # Each move is a webhook event for the subscribed endpoint
    assert [p["previous"] for p in outbox("conversation.open")] == ["bot"]
    assert [p["id"] for p in outbox("conversation.resolved")] == [cid]
    assert outbox("conversation.bot")[0]["address"] == CUSTOMER
    # Resolving starts the bot's next context after the last message, and stamps the time
    after = conversation_of(message_id)
    assert after["context_after_id"] == message_id and after["resolved_at"] is not None


def test_a_move_the_status_does_not_allow_is_409_and_the_same_status_is_200_without_an_event(api, workspace):
    message_id, _ = received(workspace["id"])
    cid = conversation_of(message_id)["id"]

    assert post(api, workspace, f"/v1/conversations/{cid}/reopen").get_json()["status"] == "bot"  # already: no event
    assert post(api, workspace, f"/v1/conversations/{cid}/handoff").status_code == 200
    refused = post(api, workspace, f"/v1/conversations/{cid}/reopen")  # open is not resolved
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "conversation_state"
    assert post(api, workspace, f"/v1/conversations/{cid}/resolve").status_code == 200
    assert post(api, workspace, f"/v1/conversations/{cid}/handoff").status_code == 409  # resolved -> open is a reply's
    again = post(api, workspace, f"/v1/conversations/{cid}/resolve")
    assert again.status_code == 200 and again.get_json()["status"] == "resolved"
    events = api.get(f"/v1/conversations/{cid}/events", headers=workspace["auth"]).get_json()["events"]
    assert [e["status"] for e in events] == ["open", "resolved"]
    assert post(api, workspace, "/v1/conversations/999999/resolve").status_code == 404
    assert post(api, workspace, f"/v1/conversations/{cid}/handoff", {"note": ""}).status_code == 422


def test_another_workspace_cannot_see_or_move_the_conversation(api, workspace):
    from common import apikeys

    message_id, _ = received(workspace["id"])
    cid = conversation_of(message_id)["id"]
    with transaction():
        other = {"Authorization": f"Bearer {apikeys.issue(apikeys.create_workspace('globex'))}"}
    assert api.post(f"/v1/conversations/{cid}/handoff", headers=other).status_code == 404
    assert api.get(f"/v1/conversations/{cid}/events", headers=other).status_code == 404
    assert api.post(f"/v1/conversations/{cid}/messages", data=json.dumps({"body": "hi"}), content_type="application/json",
                    headers=other).status_code == 404
    assert conversation_of(message_id)["status"] == "bot"


def test_an_agent_reply_is_sent_to_the_customer_and_takes_the_conversation(api, workspace):
    message_id, _ = received(workspace["id"])
    cid = conversation_of(message_id)["id"]

    response = post(api, workspace, f"/v1/conversations/{cid}/messages", {"body": "Your parcel left today."},
                    headers={"Idempotency-Key": "reply-1"})
    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    assert answer["conversation"]["status"] == "open" and answer["conversation"]["status_reason"] == "agent_reply"
    with transaction():
        row = fetch_dicts("SELECT * FROM message WHERE id = %s", (answer["message"]["id"],))[0]
        logged = fetch_dicts("SELECT kind, message_id FROM usage_log ORDER BY id")
    assert (row["to_addr"], row["from_addr"], row["author"], row["conversation_id"], row["priority"], row["direction"]) == \
        (CUSTOMER, OUR_NUMBER, "agent", cid, "urgent", "outbound")
    assert logged == [{"kind": "inbound", "message_id": message_id}, {"kind": "outbound", "message_id": row["id"]}]
    # The same request again is the same reply, not a second one
    again = post(api, workspace, f"/v1/conversations/{cid}/messages", {"body": "Your parcel left today."},
                 headers={"Idempotency-Key": "reply-1"})
    assert again.status_code == 202 and again.get_json()["message"]["id"] == row["id"]
    with transaction():
        assert fetch("SELECT count(*) FROM message WHERE author = 'agent'")[0][0] == 1
    events = api.get(f"/v1/conversations/{cid}/events", headers=workspace["auth"]).get_json()["events"]
    assert [(e["status"], e["reason"], e["by"], e["message_id"]) for e in events] == [("open", "agent_reply", "agent", row["id"])]


def test_an_agent_reply_is_checked_against_the_conversation_channel(api, workspace):
    message_id, _ = received(workspace["id"])
    cid = conversation_of(message_id)["id"]
    too_long = post(api, workspace, f"/v1/conversations/{cid}/messages", {"body": "x" * 1601})
    assert too_long.status_code == 422 and too_long.get_json()["error"]["field"] == "body"
    subject = post(api, workspace, f"/v1/conversations/{cid}/messages", {"body": "hi", "subject": "Re: order"})
    assert subject.status_code == 422 and subject.get_json()["error"]["field"] == "subject"
    # A widget visitor that is gone cannot be answered
    widget_id, _ = received(workspace["id"], channel="widget", sender="v:1")
    gone = post(api, workspace, f"/v1/conversations/{conversation_of(widget_id)['id']}/messages", {"body": "hello"})
    assert gone.status_code == 409 and gone.get_json()["error"]["code"] == "conversation_channel"
    # An email reply gets the customer's subject
    email_id, _ = received(workspace["id"], channel="email", sender="kim@example.org", extra={"subject": "Broken lamp"})
    sent = post(api, workspace, f"/v1/conversations/{conversation_of(email_id)['id']}/messages", {"body": "Sorry to hear!"})
    assert sent.status_code == 202
    with transaction():
        assert fetch("SELECT content ->> 'subject' FROM message WHERE id = %s", (sent.get_json()["message"]["id"],))[0][0] == \
            "Re: Broken lamp"


def test_a_customer_message_is_a_turn_for_the_bot_only_when_the_bot_has_the_conversation(workspace):
    with transaction():
        fetch("UPDATE workspace SET plan = 'premium' WHERE id = %s", (workspace["id"],))
    # No chatbot on the channel: stored as before, nothing for the AI stage
    first, followups = received(workspace["id"], n=1)
    assert followups.turns == {}
    chatbot(workspace["id"])
    second, followups = received(workspace["id"], n=2)
    assert followups.turns == {"premium": [second]}
    with transaction():
        assert fetch("SELECT id, ai_lane FROM message WHERE direction = 'inbound' ORDER BY id") == \
            [(first, None), (second, "premium")]
    # A keyword is consent's, not the bot's
    _, followups = received(workspace["id"], body="STOP", n=3)
    assert followups.turns == {}
    # A person has it: the bot stays silent
    cid = conversation_of(second)["id"]
    with transaction():
        assert conversations.move(workspace["id"], cid, ("bot",), "open", "api", "api") is not None
    _, followups = received(workspace["id"], n=4)
    assert followups.turns == {}
    # Resolved: the customer's next message gives it back to the bot
    with transaction():
        assert conversations.move(workspace["id"], cid, ("open",), "resolved", "api", "api") is not None
    fifth, followups = received(workspace["id"], n=5)
    assert followups.turns == {"premium": [fifth]}
    now = conversation_of(fifth)
    assert (now["status"], now["status_reason"]) == ("bot", "inbound")
    with transaction():
        assert conversations.history(workspace["id"], cid)[-1]["by"] == "inbound"


def test_a_disabled_chatbot_and_an_automatic_email_get_no_turn(workspace):
    chatbot(workspace["id"], "sms", enabled=False)
    chatbot(workspace["id"], "email")
    _, followups = received(workspace["id"])
    assert followups.turns == {}
    _, followups = received(workspace["id"], channel="email", sender="noreply@example.org", body="I am out of office",
                            extra={"headers": {"auto-submitted": "auto-replied"}})
    assert followups.turns == {}
    mid, followups = received(workspace["id"], channel="email", sender="kim@example.org", body="Where is my lamp?",
                              extra={"headers": {"auto-submitted": "no"}})
    assert followups.turns == {"basic": [mid]}


def test_the_sender_claim_passes_a_bot_reply_only_while_the_bot_has_the_conversation(workspace):
    message_id, _ = received(workspace["id"])
    cid = conversation_of(message_id)["id"]
    with transaction():
        rows = fetch_dicts("INSERT INTO message (workspace_id, channel, to_addr, body, status, conversation_id, author)"
                           " VALUES (%(ws)s, 'sms', %(to)s, 'bot', 'routed', %(c)s, 'bot'),"
                           " (%(ws)s, 'sms', %(to)s, 'handoff', 'routed', %(c)s, 'bot_handoff'),"
                           " (%(ws)s, 'sms', %(to)s, 'api', 'routed', NULL, NULL) RETURNING id",
                           {"ws": workspace["id"], "to": CUSTOMER, "c": cid})
        ids = [r["id"] for r in rows]

    def sendable() -> list[int]:
        with transaction():
            return [r[0] for r in fetch(f"SELECT m.id FROM message m WHERE m.id = ANY(%s) AND {conversations.BOT_IN_CHARGE_SQL}"
                                        " ORDER BY m.id", (ids,))]

    assert sendable() == ids
    with transaction():
        conversations.move(workspace["id"], cid, ("bot",), "open", "agent_reply", "agent")
    assert sendable() == ids[1:]  # the bot's own reply is held back; its handoff text and API sends still go


def test_a_resolved_conversation_reopens_to_a_person_when_no_chatbot_answers_its_channel(workspace):
    chatbot(workspace["id"], "sms", enabled=False)
    first, _ = received(workspace["id"], n=1)
    cid = conversation_of(first)["id"]
    with transaction():
        assert conversations.move(workspace["id"], cid, ("bot",), "resolved", "api", "api") is not None

    second, followups = received(workspace["id"], n=2)

    assert followups.turns == {}
    now = conversation_of(second)
    assert (now["status"], now["status_reason"]) == ("open", "inbound")  # on the agents' open list, not a silent bot's
    with transaction():
        last = conversations.history(workspace["id"], cid)[-1]
    assert (last["status"], last["previous"], last["by"], last["reason"]) == ("open", "resolved", "inbound", "inbound")


def test_a_bot_reply_made_before_the_conversation_changed_hands_is_never_sent(workspace):
    chatbot(workspace["id"])
    first, _ = received(workspace["id"], n=1)
    cid = conversation_of(first)["id"]

    def bot_reply(body: str) -> int:
        with transaction():
            return fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, conversation_id, author)"
                         " VALUES (%s, 'sms', %s, %s, 'routed', %s, 'bot') RETURNING id", (workspace["id"], CUSTOMER, body, cid))[0][0]

    def sendable(ids: list[int]) -> list[int]:
        with transaction():
            return [r[0] for r in fetch(f"SELECT m.id FROM message m WHERE m.id = ANY(%s) AND {conversations.BOT_IN_CHARGE_SQL}"
                                        " ORDER BY m.id", (ids,))]

    # Given a bot reply waiting (a retry) while a person takes the conversation, resolves it, and
    # the customer's next message gives it back to the bot
    stale = bot_reply("an answer to the first question")
    assert sendable([stale]) == [stale]
    with transaction():
        assert conversations.move(workspace["id"], cid, ("bot",), "open", "agent_reply", "agent") is not None
        assert conversations.move(workspace["id"], cid, ("open",), "resolved", "api", "api") is not None
    second, followups = received(workspace["id"], n=2)
    assert conversation_of(second)["status"] == "bot" and followups.turns == {"basic": [second]}

    # Then the old reply never goes out; the bot's answer to the new message does
    fresh = bot_reply("an answer to the second question")
    assert sendable([stale, fresh]) == [fresh]
