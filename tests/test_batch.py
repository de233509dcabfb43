"""POST /v1/messages/batch: every item answered by its index, the valid ones accepted set-wise and
sent through the pipeline even when others are refused; item keys and the request's key dedupe."""

from __future__ import annotations

import json

from common.db.connection import fetch, transaction
from tests.support import running_workers, wait_for

# Ten kinds of bad item, each with the field its error must name.
INVALID = [
    ({"channel": "sms", "to": "5550006", "body": "x"}, "to"),
    ({"channel": "sms", "to": "+15005550006"}, "body"),
    ({"channel": "sms", "to": "+15005550006", "body": "x", "bodyy": "typo"}, "bodyy"),
    ({"channel": "sms", "to": "+15005550006", "body": "x", "priority": "asap"}, "priority"),
    ({"channel": "pigeon", "to": "+15005550006", "body": "x"}, "channel"),
    ({"to": "+15005550006", "body": "x"}, "channel"),
    ({"channel": "email", "to": "not-an-address", "body": "x"}, "to"),
    ({"channel": "sms", "to": "+15005550006", "body": "x", "send_at": "tomorrow"}, "send_at"),
    ({"channel": "sms", "to": "+15005550006", "body": "x", "subject": "sms has none"}, "subject"),
    ("not an object", None),
]


def sms(n: int, **extra: object) -> dict:
    return {"channel": "sms", "to": f"+1500555{n:04d}", "body": f"batch {n}", **extra}


def message_count() -> int:
    with transaction():
        return int(fetch("SELECT count(*) FROM message")[0][0])


def post(api, workspace, items: list, **headers: str):
    return api.post("/v1/messages/batch", data=json.dumps({"messages": items}), content_type="application/json",
                    headers={**workspace["auth"], **headers})


def test_batch_of_1000_with_10_invalid_accepts_990_and_names_each_field(api, workspace, sandbox, broker):
    # Given 1,000 messages of which every hundredth (10 in all) is invalid in its own way
    bad_at = {100 * k + 7: INVALID[k] for k in range(10)}
    items = [bad_at[n][0] if n in bad_at else sms(n) for n in range(1000)]
    with running_workers(broker, threads=8):
        # When they are posted as one batch
        response = post(api, workspace, items)
        # Then 990 are accepted and each of the 10 has an error naming its field, by index
        assert response.status_code == 207
        answer = response.get_json()
        assert (answer["accepted"], answer["failed"]) == (990, 10)
        results = answer["results"]
        assert [r["index"] for r in results] == list(range(1000))
        for n, result in enumerate(results):
            if n in bad_at:
                field = bad_at[n][1]
                assert result["error"]["field"] == (f"messages[{n}].{field}" if field else f"messages[{n}]"), result
                assert result["error"]["message"].startswith(f"messages[{n}]") and "id" not in result
            else:
                assert result["status"] == "accepted" and isinstance(result["id"], int)
        assert message_count() == 990
        # And the pipeline sends every accepted one, once
        wait_for(lambda: len(sandbox.messages()) >= 990, timeout=90, what="990 sends")
        ids = [r["id"] for r in results if "id" in r]
        wait_for(lambda: _sent(ids) == 990, timeout=30, what="990 recorded as sent")
    bodies = sorted(m["body"] for m in sandbox.messages())
    assert bodies == sorted(f"batch {n}" for n in range(1000) if n not in bad_at)


def _sent(ids: list[int]) -> int:
    with transaction():
        return int(fetch("SELECT count(*) FROM message WHERE id = ANY(%s) AND sent_at IS NOT NULL", (ids,))[0][0])


def test_item_keys_answer_the_earlier_message_and_refuse_another(api, workspace):
    # Given a batch whose items carry their own keys, two of them the same
    first = post(api, workspace, [sms(1, idempotency_key="a"), sms(2, idempotency_key="b"), sms(1, idempotency_key="a")])
    results = first.get_json()["results"]
    assert results[2] == {"index": 2, "id": results[0]["id"], "status": "accepted", "replayed": True}
    assert message_count() == 2
    # When a later batch repeats one key with the same message, another with a different one
    again = post(api, workspace, [sms(2, idempotency_key="b"), sms(9, idempotency_key="a"), sms(3)])
    # Then the first answers the earlier id, the second is refused naming its key, the third is new
    later = again.get_json()
    assert later["results"][0] == {"index": 0, "id": results[1]["id"], "status": "accepted", "replayed": True}
    assert later["results"][1]["error"]["code"] == "idempotency_conflict"
    assert later["results"][1]["error"]["field"] == "messages[1].idempotency_key"
    assert later["results"][2]["status"] == "accepted" and (later["accepted"], later["failed"]) == (2, 1)
    assert message_count() == 3
    # And a single message with an item's key is that message too
    single = api.post("/v1/messages", json=sms(2), headers={**workspace["auth"], "Idempotency-Key": "b"})
    assert single.get_json()["id"] == results[1]["id"]


