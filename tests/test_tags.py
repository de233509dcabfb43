"""Tags as names and values: cancel and reschedule every pending match at once, and a workspace's
unique tags (a natural key such as event, contractor and message type) refusing a duplicate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from common.db.connection import fetch, transaction
from tests.support import status_of
from tests.test_cli import postroom

EVENT = {"event_id": "41", "contractor_id": "56", "message_type": "speaker_alert"}


def post(api, workspace, tags, **fields):
    return api.post("/v1/messages", json={"channel": "sms", "to": "+15005550006", "body": "reminder", "tags": tags, **fields},
                    headers=workspace["auth"])


def due_of(message_id: int) -> datetime:
    with transaction():
        return fetch("SELECT due_at FROM message WHERE id = %s", (message_id,))[0][0]


def test_tags_are_names_and_values_and_a_list_still_works(api, workspace):
    made = post(api, workspace, EVENT, delay_seconds=600)
    assert made.status_code == 202
    view = api.get(f"/v1/messages/{made.get_json()['id']}", headers=workspace["auth"]).get_json()
    assert view["tags"] == EVENT and view["status"] == "scheduled" and view["send_at"]
    listed = post(api, workspace, ["vip", "q4"])
    assert listed.status_code == 202
    assert api.get(f"/v1/messages/{listed.get_json()['id']}", headers=workspace["auth"]).get_json()["tags"] == ["vip", "q4"]
    for bad in ({"bad name": "x"}, {"event_id": 41}, {"k": "line\nbreak"}, {f"k{i}": "v" for i in range(21)}):
        refused = post(api, workspace, bad)
        assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "tags", bad


def test_cancel_by_tags_cancels_every_pending_match_and_nothing_else(api, workspace):
    auth = workspace["auth"]
    pending = [post(api, workspace, {**EVENT, "contractor_id": str(n)}, delay_seconds=600).get_json()["id"] for n in range(3)]
    other_event = post(api, workspace, {**EVENT, "event_id": "42"}, delay_seconds=600).get_json()["id"]
    done = post(api, workspace, {**EVENT, "contractor_id": "99"}).get_json()["id"]
    with transaction():
        fetch("UPDATE message SET status = 'sent' WHERE id = %s", (done,))
    cancelled = api.post("/v1/messages/cancel", json={"tags": {"event_id": "41"}}, headers=auth)
    assert cancelled.status_code == 200 and cancelled.get_json() == {"count": 3}
    assert [status_of(i) for i in pending] == ["cancelled"] * 3
    assert status_of(other_event) == "scheduled" and status_of(done) == "sent"
    again = api.post("/v1/messages/cancel", json={"tags": {"event_id": "41"}}, headers=auth)
    assert again.get_json() == {"count": 0}
    one = api.post("/v1/messages/cancel", json={"tags": {"event_id": "42", "contractor_id": "56"}}, headers=auth)
    assert one.get_json() == {"count": 1}  # every name must match
    empty = api.post("/v1/messages/cancel", json={"tags": {}}, headers=auth)
    assert empty.status_code == 422 and empty.get_json()["error"]["field"] == "tags"


def test_reschedule_by_tags_moves_every_pending_match(api, workspace):
    auth = workspace["auth"]
    first = post(api, workspace, EVENT, delay_seconds=3600).get_json()["id"]
    second = post(api, workspace, {**EVENT, "message_type": "check_in"}, delay_seconds=7200).get_json()["id"]
    unrelated = post(api, workspace, {**EVENT, "event_id": "7"}, delay_seconds=3600).get_json()["id"]
    before = {i: due_of(i) for i in (first, second, unrelated)}
    shifted = api.post("/v1/messages/reschedule", json={"tags": {"event_id": "41"}, "shift_seconds": 86400}, headers=auth)
    assert shifted.status_code == 200 and shifted.get_json() == {"count": 2}
    assert due_of(first) - before[first] == timedelta(days=1) and due_of(second) - before[second] == timedelta(days=1)
    assert due_of(unrelated) == before[unrelated]
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    moved = api.post("/v1/messages/reschedule", json={"tags": {"event_id": "41", "message_type": "check_in"},
                                                      "send_at": when.isoformat()}, headers=auth)
    assert moved.get_json() == {"count": 1} and due_of(second) == when
    for body in ({"tags": {"event_id": "41"}}, {"tags": {"event_id": "41"}, "shift_seconds": 60, "send_at": when.isoformat()}):
        assert api.post("/v1/messages/reschedule", json=body, headers=auth).status_code == 422


def test_a_workspace_unique_key_refuses_a_duplicate_or_returns_the_pending_one(api, workspace):
    assert postroom("workspace", "set", "acme", "--unique-tags", "event_id,contractor_id,message_type").returncode == 0
    first = post(api, workspace, EVENT, delay_seconds=600)
    assert first.status_code == 202
    duplicate = post(api, workspace, {**EVENT, "extra": "x"}, delay_seconds=900)
    assert duplicate.status_code == 409 and duplicate.get_json()["error"]["code"] == "duplicate"
    assert str(first.get_json()["id"]) in duplicate.get_json()["error"]["message"]
    returned = post(api, workspace, EVENT, delay_seconds=900, on_conflict="return")
    assert returned.status_code == 200 and returned.get_json()["id"] == first.get_json()["id"]
    assert post(api, workspace, {**EVENT, "message_type": "check_in"}, delay_seconds=600).status_code == 202  # another key
    assert post(api, workspace, {"event_id": "41"}).status_code == 202  # without every unique name: no key
    api.post(f"/v1/messages/{first.get_json()['id']}/cancel", headers=workspace["auth"])
    assert post(api, workspace, EVENT, delay_seconds=600).status_code == 202  # the pending one is gone
    cleared = postroom("workspace", "set", "acme", "--unique-tags", "")
    assert cleared.returncode == 0 and "unique_tags=(none)" in cleared.stdout
    assert post(api, workspace, EVENT, delay_seconds=600).status_code == 202


def test_a_natural_key_holds_only_while_its_message_is_pending(api, workspace):
    assert postroom("workspace", "set", "acme", "--unique-tags", "event_id,message_type").returncode == 0
    first = post(api, workspace, EVENT, delay_seconds=600).get_json()["id"]
    assert post(api, workspace, EVENT).status_code == 409
    with transaction():
        fetch("UPDATE message SET status = 'sent' WHERE id = %s", (first,))
    assert post(api, workspace, EVENT).status_code == 202  # the first went out: the next one is no duplicate
