"""Idempotency on every POST: a replay gets the first answer (marked), another body gets 409, a
duplicate arriving while the first runs gets 409, concurrent duplicates send once, and after the
key expires the same request makes a new message."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from common.config import settings
from common.db.connection import DatabaseUnavailable, fetch, fetch_dicts, transaction
from tests.support import running_workers, status_of, wait_for

GOOD = {"channel": "sms", "to": "+15005550006", "body": "hello once"}


def keyed(workspace: dict, key: str) -> dict:
    return {**workspace["auth"], "Idempotency-Key": key}


def message_ids() -> list[int]:
    with transaction():
        return [r[0] for r in fetch("SELECT id FROM message ORDER BY id")]


def claim_row(key: str) -> dict:
    with transaction():
        return fetch_dicts("SELECT * FROM idempotent_request WHERE key = %s", (key,))[0]


def hold_claim(api, workspace: dict, key: str, payload: dict, path: str = "/v1/messages") -> None:
    """Claim ``key`` for this exact request as a request still running would have."""
    from services.ingest import idempotency

    with api.application.test_request_context(path, method="POST", data=json.dumps(payload),
                                              content_type="application/json"):
        fingerprint = idempotency.fingerprint()
    assert isinstance(idempotency.claim(workspace["id"], key, fingerprint), idempotency.Claim)


def test_replay_gets_the_first_answer_with_the_marker(api, workspace):
    # Given a message sent with a key
    first = api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "k-1"))
    # When the same request is sent twice more
    replays = [api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "k-1")) for _ in range(2)]
    # Then each gets the first answer, status and body, marked as a replay; one message exists
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    for again in replays:
        assert again.status_code == 202 and again.get_json() == first.get_json()
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.headers["Content-Type"] == "application/json"
    assert message_ids() == [first.get_json()["id"]]


def test_same_key_with_another_body_or_path_is_409_naming_the_header(api, workspace):
    api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "k-2"))
    other_body = api.post("/v1/messages", json={**GOOD, "body": "something else"}, headers=keyed(workspace, "k-2"))
    other_path = api.post("/v1/messages/cancel", json={"tags": {"a": "b"}}, headers=keyed(workspace, "k-2"))
    for conflict in (other_body, other_path):
        assert conflict.status_code == 409
        assert conflict.get_json()["error"] == {"code": "idempotency_conflict", "field": "Idempotency-Key",
                                                "message": conflict.get_json()["error"]["message"]}
    assert len(message_ids()) == 1


def test_keys_are_per_workspace(api, workspace):
    from common import apikeys

    with transaction():
        other = {"Authorization": f"Bearer {apikeys.issue(apikeys.create_workspace('other'))}"}
    mine = api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "shared"))
    theirs = api.post("/v1/messages", json=GOOD, headers={**other, "Idempotency-Key": "shared"})
    assert mine.status_code == theirs.status_code == 202
    assert "Idempotent-Replayed" not in theirs.headers and mine.get_json()["id"] != theirs.get_json()["id"]


def test_request_still_running_gets_409_in_progress_and_a_dead_claim_is_taken_over(api, workspace):
    # Given a claim held by a request that is still running
    hold_claim(api, workspace, "k-3", GOOD)
    # When the same request arrives
    busy = api.post("/v1/messages", data=json.dumps(GOOD), content_type="application/json", headers=keyed(workspace, "k-3"))
    # Then it is told to come back, and nothing was made
    assert busy.status_code == 409 and busy.get_json()["error"]["code"] == "idempotency_in_progress"
    assert busy.headers["Retry-After"] == "1" and message_ids() == []
    # When the holder died (its lease ran out), the next request takes the key over and runs
    with transaction():
        fetch("UPDATE idempotent_request SET lease_until = now() - interval '1 second' WHERE key = 'k-3'")
    taken = api.post("/v1/messages", data=json.dumps(GOOD), content_type="application/json", headers=keyed(workspace, "k-3"))
    assert taken.status_code == 202 and message_ids() == [taken.get_json()["id"]]
    assert claim_row("k-3")["state"] == "done"


def test_a_rerun_after_a_crash_between_commit_and_answer_finds_the_message(api, workspace):
    # Given a message made by a request whose process died before it stored its answer
    first = api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "k-4")).get_json()
    with transaction():
        fetch("UPDATE idempotent_request SET state = 'running', status = NULL, body = NULL, headers = NULL,"
              " lease_until = now() - interval '1 second' WHERE key = 'k-4'")
    # When the client retries after the lease
    again = api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "k-4"))
    # Then the message found by its key is the answer: no second message
    assert again.get_json()["id"] == first["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert message_ids() == [first["id"]]
    replay = api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "k-4"))
    assert (replay.status_code, replay.get_json()) == (again.status_code, again.get_json())


def test_concurrent_duplicates_make_one_message_and_one_send(ingest_url, workspace, sandbox, broker):
    # Given eight clients sending the same request with the same key at the same moment
    payload = {**GOOD, "body": "concurrent once"}
    barrier = threading.Barrier(8)
    answers: list[requests.Response] = []

    def client() -> None:
        barrier.wait()
        answers.append(requests.post(f"{ingest_url}/v1/messages", json=payload, headers=keyed(workspace, "k-5"), timeout=10))

    with running_workers(broker):
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Then one was accepted; the others got its answer or were told it is still running
        accepted = {a.json()["id"] for a in answers if a.status_code == 202}
        assert len(accepted) == 1, [(a.status_code, a.text) for a in answers]
        assert all(a.status_code == 202 or a.json()["error"]["code"] == "idempotency_in_progress" for a in answers)
        (message_id,) = accepted
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered")
    # And exactly one message was made and sent once
    assert message_ids() == [message_id]
    assert [m["body"] for m in sandbox.messages()] == ["concurrent once"]


def test_validation_error_is_answered_without_using_the_key(api, workspace):
    bad = api.post("/v1/messages", json={**GOOD, "priority": "asap"}, headers=keyed(workspace, "k-6"))
    assert bad.status_code == 422 and "Idempotent-Replayed" not in bad.headers
    good = api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "k-6"))
    assert good.status_code == 202 and "Idempotent-Replayed" not in good.headers


def test_a_refusal_by_the_view_is_replayed_as_it_was(api, workspace):
    # Given a request the view refuses (a sender identity that is not the workspace's)
    payload = {**GOOD, "from": "+15005550999"}
    first = api.post("/v1/messages", json=payload, headers=keyed(workspace, "k-7"))
    again = api.post("/v1/messages", json=payload, headers=keyed(workspace, "k-7"))
    assert first.status_code == again.status_code == 422
    assert again.get_json() == first.get_json() and again.headers["Idempotent-Replayed"] == "true"


def test_a_server_error_releases_the_key_so_a_retry_runs(api, workspace, monkeypatch):
    from services.ingest import messages

    real = messages.accept

    def unavailable_once(*args, **kwargs):
        monkeypatch.setattr(messages, "accept", real)
        raise DatabaseUnavailable("down for this test")

    monkeypatch.setattr(messages, "accept", unavailable_once)
    failed = api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "k-8"))
    assert failed.status_code == 503
    with transaction():
        assert fetch("SELECT count(*) FROM idempotent_request")[0][0] == 0
    retried = api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "k-8"))
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers


def expire(key: str) -> None:
    """Make ``key``'s use older than the TTL, as time would."""
    age = settings.postroom_idempotency_ttl_seconds + 60
    with transaction():
        fetch("UPDATE idempotent_request SET created_at = created_at - %s * interval '1 second' WHERE key = %s", (age, key))
        fetch("UPDATE message SET created_at = created_at - %s * interval '1 second' WHERE idempotency_key = %s", (age, key))