def test_request_key_replays_the_batch_and_a_rerun_makes_nothing_twice(api, workspace):
    items = [sms(n) for n in range(5)]
    first = post(api, workspace, items, **{"Idempotency-Key": "batch-1"})
    replay = post(api, workspace, items, **{"Idempotency-Key": "batch-1"})
    assert replay.status_code == 207 and replay.get_json() == first.get_json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    # When the process that ran it had died before storing its answer, a retry re-runs it
    with transaction():
        fetch("UPDATE idempotent_request SET state = 'running', status = NULL, body = NULL,"
              " lease_until = now() - interval '1 second' WHERE key = 'batch-1'")
    rerun = post(api, workspace, items, **{"Idempotency-Key": "batch-1"}).get_json()
    # Then it finds the messages the first run made (by their derived keys) instead of making more
    assert [r["id"] for r in rerun["results"]] == [r["id"] for r in first.get_json()["results"]]
    assert all(r["replayed"] for r in rerun["results"]) and message_count() == 5


def test_unique_tags_refuse_a_duplicate_item_unless_it_asks_for_the_pending_one(api, workspace):
    with transaction():
        fetch("UPDATE workspace SET unique_tags = '{event_id}' WHERE id = %s", (workspace["id"],))
    tagged = {"tags": {"event_id": "41"}}
    answer = post(api, workspace, [sms(1, **tagged), sms(2, **tagged), sms(3, **tagged, on_conflict="return")]).get_json()
    first, duplicate, returned = answer["results"]
    assert duplicate["error"]["code"] == "duplicate" and duplicate["error"]["field"] == "messages[1].tags"
    assert returned == {"index": 2, "id": first["id"], "status": "accepted", "replayed": True}
    assert message_count() == 1


def test_scheduled_items_are_scheduled(api, workspace):
    answer = post(api, workspace, [sms(1, delay_seconds=3600), sms(2)]).get_json()
    assert [r["status"] for r in answer["results"]] == ["scheduled", "accepted"]


def test_an_empty_or_oversized_batch_is_422_naming_messages(api, workspace):
    for items in ([], [sms(n) for n in range(1001)]):
        response = post(api, workspace, items)
        assert response.status_code == 422 and response.get_json()["error"]["field"] == "messages"
    assert message_count() == 0


def test_items_naming_contacts_are_resolved_with_one_query_for_the_batch(api, workspace, monkeypatch):
    # Given three contacts with numbers
    contacts = []
    for n in range(3):
        made = api.post("/v1/contacts", json={"addresses": {"sms": f"+1500555{7000 + n:04d}"}}, headers=workspace["auth"])
        assert made.status_code in (200, 201), made.get_json()
        contacts.append(made.get_json()["id"])
    # When a batch names them (one twice) and one contact that does not exist
    from services.ingest import outgoing

    reads: list[str] = []
    real_fetch = outgoing.fetch
    monkeypatch.setattr(outgoing, "fetch", lambda sql, *args, **kw: (reads.append(sql), real_fetch(sql, *args, **kw))[1])
    items = [{"channel": "sms", "contact_id": c, "body": "for a contact"} for c in [*contacts, contacts[0]]]
    items.append({"channel": "sms", "contact_id": contacts[-1] + 1000, "body": "nobody"})
    answer = post(api, workspace, items)
    # Then each contact's number is its message's, the missing one is refused by name, and the
    # contacts were read in one query
    results = answer.get_json()["results"]
    assert answer.status_code == 207 and [("id" in r) for r in results] == [True, True, True, True, False], results
    assert results[4]["error"]["field"] == "messages[4].contact_id"
    with transaction():
        sent_to = dict(fetch("SELECT id, to_addr FROM message WHERE id = ANY(%s)", ([r["id"] for r in results[:4]],)))
    assert [sent_to[r["id"]] for r in results[:4]] == ["+15005557000", "+15005557001", "+15005557002", "+15005557000"]
    assert sum("contact_address" in sql for sql in reads) == 1
