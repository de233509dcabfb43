"""Inbound messages: stored once per provider id and workspace, in their conversation, whatever
the customer wrote; the conversations API lists them a page at a time."""

from __future__ import annotations

from common.db.connection import fetch, transaction
from common.inbound import Inbound, store


def inbound(workspace_id: int, pid: str, body: str, **extra) -> Inbound:
    return Inbound(workspace_id=workspace_id, channel="email", provider="smtp", provider_message_id=pid,
                   from_addr="ada@example.com", to_addr="support@example.com", body=body, **extra)


def test_text_postgresql_cannot_store_is_kept_readable_rather_than_lost(workspace):
    with transaction():
        message_id = store(inbound(workspace["id"], "<nul@x>", "before\x00after \ud800", sender_name="A\x00da",
                                   extra={"subject": "S\x00"}))
        row = fetch("SELECT body, content FROM message WHERE id = %s", (message_id,))[0]
    assert row[0] == "before\ufffdafter \ufffd"
    assert row[1]["sender_name"] == "A\ufffdda" and row[1]["subject"] == "S\ufffd"


def test_the_same_provider_id_is_one_message_per_workspace_not_across_workspaces(workspace):
    from common import apikeys

    with transaction():
        other = apikeys.create_workspace("other")
        first = store(inbound(workspace["id"], "<shared@mail.example>", "to both mailboxes"))
        again = store(inbound(workspace["id"], "<shared@mail.example>", "to both mailboxes"))  # the relay retried
        elsewhere = store(inbound(other, "<shared@mail.example>", "to both mailboxes"))  # a CC to another tenant
    assert first is not None and again is None and elsewhere is not None and elsewhere != first


def test_conversations_are_listed_newest_first_a_page_at_a_time(api, workspace):
    with transaction():
        for n in range(5):
            store(Inbound(workspace_id=workspace["id"], channel="sms", provider="twilio", provider_message_id=f"SM{n}",
                          from_addr=f"+1500555100{n}", to_addr="+15005550006", body=f"hello {n}"))
        store(Inbound(workspace_id=workspace["id"], channel="sms", provider="twilio", provider_message_id="SM9",
                      from_addr="+15005551000", to_addr="+15005550006", body="and again"))
    page = api.get("/v1/conversations?limit=3", headers=workspace["auth"]).get_json()
    assert [c["address"] for c in page["conversations"]] == ["+15005551004", "+15005551003", "+15005551002"]
    rest = api.get(f"/v1/conversations?limit=3&before={page['next_before']}", headers=workspace["auth"]).get_json()
    assert [c["address"] for c in rest["conversations"]] == ["+15005551001", "+15005551000"] and rest["next_before"] is None
    first = rest["conversations"][-1]
    messages = api.get(f"/v1/conversations/{first['id']}/messages", headers=workspace["auth"]).get_json()["messages"]
    assert [(m["body"], m["direction"], m["status"]) for m in messages] == [("hello 0", "inbound", "received"),
                                                                          ("and again", "inbound", "received")]
    assert api.get("/v1/conversations?status=closed", headers=workspace["auth"]).status_code == 422
    assert api.get("/v1/conversations/999", headers=workspace["auth"]).status_code == 404
