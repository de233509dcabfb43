"""The HTTP API's contract: authentication, tenant isolation, validation, idempotency, cancel."""

from __future__ import annotations

import pytest

from common.db.connection import fetch, transaction

GOOD = {"channel": "sms", "to": "+15005550006", "body": "hello"}


def count_rows() -> tuple[int, int, int]:
    with transaction():
        return tuple(fetch("SELECT (SELECT count(*) FROM message), (SELECT count(*) FROM message_event), (SELECT count(*) FROM outbox)")[0])


def test_missing_or_invalid_api_key_is_401(api, workspace):
    assert api.post("/v1/messages", json=GOOD).status_code == 401
    bad = api.post("/v1/messages", json=GOOD, headers={"Authorization": "Bearer pr_nothere_xyz"})
    assert bad.status_code == 401
    assert bad.get_json()["error"]["code"] == "unauthorized"
    wrong_secret = workspace["key"].rsplit("_", 1)[0] + "_wrongsecret"
    assert api.post("/v1/messages", json=GOOD, headers={"Authorization": f"Bearer {wrong_secret}"}).status_code == 401
    assert count_rows() == (0, 0, 0)


def test_accepted_message_returns_202_with_id_and_status(api, workspace):
    response = api.post("/v1/messages", json=GOOD, headers=workspace["auth"])
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "accepted" and isinstance(body["id"], int)
    assert count_rows() == (1, 1, 0)  # the message and its history; no endpoint wants events, so no outbox row


def test_another_workspaces_message_is_404(api, workspace):
    from common import apikeys

    created = api.post("/v1/messages", json=GOOD, headers=workspace["auth"]).get_json()
    with transaction():
        other_key = apikeys.issue(apikeys.create_workspace("other"))
    other = {"Authorization": f"Bearer {other_key}"}
    assert api.get(f"/v1/messages/{created['id']}", headers=other).status_code == 404
    assert api.post(f"/v1/messages/{created['id']}/cancel", headers=other).status_code == 404
    assert api.get(f"/v1/messages/{created['id']}", headers=workspace["auth"]).status_code == 200


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (b"[1, 2]", 400, "body"),
        (b'{"channel": "carrier-pigeon", "to": "+15005550006", "body": "hi"}', 422, "channel"),
        (b'{"to": "+15005550006", "body": "hi"}', 422, "channel"),
        (b'{"channel": "sms", "to": "5550006", "body": "hi"}', 422, "to"),
        (b'{"channel": "sms", "to": "+0123", "body": "hi"}', 422, "to"),
        (b'{"channel": "sms", "to": "+15005550006", "body": ""}', 422, "body"),
        (b'{"channel": "sms", "to": "+15005550006", "body": "   "}', 422, "body"),
        (b'{"channel": "sms", "to": "+15005550006"}', 422, "body"),
        (b'{"channel": "sms", "to": "+15005550006", "body": "hi", "priority": "asap"}', 422, "priority"),
        (b'{"channel": "sms", "to": "+15005550006", "body": "hi", "bodyy": "typo"}', 422, "bodyy"),
    ],
)
def test_bad_input_is_rejected_naming_the_field_and_stores_nothing(api, workspace, payload, status, field):
    response = api.post("/v1/messages", data=payload, headers={**workspace["auth"], "Content-Type": "application/json"})
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["field"] == field
    assert error["message"]
    assert count_rows() == (0, 0, 0)


def test_same_idempotency_key_returns_the_same_message_once(api, workspace):
    headers = {**workspace["auth"], "Idempotency-Key": "order-42"}
    first = api.post("/v1/messages", json=GOOD, headers=headers)
    again = api.post("/v1/messages", json=GOOD, headers=headers)
    assert first.status_code == 202 and again.status_code == 202  # the first answer, replayed
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert first.get_json() == again.get_json()
    assert count_rows()[0] == 1


def test_idempotency_key_reused_for_a_different_message_is_409(api, workspace):
    headers = {**workspace["auth"], "Idempotency-Key": "order-43"}
    api.post("/v1/messages", json=GOOD, headers=headers)
    conflict = api.post("/v1/messages", json={**GOOD, "body": "different"}, headers=headers)
    assert conflict.status_code == 409
    assert conflict.get_json()["error"]["field"] == "Idempotency-Key"
    assert count_rows()[0] == 1