def test_replay_after_expiry_creates_a_new_message(api, workspace):
    # Given a message sent with a key that has since expired
    first = api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "k-9")).get_json()
    expire("k-9")
    # When the same request is sent again
    again = api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "k-9"))
    # Then it is a new request: a new message, which now holds the key
    assert again.status_code == 202 and "Idempotent-Replayed" not in again.headers
    assert again.get_json()["id"] != first["id"] and message_ids() == [first["id"], again.get_json()["id"]]
    with transaction():
        holders = fetch("SELECT id FROM message WHERE idempotency_key = 'k-9'")
    assert holders == [(again.get_json()["id"],)]


def test_expired_keys_are_purged_by_the_scheduler(api, workspace):
    from services.scheduler import retention

    api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "old"))
    api.post("/v1/messages", json=GOOD, headers=keyed(workspace, "new"))
    expire("old")
    assert retention.clean_up(force=True)["expired_idempotency_keys"] == 1
    with transaction():
        assert [r[0] for r in fetch("SELECT key FROM idempotent_request")] == ["new"]


def test_internal_keys_of_schedules_are_never_released(api, workspace):
    # Given an old occurrence of a recurring schedule, holding its internal key
    from common import intake

    with transaction():
        made = intake.insert(workspace["id"], {**GOOD, "priority": "normal", "tags": []}, "sched:1:2026-01-01T09:00", None)
    assert made is not None
    expire("sched:1:2026-01-01T09:00")
    # When a client happens to send the same text as its Idempotency-Key
    response = api.post("/v1/messages", json={**GOOD, "body": "other"}, headers=keyed(workspace, "sched:1:2026-01-01T09:00"))
    # Then the key is refused as one of postroom's own, and the occurrence keeps it
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "Idempotency-Key"
    with transaction():
        assert fetch("SELECT idempotency_key FROM message WHERE id = %s", (made["id"],))[0][0] == "sched:1:2026-01-01T09:00"


