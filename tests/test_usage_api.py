"""Usage: the log the pipeline writes, the monthly reply quota, and ``GET /v1/usage``.

One row per stored inbound message, per conversation reply and per AI call; API sends are
counted from the messages themselves. The quota is reserved before a call and counted only for
a reply that was sent.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from common import conversations, inbound, intake, usage
from common.db.connection import fetch, transaction
from common.inbound import Inbound


@pytest.fixture(autouse=True)
def _empty_usage(clean_db):
    with transaction():
        fetch("TRUNCATE usage_log, ai_reservation RESTART IDENTITY")


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def store(workspace_id: int, n: int, channel: str = "sms") -> tuple[int | None, int]:
    """Store a customer message as its webhook would; its id (None: stored before) and conversation."""
    message = Inbound(workspace_id=workspace_id, channel=channel, provider="twilio", provider_message_id=f"SM{n}",
                      from_addr="+15005550101", to_addr="+15005550006", body=f"question {n}")
    with transaction():
        message_id = inbound.store(message)
        conversation = fetch("SELECT id FROM conversation WHERE workspace_id = %s AND address = %s",
                             (workspace_id, message.from_addr))[0][0]
        return message_id, conversation


def reply(workspace_id: int, conversation_id: int, author: str) -> int:
    with transaction():
        row = intake.insert(workspace_id, {"channel": "sms", "to": "+15005550101", "body": "answer", "priority": "urgent",
                                           "conversation_id": conversation_id, "author": author}, None)
        assert row is not None
        return row["id"]


def report(api, workspace, query: str = "") -> dict:
    response = api.get(f"/v1/usage?{query}", headers=workspace["auth"])
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_usage_counts_messages_replies_calls_and_tokens_by_day_channel_and_model(api, workspace):
    first, conversation = store(workspace["id"], 1)
    assert store(workspace["id"], 1)[0] is None  # the same webhook again: stored once, logged once
    store(workspace["id"], 2)
    reply(workspace["id"], conversation, "bot")
    reply(workspace["id"], conversation, "agent")
    with transaction():  # an API send: counted from message, never copied into the log
        intake.insert(workspace["id"], {"channel": "email", "to": "kim@example.org", "body": "hi"}, None)
        usage.log_calls([
            usage.Call(workspace["id"], "sms", conversation, first, "gpt-4o-mini", "answered", 120, 30, 150, False, 800),
            usage.Call(workspace["id"], "sms", conversation, first, "gpt-4o-mini", "handoff", 100, 10, 110, True, 700),
            usage.Call(workspace["id"], "sms", conversation, first, None, "answered"),
        ])

    by_day = report(api, workspace)
    assert (by_day["group_by"], by_day["to"]) == ("day", today())
    assert len(by_day["rows"]) == 1
    day = by_day["rows"][0]
    assert (day["key"], day["inbound"], day["outbound"], day["ai_calls"]) == (today(), 2, 3, 3)
    assert (day["answered"], day["handoffs"], day["errors"]) == (2, 1, 0)
    assert (day["prompt_tokens"], day["completion_tokens"], day["total_tokens"], day["estimated_tokens"]) == (220, 40, 260, 110)

    by_channel = {r["key"]: r for r in report(api, workspace, "group_by=channel")["rows"]}
    assert (by_channel["sms"]["outbound"], by_channel["email"]["outbound"], by_channel["email"]["inbound"]) == (2, 1, 0)
    by_model = {r["key"]: r for r in report(api, workspace, "group_by=model")["rows"]}
    assert by_model["gpt-4o-mini"]["total_tokens"] == 260 and by_model["gpt-4o-mini"]["ai_calls"] == 2
    assert by_model[None]["ai_calls"] == 1 and by_model[None]["inbound"] == 2


def test_usage_is_the_workspace_own_and_its_window_is_checked(api, workspace):
    from common import apikeys

    store(workspace["id"], 1)
    with transaction():
        other = {"Authorization": f"Bearer {apikeys.issue(apikeys.create_workspace('globex'))}"}
    assert api.get("/v1/usage", headers=other).get_json()["rows"] == []
    assert report(api, workspace, "from=2020-01-01&to=2020-01-31")["rows"] == []
    for query, field in [("from=2024-02-30", "from"), ("to=yesterday", "to"), ("from=2024-03-02&to=2024-03-01", "from"),
                         ("from=2020-01-01&to=2024-01-01", "from"), ("group_by=hour", "group_by"), ("to=2024-W01-1", "to")]:
        response = api.get(f"/v1/usage?{query}", headers=workspace["auth"])
        assert response.status_code == 422, query
        assert response.get_json()["error"]["field"] == field, query
    assert report(api, workspace, "to=0001-01-05")["from"] == "0001-01-01"


def test_the_quota_is_reserved_before_a_reply_and_counted_only_when_it_was_sent(workspace):
    _, conversation = store(workspace["id"], 1)
    with transaction():
        usage.set_plan(workspace["id"], quota=2)
        first, second = usage.reserve(workspace["id"], conversation), usage.reserve(workspace["id"], conversation)
        assert first and second
        assert usage.reserve(workspace["id"], conversation) is None  # used + reserved would pass the quota
    sent, failed = reply(workspace["id"], conversation, "bot"), reply(workspace["id"], conversation, "bot")
    with transaction():
        usage.attach(first, sent)
        usage.attach(second, failed)
        fetch("UPDATE message SET status = 'sent' WHERE id = %s", (sent,))
        fetch("UPDATE message SET status = 'failed' WHERE id = %s", (failed,))
    with transaction():
        assert usage.settle(lease_seconds=120) == (1, 1)
    with transaction():
        state = usage.plan_of(workspace["id"])
        assert (state["quota_used"], state["quota_reserved"]) == (1, 0)
        assert fetch("SELECT count(*) FROM ai_reservation")[0][0] == 0
        third = usage.reserve(workspace["id"], conversation)  # the failed reply gave its place back
        assert third is not None and usage.reserve(workspace["id"], conversation) is None
        usage.release([third])
        assert usage.plan_of(workspace["id"])["quota_reserved"] == 0


def test_a_reply_that_never_came_gives_its_reservation_back_after_the_lease(workspace):
    _, conversation = store(workspace["id"], 1)
    with transaction():
        reservation = usage.reserve(workspace["id"], conversation)
        assert reservation is not None
        assert usage.settle(lease_seconds=120) == (0, 0)  # still within its lease
        fetch("UPDATE ai_reservation SET created_at = now() - interval '5 minutes'")
    with transaction():
        assert usage.settle(lease_seconds=120) == (0, 1)
        assert usage.plan_of(workspace["id"])["quota_reserved"] == 0


def test_a_stored_inbound_message_and_a_conversation_reply_are_one_usage_row_each(workspace):
    message_id, conversation = store(workspace["id"], 1)
    with transaction():
        conversations.move(workspace["id"], conversation, ("bot",), "open", "api", "api")
    reply_id = reply(workspace["id"], conversation, "agent")
    with transaction():
        assert fetch("SELECT kind, channel, conversation_id, message_id FROM usage_log ORDER BY id") == [
            ("inbound", "sms", conversation, message_id), ("outbound", "sms", conversation, reply_id)]
    assert json.dumps(usage.OUTCOMES)