def test_cancel_before_sending_is_200_and_repeatable(api, workspace):
    created = api.post("/v1/messages", json=GOOD, headers=workspace["auth"]).get_json()
    first = api.post(f"/v1/messages/{created['id']}/cancel", headers=workspace["auth"])
    assert first.status_code == 200 and first.get_json()["status"] == "cancelled"
    assert api.post(f"/v1/messages/{created['id']}/cancel", headers=workspace["auth"]).status_code == 200
    history = [e["status"] for e in api.get(f"/v1/messages/{created['id']}", headers=workspace["auth"]).get_json()["events"]]
    assert history == ["accepted", "cancelled"]


def test_cancel_after_sending_started_is_409(api, workspace):
    created = api.post("/v1/messages", json=GOOD, headers=workspace["auth"]).get_json()
    with transaction():
        fetch("UPDATE message SET status = 'sending' WHERE id = %s", (created["id"],))
    response = api.post(f"/v1/messages/{created['id']}/cancel", headers=workspace["auth"])
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "not_cancellable"


def test_unknown_message_is_404_and_unknown_route_is_json_404(api, workspace):
    assert api.get("/v1/messages/999999", headers=workspace["auth"]).status_code == 404
    response = api.get("/v2/nothing")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_readyz_is_ready_while_the_broker_is_down_and_reports_it(api, monkeypatch):
    # Given PostgreSQL and Redis both up, ingest is ready and says so per dependency
    ok = api.get("/readyz")
    assert ok.status_code == 200 and ok.get_json() == {"ready": True, "checks": {"database": "ok", "broker": "ok"}}
    # When Redis cannot be reached (nothing listens on the broker's port)
    import redis

    from services.ingest import probes
    from services.local.infra import free_port

    monkeypatch.setattr(probes, "_broker_probe", redis.Redis(port=free_port(), socket_connect_timeout=0.5))
    down = api.get("/readyz")
    # Then ingest still accepts (the reconciler hands work on later): ready, with the broker reported
    assert down.status_code == 200
    assert down.get_json()["ready"] is True and down.get_json()["checks"]["broker"].startswith("error")
    assert api.get("/healthz").status_code == 200


# Bounded input (invariant 16): refused with a 4xx in the one error shape, and nothing stored.

def provider_events() -> list[dict]:
    from common.db.connection import fetch_dicts

    with transaction():
        return fetch_dicts("SELECT provider_message_id, status, payload, signature_valid, applied_at FROM provider_event")


