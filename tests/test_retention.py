"""Retention: finished messages and raw provider webhooks are deleted once old; nothing waiting is."""

from __future__ import annotations

from common.db.connection import fetch, transaction
from services.scheduler import retention


def message(workspace_id: int, status: str, age_days: float) -> int:
    with transaction():
        message_id = fetch(
            "INSERT INTO message (workspace_id, channel, to_addr, body, status, created_at)"
            " VALUES (%s, 'sms', '+15005550006', 'x', %s, now() - %s * interval '1 day') RETURNING id",
            (workspace_id, status, age_days))[0][0]
        fetch("INSERT INTO message_event (message_id, status) VALUES (%s, 'accepted'), (%s, %s)",
              (message_id, message_id, status))
    return message_id


def test_old_finished_messages_go_with_their_history_and_waiting_or_recent_ones_stay(workspace):
    old = {status: message(workspace["id"], status, 31) for status in retention.FINISHED}
    waiting = [message(workspace["id"], status, 90) for status in ("scheduled", "routed", "sending")]
    recent = message(workspace["id"], "delivered", 29)
    with transaction():
        fetch("INSERT INTO provider_event (provider, kind, payload, signature_valid, received_at) VALUES"
              " ('twilio', 'status', '{}', true, now() - interval '8 days'), ('twilio', 'status', '{}', true, now())")
        fetch("INSERT INTO usage_log (workspace_id, kind, at) VALUES (%(ws)s, 'inbound', now() - interval '401 days'),"
              " (%(ws)s, 'ai_call', now() - interval '399 days')", {"ws": workspace["id"]})

    done = retention.clean_up(force=True)

    assert done == {"expired_messages": len(old), "expired_provider_events": 1, "expired_usage_rows": 1}
    with transaction():
        kept = {r[0] for r in fetch("SELECT id FROM message")}
        history = {r[0] for r in fetch("SELECT DISTINCT message_id FROM message_event")}
        events = fetch("SELECT count(*) FROM provider_event")[0][0]
    assert kept == {*waiting, recent} and history == kept  # each deleted message's history went with it
    assert events == 1
    with transaction():
        assert fetch("SELECT kind FROM usage_log") == [("ai_call",)]  # usage within POSTROOM_USAGE_RETENTION_DAYS stays
    assert retention.clean_up(force=True) == {}  # nothing left to do
    assert retention.clean_up() == {}  # and a pass runs at most once a minute


def test_a_large_backlog_of_expired_messages_is_deleted_in_batches(workspace, monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 3)
    for _ in range(10):
        message(workspace["id"], "delivered", 40)
    assert retention.clean_up(force=True) == {"expired_messages": 10}
    monkeypatch.setattr(retention, "MAX_BATCHES_PER_PASS", 2)
    for _ in range(10):
        message(workspace["id"], "failed", 40)
    assert retention.clean_up(force=True) == {"expired_messages": 6}  # a bounded pass; the rest next time
    assert retention.clean_up(force=True) == {"expired_messages": 4}
