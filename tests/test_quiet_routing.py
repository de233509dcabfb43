"""Quiet hours at routing, with a controlled clock: a message inside its window is held as
scheduled until the window opens, in the recipient's time zone; urgent ones go unless the
workspace says otherwise; a message may bring its own window or none. Numbers are checked with
libphonenumber's data at the API."""

from __future__ import annotations

from datetime import UTC, datetime

from common.db.connection import fetch, fetch_dicts, transaction
from services.routing.channels import hold_quiet
from tests.test_cli import postroom

LATE_EVENING = datetime(2026, 12, 1, 23, 0, tzinfo=UTC)  # 23:00 in London, 18:00 in New York


def queued(workspace_id: int, to: str, priority: str = "bulk", quiet: str | None = None) -> int:
    with transaction():
        return fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, priority, quiet_hours)"
                     " VALUES (%s, 'sms', %s, 'hello', 'queued', %s, %s) RETURNING id", (workspace_id, to, priority, quiet))[0][0]


def row(message_id: int) -> dict:
    with transaction():
        message = fetch_dicts("SELECT status, due_at FROM message WHERE id = %s", (message_id,))[0]
        message["events"] = fetch_dicts("SELECT status, detail FROM message_event WHERE message_id = %s ORDER BY id", (message_id,))
    return message


def test_quiet_hours_hold_a_message_until_they_end_in_the_recipients_zone(workspace):
    assert postroom("workspace", "set", "acme", "--quiet-hours", "21:00-08:00", "--timezone", "America/New_York").returncode == 0
    london = queued(workspace["id"], "+442079460123")  # the number pins down Europe/London: 23:00 there
    new_york = queued(workspace["id"], "+15005550006")  # spans every +1 zone: the workspace's, 18:00 there
    with transaction():
        held = hold_quiet([london, new_york], now=LATE_EVENING)
    assert held == {london}
    kept = row(london)
    assert kept["status"] == "scheduled" and kept["due_at"] == datetime(2026, 12, 2, 8, 0, tzinfo=UTC)  # 08:00 London
    hold = kept["events"][-1]
    assert hold["status"] == "scheduled" and hold["detail"]["held"] == "quiet_hours"
    assert hold["detail"]["timezone"] == "Europe/London" and hold["detail"]["timezone_from"] == "phone"
    assert row(new_york)["status"] == "queued"  # routing moves it on


def test_urgent_goes_unless_the_workspace_says_otherwise_and_a_message_may_choose(workspace):
    assert postroom("workspace", "set", "acme", "--quiet-hours", "22:00-07:00", "--timezone", "Europe/London").returncode == 0
    urgent = queued(workspace["id"], "+15005550006", "urgent")
    opted_out = queued(workspace["id"], "+15005550006", quiet="off")
    own_window = queued(workspace["id"], "+15005550006", "urgent", quiet="18:00-23:30")
    with transaction():
        assert hold_quiet([urgent, opted_out, own_window], now=LATE_EVENING) == {own_window}
    assert postroom("workspace", "set", "acme", "--quiet-hours-urgent", "on").returncode == 0
    with transaction():
        assert hold_quiet([urgent], now=LATE_EVENING) == {urgent}
    assert row(urgent)["due_at"] == datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
    assert postroom("workspace", "set", "acme", "--quiet-hours", "25:00-08:00").returncode != 0


def test_a_reply_in_a_conversation_is_never_held_by_quiet_hours(workspace):
    assert postroom("workspace", "set", "acme", "--quiet-hours", "21:00-08:00", "--timezone", "Europe/London").returncode == 0
    replies = [queued(workspace["id"], "+442079460123") for _ in ("bot", "bot_handoff", "agent")]
    campaign = queued(workspace["id"], "+442079460123")
    with transaction():
        for message_id, author in zip(replies, ("bot", "bot_handoff", "agent"), strict=True):
            fetch("UPDATE message SET author = %s WHERE id = %s", (author, message_id))
        # The customer wrote at 23:00 their time: the answers go now, a message they did not ask for waits
        assert hold_quiet([*replies, campaign], now=LATE_EVENING) == {campaign}
    assert [row(r)["status"] for r in replies] == ["queued"] * 3


def test_the_api_checks_numbers_and_windows(api, workspace):
    def post(**fields):
        return api.post("/v1/messages", json={"channel": "sms", "body": "hi", **fields}, headers=workspace["auth"])

    spaced = post(to="+1 (500) 555-0006")
    assert spaced.status_code == 202 and spaced.get_json()["to"] == "+15005550006"
    for number in ("+15551230001", "+99912345678", "12345", "+44 20 79"):
        refused = post(to=number)
        assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "to", number
    bad_window = post(to="+15005550006", quiet_hours="9pm-8am")
    assert bad_window.status_code == 422 and bad_window.get_json()["error"]["field"] == "quiet_hours"
    assert post(to="+15005550006", quiet_hours="off").status_code == 202