def test_another_post_replays_too(api, workspace):
    # Given a webhook endpoint created with a key (its secret is shown once)
    payload = {"url": "http://127.0.0.1:9/hook", "event_types": ["message.sent"]}
    headers = {**keyed(workspace, "hook-1"), "Content-Type": "application/json"}
    first = api.post("/v1/webhook-endpoints", data=json.dumps(payload), headers=headers)
    again = api.post("/v1/webhook-endpoints", data=json.dumps(payload), headers=headers)
    # Then the replay is the same answer, secret included, and one endpoint exists
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json() and again.headers["Idempotent-Replayed"] == "true"
    with transaction():
        assert fetch("SELECT count(*) FROM webhook_endpoint")[0][0] == 1
        stored = bytes(fetch("SELECT body FROM idempotent_request WHERE key = 'hook-1'")[0][0])
    assert first.get_json()["secret"].encode() not in stored  # sealed at rest


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "sched:1:2026-01-01T09:00", "enrol:7:2"])
def test_malformed_key_is_400_naming_the_header(api, workspace, key):
    response = api.post("/v1/messages", json=GOOD, headers=keyed(workspace, key))
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "Idempotency-Key"
    assert message_ids() == []


def test_every_authenticated_post_declares_the_key_409_and_the_marker(api):
    document = api.get("/openapi.json").get_json()
    posts = [(path, ops["post"]) for path, ops in document["paths"].items()
             if "post" in ops and "security" in ops["post"]]
    assert any(path == "/v1/messages/batch" for path, _ in posts)
    for path, op in posts:
        assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in op["parameters"]), path
        assert "409" in op["responses"], path
        ok = [s for s in op["responses"] if s.startswith("2")]
        assert all("Idempotent-Replayed" in op["responses"][s]["headers"] for s in ok), path


CAMPAIGN = {"name": "keyed", "channel": "sms", "body": "Sale on now", "start": True,
            "recipients": [{"to": "+15005550006"}, {"to": "+15005550001"}]}


def campaigns_stored() -> int:
    with transaction():
        return int(fetch("SELECT count(*) FROM campaign")[0][0])


def test_a_broker_failure_after_a_campaign_committed_still_answers_it_once(api, workspace, monkeypatch):
    # Given a broker that refuses every enqueue
    import dramatiq

    def refuse(*args: object, **kwargs: object) -> None:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(dramatiq.get_broker(), "enqueue", refuse)
    # When a started campaign is created with a key, and the request is repeated
    headers = {**keyed(workspace, "campaign-broker"), "Content-Type": "application/json"}
    first = api.post("/v1/campaigns", data=json.dumps(CAMPAIGN), headers=headers)
    again = api.post("/v1/campaigns", data=json.dumps(CAMPAIGN), headers=headers)
    # Then the campaign is answered (its messages wait for the reconciler), once, and replayed
    assert first.status_code == 201, first.get_json()
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"] and campaigns_stored() == 1


def test_a_failure_after_the_request_committed_is_its_answer_and_is_not_run_again(api, workspace, monkeypatch):
    # Given a campaign hand-off that fails unexpectedly after the fan-out committed
    from services.ingest import campaigns_api

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("bug after commit")

    monkeypatch.setattr(campaigns_api.campaigns, "hand_on", broken)
    headers = {**keyed(workspace, "campaign-bug"), "Content-Type": "application/json"}
    # When the request is made and then repeated with its key
    first = api.post("/v1/campaigns", data=json.dumps(CAMPAIGN), headers=headers)
    again = api.post("/v1/campaigns", data=json.dumps(CAMPAIGN), headers=headers)
    # Then the failure is the key's answer: the campaign it stored stands, and is not made twice
    assert first.status_code == 500 and first.get_json()["error"]["code"] == "incomplete"
    assert again.status_code == 500 and again.headers["Idempotent-Replayed"] == "true"
    assert campaigns_stored() == 1


def test_a_campaign_whose_first_request_died_is_not_created_again_by_a_takeover(api, workspace):
    # Given a campaign request holding its key, whose process then died (its lease ran out)
    hold_claim(api, workspace, "campaign-dead", CAMPAIGN, path="/v1/campaigns")
    with transaction():
        fetch("UPDATE idempotent_request SET lease_until = now() - interval '1 second' WHERE key = 'campaign-dead'")
    # When the client repeats it, twice
    headers = {**keyed(workspace, "campaign-dead"), "Content-Type": "application/json"}
    taken = api.post("/v1/campaigns", data=json.dumps(CAMPAIGN), headers=headers)
    again = api.post("/v1/campaigns", data=json.dumps(CAMPAIGN), headers=headers)
    # Then it is not run again (the dead one may have stored it): the key answers incomplete, each time
    assert taken.status_code == 500 and taken.get_json()["error"]["code"] == "incomplete"
    assert again.status_code == 500 and again.headers["Idempotent-Replayed"] == "true"
    assert campaigns_stored() == 0