def test_api_body_over_the_size_limit_is_413_and_stores_nothing(api, workspace):
    from common.config import settings

    big = b'{"channel": "sms", "to": "+15005550006", "body": "' + b"x" * settings.postroom_max_request_bytes + b'"}'
    response = api.post("/v1/messages", data=big, headers={**workspace["auth"], "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert count_rows() == (0, 0, 0)


def test_a_chunked_body_without_length_is_cut_off_at_the_limit(ingest_url, workspace):
    import requests

    from common.config import settings

    # Given a body sent in chunks, so the server cannot know its size in advance
    def chunks():
        yield b'{"channel": "sms", "to": "+15005550006", "body": "'
        for _ in range(settings.postroom_max_request_bytes // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    response = requests.post(f"{ingest_url}/v1/messages", data=chunks(), timeout=10,
                             headers={**workspace["auth"], "Content-Type": "application/json"})
    # Then it is refused once it passes the limit
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    assert count_rows() == (0, 0, 0)


def test_webhook_body_over_its_own_smaller_limit_is_413_and_not_stored(api, clean_db):
    from common.config import settings

    assert settings.postroom_max_webhook_bytes < settings.postroom_max_request_bytes
    form = {"MessageSid": "SM1", "MessageStatus": "delivered", "Pad": "x" * settings.postroom_max_webhook_bytes}
    response = api.post("/webhooks/twilio/status", data=form)
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "payload_too_large"
    assert provider_events() == []


def test_json_nested_100000_deep_is_a_fast_400(api, workspace):
    import time

    deep = b"[" * 100_000 + b"]" * 100_000
    started = time.perf_counter()
    response = api.post("/v1/messages", data=deep, headers={**workspace["auth"], "Content-Type": "application/json"})
    assert time.perf_counter() - started < 1.0
    assert response.status_code == 400
    assert response.get_json()["error"] == {"code": "invalid_json", "field": "body",
                                            "message": "the request body nests deeper than 32 levels"}
    assert count_rows() == (0, 0, 0)


def test_json_depth_is_counted_exactly_at_the_limit(api, workspace):
    from common.config import settings

    def tags_nested(depth: int) -> bytes:  # the body object is level 1, the tags list level 2
        inner = depth - 2
        return b'{"channel": "sms", "to": "+15005550006", "body": "hi", "tags": ' + b"[" * (inner + 1) + b"]" * (inner + 1) + b"}"

    limit = settings.postroom_max_json_depth
    headers = {**workspace["auth"], "Content-Type": "application/json"}
    at_limit = api.post("/v1/messages", data=tags_nested(limit), headers=headers)
    past_limit = api.post("/v1/messages", data=tags_nested(limit + 1), headers=headers)
    assert (at_limit.status_code, at_limit.get_json()["error"]["field"]) == (422, "tags")  # parsed, then refused by the model
    assert (past_limit.status_code, past_limit.get_json()["error"]["code"]) == (400, "invalid_json")
    # Brackets inside strings are text, not nesting
    brackets = api.post("/v1/messages", json={**GOOD, "body": "[" * 100 + "{" * 100}, headers=workspace["auth"])
    assert brackets.status_code == 202


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"body": "a\u0000b"}, "body"),
        ({"body": "bell\u0007"}, "body"),
        ({"body": "escape \u001b[31m"}, "body"),
        ({"body": "lone surrogate \ud800"}, "body"),
        ({"to": "+1500555\u00000006"}, "to"),
        ({"from": "+15005550006\n"}, "from"),
        ({"tags": ["ok", "a\u0000"]}, "tags"),
        ({"tags": ["line\nbreak"]}, "tags"),
        ({"tags": ["tab\there"]}, "tags"),
    ],
)
def test_control_characters_are_refused_with_422_naming_the_field(api, workspace, change, field):
    import json

    raw = json.dumps({**GOOD, **change}).encode()  # \\u0000 escapes: valid JSON, a NUL once decoded
    response = api.post("/v1/messages", data=raw, headers={**workspace["auth"], "Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == field
    assert count_rows() == (0, 0, 0)


def test_a_body_keeps_newlines_carriage_returns_and_tabs(api, workspace):
    text = "Your code:\r\n\t1234\nThanks"
    created = api.post("/v1/messages", json={**GOOD, "body": text}, headers=workspace["auth"])
    assert created.status_code == 202
    assert api.get(f"/v1/messages/{created.get_json()['id']}", headers=workspace["auth"]).get_json()["body"] == text


def test_forged_webhook_is_logged_and_kept_only_in_bounded_form(api, clean_db, caplog):
    import json

    from common.receipts import MAX_UNVERIFIED_PAYLOAD

    # Given a status callback with no valid signature, 40 KiB large and holding a NUL
    form = {"AccountSid": "AC" + "0" * 32, "MessageSid": "SMforged", "MessageStatus": "delivered",
            "Junk": "a\u0000" + "x" * 40_000}
    with caplog.at_level("WARNING", logger="postroom.ingest.webhooks"):
        response = api.post("/webhooks/twilio/status", data=form, headers={"X-Twilio-Signature": "forged"})
    # Then it is refused, logged, and recorded as invalid with only a few KiB of it
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "bad_signature"
    assert any("bad signature" in r.getMessage() for r in caplog.records)
    [event] = provider_events()
    assert event["signature_valid"] is False and event["applied_at"] is None
    assert event["provider_message_id"] == "SMforged"  # findable by the id it claims, never applied
    assert event["payload"]["truncated"] is True and event["payload"]["size"] > 40_000
    assert len(json.dumps(event["payload"])) < MAX_UNVERIFIED_PAYLOAD + 200
    assert "SMforged" in event["payload"]["head"]  # the start is kept for an operator to read


def test_forged_webhook_claiming_a_huge_or_odd_provider_id_is_stored_cut_short(api, clean_db):
    form = {"AccountSid": "AC\u0000", "MessageSid": "SM\u0000" + "z" * 10_000, "MessageStatus": "delivered"}
    assert api.post("/webhooks/twilio/status", data=form, headers={"X-Twilio-Signature": "x"}).status_code == 403
    [event] = provider_events()
    assert event["provider_message_id"] == "SM\ufffd" + "z" * 61 and event["signature_valid"] is False


def test_small_forged_webhook_is_kept_whole_but_changes_nothing(api, clean_db):
    form = {"AccountSid": "AC" + "0" * 32, "MessageSid": "SMsmall", "MessageStatus": "delivered"}
    assert api.post("/webhooks/twilio/status", data=form, headers={"X-Twilio-Signature": "nope"}).status_code == 403
    [event] = provider_events()
    assert event["payload"] == form and event["signature_valid"] is False


# Degrade, never hang (invariant 15): PostgreSQL unavailable means 503 with Retry-After, quickly.

@pytest.fixture
def database_down():
    """Point this process's database at a port nobody listens on; the real one comes back after."""
    import os

    from common.db.connection import connect_database, db
    from services.local.infra import free_port

    db.close()
    connect_database(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    yield
    connect_database(os.environ["DATABASE_URL"], max_connections=64)


def test_every_endpoint_answers_503_with_retry_after_while_postgresql_is_unavailable(api, workspace, database_down):
    import time

    from services.ingest.app import create_app

    fresh = create_app().test_client()
    calls = [
        ("POST", "/v1/messages", {"json": GOOD}),
        ("GET", "/v1/messages/1", {}),
        ("POST", "/v1/messages/1/cancel", {}),
        ("POST", "/webhooks/twilio/status", {"data": {"AccountSid": "AC" + "1" * 32, "MessageSid": "SM1"}}),
        ("GET", "/readyz", {}),
    ]
    for method, path, kwargs in calls:
        started = time.monotonic()
        response = fresh.open(path, method=method, headers=workspace["auth"], **kwargs)
        assert time.monotonic() - started < 2.0, path
        assert response.status_code == 503, (path, response.status_code)
        assert int(response.headers["Retry-After"]) > 0
        if path != "/readyz":
            assert response.get_json()["error"]["code"] == "unavailable"
    assert fresh.get("/readyz").get_json()["checks"]["database"].startswith("error")
    assert fresh.get("/healthz").status_code == 200  # liveness touches nothing


def test_a_key_seen_before_the_outage_still_gets_503_not_500(api, workspace):
    import os

    from common.db.connection import connect_database, db
    from services.local.infra import free_port

    # Given a key the API has already looked up (cached, so authentication needs no database)
    assert api.get("/v1/messages/1", headers=workspace["auth"]).status_code == 404
    db.close()
    connect_database(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    try:
        # When PostgreSQL goes away, the insert itself fails
        response = api.post("/v1/messages", json=GOOD, headers=workspace["auth"])
    finally:
        connect_database(os.environ["DATABASE_URL"], max_connections=64)
    # Then that is a 503 too, and nothing was stored
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert count_rows() == (0, 0, 0)


def test_an_unexpected_error_is_still_a_json_500(workspace, monkeypatch):
    from services.ingest import messages
    from services.ingest.app import create_app

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(messages, "view", broken)
    client = create_app().test_client()  # not in testing mode: errors are handled as in production
    response = client.get("/v1/messages/1", headers=workspace["auth"])
    assert response.status_code == 500 and response.get_json()["error"]["code"] == "internal"


def test_ingest_refuses_to_start_in_production_with_the_development_secret():
    import os
    import subprocess
    import sys

    env = {**os.environ, "POSTROOM_ENV": "production", "POSTROOM_SECRET_KEY": ""}  # empty: the default
    refused = subprocess.run([sys.executable, "-c", "import services.ingest.wsgi"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "POSTROOM_SECRET_KEY" in refused.stderr
    env["POSTROOM_SECRET_KEY"] = "a-long-random-production-secret-0123456789"
    started = subprocess.run([sys.executable, "-c", "import services.ingest.wsgi"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
